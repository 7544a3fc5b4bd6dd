package ingest_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// quickReaskClient is a producer whose re-asks come soon; only for tests
// whose outcome does not depend on how soon.
func (e *env) quickReaskClient() *producer.Client {
	e.t.Helper()
	c, err := producer.New(context.Background(), producer.Config{NATS: e.nc, JetStream: e.js, Topology: e.topo, Codec: e.codec,
		Producer: "test", ReaskAfter: 20 * time.Millisecond, ReaskMax: 100 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// countingDataPlane counts the blobs the ingester starts to store.
type countingDataPlane struct {
	*dataplane.DataPlane
	ingests atomic.Int32
}

func (d *countingDataPlane) Ingest(ctx context.Context, r io.Reader, h dataplane.IngestHints) (dataplane.IngestResult, error) {
	d.ingests.Add(1)
	return d.DataPlane.Ingest(ctx, r, h)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hang)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", hang, what)
		}
		<-tick.C
	}
}

// TestReplyLostOnTheWayIsAskedAgain loses the ingester's first reply to a
// put (as a JetStream cluster does when the worker's node dies right after
// the reply) while the producer's connection stays up: the producer asks
// again after its quiet interval and gets the recorded outcome, which the
// ingester answers from the log without storing the blob again.
func TestReplyLostOnTheWayIsAskedAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var lost atomic.Int32
	dp := &countingDataPlane{DataPlane: e.dataPlane()}
	e.startIngester(func(c *ingest.Config) {
		c.DataPlane = dp
		ingest.SetLoseReply(c, func(id string, m bus.Message) bool {
			return id == "lost-1" && lost.CompareAndSwap(0, 1)
		})
	})
	r := e.put(e.quickReaskClient(), blob(producer.Put{CommandID: "lost-1", Package: "p", Path: "a.txt"}, []byte("hello\n")))
	if r.Status != commands.StatusStored || lost.Load() != 1 {
		t.Fatalf("reply %+v after %d lost replies", r, lost.Load())
	}
	if n := dp.ingests.Load(); n != 1 {
		t.Fatalf("the blob was stored %d times; the re-ask must be answered from the log", n)
	}
	e.waitSettled()
	e.checkOneSetPerCommand()
}

// TestReaskOfAnUploadInFlightIsDropped holds a staged upload in progress
// (the producer sent part of the blob and waits for the test) while the
// producer, which hears nothing, asks again: the ingester handling the
// command drops the re-ask instead of reading and storing the upload a
// second time, and the one handling answers with one set of events.
func TestReaskOfAnUploadInFlightIsDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dp := &countingDataPlane{DataPlane: e.dataPlane()}
	var dropped atomic.Int32
	ticks := make(chan time.Time) // the idle rule never fires
	e.startIngester(func(c *ingest.Config) {
		c.DataPlane = dp
		ingest.SetUploadTicks(c, ticks)
		c.Consumer.OnReaskDropped = func(bus.Message) { dropped.Add(1) }
	})
	client := e.quickReaskClient()
	const id = "inflight-1"
	data := randomBytes(t, 3<<20)
	sp := startStreamPut(client, producer.Put{CommandID: id, Package: "p", Path: "big.bin"}, int64(len(data)))
	if _, err := sp.body.Write(data[:1<<20]); err != nil {
		t.Fatal(err)
	}
	// The upload stalls; re-asks come. Without the drop, a re-ask starts
	// a second store of the upload.
	waitFor(t, "no re-ask reached the ingester", func() bool { return dropped.Load() > 0 || dp.ingests.Load() > 1 })
	r := sp.finish(t, data[1<<20:])
	if r.Status != commands.StatusStored || r.Size != int64(len(data)) {
		t.Fatalf("reply %+v", r)
	}
	if n := dp.ingests.Load(); n != 1 {
		t.Fatalf("the upload was read and stored %d times while in flight; a re-ask of it must be dropped", n)
	}
	e.waitSettled()
	e.checkOneSetPerCommand()
	var stored int
	for _, ev := range e.eventsOf(id) {
		if ev.Type == events.TypeObjectStored {
			stored++
		}
	}
	if stored != 1 {
		t.Fatalf("events %v, want one object.stored", types(e.eventsOf(id)))
	}
}
