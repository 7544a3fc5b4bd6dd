package staging

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/digest"
)

const hang = 3 * time.Minute

// countingWriter counts what the reader handed out, and closes at once
// when the count reaches n.
type countingWriter struct {
	buf  bytes.Buffer
	n    atomic.Int64
	at   int64
	once sync.Once
	hit  chan struct{}
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if w.n.Add(int64(len(p))) >= w.at {
		w.once.Do(func() { close(w.hit) })
	}
	return len(p), nil
}

// TestUploadReaderFollowsARestartedUpload reads an upload while it is
// written; the writer's first attempt fails (429) after the reader has
// read some of it. The reader reports the restart once, then hands out
// the second attempt whole, with the SHA-256 of the last chunk.
func TestUploadReaderFollowsARestartedUpload(t *testing.T) {
	t.Parallel()
	w, js, top := newTestWriter(t)
	blob := make([]byte, 2<<20+4321)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	upload := NewUpload()
	r, err := OpenUpload(t.Context(), js, top.StagingBucket, upload, UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := &countingWriter{at: 3 * ChunkSize, hit: make(chan struct{})}
	w.inject = func(attempt, chunk int) error {
		if attempt == 1 && chunk == 5 {
			select {
			case <-out.hit:
			case <-time.After(hang):
			}
			return errTooMany
		}
		return nil
	}
	staged := make(chan error, 1)
	go func() {
		_, err := w.StageUpload(t.Context(), "big.bin", "p:big.bin", upload, nil, bytes.NewReader(blob), nil)
		staged <- err
	}()
	restarts := 0
	for {
		_, err := io.Copy(out, r)
		if errors.Is(err, ErrRestarted) {
			restarts++
			out.buf.Reset()
			continue
		}
		if err != nil {
			t.Fatalf("read the upload: %v", err)
		}
		break
	}
	if err := <-staged; err != nil {
		t.Fatal(err)
	}
	if restarts != 1 || !bytes.Equal(out.buf.Bytes(), blob) {
		t.Fatalf("%d restarts, %d bytes read of %d; want one restart and the blob", restarts, out.buf.Len(), len(blob))
	}
	sum := sha256.Sum256(blob)
	if d, ok := r.Digest(); !ok || d != digest.New(digest.SHA256, sum) || r.Size() != int64(len(blob)) {
		t.Fatalf("recorded digest %v %v size %d, want %x", d, ok, r.Size(), sum)
	}
}

// TestUploadReaderStopsOnAbortAndOnIdleTicks: a writer that fails for
// good leaves an abort marker, which ends the reader's wait at once; an
// upload that stops growing is given up after two idle ticks during
// which the reader waited.
func TestUploadReaderStopsOnAbortAndOnIdleTicks(t *testing.T) {
	t.Parallel()
	w, js, top := newTestWriter(t)

	upload := NewUpload()
	r, err := OpenUpload(t.Context(), js, top.StagingBucket, upload, UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pr, pw := io.Pipe()
	staged := make(chan error, 1)
	go func() {
		_, err := w.StageUpload(t.Context(), "dies", "p:dies", upload, nil, pr, nil)
		staged <- err
	}()
	if _, err := pw.Write(make([]byte, 3*ChunkSize)); err != nil {
		t.Fatal(err)
	}
	_ = pw.CloseWithError(errors.New("disk read error"))
	_, err = io.Copy(io.Discard, r)
	if !errors.Is(err, ErrAbandoned) {
		t.Fatalf("read of an upload its writer gave up: %v, want ErrAbandoned", err)
	}
	if err := <-staged; err == nil {
		t.Fatal("the upload of a failing body succeeded")
	}

	ticks := make(chan time.Time)
	idle, err := OpenUpload(t.Context(), js, top.StagingBucket, NewUpload(), UploadOptions{Idle: ticks})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	read := make(chan error, 1)
	go func() {
		_, err := idle.Read(make([]byte, 10))
		read <- err
	}()
	sent := 0
	for {
		select {
		case ticks <- time.Now():
			sent++
			continue
		case err = <-read:
		case <-time.After(hang):
			t.Fatal("an upload that never grows was not given up")
		}
		break
	}
	if !errors.Is(err, ErrAbandoned) || sent < 2 {
		t.Fatalf("read after %d ticks: %v, want ErrAbandoned after two at least", sent, err)
	}
}
