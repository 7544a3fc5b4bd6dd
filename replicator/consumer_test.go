package replicator_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/replicator"
	"github.com/artifactstore/artifactstore/verifier"
)

// TestReplicatorFollowsTheEventsStream runs the replicator as a process
// does: the relay publishes committed events to the events stream, the
// replicator's durable consumer copies a release object to the S3 mirror,
// and, once a scrub records the primary's copy corrupt, repairs it from
// the mirror.
func TestReplicatorFollowsTheEventsStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "s3", releasePolicy)
	srv := natstest.Start(t)
	nc := srv.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := bus.EnsureTopology(ctx, js, topo); err != nil {
		t.Fatal(err)
	}
	rel, err := relay.New(e.pool, e.log, e.codec, js, relay.Config{Stream: topo.EventsStream,
		Subject: func(t events.Type) string { return topo.EventsSubject(string(t)) }, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	relayDone := make(chan error, 1)
	go func() { relayDone <- rel.Run(ctx) }()
	rep, err := replicator.New(replicator.Config{
		Pool: e.pool, Log: e.log, DataPlane: e.dp, JetStream: js, Topology: topo,
		Policy: replicator.Policy{Backends: []string{e.primary.ID(), e.mirror.ID()}, Copies: releasePolicy},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), hangGuard)
		defer scancel()
		if err := rep.Stop(sctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		cancel()
		<-relayDone
	}()

	data := pattern(200<<10, 9)
	o := e.ingest("release/2.0", "release-evidence", data)
	e.ingest("ci/run-9", "raw-evidence", pattern(10<<10, 10))
	waitFor(t, "object.replicated", func() bool { return e.count(events.TypeObjectReplicated) == 1 })
	if !e.holds(e.mirror, o.Address) {
		t.Fatal("the mirror does not hold the replicated object")
	}
	e.project()

	e.damage(e.primary, o.Address, data)
	w := verifier.NewWorker(e.dp, e.log, e.pool, e.codec, nil, verifier.WorkerConfig{})
	if rep, err := w.Verify(ctx, commands.Verify{RequestID: "scrub-1", Address: o.Address, BackendID: "local", Origin: commands.OriginScrub}); err != nil || rep.Outcome != commands.OutcomeCorrupt {
		t.Fatalf("scrub: %+v, %v", rep, err)
	}
	waitFor(t, "object.repaired", func() bool { return e.count(events.TypeObjectRepaired) == 1 })
	if rep, err := w.Verify(ctx, commands.Verify{RequestID: "scrub-2", Address: o.Address, BackendID: "local", Origin: commands.OriginScrub}); err != nil || rep.Outcome != commands.OutcomeVerified {
		t.Fatalf("scrub after the repair: %+v, %v", rep, err)
	}
	if n := e.count(events.TypeObjectReplicated); n != 1 {
		t.Fatalf("%d object.replicated events, want 1 (the raw-evidence object gets none)", n)
	}
}

// waitFor waits until cond holds, bounded only by the hang guard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, hangGuard)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
