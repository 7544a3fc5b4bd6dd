package leader_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

const testKey int64 = 0x7e57_0000_0000_0001

// hang bounds every wait of these tests. It only stops a hung test.
const hang = time.Minute

// fastConfig retries and checks often, so that the tests run quickly; the
// intervals are no deadlines. QueryTimeout is generous, so that a slow
// query on a busy machine never passes for a lost connection (the tests
// end sessions with pg_terminate_backend, which fails the next query at
// once). TakeoverDelay is the margin by which the old leader must notice a
// terminated session before a new one starts (one CheckInterval and a
// query that fails at once): a margin of seconds, not milliseconds.
func fastConfig(t *testing.T, name string, changes chan<- bool) leader.Config {
	log := zerolog.New(zerolog.NewTestWriter(t)).With().Str("instance", name).Logger()
	return leader.Config{
		Key:           testKey,
		Name:          name,
		RetryInterval: 20 * time.Millisecond,
		CheckInterval: 20 * time.Millisecond,
		QueryTimeout:  30 * time.Second,
		TakeoverDelay: 3 * time.Second,
		Logger:        &log,
		OnChange:      func(b bool) { changes <- b },
	}
}

// lockHolder returns the backend pid that holds the advisory lock in the
// pool's database, or 0.
func lockHolder(t *testing.T, pool *pgxpool.Pool) int32 {
	t.Helper()
	var pid int32
	err := pool.QueryRow(context.Background(), `
		SELECT coalesce(max(pid), 0) FROM pg_locks
		WHERE locktype = 'advisory' AND granted
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND objsubid = 1
		  AND ((classid::bigint << 32) | objid::bigint) = $1`, testKey).Scan(&pid)
	if err != nil {
		t.Fatalf("query pg_locks: %v", err)
	}
	return pid
}

func waitChange(t *testing.T, ch <-chan bool, want bool) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Fatalf("leadership change = %v, want %v", got, want)
		}
	case <-time.After(hang):
		t.Fatalf("no leadership change to %v within %s", want, hang)
	}
}

// TestOneLeaderAndFailover runs two candidates: exactly one runs the work;
// when its lock session is terminated, its work is cancelled with ErrLost and
// the other one takes over.
func TestOneLeaderAndFailover(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var running atomic.Int32
	var overlap atomic.Bool
	causes := make(chan error, 4)
	work := func(ctx context.Context) error {
		if running.Add(1) > 1 {
			overlap.Store(true)
		}
		<-ctx.Done()
		running.Add(-1)
		causes <- context.Cause(ctx)
		return ctx.Err()
	}
	chA, chB := make(chan bool, 8), make(chan bool, 8)
	done := make(chan error, 2)
	go func() { done <- leader.RunConfig(ctx, pool, fastConfig(t, "a", chA), work) }()
	waitChange(t, chA, true)
	// b's attempts are counted: the first few, made while a surely leads,
	// must all fail.
	const standbyTries = 5
	var tries atomic.Int32
	refused := make(chan struct{})
	cfgB := fastConfig(t, "b", chB)
	leader.SetAfterTry(&cfgB, func(held bool, err error) {
		if err == nil && !held && tries.Add(1) == standbyTries {
			close(refused)
		}
	})
	go func() { done <- leader.RunConfig(ctx, pool, cfgB, work) }()

	select {
	case <-refused:
	case <-chB:
		t.Fatal("b became leader while a held the lock")
	case <-time.After(hang):
		t.Fatalf("b did not try the lock %d times within %s", standbyTries, hang)
	}
	select {
	case <-chB:
		t.Fatalf("b became leader while a held the lock (after %d refused attempts)", standbyTries)
	default:
	}

	pid := lockHolder(t, pool)
	if pid == 0 {
		t.Fatal("nobody holds the advisory lock while a leads")
	}
	if _, err := pool.Exec(context.Background(), "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatalf("terminate the leader's session: %v", err)
	}
	waitChange(t, chA, false)
	select {
	case c := <-causes:
		if !errors.Is(c, leader.ErrLost) {
			t.Fatalf("work cancelled with %v, want ErrLost", c)
		}
	case <-time.After(hang):
		t.Fatal("a's work was not cancelled")
	}
	// Either candidate may win the next election; exactly one must.
	select {
	case v := <-chB:
		if !v {
			t.Fatal("b reported losing leadership it never had")
		}
	case v := <-chA:
		if !v {
			t.Fatal("a reported losing leadership twice")
		}
	case <-time.After(hang):
		t.Fatal("nobody took over after the leader's session ended")
	}
	if overlap.Load() {
		t.Fatal("two instances ran the work at the same time")
	}
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	}
	if pid := lockHolder(t, pool); pid != 0 {
		t.Fatalf("lock still held by pid %d after every candidate stopped", pid)
	}
}

// TestWorkErrorReleases checks that a failing work ends Run with its error
// and releases the lock for a standby.
func TestWorkErrorReleases(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	boom := errors.New("boom")
	ch := make(chan bool, 4)
	err := leader.RunConfig(ctx, pool, fastConfig(t, "a", ch), func(context.Context) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want boom", err)
	}
	if pid := lockHolder(t, pool); pid != 0 {
		t.Fatalf("lock still held by pid %d after the work failed", pid)
	}
	// Another candidate gets it at once.
	ch2 := make(chan bool, 4)
	err = leader.RunConfig(ctx, pool, fastConfig(t, "b", ch2), func(context.Context) error { return nil })
	if err != nil {
		t.Fatalf("second Run = %v", err)
	}
	waitChange(t, ch2, true)
}

func TestZeroKeyRefused(t *testing.T) {
	t.Parallel()
	err := leader.RunConfig(context.Background(), nil, leader.Config{}, func(context.Context) error { return nil })
	if err == nil {
		t.Fatal("Run with a zero key succeeded")
	}
}

// TestSingletonHandsOverOnStop: two singletons of one role; the one that
// leads runs the work; stopping it resigns (its work is cancelled with
// ErrResigned, the lock released when Stop returns) and the other takes
// over. A singleton stopped before Start never campaigns. (The work's
// context is derived from the loop's, so its cause is the loop's
// cancellation or ErrResigned, whichever the work sees first.)
func TestSingletonHandsOverOnStop(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	causes := make(chan error, 2)
	work := func(ctx context.Context) error {
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil
	}
	chA, chB := make(chan bool, 8), make(chan bool, 8)
	a := leader.Singleton(pool, fastConfig(t, "a", chA), work)
	b := leader.Singleton(pool, fastConfig(t, "b", chB), work)
	ctx := context.Background()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitChange(t, chA, true)
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-causes:
		if !errors.Is(c, leader.ErrResigned) && !errors.Is(c, context.Canceled) {
			t.Fatalf("a's work cancelled with %v, want a resignation", c)
		}
	default:
		t.Fatal("Stop returned before a's work did")
	}
	waitChange(t, chA, false)
	waitChange(t, chB, true)
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Err(); err != nil {
		t.Fatalf("a ended with %v", err)
	}

	never := leader.Singleton(pool, fastConfig(t, "never", make(chan bool, 1)), func(context.Context) error {
		t.Error("a singleton stopped before Start ran its work")
		return nil
	})
	if err := never.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := never.Start(ctx); err == nil {
		t.Fatal("Start after Stop succeeded")
	}
}
