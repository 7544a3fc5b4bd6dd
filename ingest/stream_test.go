package ingest_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/staging"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// watchBackend is the local backend with an injected point: reached is
// closed once at least at bytes were written to the objects it creates.
type watchBackend struct {
	storage.Backend
	at      int64
	written atomic.Int64
	once    sync.Once
	reached chan struct{}
}

func (b *watchBackend) Create(ctx context.Context, opts storage.CreateOptions) (storage.ObjectWriter, error) {
	w, err := b.Backend.Create(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &watchWriter{ObjectWriter: w, b: b}, nil
}

type watchWriter struct {
	storage.ObjectWriter
	b *watchBackend
}

func (w *watchWriter) Write(p []byte) (int, error) {
	n, err := w.ObjectWriter.Write(p)
	if w.b.written.Add(int64(n)) >= w.b.at {
		w.b.once.Do(func() { close(w.b.reached) })
	}
	return n, err
}

// watchedDataPlane is a data plane over the env's object root whose
// backend closes the returned watch's reached at bytes written.
func (e *env) watchedDataPlane(at int64) (*dataplane.DataPlane, *watchBackend) {
	e.t.Helper()
	b, err := local.Open(e.root)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	wb := &watchBackend{Backend: b, at: at, reached: make(chan struct{})}
	reg := storage.NewRegistry()
	if err := reg.Register(wb); err != nil {
		e.t.Fatal(err)
	}
	dp, err := dataplane.New(reg, b.ID())
	if err != nil {
		e.t.Fatal(err)
	}
	return dp, wb
}

// streamPut is a put whose body the test writes: the upload is in
// progress until the test closes the body.
type streamPut struct {
	body *io.PipeWriter
	done chan struct{}
	pend *producer.Pending
	err  error
}

func startStreamPut(c *producer.Client, p producer.Put, size int64) *streamPut {
	pr, pw := io.Pipe()
	p.Body, p.Size = pr, size
	sp := &streamPut{body: pw, done: make(chan struct{})}
	go func() {
		defer close(sp.done)
		ctx, cancel := context.WithTimeout(context.Background(), hang)
		defer cancel()
		sp.pend, sp.err = c.Put(ctx, p)
	}()
	return sp
}

// finish writes the rest of the body, closes it and waits for the reply.
func (sp *streamPut) finish(t *testing.T, rest []byte) commands.Reply {
	t.Helper()
	if _, err := sp.body.Write(rest); err != nil {
		t.Fatal(err)
	}
	_ = sp.body.Close()
	<-sp.done
	if sp.err != nil {
		t.Fatalf("put: %v", sp.err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	r, err := sp.pend.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func waitReached(t *testing.T, wb *watchBackend, what string) {
	t.Helper()
	select {
	case <-wb.reached:
	case <-time.After(hang):
		t.Fatalf("the ingester wrote %d bytes, not %d, while the upload was in progress: %s", wb.written.Load(), wb.at, what)
	}
}

// chunkSubjects returns the chunk subjects of the staging bucket that hold
// messages.
func (e *env) chunkSubjects() map[string]uint64 {
	e.t.Helper()
	st, err := e.js.Stream(context.Background(), "OBJ_"+e.topo.StagingBucket)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter("$O."+e.topo.StagingBucket+".C.>"))
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Subjects
}

// tempFiles lists the local backend's temp files.
func (e *env) tempFiles() []string {
	e.t.Helper()
	ents, err := os.ReadDir(filepath.Join(e.root, ".tmp"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		e.t.Fatal(err)
	}
	var out []string
	for _, d := range ents {
		out = append(out, d.Name())
	}
	return out
}

// TestStreamedIngestOverlapsTheUpload holds a staged upload in progress
// (its producer has sent half the blob and waits for the test) and
// requires the ingester to have written bytes of it before the rest is
// sent: the command went out as the upload started and the chunks are
// read as they arrive. Sending the command after the upload would hang
// here, as the rest of the blob only comes once the ingester wrote.
func TestStreamedIngestOverlapsTheUpload(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dp, wb := e.watchedDataPlane(1 << 20)
	e.startIngester(func(c *ingest.Config) { c.DataPlane = dp })
	data := randomBytes(t, 5<<20+12345)
	sp := startStreamPut(e.client, producer.Put{CommandID: "overlap-1", Package: "p", Path: "big.bin"}, int64(len(data)))
	if _, err := sp.body.Write(data[:3<<20]); err != nil {
		t.Fatal(err)
	}
	waitReached(t, wb, "the ingest did not overlap the upload")
	select {
	case <-sp.done:
		t.Fatal("the put returned before its body was complete")
	default:
	}
	r := sp.finish(t, data[3<<20:])
	want, _ := digest.Compute(bytes.NewReader(data), nil)
	if r.Status != commands.StatusStored || r.Address != want.Address(digest.BLAKE3).String() || r.Size != int64(len(data)) {
		t.Fatalf("reply %+v, want stored %s", r, want.Address(digest.BLAKE3))
	}
	e.checkObject(r.Address, r.BLAKE3, r.SHA256, r.Size)
	e.waitSettled()
	if s := e.chunkSubjects(); len(s) != 0 {
		t.Fatalf("chunks left in the staging bucket after the ingest: %v", s)
	}
}

// TestStreamedIngestProducerDiesMidUpload kills the producer's connection
// in the middle of an upload the ingester is already writing. The
// ingester gives up by its progress rule (driven by the test's ticks, not
// a clock): the command is rejected as staged_upload_abandoned, nothing is
// stored or left in the temp directory, and the upload's chunks are
// purged.
func TestStreamedIngestProducerDiesMidUpload(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dp, wb := e.watchedDataPlane(1 << 20)
	ticks := make(chan time.Time)
	e.startIngester(func(c *ingest.Config) {
		c.DataPlane = dp
		ingest.SetUploadTicks(c, ticks)
	})
	pnc := e.srv.Connect(t)
	pjs, err := jetstream.New(pnc)
	if err != nil {
		t.Fatal(err)
	}
	client, err := producer.New(context.Background(), producer.Config{NATS: pnc, JetStream: pjs, Topology: e.topo, Codec: e.codec, Producer: "doomed"})
	if err != nil {
		t.Fatal(err)
	}
	const id = "dies-1"
	data := randomBytes(t, 3<<20)
	sp := startStreamPut(client, producer.Put{CommandID: id, Package: "p", Path: "half.bin"}, 8<<20)
	if _, err := sp.body.Write(data); err != nil {
		t.Fatal(err)
	}
	waitReached(t, wb, "nothing written before the producer died")
	if len(e.chunkSubjects()) != 1 {
		t.Fatalf("chunk subjects %v, want the upload's", e.chunkSubjects())
	}
	pnc.Close() // the producer dies: no more chunks, no abort marker

	stop := make(chan struct{})
	go func() {
		for {
			select {
			case ticks <- time.Now():
			case <-stop:
				return
			}
		}
	}()
	e.waitSettled()
	close(stop)

	evs := e.eventsOf(id)
	if len(evs) != 1 || evs[0].Type != events.TypeIngestRejected {
		t.Fatalf("events %v, want one ingest.rejected", types(evs))
	}
	p, _ := e.codec.DecodeEvent(evs[0])
	if rej := p.(events.IngestRejectedV1); rej.Code != commands.CodeUploadAbandoned {
		t.Fatalf("rejection %+v, want %s", rej, commands.CodeUploadAbandoned)
	}
	if f := e.objectFiles(); len(f) != 0 {
		t.Fatalf("object files after an abandoned upload: %v", f)
	}
	if f := e.tempFiles(); len(f) != 0 {
		t.Fatalf("temp files after an abandoned upload: %v", f)
	}
	if s := e.chunkSubjects(); len(s) != 0 {
		t.Fatalf("chunks of the abandoned upload left in the staging bucket: %v", s)
	}
	_ = sp.body.CloseWithError(errors.New("the producer is dead"))
	<-sp.done
	_ = client.Close()
}

// TestStreamedIngestRedeliveredMidStream stops the ingester hard while it
// writes an upload in progress (the command is nak'd), starts another,
// and finishes the upload: the second one reads the upload from its
// start, stores it once, and the first one's partial write is gone.
func TestStreamedIngestRedeliveredMidStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dp, wb := e.watchedDataPlane(1 << 20)
	first := e.startIngester(func(c *ingest.Config) { c.DataPlane = dp })
	data := randomBytes(t, 4<<20+999)
	const id = "redeliver-1"
	sp := startStreamPut(e.client, producer.Put{CommandID: id, Package: "p", Path: "re.bin"}, int64(len(data)))
	if _, err := sp.body.Write(data[:2<<20]); err != nil {
		t.Fatal(err)
	}
	waitReached(t, wb, "the first ingester wrote nothing")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = first.Stop(ctx) // hard stop: the handler is cancelled, its command nak'd
	if f := e.tempFiles(); len(f) != 0 {
		t.Fatalf("the stopped ingester left temp files %v", f)
	}
	e.startIngester(nil)
	r := sp.finish(t, data[2<<20:])
	want, _ := digest.Compute(bytes.NewReader(data), nil)
	if r.Status != commands.StatusStored || r.Address != want.Address(digest.BLAKE3).String() {
		t.Fatalf("reply %+v, want stored %s", r, want.Address(digest.BLAKE3))
	}
	e.checkObject(r.Address, r.BLAKE3, r.SHA256, r.Size)
	e.waitSettled()
	if n := e.checkOneSetPerCommand(); n != 1 {
		t.Fatalf("%d commands in the log, want 1", n)
	}
	if f := e.objectFiles(); len(f) != 1 {
		t.Fatalf("object files %v, want one", f)
	}
	if f := e.tempFiles(); len(f) != 0 {
		t.Fatalf("temp files %v", f)
	}
	if s := e.chunkSubjects(); len(s) != 0 {
		t.Fatalf("chunks left: %v", s)
	}
}

// TestStreamedIngestClaimsCheckedAtTheEnd sends uploads whose claims are
// wrong only as a whole: a producer's digest or size claim, and a
// recorded SHA-256 on the last chunk that the bytes do not have (a
// staging store that damaged a chunk). Each is rejected after the last
// byte, with nothing stored, no temp file and no chunk left.
func TestStreamedIngestClaimsCheckedAtTheEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	data := randomBytes(t, 1<<20+7)
	wrong := digest.MustParse("sha256:" + fmt.Sprintf("%064x", 7))
	r := e.put(e.client, blob(producer.Put{Package: "p", Path: "a", Expect: []digest.Address{wrong}}, data))
	if r.Status != commands.StatusRejected || r.Code != commands.CodeDigestMismatch {
		t.Fatalf("wrong digest claim: reply %+v", r)
	}
	sized := blob(producer.Put{Package: "p", Path: "b"}, data)
	sized.Body = io.MultiReader(bytes.NewReader(data), bytes.NewReader(data[:100])) // 100 bytes more than claimed
	r = e.put(e.client, sized)
	if r.Status != commands.StatusRejected || r.Code != commands.CodeSizeMismatch {
		t.Fatalf("wrong size claim: reply %+v", r)
	}

	// A last chunk whose recorded SHA-256 is not that of the bytes.
	const upload = "handmade1"
	subj := fmt.Sprintf("$O.%s.C.%s", e.topo.StagingBucket, upload)
	for i, part := range [][]byte{data[:staging.ChunkSize], data[staging.ChunkSize:]} {
		m := nats.NewMsg(subj)
		m.Data = part
		m.Header.Set(staging.HeaderAttempt, "1")
		m.Header.Set(staging.HeaderChunk, strconv.Itoa(i))
		if i == 1 {
			m.Header.Set(staging.HeaderSize, strconv.Itoa(len(data)))
			m.Header.Set(staging.HeaderChunks, "2")
			m.Header.Set(staging.HeaderDigest, "SHA-256="+base64.URLEncoding.EncodeToString(make([]byte, 32)))
		}
		if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	cmd := commands.Ingest{V: 1, CommandID: "handmade-1", Package: "p", Path: "c", Staged: "handmade", Upload: upload}
	body, _ := commands.Encode(e.codec, cmd, false)
	r = e.request(bus.CmdIngest, body, "", "")
	if r.Status != commands.StatusRejected || r.Code != commands.CodeStagedDigest {
		t.Fatalf("wrong recorded SHA-256: reply %+v", r)
	}
	e.waitSettled()
	if f := e.objectFiles(); len(f) != 0 {
		t.Fatalf("rejected uploads left object files %v", f)
	}
	if f := e.tempFiles(); len(f) != 0 {
		t.Fatalf("rejected uploads left temp files %v", f)
	}
	if s := e.chunkSubjects(); len(s) != 0 {
		t.Fatalf("chunks of rejected uploads left: %v", s)
	}
}
