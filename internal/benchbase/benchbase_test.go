package benchbase

import (
	"io/fs"
	"path/filepath"
	"testing"
)

func BenchmarkRawDurableWrites4KiB8Writers(b *testing.B) {
	RawDurableWrites(b, b.TempDir(), 4<<10, 8)
}

// TestRawDurableWritesWritesEveryFile runs the baseline and checks that it
// really wrote one 4 KiB file per operation into the shard directories and
// left no temp file.
func TestRawDurableWritesWritesEveryFile(t *testing.T) {
	dir := t.TempDir()
	res := testing.Benchmark(func(b *testing.B) { RawDurableWrites(b, dir, 4096, 4) })
	if res.N == 0 || res.Extra["ops/s"] <= 0 {
		t.Fatalf("benchmark result %+v", res)
	}
	var files, temps int
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Size() != 4096 {
			t.Errorf("%s has %d bytes", p, info.Size())
		}
		if filepath.Base(filepath.Dir(p)) == "tmp" {
			temps++
		} else {
			files++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if temps != 0 || files < res.N {
		t.Fatalf("%d files in shards (last run alone made %d), %d left in tmp", files, res.N, temps)
	}
}

func BenchmarkRawDurableFiles10000x1KiB8Writers(b *testing.B) {
	RawDurableFiles(b, b.TempDir(), 10000, 1<<10, 8)
}
