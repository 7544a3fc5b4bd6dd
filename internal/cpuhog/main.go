// Command cpuhog keeps every core busy for a bounded time, so that the
// test suite can be run on a machine that is slower than it looks (make
// test-loaded): a test that depends on the machine's speed fails there.
//
// It starts one busy goroutine per GOMAXPROCS (or -procs) and runs until
// -for has passed or it receives SIGINT or SIGTERM. It never runs
// unbounded, so that a hog left behind by an interrupted make stops on its
// own.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("cpuhog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	procs := fs.Int("procs", runtime.GOMAXPROCS(0), "busy goroutines to run (default: GOMAXPROCS, one per core)")
	limit := fs.Duration("for", 30*time.Minute, "stop after this long, even if nobody stops the hog")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *procs < 1 || *limit <= 0 {
		fmt.Fprintln(stderr, "cpuhog: -procs must be at least 1 and -for positive, e.g. -procs 2 -for 20m")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *limit)
	defer cancel()

	start := time.Now()
	fmt.Fprintf(stderr, "cpuhog: %d busy goroutines for at most %s\n", *procs, *limit)
	spins := hog(ctx, *procs)
	fmt.Fprintf(stderr, "cpuhog: stopped after %s (%d million spins)\n", time.Since(start).Round(time.Second), spins/1e6)
	return 0
}

// hog runs procs busy loops until ctx is done and returns how many
// iterations they made together.
func hog(ctx context.Context, procs int) uint64 {
	var total atomic.Uint64
	var wg sync.WaitGroup
	for range procs {
		wg.Go(func() {
			x := uint64(1)
			var n uint64
			for ctx.Err() == nil {
				// A million steps of a linear congruential generator
				// between two looks at ctx: pure CPU, no memory traffic.
				for range 1_000_000 {
					x = x*6364136223846793005 + 1442695040888963407
				}
				n += 1_000_000
			}
			total.Add(n + x&1) // use x, so that the loop is not optimised away
		})
	}
	wg.Wait()
	return total.Load()
}
