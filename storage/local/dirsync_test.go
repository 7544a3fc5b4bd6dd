package local

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestDirFsyncsAreSharedButNeverEarly: while an fsync of a directory runs,
// the callers that ask for one all wait for the next round, which runs
// once for all of them (one fsync, not one each) and whose error each of
// them gets; none is answered by the round that began before it asked.
func TestDirFsyncsAreSharedButNeverEarly(t *testing.T) {
	t.Parallel()
	s := newDirSyncer()
	k := dirKey{syncLeafDir, "blake3/ab"}
	var calls atomic.Int32
	started, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.sync(k, func() error {
			calls.Add(1)
			close(started)
			<-release
			return nil
		})
	}()
	<-started
	const n = 5
	failed := errors.New("fsync failed")
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			errs <- s.sync(k, func() error { calls.Add(1); return failed })
		})
	}
	hang := time.Now().Add(2 * time.Minute)
	for s.waiting(k) < n {
		if time.Now().After(hang) {
			t.Fatalf("only %d of %d callers wait for the next round", s.waiting(k), n)
		}
		runtime.Gosched()
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("%d fsyncs ran while the first was still running", got)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, failed) {
			t.Fatalf("a caller of the second round got %v, not its failure", err)
		}
	}
	if got := calls.Load(); got != 2 {
		t.Fatalf("%d fsyncs for one running and %d waiting callers, want 2", got, n)
	}
	if n := s.pending(); n != 0 {
		t.Fatalf("state of %d directories left behind", n)
	}
}
