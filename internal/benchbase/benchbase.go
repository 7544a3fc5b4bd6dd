// Package benchbase holds baselines that benchmarks of several packages
// measure themselves against in the same run, so that `make bench` can print
// ratios instead of absolute figures on a shared, noisy machine.
package benchbase

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RawDurableWrites runs b.N bare durable writes of size bytes spread over
// writers goroutines under dir: temp file → write → fsync → rename into one
// of 256 shard directories → fsync that directory, with no hashing and no
// bookkeeping. It reports "ops/s". It is the floor of any durable ingest
// of small objects on this filesystem.
func RawDurableWrites(b *testing.B, dir string, size, writers int) {
	b.Helper()
	b.ResetTimer()
	elapsed := rawWrites(b, dir, b.N, size, writers)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
}

// RawDurableFiles is RawDurableWrites of a whole set: each operation
// writes files bare durable files of size bytes with writers goroutines
// (the floor of storing a directory of that many files). It reports
// "files/s".
func RawDurableFiles(b *testing.B, dir string, files, size, writers int) {
	b.Helper()
	var elapsed time.Duration
	b.ResetTimer()
	for range b.N {
		elapsed += rawWrites(b, dir, files, size, writers)
	}
	b.ReportMetric(float64(b.N*files)/elapsed.Seconds(), "files/s")
}

// rawWrites writes count files as RawDurableWrites describes, in a fresh
// directory below dir, and returns how long the writes took (the set-up
// not included).
func rawWrites(b *testing.B, dir string, count, size, writers int) time.Duration {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	// A fresh directory per run: the testing package calls a benchmark
	// several times with growing b.N.
	dir, err := os.MkdirTemp(dir, "run-")
	if err != nil {
		b.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o750); err != nil {
		b.Fatal(err)
	}
	shards := make([]*os.File, 256)
	for i := range shards {
		p := filepath.Join(dir, fmt.Sprintf("%02x", i))
		if err := os.Mkdir(p, 0o750); err != nil {
			b.Fatal(err)
		}
		d, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		shards[i] = d
		defer d.Close()
	}
	var seq, next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	b.StartTimer()
	start := time.Now()
	for range writers {
		wg.Go(func() {
			buf := make([]byte, size)
			for next.Add(1) <= int64(count) {
				n := seq.Add(1)
				binary.LittleEndian.PutUint64(buf, uint64(n))
				if err := durableWrite(tmp, shards[n%256], n, buf); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return elapsed
}

func durableWrite(tmpDir string, shard *os.File, n int64, buf []byte) error {
	name := fmt.Sprint(n)
	f, err := os.OpenFile(filepath.Join(tmpDir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tmpDir, name), filepath.Join(shard.Name(), name)); err != nil {
		return err
	}
	return shard.Sync()
}
