package blaketree

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"lukechampine.com/blake3"
	"lukechampine.com/blake3/bao"
)

// BenchmarkGroupSize is the measurement behind Group. For each group size
// 2^g chunks: hash/g hashes 64 MiB group by group on one core (the cost
// of checking a whole read; tree-B/MiB is the tree's size), range1MiB/g
// and range4KiB/g check an unaligned range of a 64 MiB object with bao's
// own slice decoder (read-extra-B: bytes read beyond the range, groups
// and nodes). Groups of 2^3 chunks and more hash at full SIMD speed;
// above that, larger groups make short ranges dearer and the tree smaller.
func BenchmarkGroupSize(b *testing.B) {
	const size = 64 << 20
	p := testData(size, 9)
	for g := 2; g <= 8; g++ {
		groupSize := 1024 << g
		ob, root := bao.EncodeBuf(p, g, true)
		b.Run(fmt.Sprintf("hash/g%d", g), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				for off := 0; off < size; off += groupSize {
					groupNode(p[off:off+groupSize], uint64(off/1024))
				}
			}
			b.ReportMetric(float64(len(ob))/(size>>20), "tree-B/MiB")
		})
		for _, n := range []int{1 << 20, 4 << 10} {
			off := uint64(size/2 + 12345)
			gs := uint64(groupSize)
			start := off / gs * gs
			end := min((off+uint64(n)+gs-1)/gs*gs, size)
			var slice bytes.Buffer
			if err := bao.ExtractSlice(&slice, bytes.NewReader(p[start:end]), bytes.NewReader(ob), g, off, uint64(n)); err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("range%s/g%d", sizeName(n), g), func(b *testing.B) {
				b.SetBytes(int64(n))
				for b.Loop() {
					if ok, err := bao.DecodeSlice(io.Discard, bytes.NewReader(slice.Bytes()), g, off, uint64(n), root); !ok || err != nil {
						b.Fatal(ok, err)
					}
				}
				b.ReportMetric(float64(slice.Len()-n), "read-extra-B")
			})
		}
	}
}

// BenchmarkBuild compares the Builder (digest and tree in one pass) with
// the BLAKE3 hasher alone (digest only), 1 MiB writes as in ingest.
func BenchmarkBuild(b *testing.B) {
	const size = 64 << 20
	p := testData(size, 10)
	b.Run("tree", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			t := NewBuilder()
			for off := 0; off < size; off += 1 << 20 {
				t.Write(p[off : off+1<<20])
			}
			t.Sum()
			if _, err := t.Outboard().WriteTo(io.Discard); err != nil {
				b.Fatal(err)
			}
			t.Close()
		}
	})
	b.Run("baseline_blake3", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			h := blake3.New(32, nil)
			for off := 0; off < size; off += 1 << 20 {
				h.Write(p[off : off+1<<20])
			}
			h.Sum(nil)
		}
	})
}

// BenchmarkReader measures proven reads from memory against a plain copy
// of the same bytes: the cost of the check itself, with nothing else.
func BenchmarkReader(b *testing.B) {
	const size = 64 << 20
	p := testData(size, 11)
	ob, root := bao.EncodeBuf(p, Group, true)
	b.Run("whole", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := readRange(p, ob, root, 0, size); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline_copy", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			var out bytes.Buffer
			out.Grow(size)
			io.Copy(&out, bytes.NewReader(p))
		}
	})
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}
