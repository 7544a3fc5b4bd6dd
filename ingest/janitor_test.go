package ingest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/staging"
)

// TestJanitorPurgesAbandonedStagedUploads: the chunks of a killed put and
// a staged object whose command was handled are purged; while an ingest
// command waits for a worker, the staged objects that may be its are kept
// (its own and one whose command never came); once the queue is empty,
// the latter is purged too.
func TestJanitorPurgesAbandonedStagedUploads(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	obs, err := e.js.ObjectStore(ctx, e.topo.StagingBucket)
	if err != nil {
		t.Fatal(err)
	}
	// A file that was stored: its command is handled. Its staged object
	// is put back, as if the ingester's delete had failed.
	e.startIngesterUntil(t, func() {
		r := e.put(e.client, blob(producer.Put{CommandID: "handled-1", Package: "p", Path: "a"}, randomBytes(t, 200<<10)))
		if r.Status != "stored" {
			t.Fatalf("reply %+v", r)
		}
	})
	if _, err := obs.PutBytes(ctx, "handled-1", randomBytes(t, 1000)); err != nil {
		t.Fatal(err)
	}
	// A put killed while uploading: chunks, no object.
	for _, n := range []int{128 << 10, 128 << 10, 1000} {
		if _, err := e.js.Publish(ctx, "$O."+e.topo.StagingBucket+".C.killedput", randomBytes(t, n)); err != nil {
			t.Fatal(err)
		}
	}
	// A staged object whose producer died before sending its command.
	if _, err := obs.PutBytes(ctx, "never-sent", randomBytes(t, 2000)); err != nil {
		t.Fatal(err)
	}
	// A staged object whose command waits for a worker (none runs now).
	waiting, err := e.client.Put(ctx, blob(producer.Put{CommandID: "waiting-1", Package: "p", Path: "w"}, randomBytes(t, 300<<10)))
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Cancel()

	later := func() time.Time { return time.Now().Add(time.Hour) }
	found, err := staging.Abandoned(ctx, e.js, e.topo, staging.AbandonedQuery{MaxAge: 30 * time.Minute, Handled: ingest.HandledCommands(e.pool), Now: later})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, u := range found {
		got[u.Name+"/"+u.NUID] = true
		if u.Name == "" && (u.NUID != "killedput" || u.Chunks != 3 || u.Bytes != 2*128<<10+1000) {
			t.Errorf("unfinished upload %+v, want 3 chunks: 2 of 128 KiB and 1000 bytes", u)
		}
	}
	if len(found) != 2 {
		t.Fatalf("abandoned %v; want the killed put and handled-1", got)
	}
	j, err := ingest.NewJanitor(ingest.JanitorConfig{JetStream: e.js, Pool: e.pool, Topology: e.topo, MaxAge: 30 * time.Minute, Now: later,
		Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	n, b, err := j.Sweep(ctx)
	if err != nil || n != 2 || b != 2*128<<10+1000+1000 {
		t.Fatalf("sweep: %d uploads, %d bytes, %v", n, b, err)
	}
	names := func() map[string]bool {
		left, err := staging.Uploads(ctx, e.js, e.topo)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, u := range left {
			out[u.Name] = true
		}
		return out
	}
	if left := names(); len(left) != 2 || !left["waiting-1"] || !left["never-sent"] {
		t.Fatalf("left after the sweep: %v; want the uploads a waiting command may name", left)
	}
	// The waiting command is then handled normally, with its blob.
	e.startIngesterUntil(t, func() {
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		r, err := waiting.Wait(wctx)
		if err != nil || r.Status != "stored" {
			t.Fatalf("the kept upload's command: %+v, %v", r, err)
		}
	})
	e.waitSettled()
	if n, b, err = j.Sweep(ctx); err != nil || n != 1 || b != 2000 {
		t.Fatalf("sweep with an empty queue: %d uploads, %d bytes, %v; want never-sent", n, b, err)
	}
	if left := names(); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
	if _, err := obs.GetInfo(ctx, "never-sent"); err != jetstream.ErrObjectNotFound {
		t.Fatalf("never-sent after the sweep: %v", err)
	}
}

// startIngesterUntil runs an ingester while f runs.
func (e *env) startIngesterUntil(t *testing.T, f func()) {
	t.Helper()
	ing := e.startIngester(nil)
	f()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ing.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
