package verifier_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

const (
	benchObjects    = 4
	benchObjectSize = 16 << 20
)

// BenchmarkScrub compares scrubbing page-cache-hot objects through the
// worker (storage_locations lookup, data plane re-read with both digests,
// event append) with the dual hash of the same bytes in memory. The
// worker's per-object cost beside the bytes is three PostgreSQL round trips
// (one of them a commit), about 10 ms here, so objects are 16 MiB: with
// 4 MiB objects that overhead alone takes the ratio below 0.6.
func BenchmarkScrub(b *testing.B) {
	e := newEnv(b)
	data := make([][]byte, benchObjects)
	addrs := make([]digest.Address, benchObjects)
	for i := range data {
		data[i] = randomBytes(b, benchObjectSize)
		addrs[i] = e.store(data[i])
	}
	buf := make([]byte, 1<<20)
	b.Run("baseline_dualhash_inmemory", func(b *testing.B) {
		b.SetBytes(benchObjects * benchObjectSize)
		for b.Loop() {
			for _, d := range data {
				if _, err := digest.Compute(bytes.NewReader(d), buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	w := e.worker("bench")
	ctx := context.Background()
	run := 0
	scrubAll := func(b *testing.B) {
		run++
		for i, a := range addrs {
			rep, err := w.Verify(ctx, request(fmt.Sprintf("bench-%d-%d", run, i), a))
			if err != nil || rep.Outcome != commands.OutcomeVerified {
				b.Fatalf("verify: %+v %v", rep, err)
			}
		}
	}
	scrubAll(b) // the objects are hot in the page cache from here on
	b.Run("scrub_unlimited", func(b *testing.B) {
		b.SetBytes(benchObjects * benchObjectSize)
		for b.Loop() {
			scrubAll(b)
		}
	})
}

// BenchmarkRateLimit scrubs with a limit of 50 MiB/s on two concurrent
// verifications for a window of 30 s (ARTIFACTSTORE_BENCH_RATE_WINDOW, a
// Go duration, overrides it) and reports the achieved rate over the limit.
func BenchmarkRateLimit(b *testing.B) {
	const limit = 50 << 20
	window := 30 * time.Second
	if s := os.Getenv("ARTIFACTSTORE_BENCH_RATE_WINDOW"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("ARTIFACTSTORE_BENCH_RATE_WINDOW=%q: %v", s, err)
		}
		window = d
	}
	lim := verifier.NewByteLimiter(limit)
	defer lim.Close()
	e := newEnv(b, dataplane.WithVerifyReader(lim.Reader))
	addrs := make([]digest.Address, 8)
	for i := range addrs {
		addrs[i] = e.store(randomBytes(b, benchObjectSize))
	}
	w := e.worker("bench")
	ctx := context.Background()
	var seq atomic.Int64
	var ratio float64
	for b.Loop() {
		var total atomic.Int64
		start := time.Now()
		var wg sync.WaitGroup
		for g := range 2 {
			wg.Go(func() {
				for i := g; time.Since(start) < window; i++ {
					rep, err := w.Verify(ctx, request(fmt.Sprintf("rate-%d", seq.Add(1)), addrs[i%len(addrs)]))
					if err != nil || rep.Outcome != commands.OutcomeVerified {
						b.Errorf("verify: %+v %v", rep, err)
						return
					}
					total.Add(rep.ActualSize)
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		ratio = float64(total.Load()) / elapsed.Seconds() / limit
		b.SetBytes(total.Load())
	}
	b.ReportMetric(ratio, "achieved/limit")
}
