// Package leader elects one active instance among processes that share a
// PostgreSQL database, with a session-level advisory lock.
//
// A candidate takes a dedicated connection out of the pool and tries
// pg_try_advisory_lock(key) on it. The one that gets the lock is the leader
// for as long as that connection lives: PostgreSQL releases a session lock
// when the session ends, so a leader that crashes, is partitioned away or has
// its backend terminated loses the lock without anybody's help. The others
// are standbys that try again every RetryInterval.
//
// The leader runs the work function with a context that is cancelled when
// leadership ends: when the caller's context is done, or when the lock
// connection stops answering (checked every CheckInterval). Work must return
// promptly once its context is done; until it returns the lock stays held.
//
// An advisory lock has no fencing: when a leader's session dies, the lock is
// free at once, but the old leader notices only at its next check (at most
// CheckInterval + QueryTimeout later). So a new leader waits TakeoverDelay,
// longer than that, between taking the lock and starting the work: as long
// as every instance runs with the same intervals, two instances never run
// the work at the same time. Work whose overlap would be harmful must still
// be idempotent (artifactstore's is, by command id).
//
// [Singleton] makes work a service (the lifecycle of internal/service):
// that is how every single-active role of artifactstore runs.
//
// Lock keys are one bigint space per database; the keys of artifactstore's
// single-active roles are the Key* constants below, so that they never
// collide. The one other advisory lock of the database, the transaction
// lock of the package state, is pkgstate.KeyPackageState; a test of
// pkgstate keeps it apart from these.
package leader

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/internal/service"
)

// Advisory lock keys of artifactstore's single-active roles. They are
// arbitrary distinct constants ("AS" then a role number) far from the keys
// golang-migrate derives from database names.
const (
	KeyProjector      int64 = 0x4153_0000_0000_0001
	KeyScrubScheduler int64 = 0x4153_0000_0000_0002
	KeyReaper         int64 = 0x4153_0000_0000_0003
	KeyRelay          int64 = 0x4153_0000_0000_0004
	// KeyStagingJanitor elects the ingest process that purges abandoned
	// staged uploads (ingest.Janitor).
	KeyStagingJanitor int64 = 0x4153_0000_0000_0005
	// KeyCheckpointer elects the checkpoint signer (checkpoint.Signer).
	KeyCheckpointer int64 = 0x4153_0000_0000_0006
)

// ProjectorKey is the lock key of the projector of name: KeyProjector for
// the projector of the live tables ("projector", projector.DefaultName),
// a key derived from the name for the others (tests and tools that keep
// their own checkpoint). status reads the leader of the projector with it.
func ProjectorKey(name string) int64 {
	if name == "projector" {
		return KeyProjector
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte("artifactstore.projector:" + name))
	return int64(h.Sum64() &^ (1 << 63))
}

// ErrLost is the cause of the work context's cancellation when the lock
// connection stopped answering: another instance may be the leader now.
var ErrLost = errors.New("leader: lost the advisory lock connection; another instance may now be the leader")

// ErrResigned is the cause of the work context's cancellation when the
// caller's context was done.
var ErrResigned = errors.New("leader: resigned because the context is done")

// Work is what the leader runs. It must return soon after ctx is done; its
// error ends Run.
type Work func(ctx context.Context) error

// Config configures [RunConfig]. The zero value of every field but Key
// means its default, filled in by withDefaults.
type Config struct {
	// Key is the advisory lock key; every instance of one role uses the
	// same key. Required (zero is refused to catch a missing key).
	Key int64
	// Name names the role in log lines, e.g. "scrub-scheduler". Default
	// "leader".
	Name string
	// RetryInterval is how long a standby waits between two attempts to
	// take the lock, and how long a candidate waits after a failed
	// connection. Default 1 second.
	RetryInterval time.Duration
	// CheckInterval is how often the leader checks that its lock
	// connection still answers. Default 1 second.
	CheckInterval time.Duration
	// QueryTimeout bounds each lock or check query. Default 2 seconds.
	QueryTimeout time.Duration
	// TakeoverDelay is how long a new leader holds the lock before it
	// starts the work, so that a previous leader whose session just died
	// has noticed and stopped. Default CheckInterval + QueryTimeout +
	// 500ms.
	TakeoverDelay time.Duration
	// Logger receives leadership changes and connection errors. Default:
	// discard.
	Logger *zerolog.Logger
	// OnChange, when set, is called with true when this instance became
	// the leader (before work starts) and with false after its work
	// returned and the lock was released. It must not block.
	OnChange func(leading bool)

	// afterTry, when set, is called after each attempt to take the lock,
	// with its outcome. Tests set it (export_test.go) to count a
	// standby's attempts instead of waiting for some of them to happen.
	afterTry func(held bool, err error)
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "leader"
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = time.Second
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = time.Second
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = 2 * time.Second
	}
	if c.TakeoverDelay <= 0 {
		c.TakeoverDelay = c.CheckInterval + c.QueryTimeout + 500*time.Millisecond
	}
	if c.Logger == nil {
		nop := zerolog.Nop()
		c.Logger = &nop
	}
	if c.OnChange == nil {
		c.OnChange = func(bool) {}
	}
	return c
}

// Run is [RunConfig] with the default intervals: it elects one instance per
// key among every caller sharing the database of pool and runs work there.
func Run(ctx context.Context, pool *pgxpool.Pool, key int64, logger zerolog.Logger, work Work) error {
	return RunConfig(ctx, pool, Config{Key: key, Logger: &logger}, work)
}

// RunConfig campaigns for leadership until ctx is done and runs work while
// leading. It returns nil when ctx is done, or work's error when work
// failed for a reason other than the end of leadership (the lock is
// released first, so a standby takes over). When work returns nil before
// ctx is done, Run releases the lock and returns nil as well. Losing the
// lock connection is not an error: work is cancelled with cause [ErrLost]
// and this instance becomes a standby again.
func RunConfig(ctx context.Context, pool *pgxpool.Pool, cfg Config, work Work) error {
	if cfg.Key == 0 {
		return errors.New("leader: Config.Key is zero; use one of the leader.Key* constants")
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With().Str("service", "leader").Str("role", cfg.Name).Int64("lock_key", cfg.Key).Logger()
	c := &candidate{cfg: cfg, pool: pool, log: log}
	defer c.closeConn()
	standing := false
	for {
		held, err := c.tryLock(ctx)
		if cfg.afterTry != nil {
			cfg.afterTry(held, err)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			log.Warn().Err(err).Dur("retry_in", cfg.RetryInterval).Msg("cannot try the advisory lock; retrying")
		case held:
			standing = false
			done, err := c.lead(ctx, work)
			if done {
				return err
			}
		case !standing:
			standing = true
			log.Info().Msg("standing by: another instance leads")
		}
		if !sleep(ctx, cfg.RetryInterval) {
			return nil
		}
	}
}

type candidate struct {
	cfg  Config
	pool *pgxpool.Pool
	log  zerolog.Logger
	conn *pgx.Conn // dedicated lock connection, taken out of the pool
}

// tryLock opens the dedicated connection when needed and tries the lock
// once. A connection that failed is closed, so the next try reconnects.
func (c *candidate) tryLock(ctx context.Context) (bool, error) {
	if c.conn == nil {
		pc, err := c.pool.Acquire(ctx)
		if err != nil {
			return false, fmt.Errorf("leader: acquire a connection for the lock: %w", err)
		}
		// Hijack: the session holds the lock, so it must never go back
		// into the pool where another user could inherit it.
		c.conn = pc.Hijack()
	}
	qctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
	defer cancel()
	var held bool
	if err := c.conn.QueryRow(qctx, "SELECT pg_try_advisory_lock($1)", c.cfg.Key).Scan(&held); err != nil {
		c.closeConn()
		return false, fmt.Errorf("leader: pg_try_advisory_lock(%d): %w", c.cfg.Key, err)
	}
	return held, nil
}

// lead runs work while the lock connection answers. done reports that Run
// must return err; otherwise leadership was lost and the candidate goes
// back to standby.
func (c *candidate) lead(ctx context.Context, work Work) (done bool, err error) {
	ticker := time.NewTicker(c.cfg.CheckInterval)
	defer ticker.Stop()
	c.log.Debug().Dur("takeover_delay", c.cfg.TakeoverDelay).Msg("took the lock; waiting before starting the work")
	if done, held := c.hold(ctx, ticker.C); !held {
		c.release()
		return done, nil
	}
	c.log.Info().Msg("became leader")
	c.cfg.OnChange(true)
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	result := make(chan error, 1)
	go func() { result <- work(wctx) }()

	lost := false
	var werr error
loop:
	for {
		select {
		case werr = <-result:
			break loop
		case <-ctx.Done():
			cancel(ErrResigned)
			werr = <-result
			break loop
		case <-ticker.C:
			if err := c.check(ctx); err != nil && ctx.Err() == nil {
				c.log.Error().Err(err).Msg("lock connection lost; stopping the work")
				lost = true
				cancel(ErrLost)
				werr = <-result
				break loop
			}
		}
	}
	c.release()
	c.cfg.OnChange(false)
	switch {
	case ctx.Err() != nil:
		c.log.Info().Msg("resigned leadership")
		return true, nil
	case lost:
		if werr != nil && !errors.Is(werr, context.Canceled) && !errors.Is(werr, ErrLost) {
			c.log.Warn().Err(werr).Msg("work ended with an error after the lock was lost")
		}
		return false, nil
	case werr != nil:
		c.log.Error().Err(werr).Msg("work failed; released leadership")
		return true, fmt.Errorf("leader %s: %w", c.cfg.Name, werr)
	default:
		c.log.Info().Msg("work finished; released leadership")
		return true, nil
	}
}

// hold keeps the lock for TakeoverDelay while checking its connection. held
// is false when ctx was done (done) or the connection failed.
func (c *candidate) hold(ctx context.Context, tick <-chan time.Time) (done, held bool) {
	timer := time.NewTimer(c.cfg.TakeoverDelay)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return false, true
		case <-ctx.Done():
			return true, false
		case <-tick:
			if err := c.check(ctx); err != nil {
				if ctx.Err() != nil {
					return true, false
				}
				c.log.Warn().Err(err).Msg("lock connection lost before the work started")
				return false, false
			}
		}
	}
}

// check verifies that the lock session still answers.
func (c *candidate) check(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, c.cfg.QueryTimeout)
	defer cancel()
	if _, err := c.conn.Exec(qctx, "SELECT 1"); err != nil {
		return fmt.Errorf("leader: ping lock connection: %w", err)
	}
	return nil
}

// release gives the lock up by ending its session: closing is the one way
// that also works when the connection is half-broken.
func (c *candidate) release() { c.closeConn() }

func (c *candidate) closeConn() {
	if c.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.QueryTimeout)
	defer cancel()
	_ = c.conn.Close(ctx)
	c.conn = nil
}

// sleep waits d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Singleton returns work as a service that runs only while this instance
// leads the role of cfg among every instance sharing the database of
// pool: Start campaigns in the background and returns at once; Stop
// resigns (the work's context is cancelled with [ErrResigned]) and waits
// for the work to return and the lock to be released. The loop ends on its
// own with the work's error ([service.Loop.Err]).
func Singleton(pool *pgxpool.Pool, cfg Config, work Work) *service.Loop {
	name := cfg.Name
	if name == "" {
		name = "leader"
	}
	return service.NewLoop(name, func(ctx context.Context) error { return RunConfig(ctx, pool, cfg, work) })
}
