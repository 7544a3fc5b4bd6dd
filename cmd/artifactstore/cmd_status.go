package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/status"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/local"
	"github.com/artifactstore/artifactstore/verifier"
)

// statusCmd prints one screen about the health of the whole pipeline.
type statusCmd struct {
	JSON          bool          `name:"json" help:"Print the report as JSON."`
	ScrubInterval time.Duration `help:"The scrub interval the coverage figure is measured against (as the verifier's --scrub-interval)." default:"168h"`
	MaxLag        int64         `help:"Projector lag, in events, above which the pipeline is reported unhealthy." default:"10000"`
	Window        time.Duration `name:"dead-letter-window" help:"How far back failed dead letters (commands the pipeline gave up on) make the pipeline unhealthy." default:"24h"`
	StagedMaxAge  time.Duration `help:"Age above which a staged upload nothing will consume is reported abandoned (the ingesters' janitor purges them after --staging-max-age, 30m by default)." default:"1h"`
	MinFree       string        `help:"Free space of a storage backend below which the pipeline is reported unhealthy; suffixes KiB, MiB, GiB." default:"2GiB" placeholder:"BYTES"`
	MinFreePct    float64       `name:"min-free-percent" help:"Free share of a storage backend, in percent, below which the pipeline is reported unhealthy." default:"5"`
}

func (c statusCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	if _, _, err := g.natsURL(); err != nil {
		return err
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	minFree, err := verifier.ParseBytes(c.MinFree)
	if err != nil {
		return fmt.Errorf("--min-free: %w", err)
	}
	src := statusSources(pool, nil, c.ScrubInterval, c.MaxLag, "")
	src.DeadLetterWindow, src.StagedMaxAge = c.Window, c.StagedMaxAge
	src.MinFreeBytes, src.MinFreePercent = uint64(minFree), c.MinFreePct
	src.Handled = ingest.HandledCommands(pool)
	if src.Backends, err = g.backendSpace(ctx); err != nil {
		return err
	}
	nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nc, js, err := g.natsConn(nctx, bus.RoleStatus, lg.Level(zerolog.WarnLevel))
	if err != nil {
		src.NATSErr = err
	} else {
		defer nc.Close()
		src.JS = js
	}
	r, err := status.Gather(ctx, src)
	if err != nil {
		return err
	}
	if c.JSON {
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else if err := status.Render(s.out, r); err != nil {
		return err
	}
	if !r.Healthy {
		return &exitError{code: 3, err: errUnhealthy}
	}
	return nil
}

// errUnhealthy makes status exit with 3 when the pipeline needs attention,
// so scripts and probes can act on it.
var errUnhealthy = errors.New("the pipeline needs attention (see above)")

// backendSpace reports the health and space of the backends --storage
// names (else of the local backend under --data-dir), as status sees them
// without opening a local backend (status only reads): a file system's
// space for a local directory, the store's own health check for S3.
func (g *Globals) backendSpace(ctx context.Context) (func(context.Context) map[string]storage.Health, error) {
	if len(g.Storage) == 0 {
		return localSpace(local.DefaultID, g.objectsDir(), "is --data-dir the data directory of the ingesters?"), nil
	}
	var checks []func(context.Context) map[string]storage.Health
	ids := map[string]bool{}
	for _, raw := range g.Storage {
		raw = strings.TrimSpace(raw)
		var (
			id    string
			check func(context.Context) map[string]storage.Health
		)
		switch scheme, _, _ := strings.Cut(raw, ":"); scheme {
		case "file":
			dir, fid, err := parseFileURL(raw)
			if err != nil {
				return nil, err
			}
			id, check = fid, localSpace(fid, dir, "is --storage the storage of the ingesters?")
		case "s3":
			b, err := g.s3Backend(ctx, raw)
			if err != nil {
				return nil, err
			}
			id = b.ID()
			check = func(ctx context.Context) map[string]storage.Health {
				hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				return map[string]storage.Health{b.ID(): b.Health(hctx)}
			}
		default:
			return nil, fmt.Errorf("--storage %q: unknown kind of storage %q; use file:///path or s3://bucket/prefix", raw, scheme)
		}
		if ids[id] {
			return nil, fmt.Errorf("two storage backends have the id %q; give one another id with ?id=name in its --storage URL", id)
		}
		ids[id] = true
		checks = append(checks, check)
	}
	return func(ctx context.Context) map[string]storage.Health {
		all := map[string]storage.Health{}
		for _, c := range checks {
			maps.Copy(all, c(ctx))
		}
		return all
	}, nil
}

// localSpace reports the space of the file system under dir as backend
// id's, without opening the backend; hint says what to check when dir is
// not there.
func localSpace(id, dir, hint string) func(context.Context) map[string]storage.Health {
	return func(context.Context) map[string]storage.Health {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return map[string]storage.Health{id: {Detail: fmt.Sprintf("statfs %s: %v (%s)", dir, err, hint)}}
		}
		bs := uint64(st.Bsize)
		return map[string]storage.Health{id: {Healthy: true, Detail: "ok",
			FreeBytes: uint64(st.Bavail) * bs, UsedBytes: (uint64(st.Blocks) - uint64(st.Bfree)) * bs}}
	}
}

// statusSources names what status (and the status metrics) read: the
// default topology's consumers and streams, the projector and relay
// checkpoints, the leader locks. With a role name, the NATS part is only
// what that role checks at start, which its permissions let it read (an
// ingester's /metrics shows its own backlog); with "", everything.
func statusSources(pool *pgxpool.Pool, js jetstream.JetStream, scrubInterval time.Duration, maxLag int64, role string) status.Sources {
	top := bus.DefaultTopology()
	src := status.Sources{
		Pool: pool, JS: js, CommandsStream: top.CommandsStream, DeadLetters: top.DeadLetterStream, EventsStream: top.EventsStream,
		Projector: projector.DefaultName, Relay: "events", ScrubInterval: scrubInterval, MaxLag: maxLag,
		DeadLetterPrefix: top.DeadLetterSubjectPrefix(), Topology: top,
		LeaderLocks: []status.LeaderLock{
			{Role: "scrub scheduler", Key: leader.KeyScrubScheduler}, {Role: "reaper", Key: leader.KeyReaper},
			{Role: "events relay", Key: leader.KeyRelay}, {Role: "staging janitor", Key: leader.KeyStagingJanitor},
		},
	}
	if role == "" {
		for _, f := range top.Consumers() {
			src.Consumers = append(src.Consumers, f.Durable)
		}
		for _, f := range top.EventConsumers() {
			src.EventConsumers = append(src.EventConsumers, f.Durable)
		}
		return src
	}
	r, _ := top.Role(role)
	src.DeadLetters = ""
	for _, it := range r.Needs {
		switch {
		case it.Kind == bus.KindConsumer && it.Stream == top.CommandsStream:
			src.Consumers = append(src.Consumers, it.Name)
		case it.Kind == bus.KindConsumer && it.Stream == top.EventsStream:
			src.EventConsumers = append(src.EventConsumers, it.Name)
		case it.Kind == bus.KindStream && it.Name == top.DeadLetterStream:
			src.DeadLetters = top.DeadLetterStream
		}
	}
	return src
}
