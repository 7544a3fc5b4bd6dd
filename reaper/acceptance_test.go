package reaper_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/verifier"
)

// TestAcceptance is the "done when": a transient package ingested
// through the real pipeline next to a permanent-record package that shares
// one file; with the clock moved forward the reaper frees only the bytes
// nothing else references, and verifying every stored object afterwards
// (what `artifactstore verify --all` does: the projection's non-deleted
// locations, through the verifier workers) reports everything left as
// verified.
func TestAcceptance(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := natstest.Start(t)
	p := e.startPipeline(srv, "ingest")
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangGuard)
	defer cancel()

	shared := []byte("the release notes both packages carry")
	mustAddr := func(s string) digest.Address {
		a, err := digest.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	sharedAddr := mustAddr(p.put(t, "ci/run-7", "notes.txt", "transient", shared).Address)
	logAddr := mustAddr(p.put(t, "ci/run-7", "build.log", "transient", []byte("a transient build log")).Address)
	if a := mustAddr(p.put(t, "release/1.0", "notes.txt", "permanent-record", shared).Address); a != sharedAddr {
		t.Fatalf("the shared file got two addresses: %s %s", a, sharedAddr)
	}
	sbomAddr := mustAddr(p.put(t, "release/1.0", "sbom.json", "permanent-record", []byte(`{"sbom":true}`)).Address)

	r := e.reaper(nil) // default grace: 1 hour
	// Nothing is due before a week has passed.
	e.clock.Advance(6 * day)
	if rep := e.runOnce(r); rep.Expired+rep.Marked+rep.Deleted != 0 {
		t.Fatalf("pass after 6 days = %+v; want nothing", rep)
	}
	e.clock.Advance(2 * day)
	rep := e.runOnce(r)
	if rep.Expired != 1 || rep.Deleted != 0 {
		t.Fatalf("pass after 8 days = %+v; want ci/run-7 expired and nothing deleted within the grace period", rep)
	}
	e.clock.Advance(2 * time.Hour)
	var deleted int
	var freed int64
	for range 3 { // converge (a pass marks what the previous one adopted)
		rep := e.runOnce(r)
		deleted += rep.Deleted
		freed += rep.BytesFreed
		e.clock.Advance(2 * time.Hour)
	}
	if deleted != 1 || freed != int64(len("a transient build log")) {
		t.Fatalf("deleted %d objects, %d bytes; want the build log only", deleted, freed)
	}
	if e.exists(logAddr) {
		t.Fatal("the transient build log's bytes are still there")
	}
	for _, a := range []digest.Address{sharedAddr, sbomAddr} {
		if !e.exists(a) {
			t.Fatalf("%s, referenced by the permanent record, was deleted", a)
		}
	}

	// verify --all: project, then verify every non-deleted location
	// through a verifier worker.
	pr := projector.New(e.pool, e.log, e.codec, projector.Config{})
	if _, err := pr.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	targets, err := verifier.FindTargets(ctx, e.pool, verifier.Selector{All: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 2 {
		t.Fatalf("verify --all finds %d objects (%+v); want the 2 the permanent record keeps", len(targets), targets)
	}
	nc := srv.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	w := verifier.NewWorker(e.dp, e.log, e.pool, e.codec, nc, verifier.WorkerConfig{
		Logger:    func() *zerolog.Logger { l := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel); return &l }(),
		Consumer:  bus.ConsumerOptions{FetchWait: 200 * time.Millisecond},
		JetStream: js, Topology: p.topo,
	})
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), hangGuard)
		defer c()
		_ = w.Stop(sctx)
	}()
	req, err := bus.NewRequester(nc, js)
	if err != nil {
		t.Fatal(err)
	}
	defer req.Close()
	for _, res := range verifier.RequestAll(ctx, req, e.codec, p.topo.Subject(bus.CmdVerify), targets, 4) {
		if res.Failed() {
			t.Fatalf("verify %s: %+v %v", res.Target.Address, res.Reply, res.Err)
		}
	}
	e.checkLiveBytes(ctx)
}
