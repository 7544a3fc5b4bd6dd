package status

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

// TestReplicateBacklog shows the backlog of the replicator's consumer of
// the events stream beside the commands consumers, in the report, its text
// and JSON and the metrics; without the consumer or its stream (no
// replicator deployed) it says so, and the pipeline stays healthy.
func TestReplicateBacklog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	if err := bus.EnsureTopology(ctx, js, top); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"e1", "e2", "e3", "e4"} {
		if _, err := js.Publish(ctx, top.SubjectRoot+".events.package.sealed", []byte(id)); err != nil {
			t.Fatal(err)
		}
	}
	// The replicator took one event and has not acknowledged it yet: 3
	// pending, 1 in flight.
	cons, err := js.Consumer(ctx, top.EventsStream, top.ReplicateConsumer)
	if err != nil {
		t.Fatal(err)
	}
	fetchOne := func() jetstream.Msg {
		t.Helper()
		b, err := cons.Fetch(1)
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			return m
		}
		t.Fatalf("no event fetched: %v", b.Error())
		return nil
	}
	fetchOne()

	src := Sources{
		Pool: pool, JS: js, CommandsStream: top.CommandsStream, Consumers: []string{top.IngestConsumer},
		EventsStream: top.EventsStream, EventConsumers: []string{top.ReplicateConsumer},
		Projector: "projector", Relay: "events",
	}
	r, err := Gather(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	want := Consumer{Name: top.ReplicateConsumer, Stream: top.EventsStream, Kind: "events", Pending: 3, AckPending: 1}
	if len(r.Consumers) != 2 || r.Consumers[1] != want {
		t.Fatalf("consumers %+v, want the ingest consumer then %+v", r.Consumers, want)
	}
	if !r.Healthy {
		t.Fatalf("problems %v", r.Problems)
	}
	var out bytes.Buffer
	if err := Render(&out, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "replicate (events)  3") {
		t.Errorf("rendered status lacks the replicate backlog:\n%s", out.String())
	}
	js2, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js2), `{"name":"replicate","stream":"`+top.EventsStream+`","kind":"events","pending":3,"ack_pending":1,"redelivered":0}`) {
		t.Errorf("JSON lacks the replicate backlog: %s", js2)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src))
	metrics := `
# HELP artifactstore_consumer_ack_pending_commands Commands (events, for the replicator's consumer) delivered to a worker and not yet acknowledged.
# TYPE artifactstore_consumer_ack_pending_commands gauge
artifactstore_consumer_ack_pending_commands{consumer="ingest"} 0
artifactstore_consumer_ack_pending_commands{consumer="replicate"} 1
# HELP artifactstore_consumer_pending_commands Commands (events, for the replicator's consumer) waiting in a durable consumer, not yet delivered.
# TYPE artifactstore_consumer_pending_commands gauge
artifactstore_consumer_pending_commands{consumer="ingest"} 0
artifactstore_consumer_pending_commands{consumer="replicate"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(metrics), "artifactstore_consumer_pending_commands", "artifactstore_consumer_ack_pending_commands"); err != nil {
		t.Fatal(err)
	}

	// No replicator deployed: first its consumer is missing, then the
	// whole events stream.
	absent := func(what string) {
		t.Helper()
		r, err := Gather(ctx, src)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Consumers) != 2 || !r.Consumers[1].Absent || r.Consumers[1].Error != "" {
			t.Fatalf("%s: consumers %+v, want replicate absent", what, r.Consumers)
		}
		if !r.Healthy || !strings.Contains(strings.Join(r.Notes, "\n"), "consumer replicate on stream "+top.EventsStream+": absent") {
			t.Fatalf("%s: healthy=%v problems=%v notes=%v; want healthy, with a note", what, r.Healthy, r.Problems, r.Notes)
		}
		var out bytes.Buffer
		if err := Render(&out, r); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "HEALTHY") || !strings.Contains(out.String(), "replicate (events)  -") {
			t.Errorf("%s: rendered:\n%s", what, out.String())
		}
		if n, err := testutil.GatherAndCount(reg, "artifactstore_consumer_pending_commands"); err != nil || n != 1 {
			t.Errorf("%s: %d pending gauges, %v; want the ingest consumer's only", what, n, err)
		}
	}
	if err := js.DeleteConsumer(ctx, top.EventsStream, top.ReplicateConsumer); err != nil {
		t.Fatal(err)
	}
	absent("consumer deleted")
	if err := js.DeleteStream(ctx, top.EventsStream); err != nil {
		t.Fatal(err)
	}
	absent("events stream deleted")
}
