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
