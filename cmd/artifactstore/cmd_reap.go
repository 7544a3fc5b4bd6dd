package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/reaper"
	"github.com/artifactstore/artifactstore/retention"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// reapCmd runs the reaper role (one active instance under leader
// election, plus this process's share of the retention commands), or one
// pass, or a dry run.
type reapCmd struct {
	DryRun bool      `name:"dry-run" help:"Print which packages would expire, which bytes would be freed and which orphans would be quarantined; change nothing."`
	At     time.Time `help:"With --dry-run: plan as if the clock said this time (RFC 3339), e.g. to see what expires by the end of the year. Never accepted for a real pass: nobody deletes early." placeholder:"TIME"`
	Once   bool      `help:"Run one pass (as the leader) and exit, printing what it did."`

	Interval       time.Duration `help:"Pause between two passes." default:"5m"`
	Grace          time.Duration `help:"How long an object stays marked before its bytes may be deleted; an ingest of the same content inside it keeps them." default:"1h"`
	BatchSize      int           `help:"Packages or objects per transaction (the ingest lock is held for each)." default:"500" placeholder:"N"`
	OrphanInterval time.Duration `help:"How often a pass also walks the object store for orphans (files no row knows); 0 disables the scan." default:"24h"`
	OrphanMinAge   time.Duration `help:"How old a file without a row must be to count as an orphan (younger ones may be ingests about to commit)." default:"24h"`
	NoOrphans      bool          `help:"With --dry-run: skip the walk of the object store."`
	NoRetention    bool          `help:"Do not handle retention commands (hold, release, retain) in this process."`
	Concurrency    int           `help:"Retention commands handled at once by this process." default:"4" placeholder:"N"`
	opsFlags       `embed:""`
	topologyFlags  `embed:""`
}

func (c reapCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	switch {
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return fmt.Errorf("--batch-size %d is out of range; use 1..10000", c.BatchSize)
	case c.Interval <= 0:
		return fmt.Errorf("--interval %s must be positive, e.g. 5m", c.Interval)
	case c.Grace < 0 || c.OrphanInterval < 0 || c.OrphanMinAge < 0:
		return errors.New("--grace, --orphan-interval and --orphan-min-age must not be negative")
	case !c.At.IsZero() && !c.DryRun:
		return errors.New("--at is only for --dry-run: a real pass always uses the real clock, so that nothing is deleted early")
	case c.Concurrency < 1:
		return fmt.Errorf("--concurrency %d must be at least 1", c.Concurrency)
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	dp, be, err := g.storage(ctx, lg)
	if err != nil {
		return err
	}
	defer be.Close()
	var metrics *reaper.Metrics
	var opsSvc service.Service
	if !c.DryRun && !c.Once {
		var srv *ops.Server
		srv, opsSvc = g.opsServer(c.opsFlags, lg, pool, nil, nil, dp, "")
		metrics = reaper.NewMetrics(srv.Registry)
	}
	codec := events.NewCodec()
	r, err := c.newReaper(pool, codec, dp, be.list, lg, metrics)
	if err != nil {
		return err
	}
	switch {
	case c.DryRun:
		return c.dryRun(ctx, r, s)
	case c.Once:
		var rep reaper.Report
		err := leader.RunConfig(ctx, pool, leader.Config{Key: leader.KeyReaper, Name: "reaper", Logger: &lg}, func(ctx context.Context) error {
			var err error
			rep, err = r.RunOnce(ctx)
			return err
		})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(s.out, "expired %d packages; marked %d objects, kept %d marked ones that are referenced again; deleted %d objects (%d bytes); adopted %d files; %d orphans, %d quarantined; removed %d leftovers of interrupted writes\n",
			rep.Expired, rep.Marked, rep.Unmarked, rep.Deleted, rep.BytesFreed, rep.Adopted, rep.Orphans, rep.Quarantined, rep.Abandoned)
		return err
	default:
		return c.worker(ctx, g, lg, r, codec, pool, opsSvc)
	}
}

// newReaper builds the reaper from the flags (run uses it with the flags'
// defaults).
func (c reapCmd) newReaper(pool *pgxpool.Pool, codec *events.Codec, dp *dataplane.DataPlane, bs []storage.Backend, lg zerolog.Logger, m *reaper.Metrics) (*reaper.Reaper, error) {
	cfg := reaper.Config{Metrics: m,
		Pool: pool, Log: events.NewLog(pool, codec), DataPlane: dp,
		Stores:   reaperStores(bs),
		Interval: c.Interval, BatchSize: c.BatchSize, OrphanMinAge: c.OrphanMinAge,
		Grace: c.Grace, OrphanInterval: c.OrphanInterval, Logger: lg,
	}
	if c.Grace == 0 {
		cfg.Grace = -1 // the reaper's "no grace"; 0 there means its default
	}
	if c.OrphanInterval == 0 {
		cfg.OrphanInterval = -1
	}
	if !c.At.IsZero() {
		at := c.At
		cfg.Now = func() time.Time { return at }
	}
	return reaper.New(cfg)
}

func (c reapCmd) worker(ctx context.Context, g *Globals, lg zerolog.Logger, r *reaper.Reaper, codec *events.Codec, pool *pgxpool.Pool, opsSvc service.Service) error {
	svcs := service.NewGroup(
		service.Named{Name: "ops server", Service: opsSvc},
		service.Named{Name: "reaper", Service: leader.Singleton(pool, leader.Config{Key: leader.KeyReaper, Name: "reaper", Logger: &lg}, r.Run)},
	)
	if !c.NoRetention {
		nc, js, err := g.natsConn(ctx, bus.RoleReaper, lg)
		if err != nil {
			return err
		}
		defer nc.Close()
		topo, err := prepareTopology(ctx, js, bus.RoleReaper, c.topologyFlags, lg)
		if err != nil {
			return err
		}
		h, err := retention.New(retention.Config{Pool: pool, Log: events.NewLog(pool, codec), Codec: codec, NATS: nc,
			JetStream: js, Topology: topo, Concurrency: c.Concurrency, Logger: lg})
		if err != nil {
			return err
		}
		svcs.Add("retention", h)
	}
	if err := svcs.Start(ctx); err != nil {
		return err
	}
	lg.Info().Bool("retention_commands", !c.NoRetention).Msg("reaper role running")
	return stopServices(ctx, lg, 30*time.Second, svcs)
}

func (c reapCmd) dryRun(ctx context.Context, r *reaper.Reaper, s *ioStreams) error {
	plan, err := r.Plan(ctx, !c.NoOrphans)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Packages that would expire at %s:\n", plan.Now.Format(time.RFC3339))
	fmt.Fprintln(tw, "PACKAGE\tCLASS\tRETAIN UNTIL")
	for _, p := range plan.Packages {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, p.Class, p.RetainUntil.UTC().Format(time.RFC3339))
	}
	fmt.Fprintln(tw, "\nObjects whose bytes would be freed (nothing live references them):")
	fmt.Fprintln(tw, "ADDRESS\tBACKEND\tSIZE\tSTATE\tDELETABLE AFTER")
	for _, o := range plan.Objects {
		state := "would be marked"
		if o.Marked {
			state = "marked " + o.MarkedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", o.Address, o.BackendID, o.Size, state, o.DeletableAt.Format(time.RFC3339))
	}
	if !c.NoOrphans {
		fmt.Fprintln(tw, "\nOrphans that would be quarantined (files no row knows):")
		fmt.Fprintln(tw, "ADDRESS\tBACKEND\tSIZE\tSTORED AT")
		for _, o := range plan.Orphans {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", o.Address, o.BackendID, o.Size, o.StoredAt.UTC().Format(time.RFC3339))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(s.out, "\n%d packages would expire; %d objects (%d bytes) would be freed; %d orphans would be quarantined. Dry run: nothing was changed.\n",
		len(plan.Packages), len(plan.Objects), plan.BytesFreed, len(plan.Orphans))
	return err
}
