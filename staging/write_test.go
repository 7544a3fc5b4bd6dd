package staging

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
)

func newTestWriter(t *testing.T) (*Writer, jetstream.JetStream, bus.Topology) {
	t.Helper()
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	if err := bus.EnsureTopology(t.Context(), js, top); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(nc, top.StagingBucket, nil)
	if err != nil {
		t.Fatal(err)
	}
	return w, js, top
}

var errTooMany = &jetstream.APIError{Code: 429, ErrorCode: 10167, Description: "too many requests"}

func TestStagingRestartsAfterTooManyRequestsAndResets(t *testing.T) {
	t.Parallel()
	w, js, top := newTestWriter(t)
	var mu sync.Mutex
	var retried []string
	w.onRetry = func(name string, attempt int, err error, wait time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		retried = append(retried, err.Error())
	}
	w.inject = func(attempt, chunk int) error {
		switch {
		case attempt == 1 && chunk == 5:
			return errTooMany
		case attempt == 2 && chunk == 17:
			return syscall.ECONNRESET
		}
		return nil
	}
	blob := make([]byte, 3<<20+12345)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	var lastProgress int64
	// The first bytes come as a prefix already read from the body.
	info, err := w.Stage(t.Context(), "big.bin", "p:big.bin", blob[:1000], bytes.NewReader(blob[1000:]), func(n int64) { lastProgress = n })
	if err != nil {
		t.Fatalf("stage with a 429 and a reset on the way: %v", err)
	}
	if info.Size != uint64(len(blob)) || lastProgress != int64(len(blob)) {
		t.Fatalf("staged %d bytes, progress %d of %d", info.Size, lastProgress, len(blob))
	}
	mu.Lock()
	if len(retried) != 2 || !strings.Contains(retried[0], "429") {
		t.Fatalf("retries %q; want the 429 and the reset", retried)
	}
	mu.Unlock()
	obs, err := js.ObjectStore(t.Context(), top.StagingBucket)
	if err != nil {
		t.Fatal(err)
	}
	got, err := obs.GetBytes(t.Context(), "big.bin")
	if err != nil {
		t.Fatalf("read the staged object back with the object store: %v", err)
	}
	if !bytes.Equal(got, blob) {
		t.Fatalf("staged %d bytes differ from the %d put", len(got), len(blob))
	}
	// The failed attempts' chunks are gone: one chunk subject is left.
	st, err := js.Stream(t.Context(), "OBJ_"+top.StagingBucket)
	if err != nil {
		t.Fatal(err)
	}
	sinfo, err := st.Info(t.Context(), jetstream.WithSubjectFilter("$O."+top.StagingBucket+".C.>"))
	if err != nil {
		t.Fatal(err)
	}
	if len(sinfo.State.Subjects) != 1 {
		t.Fatalf("chunk subjects left: %v; the failed attempts' chunks should be purged", sinfo.State.Subjects)
	}
}

func TestStagingGivesUpClearly(t *testing.T) {
	t.Parallel()
	w, _, _ := newTestWriter(t)
	blob := make([]byte, 1<<20)
	w.inject = func(attempt, chunk int) error {
		if chunk == 2 {
			return errTooMany
		}
		return nil
	}
	// A body that cannot be rewound cannot be uploaded again.
	_, err := w.Stage(t.Context(), "pipe", "p:pipe", nil, io.MultiReader(bytes.NewReader(blob)), nil)
	if !errors.Is(err, ErrNotRewindable) || !strings.Contains(err.Error(), "429") {
		t.Fatalf("put of a pipe after a 429: %v", err)
	}
	// A failure that is not passing is not retried.
	attempts := 0
	w.inject = func(attempt, chunk int) error {
		attempts = max(attempts, attempt)
		return errors.New("permission denied")
	}
	_, err = w.Stage(t.Context(), "denied", "p:denied", nil, bytes.NewReader(blob), nil)
	if err == nil || !strings.Contains(err.Error(), "permission denied") || attempts != 1 {
		t.Fatalf("put refused for good: %v after %d attempts", err, attempts)
	}
}

func TestTransientErrors(t *testing.T) {
	t.Parallel()
	if !bus.Transient(errTooMany) || !bus.Transient(syscall.ECONNRESET) || !bus.Transient(jetstream.ErrNoStreamResponse) {
		t.Fatal("429, a reset and no responders are passing failures")
	}
	if bus.Transient(errors.New("permission denied")) || bus.Transient(&jetstream.APIError{Code: 400, ErrorCode: 10059}) {
		t.Fatal("a refusal is not a passing failure")
	}
}

// heldFuture is the future of a chunk whose publish a test holds back:
// it settles with the future of the publish made later.
type heldFuture struct {
	msg *nats.Msg
	ok  chan *jetstream.PubAck
	err chan error
}

func (h *heldFuture) Ok() <-chan *jetstream.PubAck { return h.ok }
func (h *heldFuture) Err() <-chan error            { return h.err }
func (h *heldFuture) Msg() *nats.Msg               { return h.msg }

func (h *heldFuture) follow(f jetstream.PubAckFuture) {
	select {
	case a := <-f.Ok():
		h.ok <- a
	case err := <-f.Err():
		h.err <- err
	}
}

// TestStagingChunksOutOfOrderStartAgain stores the first chunk of an
// upload after the second (as the client's own repeat of a chunk
// answered "no responders" during a leader election did): the writer
// notices from the acks' sequences and uploads again, so that the object
// reads back as staged, not with its chunks swapped.
func TestStagingChunksOutOfOrderStartAgain(t *testing.T) {
	t.Parallel()
	w, js, top := newTestWriter(t)
	var held *heldFuture
	reordered := false
	w.publish = func(m *nats.Msg) (jetstream.PubAckFuture, error) {
		if !reordered && held == nil {
			held = &heldFuture{msg: m, ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
			return held, nil
		}
		f, err := w.publishChunk(m)
		if held != nil && !reordered {
			reordered = true
			first, ferr := w.publishChunk(held.msg)
			if ferr != nil {
				return nil, ferr
			}
			go held.follow(first)
		}
		return f, err
	}
	var retried []error
	w.onRetry = func(name string, attempt int, err error, wait time.Duration) { retried = append(retried, err) }
	blob := make([]byte, 3*ChunkSize+5)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	info, err := w.Stage(t.Context(), "o", "", nil, bytes.NewReader(blob), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(t.Context(), js, top.StagingBucket, info)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, blob) {
		t.Fatalf("the staged object reads back as other bytes (%d of %d), after %d retries", len(got), len(blob), len(retried))
	}
	if len(retried) != 1 || !errors.Is(retried[0], errChunkOrder) {
		t.Fatalf("retries %v; want one, for the chunks out of order", retried)
	}
}
