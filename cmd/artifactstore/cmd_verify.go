package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

// verifyCmd is the verifier: without a selection it runs the worker role
// (verify consumer + scrub scheduler under leader election); with
// --package, --object or --all it verifies those on demand and prints a
// table.
type verifyCmd struct {
	Package string        `help:"Verify every stored file of this package, wait for the results and print them." placeholder:"NAME" xor:"sel"`
	Object  string        `help:"Verify every stored copy of this object, wait and print." placeholder:"ADDR" xor:"sel"`
	All     bool          `help:"Verify every stored object, wait and print." xor:"sel"`
	Timeout time.Duration `help:"How long an on-demand verification waits for all replies." default:"10m"`

	Concurrency   int           `help:"Worker: verifications run at once by this process." default:"4" placeholder:"N"`
	ScrubInterval time.Duration `help:"Worker: re-verify each object once per this interval (never-verified first)." default:"168h"`
	ScrubTick     time.Duration `help:"Worker: pause between two scrub passes of the scheduler." default:"1m"`
	RateLimit     string        `help:"Worker: bytes per second this process reads to verify, 0 for unlimited; suffixes KiB, MiB, GiB (or kB, MB, GB) accepted, e.g. 50MiB." default:"0" placeholder:"BYTES"`
	BatchSize     int           `help:"Worker: objects the scrub scheduler queues per batch." default:"500" placeholder:"N"`
	opsFlags      `embed:""`
	topologyFlags `embed:""`
}

func (c verifyCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	if c.Package != "" || c.Object != "" || c.All {
		return c.onDemand(ctx, g, s, lg)
	}
	return c.worker(ctx, g, lg)
}

func (c verifyCmd) worker(ctx context.Context, g *Globals, lg zerolog.Logger) error {
	rateLimit, err := verifier.ParseBytes(c.RateLimit)
	if err != nil {
		return fmt.Errorf("--rate-limit: %w", err)
	}
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("--concurrency %d must be at least 1", c.Concurrency)
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return fmt.Errorf("--batch-size %d is out of range; use 1..10000", c.BatchSize)
	case c.ScrubInterval <= 0 || c.ScrubTick <= 0:
		return fmt.Errorf("--scrub-interval (%s) and --scrub-tick (%s) must be positive, e.g. 168h and 1m", c.ScrubInterval, c.ScrubTick)
	}
	cn, err := g.connect(ctx, bus.RoleVerifier, c.topologyFlags, lg)
	if err != nil {
		return err
	}
	defer cn.Close()
	pool, nc, js, topo := cn.pool, cn.nc, cn.js, cn.top
	lim := verifier.NewByteLimiter(rateLimit)
	defer lim.Close()
	dp, err := g.dataPlane(ctx, lg, dataplane.WithVerifyReader(lim.Reader))
	if err != nil {
		return err
	}
	srv, opsSvc := g.opsServer(c.opsFlags, lg, pool, nc, js, dp, bus.RoleVerifier)
	codec := events.NewCodec()
	w := verifier.NewWorker(dp, events.NewLog(pool, codec), pool, codec, nc, verifier.WorkerConfig{
		Concurrency: c.Concurrency, Logger: &lg, Metrics: verifier.NewMetrics(srv.Registry),
		JetStream: js, Topology: topo,
	})
	sched := verifier.NewScheduler(pool, js, codec, verifier.SchedulerConfig{
		Interval: c.ScrubInterval, Tick: c.ScrubTick, BatchSize: c.BatchSize,
		Subject: topo.Subject(bus.CmdVerify), Logger: &lg,
	})
	svcs := service.NewGroup(
		service.Named{Name: "ops server", Service: opsSvc},
		service.Named{Name: "scrub scheduler", Service: leader.Singleton(pool, leader.Config{Key: leader.KeyScrubScheduler, Name: "scrub-scheduler", Logger: &lg}, sched.Run)},
		service.Named{Name: "verifier", Service: w},
	)
	if err := svcs.Start(ctx); err != nil {
		return err
	}
	lg.Info().Int("concurrency", c.Concurrency).Int64("rate_limit_bytes_per_s", rateLimit).Msg("verifier running")
	return stopServices(ctx, lg, 30*time.Second, svcs)
}

func (c verifyCmd) onDemand(ctx context.Context, g *Globals, s *ioStreams, lg zerolog.Logger) error {
	sel := verifier.Selector{Package: c.Package, All: c.All}
	if c.Object != "" {
		a, err := digest.Parse(c.Object)
		if err != nil {
			return fmt.Errorf("--object: %w", err)
		}
		sel.Object = a
	}
	if _, _, err := g.natsURL(); err != nil {
		return err
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	targets, err := verifier.FindTargets(ctx, pool, sel)
	if err != nil {
		return err
	}
	req, js, closeReq, err := g.requester(ctx, "verify-client", lg)
	if err != nil {
		return err
	}
	defer closeReq()
	warnIfNoWorker(ctx, js, bus.DefaultTopology().VerifyConsumer, "verifier ('artifactstore verify' or 'run')", c.Timeout, s)
	wctx, cancel := context.WithTimeoutCause(ctx, c.Timeout,
		fmt.Errorf("no reply within --timeout %s; is an 'artifactstore verify' worker (or 'run') running?", c.Timeout))
	defer cancel()
	results := verifier.RequestAll(wctx, req, events.NewCodec(), bus.DefaultTopology().Subject(bus.CmdVerify), targets, 64)

	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tADDRESS\tBACKEND\tOUTCOME\tSIZE\tDETAIL")
	counts := map[string]int{}
	for _, r := range results {
		path := r.Target.Path
		if path == "" {
			path = "-"
		}
		outcome, detail := r.Reply.Outcome, r.Reply.Reason
		if r.Err != nil {
			outcome, detail = commands.OutcomeError, r.Err.Error()
		}
		counts[outcome]++
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", path, r.Target.Address, r.Target.BackendID, outcome, r.Reply.ActualSize, detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "%d verified, %d corrupt, %d missing, %d errors\n",
		counts[commands.OutcomeVerified], counts[commands.OutcomeCorrupt], counts[commands.OutcomeMissing], counts[commands.OutcomeError])
	if bad := counts[commands.OutcomeCorrupt] + counts[commands.OutcomeMissing]; bad > 0 {
		return &exitError{code: 3, err: fmt.Errorf("%d of %d objects are corrupt or missing; they are recorded as such and will not be served", bad, len(results))}
	}
	if counts[commands.OutcomeError] > 0 {
		return fmt.Errorf("%d of %d objects could not be verified (see DETAIL)", counts[commands.OutcomeError], len(results))
	}
	return nil
}
