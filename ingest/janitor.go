package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/staging"
)

// JanitorConfig configures a [Janitor]. JetStream and Pool are required.
type JanitorConfig struct {
	// JetStream reaches the staging bucket and the commands stream.
	JetStream jetstream.JetStream
	// Pool reads which commands were handled (the commands table).
	Pool *pgxpool.Pool
	// Topology names the bucket, stream and consumer. Default
	// bus.DefaultTopology().
	Topology bus.Topology
	// MaxAge is how old a staged upload must be before it counts as
	// abandoned (see bus.AbandonedStaged). Default 30 minutes: far more
	// than a producer takes between staging and sending its command.
	MaxAge time.Duration
	// Interval is the pause between two sweeps. Default 10 minutes, so
	// that an abandoned upload is gone within MaxAge + Interval (40
	// minutes), well before the bucket's 24 h TTL.
	Interval time.Duration
	// Logger receives the janitor's log lines.
	Logger zerolog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Janitor purges abandoned staged uploads: the chunks of a put killed
// while uploading, and staged objects whose command was handled or will
// never come. It is a single-active loop: run it under the leader lock
// leader.KeyStagingJanitor (every ingest process is a candidate).
type Janitor struct {
	cfg JanitorConfig
	log zerolog.Logger
}

// NewJanitor returns a janitor; nothing runs until Run.
func NewJanitor(cfg JanitorConfig) (*Janitor, error) {
	if cfg.JetStream == nil || cfg.Pool == nil {
		return nil, errors.New("ingest: JanitorConfig needs JetStream and Pool")
	}
	if cfg.Topology.StagingBucket == "" {
		cfg.Topology = bus.DefaultTopology()
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = 30 * time.Minute
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Janitor{cfg: cfg, log: cfg.Logger.With().Str("service", "staging-janitor").Logger()}, nil
}

// Run sweeps at once and then every Interval until ctx is done. A failed
// sweep is logged and tried again at the next tick.
func (j *Janitor) Run(ctx context.Context) error {
	t := time.NewTicker(j.cfg.Interval)
	defer t.Stop()
	for {
		if n, b, err := j.Sweep(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			j.log.Warn().Err(err).Msg("staging sweep failed; trying again at the next tick")
		} else if n > 0 {
			j.log.Info().Int("uploads", n).Int64("bytes", b).Msg("purged abandoned staged uploads")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sweep purges the abandoned uploads found now and returns how many and
// how many bytes.
func (j *Janitor) Sweep(ctx context.Context) (int, int64, error) {
	ups, err := staging.Abandoned(ctx, j.cfg.JetStream, j.cfg.Topology, staging.AbandonedQuery{
		MaxAge: j.cfg.MaxAge, Handled: HandledCommands(j.cfg.Pool), Now: j.cfg.Now,
	})
	if err != nil {
		return 0, 0, err
	}
	n, err := staging.Purge(ctx, j.cfg.JetStream, j.cfg.Topology, ups)
	var bytes int64
	for _, u := range ups[:n] {
		bytes += u.Bytes
	}
	return n, bytes, err
}

// HandledCommands reports which of the given command ids are in the
// commands table (handled: stored or refused).
func HandledCommands(pool *pgxpool.Pool) func(ctx context.Context, ids []string) (map[string]bool, error) {
	return func(ctx context.Context, ids []string) (map[string]bool, error) {
		rows, err := pool.Query(ctx, `SELECT command_id FROM commands WHERE command_id = ANY($1)`, ids)
		if err != nil {
			return nil, fmt.Errorf("ingest: look up handled commands: %w", err)
		}
		defer rows.Close()
		out := map[string]bool{}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return nil, fmt.Errorf("ingest: look up handled commands: %w", err)
			}
			out[id] = true
		}
		return out, rows.Err()
	}
}
