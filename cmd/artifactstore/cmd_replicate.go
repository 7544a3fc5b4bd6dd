package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/replicator"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// replicateCmd is the replicator: without --copy-all it runs the worker
// role (the replicate consumer of the events stream); with --copy-all
// --to ID it copies every stored object to one backend now and exits.
type replicateCmd struct {
	CopyAll       bool   `name:"copy-all" help:"Copy every stored object (whatever its class) to the backend --to, with verifying reads and writes, print the counts and exit: how to move a store from one backend to another."`
	To            string `help:"With --copy-all: the id of the backend to copy to (one of --storage)." placeholder:"ID"`
	Concurrency   int    `help:"Worker: events handled at once by this process." default:"4" placeholder:"N"`
	opsFlags      `embed:""`
	topologyFlags `embed:""`
}

// policy is the replication policy of --storage (its order) and
// --replicas.
func (g *Globals) policy(ids []string) (replicator.Policy, error) {
	copies, err := replicator.ParseCopies(g.Replicas)
	if err != nil {
		return replicator.Policy{}, fmt.Errorf("--replicas: %w", err)
	}
	p := replicator.Policy{Backends: ids, Copies: copies}
	return p, p.Validate()
}

func (c replicateCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	if c.CopyAll {
		return c.copyAll(ctx, g, s, lg)
	}
	if c.Concurrency < 1 {
		return fmt.Errorf("--concurrency %d must be at least 1", c.Concurrency)
	}
	cn, err := g.connect(ctx, bus.RoleReplicator, c.topologyFlags, lg)
	if err != nil {
		return err
	}
	defer cn.Close()
	// A copy a read finds corrupt is verified at once, so that the
	// damage is recorded (and then repaired from another copy).
	rr, rrService := readReporter(&lg)
	dp, bs, err := g.storage(ctx, lg, dataplane.WithCorruptionReporter(rr))
	if err != nil {
		return err
	}
	defer bs.Close()
	codec := events.NewCodec()
	evlog := events.NewLog(cn.pool, codec)
	policy, err := g.policy(bs.ids())
	if err != nil {
		return err
	}
	_, opsSvc := g.opsServer(c.opsFlags, lg, cn.pool, cn.nc, cn.js, dp, bus.RoleReplicator)
	r, err := replicator.New(replicator.Config{Pool: cn.pool, Log: evlog, DataPlane: dp,
		Policy: policy, Concurrency: c.Concurrency, Logger: lg, JetStream: cn.js, Topology: cn.top})
	if err != nil {
		return err
	}
	svcs := service.NewGroup(
		service.Named{Name: "ops server", Service: opsSvc},
		service.Named{Name: "read reporter", Service: rrService(dp, evlog, cn.pool, codec)},
		service.Named{Name: "replicator", Service: r},
	)
	if err := svcs.Start(ctx); err != nil {
		return err
	}
	lg.Info().Str("policy", policy.String()).Int("concurrency", c.Concurrency).Msg("replicator running")
	return stopServices(ctx, lg, 30*time.Second, svcs)
}

func (c replicateCmd) copyAll(ctx context.Context, g *Globals, s *ioStreams, lg zerolog.Logger) error {
	if c.To == "" {
		return errors.New("--copy-all needs --to ID, the backend to copy every object to (one of --storage)")
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	dp, bs, err := g.storage(ctx, lg)
	if err != nil {
		return err
	}
	defer bs.Close()
	found := false
	for _, id := range bs.ids() {
		found = found || id == c.To
	}
	if !found {
		return fmt.Errorf("--to %q is not one of the backends of --storage (%v)", c.To, bs.ids())
	}
	r, err := replicator.New(replicator.Config{Pool: pool, Log: events.NewLog(pool, events.NewCodec()), DataPlane: dp,
		Policy: replicator.Policy{Backends: bs.ids()}, Logger: lg})
	if err != nil {
		return err
	}
	copied, present, err := r.CopyAll(ctx, c.To)
	fmt.Fprintf(s.out, "%d objects copied to %s, %d already there\n", copied, c.To, present)
	return err
}
