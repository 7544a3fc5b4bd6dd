package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
)

// TestPublisherFailsAtOnceWhenDenied publishes a command as a user without
// the publish grant on its subject: the server refuses with an
// asynchronous error only, and the Publisher must fail on it at once,
// naming the subject and where the grants are listed, instead of waiting
// for a PubAck that never comes (the context's deadline is the hang guard:
// minutes). A granted subject still publishes.
func TestPublisherFailsAtOnceWhenDenied(t *testing.T) {
	t.Parallel()
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	verify := top.Subject(bus.CmdVerify)
	ns := natstest.StartDenying(t, verify)
	ajs, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureTopology(t.Context(), ajs, top); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(ns.ConnectAs(t, natstest.UserDenied))
	if err != nil {
		t.Fatal(err)
	}
	pub := bus.NewPublisher(js)
	ctx, cancel := context.WithTimeout(t.Context(), hang) // hang guard only
	defer cancel()
	_, err = pub.PublishCommand(ctx, verify, "denied-1", []byte("x"), "", "")
	if ctx.Err() != nil {
		t.Fatalf("the publish waited out its hang guard (%v) instead of failing on the refusal", err)
	}
	var denied *bus.PublishDeniedError
	if !errors.As(err, &denied) || denied.Subject != verify || !errors.Is(err, nats.ErrPermissionViolation) ||
		!strings.Contains(err.Error(), "publish grant on "+verify) || !strings.Contains(err.Error(), "artifactstore topology permissions") {
		t.Fatalf("publish without the grant on %s: %v", verify, err)
	}
	if ack, err := pub.PublishCommand(ctx, top.Subject(bus.CmdIngest), "granted-1", []byte("x"), "", ""); err != nil || ack.Stream != top.CommandsStream {
		t.Fatalf("publish with the grant: %v %+v", err, ack)
	}
}
