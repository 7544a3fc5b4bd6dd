package bus_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
)

// TestRetryAcrossReconnectsRepeatsARequestLostInARestart restarts the
// server while a request waits for its answer: the request's context is
// cancelled with ErrConnectionLost at the drop, and the request is made
// again on the new connection and answered. Without it the request would
// wait for its answer until the hang guard.
func TestRetryAcrossReconnectsRepeatsARequestLostInARestart(t *testing.T) {
	t.Parallel()
	ns := natstest.StartEmbedded(t, nil)
	nc := ns.Connect(t)
	subject := natstest.Prefix(t) + ".svc"
	inFlight := make(chan struct{})
	var received atomic.Int32
	// The responder shares the requester's connection, so that it is
	// subscribed again before the repeated request reaches the server.
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if received.Add(1) == 1 {
			close(inFlight) // the first request is never answered
			return
		}
		_ = m.Respond([]byte("ok"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), hang) // hang guard only
	defer cancel()
	type result struct {
		reply string
		err   error
		calls int
		first error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.err = bus.RetryAcrossReconnects(ctx, nc, func(ctx context.Context) error {
			r.calls++
			m, err := nc.RequestWithContext(ctx, subject, nil)
			if r.calls == 1 {
				r.first = context.Cause(ctx)
			}
			if err != nil {
				return err
			}
			r.reply = string(m.Data)
			return nil
		})
		done <- r
	}()
	receive(t, inFlight, "the request did not reach the responder")
	ns.Restart(t)
	r := receive(t, done, "RetryAcrossReconnects did not return")
	if r.err != nil || r.reply != "ok" {
		t.Fatalf("after a restart: reply %q, error %v (%d calls)", r.reply, r.err, r.calls)
	}
	if r.calls != 2 || !errors.Is(r.first, bus.ErrConnectionLost) {
		t.Fatalf("%d calls, the first cut short by %v; want 2, the first by ErrConnectionLost", r.calls, r.first)
	}
}

// TestRetryAcrossReconnectsReturnsOtherFailures: a call that fails on a
// connection that stayed up is not repeated, and a closed connection ends
// the retries.
func TestRetryAcrossReconnectsReturnsOtherFailures(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	boom := errors.New("boom")
	calls := 0
	err := bus.RetryAcrossReconnects(t.Context(), nc, func(context.Context) error {
		calls++
		return boom
	})
	if !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("a failure on a live connection: %v after %d calls; want boom after 1", err, calls)
	}
	nc.Close()
	err = bus.RetryAcrossReconnects(t.Context(), nc, func(context.Context) error {
		t.Error("called on a closed connection")
		return nil
	})
	if !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("on a closed connection: %v; want nats.ErrConnectionClosed", err)
	}
}
