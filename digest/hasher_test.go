package digest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	"lukechampine.com/blake3"
	"lukechampine.com/blake3/bao"

	"github.com/artifactstore/artifactstore/digest/blaketree"
)

func TestComputeKnownAnswers(t *testing.T) {
	t.Parallel()
	cases := []struct {
		in             string
		blake3, sha256 string
	}{
		{"", emptyBLAKE3, emptySHA256},
		{"abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
	}
	for _, c := range cases {
		d, err := Compute(strings.NewReader(c.in), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(d.BLAKE3[:]); got != c.blake3 {
			t.Errorf("blake3(%q) = %s, want %s", c.in, got, c.blake3)
		}
		if got := hex.EncodeToString(d.SHA256[:]); got != c.sha256 {
			t.Errorf("sha256(%q) = %s, want %s", c.in, got, c.sha256)
		}
		if d.Size != int64(len(c.in)) {
			t.Errorf("size(%q) = %d", c.in, d.Size)
		}
		if !d.Matches(MustParse("blake3:"+c.blake3)) || !d.Matches(MustParse("sha256:"+c.sha256)) {
			t.Errorf("Matches(%q) false for its own addresses", c.in)
		}
	}
}

// TestDualHasherMatchesReference feeds writes of every size class, including
// ones above the parallel threshold, and compares with the one-shot sums.
func TestDualHasherMatchesReference(t *testing.T) {
	t.Parallel()
	data := make([]byte, 3<<20+17)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	h := NewDualHasher()
	defer h.Close()
	for _, chunk := range []int{1, 100, 4096, parallelThreshold - 1, parallelThreshold, 1 << 20, 7} {
		h.Reset()
		for rest := data; len(rest) > 0; {
			n := min(chunk, len(rest))
			h.Write(rest[:n])
			rest = rest[n:]
		}
		d := h.Sum()
		if d.BLAKE3 != blake3.Sum256(data) || d.SHA256 != sha256.Sum256(data) || d.Size != int64(len(data)) {
			t.Fatalf("chunk %d: digests differ from the reference", chunk)
		}
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

// TestDualHasherWriteAllocatesNothing checks that the dual hasher adds no
// allocation of its own per write: lukechampine.com/blake3 allocates a
// little inside Write, so the bound is what BLAKE3 alone allocates.
func TestDualHasherWriteAllocatesNothing(t *testing.T) {
	buf := make([]byte, 1<<20)
	b3 := blake3.New(Size, nil)
	base := testing.AllocsPerRun(20, func() { b3.Write(buf) })
	h := NewDualHasher()
	defer h.Close()
	h.Write(buf) // starts the helper goroutine
	if n := testing.AllocsPerRun(20, func() { h.Write(buf) }); n > base {
		t.Fatalf("Write allocates %.1f times per call, BLAKE3 alone %.1f: the dual hasher allocates per chunk", n, base)
	}
}

func benchmarkInput(b *testing.B) []byte {
	data := make([]byte, 64<<20)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	return data
}

const benchChunk = 1 << 20

func BenchmarkHash(b *testing.B) {
	data := benchmarkInput(b)
	run := func(name string, w func() io.Writer) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				h := w()
				for off := 0; off < len(data); off += benchChunk {
					h.Write(data[off : off+benchChunk])
				}
				if c, ok := h.(io.Closer); ok {
					c.Close()
				}
			}
		})
	}
	run("baseline_sha256", func() io.Writer { return sha256.New() })
	run("blake3", func() io.Writer { return blake3.New(Size, nil) })
	run("multiwriter", func() io.Writer { return io.MultiWriter(sha256.New(), blake3.New(Size, nil)) })
	run("dual", func() io.Writer { return NewDualHasher() })
}

func TestComputeReadError(t *testing.T) {
	t.Parallel()
	_, err := Compute(io.MultiReader(bytes.NewReader([]byte("x")), errReader{}), nil)
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Compute error = %v, want the reader's error", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errBoom }

var errBoom = errors.New("boom")

// TestDualHasherTree checks that the tree comes with the digests: its root
// is the BLAKE3 digest and it is bao's outboard of the bytes.
func TestDualHasherTree(t *testing.T) {
	t.Parallel()
	data := make([]byte, 5*blaketree.GroupSize+99)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	h := NewDualHasher()
	defer h.Close()
	for rest := data; len(rest) > 0; {
		n := min(40<<10, len(rest))
		h.Write(rest[:n])
		rest = rest[n:]
	}
	ob, err := h.Tree().Bytes()
	if err != nil {
		t.Fatal(err)
	}
	want, root := bao.EncodeBuf(data, blaketree.Group, true)
	if !bytes.Equal(ob, want) || h.Sum().BLAKE3 != root {
		t.Fatal("the dual hasher's tree is not bao's outboard of the bytes")
	}
}
