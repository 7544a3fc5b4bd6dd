package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/alecthomas/kong"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/checkpoint"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/dbmigrate"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/reaper"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/retention"
	"github.com/artifactstore/artifactstore/status"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

// runCmd runs every role in one process: the zero-setup way to use
// artifactstore, and the README's first command.
type runCmd struct {
	NoMigrate         bool          `name:"no-migrate" help:"Do not create the database and apply migrations at start."`
	EmbeddedNATSPort  int           `name:"embedded-nats-port" help:"Port of the embedded NATS server (started when --nats-url is empty), on 127.0.0.1; chosen so as not to collide with a NATS server on 4222." default:"4223"`
	IngestConcurrency int           `help:"Commands the ingester handles at once." default:"32"`
	VerifyConcurrency int           `help:"Verifications run at once." default:"2"`
	ScrubInterval     time.Duration `help:"Re-verify each stored object once per this interval." default:"168h"`
	ScrubTick         time.Duration `help:"Pause between two scrub passes of the scheduler." default:"1m"`
	VerifyRateLimit   string        `help:"Bytes per second scrub may read, 0 for unlimited (e.g. 50MiB)." default:"0"`
	StopTimeout       time.Duration `help:"How long SIGINT/SIGTERM waits for in-flight work before cancelling it (cancelled work is redelivered)." default:"30s"`
	stagingFlags      `embed:""`
	replicasFlag      `embed:""`

	APIToken       string `name:"api-token" help:"Bearer token every API request must carry." placeholder:"TOKEN"`
	InsecureNoAuth bool   `name:"insecure-no-auth" help:"Serve the API without a token on an address other hosts can reach."`

	// Without --checkpoint-key, run signs with <data-dir>/checkpoint.key,
	// created on first start.
	signerFlags `embed:""`
}

func (c runCmd) Run(ctx context.Context, g *Globals, s *ioStreams) (err error) {
	if err := api.CheckExposure(g.HTTPAddr, c.APIToken, c.InsecureNoAuth); err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	rateLimit, err := verifier.ParseBytes(c.VerifyRateLimit)
	if err != nil {
		return fmt.Errorf("--verify-rate-limit: %w", err)
	}
	if c.ScrubInterval <= 0 || c.ScrubTick <= 0 {
		return fmt.Errorf("--scrub-interval (%s) and --scrub-tick (%s) must be positive, e.g. 168h and 1m", c.ScrubInterval, c.ScrubTick)
	}
	if _, err := c.reserve(); err != nil {
		return err
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(g.DataDir, 0o750); err != nil {
		return fmt.Errorf("create --data-dir: %w", err)
	}
	if !c.NoMigrate {
		if err := ensureDatabase(ctx, g.DatabaseURL); err != nil {
			return err
		}
		if err := dbmigrate.Up(ctx, g.DatabaseURL); err != nil {
			return err
		}
	}
	if g.NATSURL == "" {
		emb, err := bus.StartEmbedded(ctx, filepath.Join(g.DataDir, "nats"), "127.0.0.1", c.EmbeddedNATSPort, lg)
		if err != nil {
			return fmt.Errorf("start the embedded NATS server on 127.0.0.1:%d (port taken? pass --embedded-nats-port or --nats-url): %w", c.EmbeddedNATSPort, err)
		}
		defer emb.Shutdown()
		g.NATSURL = emb.ClientURL()
		if err := os.WriteFile(g.embeddedURLFile(), []byte(g.NATSURL+"\n"), 0o640); err != nil {
			return fmt.Errorf("record the embedded NATS URL for client commands: %w", err)
		}
		defer os.Remove(g.embeddedURLFile())
		lg.Info().Str("url", g.NATSURL).Str("store", filepath.Join(g.DataDir, "nats")).Msg("embedded NATS server with JetStream started")
	}
	cn, err := g.connect(ctx, "run", topologyFlags{ApplyTopology: true, replicasFlag: c.replicasFlag}, lg)
	if err != nil {
		return err
	}
	defer cn.Close()
	pool := cn.pool

	lim := verifier.NewByteLimiter(rateLimit)
	defer lim.Close()
	rr, rrService := readReporter(&lg)
	dp, be, err := g.storage(ctx, lg, dataplane.WithVerifyReader(lim.Reader), dataplane.WithCorruptionReporter(rr))
	if err != nil {
		return err
	}
	defer be.Close()
	codec := events.NewCodec()
	evlog := events.NewLog(pool, codec)
	svcs, srv, err := c.services(g, lg, cn, dp, be, evlog, codec, rrService(dp, evlog, pool, codec))
	if err != nil {
		return err
	}
	if err := svcs.Start(ctx); err != nil {
		return err
	}
	lg.Info().Str("http", srv.Addr()).Str("nats", g.NATSURL).Str("data_dir", g.DataDir).
		Msg("artifactstore running: ingest, project, verify, scrub, reap, retention, relay, checkpoints, API; stop with Ctrl-C")
	return stopServices(ctx, lg, c.StopTimeout, svcs)
}

// services lists every role of 'run', in start order: the operator and API
// server first, then the single-active loops (each elects itself through
// its advisory lock, so several 'run' processes on one database
// cooperate), then the consumers. They stop in reverse: the consumers
// drain side by side (in-flight work finishes, or is nak'd and
// redelivered to the next process at --stop-timeout) while the loops still
// project and publish what they commit; then the loops; then the server.
func (c runCmd) services(g *Globals, lg zerolog.Logger, cn *conns, dp *dataplane.DataPlane, be *backends, evlog *events.Log, codec *events.Codec, rr service.Service) (*service.Group, *ops.Server, error) {
	pool, nc, js, top := cn.pool, cn.nc, cn.js, cn.top
	reserve, err := c.reserve()
	if err != nil {
		return nil, nil, err
	}
	srv := ops.New(lg, g.HTTPAddr)
	addReadyChecks(srv, pool, nc, dp)
	srv.Registry.MustRegister(status.NewCollector(statusSources(pool, js, c.ScrubInterval, 0, "")))
	keyFile, err := ensureKeyPair(lg, c.CheckpointKey, g.DataDir)
	if err != nil {
		return nil, nil, err
	}
	sf := c.signerFlags
	sf.CheckpointKey = keyFile
	sg, err := sf.newSigner(lg, evlog, js, top, checkpoint.NewTable(pool), checkpoint.NewMetrics(srv.Registry))
	if err != nil {
		return nil, nil, err
	}
	a, err := api.New(pool, dp, api.Options{Token: c.APIToken, Logger: lg, Registerer: srv.Registry})
	if err != nil {
		return nil, nil, err
	}
	srv.Front(a.Wrap)
	ing, err := ingest.New(ingest.Config{
		Pool: pool, Log: evlog, Codec: codec, DataPlane: dp, NATS: nc, JetStream: js, Topology: top,
		Concurrency: c.IngestConcurrency, StorageReserve: reserve, Logger: lg, Metrics: ingest.NewMetrics(srv.Registry),
	})
	if err != nil {
		return nil, nil, err
	}
	vw := verifier.NewWorker(dp, evlog, pool, codec, nc, verifier.WorkerConfig{
		Concurrency: c.VerifyConcurrency, Logger: &lg, Metrics: verifier.NewMetrics(srv.Registry),
		JetStream: js, Topology: top,
	})
	rh, err := retention.New(retention.Config{Pool: pool, Log: evlog, Codec: codec, NATS: nc, JetStream: js, Topology: top, Logger: lg})
	if err != nil {
		return nil, nil, err
	}
	proj := projector.New(pool, evlog, codec, projector.Config{Logger: &lg})
	sched := verifier.NewScheduler(pool, js, codec, verifier.SchedulerConfig{
		Interval: c.ScrubInterval, Tick: c.ScrubTick, Subject: top.Subject(bus.CmdVerify), Logger: &lg,
	})
	rel, err := relay.New(pool, evlog, codec, js, relay.Config{
		Stream: top.EventsStream, Subject: func(t events.Type) string { return top.EventsSubject(string(t)) }, Logger: lg,
	})
	if err != nil {
		return nil, nil, err
	}
	janitor, err := c.janitor(pool, js, top, lg)
	if err != nil {
		return nil, nil, err
	}
	var rc reapCmd
	if err := kong.ApplyDefaults(&rc); err != nil {
		return nil, nil, err
	}
	reap, err := rc.newReaper(pool, codec, dp, be.list, lg, reaper.NewMetrics(srv.Registry))
	if err != nil {
		return nil, nil, err
	}
	return service.NewGroup(
		service.Named{Name: "http server", Service: opsService{srv: srv, stop: opsStopTimeout}},
		service.Named{Name: "projector", Service: projectorService(proj, lg)},
		service.Named{Name: "scrub scheduler", Service: leader.Singleton(pool, leader.Config{Key: leader.KeyScrubScheduler, Name: "scrub-scheduler", Logger: &lg}, sched.Run)},
		service.Named{Name: "events relay", Service: leader.Singleton(pool, leader.Config{Key: leader.KeyRelay, Name: "relay", Logger: &lg}, rel.Run)},
		service.Named{Name: "staging janitor", Service: janitor},
		service.Named{Name: "checkpoint signer", Service: leader.Singleton(pool, leader.Config{Key: leader.KeyCheckpointer, Name: "checkpoint-signer", Logger: &lg}, sg.Run)},
		service.Named{Name: "reaper", Service: leader.Singleton(pool, leader.Config{Key: leader.KeyReaper, Name: "reaper", Logger: &lg}, reap.Run)},
		service.Named{Name: "consumers", Service: service.NewParallel(
			service.Named{Name: "ingest", Service: ing},
			service.Named{Name: "verifier", Service: vw},
			service.Named{Name: "retention", Service: rh},
			service.Named{Name: "read reporter", Service: rr},
		)},
	), srv, nil
}

// projectorService runs the projector under its leader lock. A projector
// stopped on the log (altered, gapped or forged rows, an unknown event)
// needs a person, not the end of every role: the API keeps serving what
// was projected, ingest keeps appending, and the alarm is up (status,
// /metrics' artifactstore_projector_stopped) until the log is repaired and
// run restarted.
func projectorService(proj *projector.Projector, lg zerolog.Logger) *service.Loop {
	return service.NewLoop("projector", func(ctx context.Context) error {
		if err := proj.Run(ctx); err != nil && ctx.Err() == nil {
			lg.Error().Err(err).Str("reason", projector.StopReason(err)).
				Msg("PROJECTOR STOPPED: the other roles keep running; run 'artifactstore audit --checkpoints', repair the log, then restart")
		}
		return nil
	})
}

// addReadyChecks registers the dependencies every role needs for /readyz.
func addReadyChecks(srv *ops.Server, pool *pgxpool.Pool, nc *nats.Conn, dp *dataplane.DataPlane) {
	srv.AddCheck("postgres", func(ctx context.Context) error { return pool.Ping(ctx) })
	if nc != nil {
		srv.AddCheck("nats", func(context.Context) error {
			if !nc.IsConnected() {
				return fmt.Errorf("NATS connection is %s", nc.Status())
			}
			return nil
		})
	}
	if dp != nil {
		srv.AddCheck("storage", func(ctx context.Context) error {
			var errs []error
			for id, h := range dp.Health(ctx) {
				if !h.Healthy {
					errs = append(errs, fmt.Errorf("backend %s: %s", id, h.Detail))
				}
			}
			return errors.Join(errs...)
		})
	}
}
