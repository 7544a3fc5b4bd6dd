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
// concurrently with the reaper for at least 1,000 sweep decisions, and
// forces the two interleavings that matter at random ones:
//
//   - Before the re-check (the object is marked and due; the reaper holds
//     no lock yet), an ingest of the very same content commits a reference
//     to it. The re-check under the lock must see that reference and keep
//     the object; a reaper that deletes what it marked without
//     re-checking deletes live bytes here.
//   - Before the delete (the re-check found no live reference, the file is
//     still there and the reaper holds its locks), an ingest of the very
//     same content has stored it (deduplicated against the file about to
//     go) and waits for the ingest lock to commit a reference to it: the
//     interleaving an OCI registry's GC cannot survive online. The ingest
//     must write the bytes again.
//
// Other decisions are let through or made to yield. After every pass and
// at the end, every live package's objects must exist and verify.
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
				wctx, c := context.WithTimeout(ctx, hangGuard)
				pend, err := bg.send(wctx, fmt.Sprintf("bg-%d-%d", g, n), "f", "transient", blobs[a])
				if err == nil {
					var r commands.Reply
					r, err = pend.Wait(wctx)
					if err == nil && r.Status != commands.StatusStored {
						err = fmt.Errorf("background put: %+v", r)
					}
				}
				c()
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
		decisions, deletes, yielded int
		forcedRecheck, forcedDelete int
		forcedN                     int
		// referenced holds the contents a forced ingest committed a
		// reference to before the re-check, in this pass.
		referenced    = map[digest.Address]string{}
		forcedPending []*producer.Pending
		hookErr       error
	)
	yield := func() {
		yielded++
		for range 1 + mrand.N(20) {
			runtime.Gosched()
		}
	}
	r := e.reaper(func(c *reaper.Config) {
		c.Grace = -1
		c.BatchSize = 50
		c.Stores = nil
		c.Hook = func(ctx context.Context, p reaper.Point, o *reaper.Object) {
			if hookErr != nil {
				return
			}
			switch p {
			case reaper.PointBeforeRecheck:
				decisions++
				switch mrand.N(6) {
				case 0, 1, 2, 3: // straight through
				case 4:
					yield()
				default:
					forcedRecheck++
					forcedN++
					pkg := fmt.Sprintf("forced-%d", forcedN)
					hookErr = forced.commit(ctx, pkg, blobs[o.Address])
					referenced[o.Address] = pkg
				}
			case reaper.PointBeforeDelete:
				deletes++
				if pkg, ok := referenced[o.Address]; ok {
					hookErr = fmt.Errorf("the reaper is deleting %s although ingest %s committed a live reference to it before the re-check: the sweep did not re-check the references under its lock", o.Address, pkg)
					return
				}
				switch mrand.N(3) {
				case 0: // straight through
				case 1:
					yield()
				default:
					forcedDelete++
					forcedN++
					pend, err := forced.send(ctx, fmt.Sprintf("forced-%d", forcedN), "f", "transient", blobs[o.Address])
					if err != nil {
						hookErr = err
						return
					}
					forcedPending = append(forcedPending, pend)
					// Wait until that ingest has stored the bytes and waits
					// for the lock this transaction holds.
					hookErr = e.awaitLockWaiter(ctx, "forced-ingest", o.Address)
				}
			}
		}
	})

	start := time.Now()
	passes := 0
	// How many objects reach the delete depends on how many the
	// background ingests re-reference first, so the loop runs until each
	// kind of decision was seen often enough; the bound on passes only
	// stops a test that cannot get there.
	for decisions < 1000 || forcedRecheck < 100 || forcedDelete < 150 {
		if passes++; passes > 2000 {
			t.Fatalf("after %d passes only %d sweep decisions, %d ingests forced before the re-check and %d before the delete; want 1000, 100 and 150",
				passes, decisions, forcedRecheck, forcedDelete)
		}
		select {
		case err := <-bgErr:
			t.Fatal(err)
		default:
		}
		e.clock.Advance(8 * day) // everything ingested before expires
		clear(referenced)
		if _, err := r.RunOnce(ctx); err != nil {
			t.Fatalf("pass %d: %v", passes, err)
		}
		if hookErr != nil {
			t.Fatal(hookErr)
		}
		for _, pend := range forcedPending {
			wctx, c := context.WithTimeout(ctx, hangGuard)
			rep, err := pend.Wait(wctx)
			c()
			if err != nil || rep.Status != commands.StatusStored {
				t.Fatalf("forced ingest: %+v, %v", rep, err)
			}
		}
		forcedPending = forcedPending[:0]
		// The forced packages are live (created at this clock): their
		// bytes, kept by the re-check or deleted under them and written
		// again, must be there.
		e.checkLiveBytes(ctx)
	}
	cancel()
	wg.Wait()
	e.checkLiveBytes(context.Background())
	t.Logf("%d passes, %d sweep decisions (%d ingests committed before the re-check), %d delete decisions (%d paused for a racing ingest), %d yielded, %d background ingests, in %s",
		passes, decisions, forcedRecheck, deletes, forcedDelete, yielded, bgCount.Load(), time.Since(start).Round(time.Millisecond))
}
