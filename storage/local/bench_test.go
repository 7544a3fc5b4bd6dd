package local

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/artifactstore/artifactstore/storage"
)

// BenchmarkPut measures a whole put (hash while writing, tree, fsync,
// link, fsync directories) of unique content, one writer; baseline_notree
// is the same put storing no tree (objects of one chunk group have none
// anyway), the cost of the tree being the difference.
func BenchmarkPut(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20, 64 << 20, 256 << 20} {
		b.Run(byteSize(size), func(b *testing.B) {
			for _, bc := range []struct {
				name string
				opts []storage.PutterOption
			}{
				{"tree", nil},
				{"baseline_notree", []storage.PutterOption{storage.WithoutTrees()}},
			} {
				b.Run(bc.name, func(b *testing.B) {
					be := openBench(b)
					putter := storage.NewPutter(bc.opts...)
					p := make([]byte, size)
					b.SetBytes(int64(size))
					for i := 0; b.Loop(); i++ {
						binary.LittleEndian.PutUint64(p, uint64(i)) // unique content, no dedup
						rc, err := putter.Put(context.Background(), be, bytes.NewReader(p), storage.PutOptions{ExpectSize: storage.NoSizeClaim})
						if err != nil {
							b.Fatal(err)
						}
						if size >= 64<<20 {
							// Keep the disk from filling up; not timed.
							b.StopTimer()
							if _, err := be.Delete(context.Background(), rc.Address); err != nil {
								b.Fatal(err)
							}
							b.StartTimer()
						}
					}
				})
			}
		})
	}
}

// BenchmarkPut4KiB8Writers is BenchmarkRawWrite4KiB8Writers with hashing
// and the backend's bookkeeping: the cost of Put over a bare durable write.
func BenchmarkPut4KiB8Writers(b *testing.B) {
	be := openBench(b)
	var seq atomic.Uint64
	runWriters(b, 8, func() error {
		var p [4 << 10]byte
		binary.LittleEndian.PutUint64(p[:], seq.Add(1))
		_, err := be.Put(context.Background(), bytes.NewReader(p[:]), storage.PutOptions{ExpectSize: storage.NoSizeClaim})
		return err
	})
}

// BenchmarkRawWrite4KiB8Writers is the baseline for ingest: 8 concurrent
// writers each doing temp file → write 4 KiB → fsync → rename → fsync the
// directory, with no hashing, into 256 directories like a shard layout.
func BenchmarkRawWrite4KiB8Writers(b *testing.B) {
	be := openBench(b)
	for i := range 256 {
		if err := be.root.Mkdir(fmt.Sprintf("raw%02x", i), dirPerm); err != nil {
			b.Fatal(err)
		}
	}
	var seq atomic.Uint64
	runWriters(b, 8, func() error {
		n := seq.Add(1)
		var p [4 << 10]byte
		binary.LittleEndian.PutUint64(p[:], n)
		tmp := path.Join(tmpDir, fmt.Sprintf("raw-%d", n))
		f, err := be.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
		if err != nil {
			return err
		}
		if _, err := f.Write(p[:]); err != nil {
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
		dir := fmt.Sprintf("raw%02x", n%256)
		if err := be.root.Rename(tmp, path.Join(dir, fmt.Sprint(n))); err != nil {
			return err
		}
		return be.syncDir(syncLeafDir, dir)
	})
}

func openBench(b *testing.B) *Backend {
	b.Helper()
	be, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	return be
}

// runWriters runs op b.N times spread over exactly writers goroutines.
func runWriters(b *testing.B, writers int, op func() error) {
	b.Helper()
	b.SetBytes(4 << 10)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	b.ResetTimer()
	for range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if err := op(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	default:
		return fmt.Sprintf("%dKiB", n>>10)
	}
}

// BenchmarkDedup measures a re-put of content already stored: the whole
// stream is read and hashed, then deduplicated. checked is production's
// Putter, which first proves the stored copy's size and four sampled
// chunk groups against its tree (storage.DefaultSampleGroups);
// baseline_unchecked trusts the copy (storage.WithoutDedupCheck), so the
// difference is the check's cost. Neither writes the object again.
func BenchmarkDedup(b *testing.B) { benchDedup(b, true) }

// BenchmarkDedupNoFsync is BenchmarkDedup with the backend's fsyncs
// turned off in both variants: what is left is the stream's read, hash
// and temp write (page cache) and, for checked, the check, so the check's
// cost shows without the disk's noise.
func BenchmarkDedupNoFsync(b *testing.B) { benchDedup(b, false) }

func benchDedup(b *testing.B, fsync bool) {
	for _, size := range []int{4 << 10, 1 << 20, 256 << 20} {
		b.Run(byteSize(size), func(b *testing.B) {
			be := openBench(b)
			if !fsync {
				be.fsync = func(syncKind, string, *os.File) error { return nil }
			}
			p := make([]byte, size)
			binary.LittleEndian.PutUint64(p, uint64(size))
			if _, err := be.Put(context.Background(), bytes.NewReader(p), storage.PutOptions{ExpectSize: storage.NoSizeClaim}); err != nil {
				b.Fatal(err)
			}
			for _, bc := range []struct {
				name string
				opts []storage.PutterOption
			}{
				{"checked", nil},
				{"baseline_unchecked", []storage.PutterOption{storage.WithoutDedupCheck()}},
			} {
				b.Run(bc.name, func(b *testing.B) {
					putter := storage.NewPutter(bc.opts...)
					b.SetBytes(int64(size))
					for b.Loop() {
						rc, err := putter.Put(context.Background(), be, bytes.NewReader(p), storage.PutOptions{ExpectSize: storage.NoSizeClaim})
						if err != nil {
							b.Fatal(err)
						}
						if !rc.Deduplicated || rc.Repaired != nil {
							b.Fatalf("re-put of stored content: %+v", rc)
						}
					}
				})
			}
		})
	}
}
