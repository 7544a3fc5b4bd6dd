package verifier_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/verifier"
)

// clock is a test clock moved forward by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// queued reads every verify request in the commands stream, in order.
func queued(t *testing.T, e *env) []commands.Verify {
	t.Helper()
	ctx := context.Background()
	stream, err := e.js.Stream(ctx, e.topo.CommandsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []commands.Verify
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("get message %d: %v", seq, err)
		}
		r, err := commands.DecodeVerify(e.codec, m.Data, false, m.Header.Get(jetstream.MsgIDHeader))
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(jetstream.MsgIDHeader) != r.RequestID {
			t.Errorf("Nats-Msg-Id %q differs from the request id %q", m.Header.Get(jetstream.MsgIDHeader), r.RequestID)
		}
		out = append(out, r)
	}
	return out
}

func setVerified(t *testing.T, e *env, addr digest.Address, at time.Time) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), `UPDATE storage_locations
		SET last_verified_at = $2, verification_count = verification_count + 1
		WHERE content_address = $1`, addr.String(), at); err != nil {
		t.Fatal(err)
	}
}

// TestSchedulerQueuesOncePerInterval moves a test clock through two
// intervals: nothing is queued twice within one, even though no worker
// records a verification (storage_locations stays never-verified), and the
// oldest verifications come first.
func TestSchedulerQueuesOncePerInterval(t *testing.T) {
	t.Parallel()
	e := newEnv(t).withNATS()
	ctx := context.Background()
	const interval = 7 * 24 * time.Hour
	clk := &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}

	// Two never verified, one verified long ago, one verified recently,
	// one corrupt (not scrubbed).
	var never []digest.Address
	for i := range 2 {
		never = append(never, e.store(randomBytes(t, 100+i)))
	}
	old := e.store(randomBytes(t, 300))
	setVerified(t, e, old, clk.Now().Add(-30*24*time.Hour))
	recent := e.store(randomBytes(t, 400))
	setVerified(t, e, recent, clk.Now().Add(-time.Hour))
	corrupt := e.store(randomBytes(t, 500))
	if _, err := e.pool.Exec(ctx, `UPDATE storage_locations SET state = 'corrupt' WHERE content_address = $1`, corrupt.String()); err != nil {
		t.Fatal(err)
	}

	l := e.logger
	s := verifier.NewScheduler(e.pool, e.js, e.codec, verifier.SchedulerConfig{
		Interval: interval, BatchSize: 2, BatchJitter: time.Millisecond, // pauses between batches, not deadlines
		Subject: e.topo.Subject(bus.CmdVerify), Now: clk.Now, Logger: &l,
	})
	n, err := s.RunOnce(ctx)
	if err != nil || n != 3 {
		t.Fatalf("first pass queued %d (%v), want 3", n, err)
	}
	got := queued(t, e)
	if len(got) != 3 || got[2].Address != old {
		t.Fatalf("queued %v, want the two never-verified objects then %s", addrs(got), old)
	}
	for _, r := range got[:2] {
		if r.Address != never[0] && r.Address != never[1] {
			t.Fatalf("queued %s before the never-verified objects", r.Address)
		}
	}

	// Within the interval: nothing again, though nothing was verified.
	start := clk.Now()
	for _, step := range []time.Duration{time.Minute, time.Hour, interval - 2*time.Hour - time.Hour - time.Minute} {
		clk.Add(step)
		if n, err := s.RunOnce(ctx); err != nil || n != 0 {
			t.Fatalf("pass %s later queued %d (%v), want 0", step, n, err)
		}
	}
	// recent becomes due first (verified 1 h before the start).
	clk.Add(start.Add(interval - 30*time.Minute).Sub(clk.Now()))
	n, err = s.RunOnce(ctx)
	if err != nil || n != 1 {
		t.Fatalf("pass after the recent one's interval queued %d (%v), want 1", n, err)
	}
	if got := queued(t, e); got[len(got)-1].Address != recent {
		t.Fatalf("last queued %s, want %s", got[len(got)-1].Address, recent)
	}
	// One interval after the first pass, the three are due again, under new ids.
	clk.Add(start.Add(interval + time.Minute).Sub(clk.Now()))
	n, err = s.RunOnce(ctx)
	if err != nil || n != 3 {
		t.Fatalf("pass one interval later queued %d (%v), want 3", n, err)
	}
	all := queued(t, e)
	ids := map[string]bool{}
	for _, r := range all {
		if ids[r.RequestID] {
			t.Fatalf("request id %s queued twice", r.RequestID)
		}
		ids[r.RequestID] = true
		if r.Address == corrupt {
			t.Fatalf("corrupt object %s was queued for scrub", corrupt)
		}
	}
	if len(all) != 7 {
		t.Fatalf("%d requests in the stream, want 7", len(all))
	}
}

// TestSchedulerRunLoop runs the periodic loop until it queued the due
// objects, then stops it through its context.
func TestSchedulerRunLoop(t *testing.T) {
	t.Parallel()
	e := newEnv(t).withNATS()
	for i := range 5 {
		e.store(randomBytes(t, 10+i))
	}
	l := e.logger
	s := verifier.NewScheduler(e.pool, e.js, e.codec, verifier.SchedulerConfig{
		// A pass every 20 ms: the pause between passes, not a deadline.
		Tick: 20 * time.Millisecond, BatchSize: 2, Subject: e.topo.Subject(bus.CmdVerify), Logger: &l,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(hang)
	poll := time.NewTicker(10 * time.Millisecond) // only costs time
	defer poll.Stop()
	for len(queued(t, e)) < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the loop did not queue 5 objects within %s", hang)
		}
		<-poll.C
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(hang):
		t.Fatal("Run did not return after cancel")
	}
	if n := len(queued(t, e)); n != 5 {
		t.Fatalf("%d requests queued, want 5 (each once)", n)
	}
}

func addrs(rs []commands.Verify) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Address.String())
	}
	return out
}

// TestSchedulerFailsAtOnceWhenDenied runs a scrub pass as a user without
// the publish grant on the verify subject: the server refuses the publish
// with an asynchronous error only, and the pass must fail on it at once,
// naming the subject and the grant, instead of waiting for a PubAck that
// never comes (the context's deadline is only a hang guard); nothing is
// recorded as queued.
func TestSchedulerFailsAtOnceWhenDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.topo = bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	subject := e.topo.Subject(bus.CmdVerify)
	srv := natstest.StartDenying(t, subject)
	ajs, err := jetstream.New(srv.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hang) // hang guard only
	defer cancel()
	if err := bus.EnsureTopology(ctx, ajs, e.topo); err != nil {
		t.Fatal(err)
	}
	if e.js, err = jetstream.New(srv.ConnectAs(t, natstest.UserDenied)); err != nil {
		t.Fatal(err)
	}
	e.store(randomBytes(t, 100))
	l := e.logger
	s := verifier.NewScheduler(e.pool, e.js, e.codec, verifier.SchedulerConfig{
		Interval: 24 * time.Hour, Subject: subject, Logger: &l,
	})
	n, err := s.RunOnce(ctx)
	if ctx.Err() != nil {
		t.Fatalf("the publish waited out its hang guard (%v) instead of failing on the refusal", err)
	}
	var denied *bus.PublishDeniedError
	if !errors.As(err, &denied) || n != 0 || !strings.Contains(err.Error(), "publish grant on "+subject) {
		t.Fatalf("pass without the grant on %s: %d queued, %v", subject, n, err)
	}
	if got := queued(t, e); len(got) != 0 {
		t.Fatalf("queued %v though nothing was published", addrs(got))
	}
}
