package verifier

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"lukechampine.com/blake3"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
)

// SchedulerConfig configures a [Scheduler]. Zero values take the defaults
// filled in by withDefaults, the one place where defaults live.
type SchedulerConfig struct {
	// Interval is the scrub interval: an object is due when it was never
	// verified or its last verification is older than this, and it is
	// queued at most once per Interval. Default 7 days.
	Interval time.Duration
	// Tick is the pause between two scrub passes. Default 1 minute.
	Tick time.Duration
	// TickJitter is the largest random time added to each Tick, so that
	// schedulers of many deployments do not pulse together. Default
	// Tick/10.
	TickJitter time.Duration
	// BatchSize is how many due objects one batch queues; a pass runs
	// batches until one comes back short. Default 500.
	BatchSize int
	// BatchJitter is the largest random pause between two batches of a
	// pass, which spreads the load on PostgreSQL and NATS. Default 100 ms.
	BatchJitter time.Duration
	// Subject is the subject verify requests are published on. Default
	// bus.DefaultTopology().Subject(bus.CmdVerify).
	Subject string
	// Now is the clock. Default time.Now; tests move it forward instead of
	// sleeping.
	Now func() time.Time
	// Logger receives the scheduler's log lines. Default: discard.
	Logger *zerolog.Logger
}

func (c SchedulerConfig) withDefaults() SchedulerConfig {
	if c.Interval <= 0 {
		c.Interval = 7 * 24 * time.Hour
	}
	if c.Tick <= 0 {
		c.Tick = time.Minute
	}
	if c.TickJitter <= 0 {
		c.TickJitter = c.Tick / 10
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.BatchJitter <= 0 {
		c.BatchJitter = 100 * time.Millisecond
	}
	if c.Subject == "" {
		c.Subject = bus.DefaultTopology().Subject(bus.CmdVerify)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		nop := zerolog.Nop()
		c.Logger = &nop
	}
	return c
}

// Scheduler queues scrub requests for objects that are due. Run exactly
// one active instance per database (leader.Singleton with
// leader.KeyScrubScheduler); a second one would only publish duplicates
// that JetStream and the workers drop.
type Scheduler struct {
	pool   *pgxpool.Pool // scrub_queue
	due    dueFinder
	pub    *bus.Publisher // fails at once when the user may not publish
	codec  *events.Codec
	cfg    SchedulerConfig
	logger zerolog.Logger
}

// dueFinder is what the scheduler reads of the projections.
type dueFinder interface {
	DueForScrub(ctx context.Context, cutoff time.Time, limit int) ([]catalog.Due, error)
}

var _ dueFinder = (*catalog.Catalog)(nil)

// NewScheduler returns a scheduler that reads the catalog and scrub_queue
// in pool's database and publishes on js.
func NewScheduler(pool *pgxpool.Pool, js jetstream.JetStream, codec *events.Codec, cfg SchedulerConfig) *Scheduler {
	cfg = cfg.withDefaults()
	return &Scheduler{pool: pool, due: catalog.New(pool), pub: bus.NewPublisher(js), codec: codec, cfg: cfg,
		logger: cfg.Logger.With().Str("service", "scrub-scheduler").Logger()}
}

// Run runs a pass at once and then one every Tick (plus jitter) until ctx
// is done; it returns nil then. A failed pass is logged and retried at the
// next tick.
func (s *Scheduler) Run(ctx context.Context) error {
	s.logger.Info().Dur("interval", s.cfg.Interval).Dur("tick", s.cfg.Tick).Int("batch_size", s.cfg.BatchSize).Msg("scrub scheduler running")
	for {
		n, err := s.RunOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			s.logger.Error().Err(err).Int("queued", n).Msg("scrub pass failed; retrying at the next tick")
		case n > 0:
			s.logger.Info().Int("queued", n).Msg("scrub pass queued verify requests")
		}
		if !sleepCtx(ctx, s.cfg.Tick+jitter(s.cfg.TickJitter)) {
			return nil
		}
	}
}

// RunOnce runs one pass: batches of at most BatchSize due objects,
// never-verified first then the longest unverified, until a batch comes
// back short. It returns how many requests it published.
func (s *Scheduler) RunOnce(ctx context.Context) (int, error) {
	total := 0
	for {
		n, err := s.batch(ctx)
		total += n
		if err != nil || n < s.cfg.BatchSize {
			return total, err
		}
		if !sleepCtx(ctx, jitter(s.cfg.BatchJitter)) {
			return total, ctx.Err()
		}
	}
}

func (s *Scheduler) batch(ctx context.Context) (int, error) {
	now := s.cfg.Now()
	cutoff := now.Add(-s.cfg.Interval)
	batch, err := s.due.DueForScrub(ctx, cutoff, s.cfg.BatchSize)
	if err != nil {
		return 0, fmt.Errorf("scrub: %w", err)
	}

	var addrs, backends, ids []string
	var pubErr error
	for _, d := range batch {
		id, err := s.publish(ctx, d, now)
		if err != nil {
			pubErr = err
			break
		}
		addrs, backends, ids = append(addrs, d.Address.String()), append(backends, d.Backend), append(ids, id)
	}
	if len(addrs) > 0 {
		// Record even a partial batch: what was published is queued.
		_, err := s.pool.Exec(ctx, `
			INSERT INTO scrub_queue (content_address, backend_id, queued_at, request_id)
			SELECT a, b, $3, r FROM unnest($1::text[], $2::text[], $4::text[]) AS t(a, b, r)
			ON CONFLICT (content_address, backend_id)
			DO UPDATE SET queued_at = EXCLUDED.queued_at, request_id = EXCLUDED.request_id`,
			addrs, backends, now, ids)
		if err != nil {
			return 0, errors.Join(pubErr, fmt.Errorf("scrub: record queued requests: %w", err))
		}
	}
	if pubErr != nil {
		return len(addrs), pubErr
	}
	return len(batch), nil
}

func (s *Scheduler) publish(ctx context.Context, d catalog.Due, now time.Time) (string, error) {
	id := s.requestID(d, now)
	body, err := commands.EncodeVerify(s.codec, commands.Verify{V: commands.Version, RequestID: id, Address: d.Address, BackendID: d.Backend, Origin: commands.OriginScrub}, false)
	if err != nil {
		return "", err
	}
	if _, err := s.pub.PublishCommand(ctx, s.cfg.Subject, id, body, "", ""); err != nil {
		return "", fmt.Errorf("scrub: %w", err)
	}
	return id, nil
}

// requestID is the same for one location, one last verification and one
// interval-long window of time, so that a pass repeated after a crash (or
// by a second leader) publishes the same Nats-Msg-Id, which JetStream
// drops, and appends nothing twice (the id is the event's command id); and
// it changes in the next window, so that an object is re-read even while
// the projector lags.
func (s *Scheduler) requestID(d catalog.Due, now time.Time) string {
	last := "never"
	if d.LastVerifiedAt != nil {
		last = strconv.FormatInt(d.LastVerifiedAt.UnixNano(), 10)
	}
	window := strconv.FormatInt(now.UnixNano()/int64(s.cfg.Interval), 10)
	sum := blake3.Sum256([]byte(d.Address.String() + "\x00" + d.Backend + "\x00" + last + "\x00" + window))
	return "scrub-" + hex.EncodeToString(sum[:16])
}

func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return rand.N(max)
}

// sleepCtx waits d or until ctx is done; it reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
