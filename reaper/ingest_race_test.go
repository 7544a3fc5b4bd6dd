package reaper_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/internal/natstest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/reaper"
)

// TestRaceIngestAndReap runs ingests that re-reference the same contents
// concurrently with the reaper for at least 1,000 delete decisions. At
// each decision (the object is marked, its re-check found no live
// reference, the file is still there and the reaper holds its locks) the
// reaper is randomly let through, made to yield, or paused until an
// ingest of the very same content has stored it (deduplicated against the
// file about to go) and waits for the ingest lock to commit a reference
// to it: the interleaving an OCI registry's GC cannot survive online.
// After every pass and at the end, every live package's objects must
// exist and verify.
func TestRaceIngestAndReap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv := natstest.Start(t)
	bg := e.startPipeline(srv, "bg-ingest")
	forced := e.startPipeline(srv, "forced-ingest")

	const contents = 16
	blobs := map[digest.Address][]byte{}
	var addrs []digest.Address
	for i := range contents {
		b := make([]byte, 32+i)
		_, _ = rand.Read(b)
		d, err := digest.Compute(bytes.NewReader(b), nil)
		if err != nil {
			t.Fatal(err)
		}
		a := d.Address(digest.BLAKE3)
		blobs[a] = b
		addrs = append(addrs, a)
	}
	// A permanent package keeps one content for good.
	bg.put(t, "keep", "k", "permanent-record", blobs[addrs[0]])

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Background ingests: transient packages of random contents.
	var (
		wg      sync.WaitGroup
		bgCount atomic.Int64
		bgErr   = make(chan error, 4)
	)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				a := addrs[mrand.N(len(addrs))]
				pend, err := bg.send(ctx, fmt.Sprintf("bg-%d-%d", g, n), "f", "transient", blobs[a])
				if err == nil {
					var r commands.Reply
					r, err = pend.Wait(ctx)
					if err == nil && r.Status != commands.StatusStored {
						err = fmt.Errorf("background put: %+v", r)
					}
				}
				if err != nil {
					if ctx.Err() == nil {
						bgErr <- err
					}
					return
				}
				bgCount.Add(1)
			}
		}()
	}

	var (
		decisions, forcedN, yielded int
		forcedPending               []*producer.Pending
		hookErr                     error
	)
	r := e.reaper(func(c *reaper.Config) {
		c.Grace = -1
		c.BatchSize = 50
		c.Stores = nil
		c.Hook = func(ctx context.Context, p reaper.Point, o *reaper.Object) {
			if p != reaper.PointBeforeDelete || hookErr != nil {
				return
			}
			decisions++
			switch mrand.N(5) {
			case 0, 1: // straight through
			case 2:
				yielded++
				for range 1 + mrand.N(20) {
					runtime.Gosched()
				}
			default:
				forcedN++
				pend, err := forced.send(ctx, fmt.Sprintf("forced-%d", forcedN), "f", "transient", blobs[o.Address])
				if err != nil {
					hookErr = err
					return
				}
				forcedPending = append(forcedPending, pend)
				// Wait until that ingest has stored the bytes and waits
				// for the lock this transaction holds.
				deadline := time.Now().Add(20 * time.Second)
				for {
					waiting, err := e.waitingForLock(ctx, "forced-ingest")
					if err != nil {
						hookErr = err
						return
					}
					if waiting {
						return
					}
					if time.Now().After(deadline) {
						hookErr = fmt.Errorf("the forced ingest of %s never waited for the ingest lock", o.Address)
						return
					}
					runtime.Gosched()
				}
			}
		}
	})

	start := time.Now()
	passes := 0
	for decisions < 1000 {
		if passes++; passes > 2000 {
			t.Fatalf("only %d delete decisions after %d passes", decisions, passes)
		}
		select {
		case err := <-bgErr:
			t.Fatal(err)
		default:
		}
		e.clock.Advance(8 * day) // everything ingested before expires
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatalf("pass %d: %v", passes, err)
		}
		if hookErr != nil {
			t.Fatal(hookErr)
		}
		for _, pend := range forcedPending {
			wctx, c := context.WithTimeout(ctx, 30*time.Second)
			rep, err := pend.Wait(wctx)
			c()
			if err != nil || rep.Status != commands.StatusStored {
				t.Fatalf("forced ingest: %+v, %v", rep, err)
			}
		}
		forcedPending = forcedPending[:0]
		// The forced packages are live (created at this clock): their
		// bytes, deleted under them, must have been written again.
		e.checkLiveBytes(ctx)
	}
	cancel()
	wg.Wait()
	e.checkLiveBytes(context.Background())
	if forcedN < 200 {
		t.Fatalf("only %d forced interleavings", forcedN)
	}
	t.Logf("%d passes, %d delete decisions (%d paused for a racing ingest, %d yielded), %d background ingests, in %s",
		passes, decisions, forcedN, yielded, bgCount.Load(), time.Since(start).Round(time.Millisecond))
}
