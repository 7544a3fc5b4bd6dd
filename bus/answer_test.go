package bus_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
)

// answered is what a consumer's Answer hook heard.
type answered struct {
	m            bus.Message
	code, reason string
}

func answerTo(ch chan answered) func(context.Context, bus.Message, string, string) error {
	return func(_ context.Context, m bus.Message, code, reason string) error {
		ch <- answered{m, code, reason}
		return nil
	}
}

func waitAnswer(t *testing.T, ch chan answered) answered {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(60 * time.Second): // hang guard only
		t.Fatal("no answer")
		return answered{}
	}
}

func TestRetryBudgetRidesOutAMinuteOutage(t *testing.T) {
	t.Parallel()
	least, most := bus.RetryBudget(bus.DefaultTopology().MaxDeliver)
	if least < 90*time.Second || most > 3*time.Minute {
		t.Fatalf("retry budget %s..%s; want at least 90 s (a 60 s outage with margin) and at most 3 min", least, most)
	}
	for n := uint64(1); n <= 12; n++ {
		ceil := bus.BackoffCeiling(n)
		for range 50 {
			if d := bus.DefaultBackoff(n); d < ceil*3/4 || d > ceil {
				t.Fatalf("DefaultBackoff(%d) = %s outside [%s, %s]", n, d, ceil*3/4, ceil)
			}
		}
	}
	if bus.BackoffCeiling(1) != time.Second || bus.BackoffCeiling(3) != 4*time.Second || bus.BackoffCeiling(20) != 30*time.Second {
		t.Fatalf("ceilings %s %s %s", bus.BackoffCeiling(1), bus.BackoffCeiling(3), bus.BackoffCeiling(20))
	}
	if bus.CodeUnavailable != commands.CodeUnavailable || bus.CodeInternal != commands.CodeInternal {
		t.Fatal("the consume loop's answer codes differ from the commands package's reply codes")
	}
}

func TestExhaustedRetriesAreAnsweredUnavailable(t *testing.T) {
	t.Parallel()
	e := setup(t, func(top *bus.Topology) { top.MaxDeliver = 3 })
	ans := make(chan answered, 4)
	var calls atomic.Int32
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return bus.Unavailable(bus.DependencyPostgres, errors.New("dial tcp 127.0.0.1:5432: connection refused"))
	}, bus.ConsumerOptions{Answer: answerTo(ans), Backoff: func(uint64) time.Duration { return 10 * time.Millisecond }})
	e.publish(t, bus.CmdIngest, "pg-down", []byte("x"))
	a := waitAnswer(t, ans)
	if a.code != bus.CodeUnavailable || !strings.Contains(a.reason, "postgres unavailable") ||
		!strings.Contains(a.reason, "connection refused") || !strings.Contains(a.reason, "3 attempts") || a.m.CommandID != "pg-down" {
		t.Fatalf("answer %s: %s (command %s)", a.code, a.reason, a.m.CommandID)
	}
	dl := e.deadLetter(t, 1)
	if dl.Subject != e.top.DeadLetterSubjectPrefix()+"."+e.top.IngestConsumer+"."+bus.DeadLetterFailed ||
		dl.Header.Get(bus.HeaderDeadCode) != bus.CodeUnavailable || dl.Header.Get(bus.HeaderDeadKind) != bus.DeadLetterFailed {
		t.Fatalf("dead letter %s %v", dl.Subject, dl.Header)
	}
	eventually(t, "terminated command removed", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
	if n := calls.Load(); n != 3 {
		t.Fatalf("handled %d times, want the 3 attempts", n)
	}
}

func TestFailIsAnsweredAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	ans := make(chan answered, 4)
	var calls atomic.Int32
	e.consumer(t, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return bus.Fail(errors.New("backend local has no room for 10 bytes"), "insufficient_storage")
	}, bus.ConsumerOptions{Answer: answerTo(ans)})
	e.publish(t, bus.CmdIngest, "full", []byte("x"))
	if a := waitAnswer(t, ans); a.code != "insufficient_storage" || !strings.Contains(a.reason, "no room for 10 bytes") {
		t.Fatalf("answer %s: %s", a.code, a.reason)
	}
	if dl := e.deadLetter(t, 1); dl.Header.Get(bus.HeaderDeadKind) != bus.DeadLetterFailed || dl.Header.Get(bus.HeaderDeadDeliveries) != "1" {
		t.Fatalf("dead letter %v", dl.Header)
	}
	eventually(t, "terminated command removed", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
	if n := calls.Load(); n != 1 {
		t.Fatalf("handled %d times; a Fail is never retried", n)
	}
}

// deadWorker takes one delivery of the durable's next command and never
// acknowledges it, as a worker killed in the middle of its handler.
func (e *env) deadWorker(t *testing.T, durable string) jetstream.Msg {
	t.Helper()
	cons, err := e.js.Consumer(t.Context(), e.top.CommandsStream, durable)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		return m
	}
	t.Fatalf("no delivery for the dead worker: %v", batch.Error())
	return nil
}

func TestLostLastAttemptIsAnsweredOnTheSpareDelivery(t *testing.T) {
	t.Parallel()
	e := setup(t, func(top *bus.Topology) {
		top.MaxDeliver = 1
		top.AckWait = time.Second // the dead worker's delivery times out
	})
	e.publish(t, bus.CmdRetention, "lost", []byte("x"))
	if m := e.deadWorker(t, e.top.RetentionConsumer); m == nil {
		t.Fatal("no delivery")
	}
	ans := make(chan answered, 4)
	var calls atomic.Int32
	e.consumer(t, e.top.RetentionConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return nil
	}, bus.ConsumerOptions{Answer: answerTo(ans)})
	a := waitAnswer(t, ans)
	if a.code != bus.CodeUnavailable || !strings.Contains(a.reason, "did not finish") || a.m.NumDelivered != 2 {
		t.Fatalf("answer %s: %s (delivery %d)", a.code, a.reason, a.m.NumDelivered)
	}
	if dl := e.deadLetter(t, 1); dl.Header.Get(bus.HeaderDeadKind) != bus.DeadLetterFailed {
		t.Fatalf("dead letter %v", dl.Header)
	}
	eventually(t, "terminated command removed", func() bool { return e.streamMsgs(t, e.top.CommandsStream) == 0 })
	if n := calls.Load(); n != 0 {
		t.Fatalf("the spare delivery ran the handler %d times", n)
	}
}

func TestServerGivingUpIsAnsweredFromItsAdvisory(t *testing.T) {
	t.Parallel()
	e := setup(t, func(top *bus.Topology) {
		top.MaxDeliver = 1
		top.AckWait = time.Second
	})
	e.publish(t, bus.CmdVerify, "twice-lost", []byte("x"))
	e.deadWorker(t, e.top.VerifyConsumer) // the last attempt
	e.deadWorker(t, e.top.VerifyConsumer) // the spare delivery
	ans := make(chan answered, 4)
	var calls atomic.Int32
	// Its pulls make the server notice that the command is out of
	// deliveries and send the advisory.
	e.consumer(t, e.top.VerifyConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return nil
	}, bus.ConsumerOptions{Answer: answerTo(ans)})
	a := waitAnswer(t, ans)
	if a.code != bus.CodeUnavailable || !strings.Contains(a.reason, "no delivery of the 2") || a.m.CommandID != "twice-lost" ||
		string(a.m.Data) != "x" || a.m.Subject != e.top.Subject(bus.CmdVerify) {
		t.Fatalf("answer %s: %s (%+v)", a.code, a.reason, a.m)
	}
	if dl := e.deadLetter(t, 1); dl.Header.Get(bus.HeaderDeadKind) != bus.DeadLetterFailed || dl.Header.Get(bus.HeaderDeadDeliveries) != "2" {
		t.Fatalf("dead letter %v", dl.Header)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("handler ran %d times", n)
	}
}

func TestRequesterAsksAgainAfterReconnect(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	worker := e.ns.Connect(t)
	var originals atomic.Int32
	e.consumer(t, e.top.VerifyConsumer, func(ctx context.Context, m bus.Message) error {
		if m.CommandID != "" {
			originals.Add(1)
			return nil // handled, but its reply is lost
		}
		return bus.Reply(worker, m.ReplyTo, []byte("recorded outcome"), "text/plain")
	}, bus.ConsumerOptions{})
	// No periodic re-ask: only the reconnect's.
	r, err := bus.NewRequester(e.nc, e.js, bus.ReaskAfter(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := r.Send(t.Context(), e.top.Subject(bus.CmdVerify), "lost-reply", []byte("x"), "")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "original handled", func() bool { return originals.Load() == 1 })
	e.ns.Restart(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second) // hang guard
	defer cancel()
	m, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("no reply after the reconnect: %v", err)
	}
	if string(m.Data) != "recorded outcome" {
		t.Fatalf("reply %q", m.Data)
	}
	// The requester counts a re-ask once JetStream acknowledged its
	// publish, which may come after the worker's reply to it.
	eventually(t, "one re-ask counted", func() bool { return r.Reasked() == 1 })
}

// TestRequesterAsksAgainWhenTheReplyIsLost loses the worker's first reply
// while the requester's connection stays up (as a JetStream cluster does
// when the worker's node dies right after the worker replied): the
// requester must ask again after its quiet interval, without Nats-Msg-Id
// and naming the command in Artifactstore-Reask, and get the recorded
// outcome. The interval is short, but the outcome does not depend on it:
// the wait has a minutes-long hang guard only.
func TestRequesterAsksAgainWhenTheReplyIsLost(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	worker := e.ns.Connect(t)
	var originals, reasks atomic.Int32
	e.consumer(t, e.top.VerifyConsumer, func(ctx context.Context, m bus.Message) error {
		if m.Reask == "" {
			originals.Add(1)
			return nil // handled, but its reply is lost on the way
		}
		if m.Reask != "lost-on-the-way" || m.CommandID != "" {
			return bus.Reject(errors.New("re-ask without its header, or with a Nats-Msg-Id"), "bad_reask")
		}
		reasks.Add(1)
		return bus.Reply(worker, m.ReplyTo, []byte("recorded outcome"), "text/plain")
	}, bus.ConsumerOptions{})
	r, err := bus.NewRequester(e.nc, e.js, bus.ReaskAfter(20*time.Millisecond, 80*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := r.Send(t.Context(), e.top.Subject(bus.CmdVerify), "lost-on-the-way", []byte("x"), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), hang) // hang guard
	defer cancel()
	m, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("no reply though the requester's connection never dropped: %v", err)
	}
	if string(m.Data) != "recorded outcome" || originals.Load() != 1 || reasks.Load() < 1 {
		t.Fatalf("reply %q; %d originals, %d re-asks handled", m.Data, originals.Load(), reasks.Load())
	}
	// Counted once JetStream acknowledged the publish, which may come
	// after the worker's reply to it.
	eventually(t, "a re-ask counted", func() bool { return r.Reasked() >= 1 })
}

// TestReaskOfACommandInFlightIsDropped holds the handling of a command
// while its requester, hearing nothing, asks again: the consumer
// acknowledges the re-ask without running the handler a second time (the
// handling in flight answers on the same reply subject), and the one reply
// reaches the requester once the handling ends.
func TestReaskOfACommandInFlightIsDropped(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	worker := e.ns.Connect(t)
	release := make(chan struct{})
	var calls, dropped atomic.Int32
	var done atomic.Bool
	e.consumer(t, e.top.VerifyConsumer, func(ctx context.Context, m bus.Message) error {
		if done.Load() {
			// A re-ask sent before the reply came but delivered after the
			// handling ended: answered from the record, as a worker does.
			return bus.Reply(worker, m.ReplyTo, []byte("done once"), "text/plain")
		}
		calls.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		done.Store(true)
		return bus.Reply(worker, m.ReplyTo, []byte("done once"), "text/plain")
	}, bus.ConsumerOptions{OnReaskDropped: func(m bus.Message) {
		if m.Reask == "long-one" {
			dropped.Add(1)
		}
	}})
	r, err := bus.NewRequester(e.nc, e.js, bus.ReaskAfter(20*time.Millisecond, 80*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := r.Send(t.Context(), e.top.Subject(bus.CmdVerify), "long-one", []byte("x"), "")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a re-ask dropped, or handled a second time", func() bool { return dropped.Load() > 0 || calls.Load() > 1 })
	close(release)
	ctx, cancel := context.WithTimeout(t.Context(), hang) // hang guard
	defer cancel()
	m, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != "done once" || calls.Load() != 1 {
		t.Fatalf("reply %q; the handler ran %d times, want once (re-asks of it in flight dropped)", m.Data, calls.Load())
	}
}
