package bus_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
)

// TestReadStream reads every message of one subject, in order, across
// several pulls; it leaves out other subjects and what arrives during the
// read, returns the callback's error as is, and needs no consumer delete:
// its consumer is ephemeral.
func TestReadStream(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	ctx := t.Context()
	a, b := e.top.EventsSubject("a"), e.top.EventsSubject("b")
	const n = 1200 // more than one pull
	for i := range n {
		for _, subj := range []string{a, b} {
			if _, err := e.js.PublishAsync(subj, []byte(strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(hang):
		t.Fatal("publishes not acknowledged")
	}

	var got []int
	err := bus.ReadStream(ctx, e.js, e.top.EventsStream, a, func(m jetstream.Msg) error {
		if m.Subject() != a {
			t.Fatalf("read a message on %s, want only %s", m.Subject(), a)
		}
		if len(got) == 0 { // arrives during the read: not read
			if _, err := e.js.Publish(ctx, a, []byte("late")); err != nil {
				t.Fatal(err)
			}
		}
		v, err := strconv.Atoi(string(m.Data()))
		if err != nil {
			t.Fatalf("read %q", m.Data())
		}
		got = append(got, v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("read %d messages, want %d", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("message %d is %d: out of order", i, v)
		}
	}

	stop := errors.New("stop here")
	calls := 0
	err = bus.ReadStream(ctx, e.js, e.top.EventsStream, b, func(jetstream.Msg) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Fatalf("ReadStream with a failing callback = %v after %d calls; want the callback's error as is after 1", err, calls)
	}
	err = bus.ReadStream(ctx, e.js, e.top.EventsStream, e.top.EventsSubject("none"), func(jetstream.Msg) error { calls++; return nil })
	if err != nil || calls != 1 {
		t.Fatalf("ReadStream of a subject without messages = %v, %d calls", err, calls-1)
	}
	if err := bus.ReadStream(ctx, e.js, e.top.EventsStream+"_MISSING", a, func(jetstream.Msg) error { return nil }); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("ReadStream of a missing stream = %v, want ErrStreamNotFound", err)
	}
}
