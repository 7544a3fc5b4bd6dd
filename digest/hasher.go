package digest

import (
	"crypto/sha256"
	"hash"
	"io"
	"sync"

	"lukechampine.com/blake3"

	"github.com/artifactstore/artifactstore/digest/blaketree"
)

// Digests holds both digests of one byte stream and its length.
type Digests struct {
	BLAKE3 [Size]byte
	SHA256 [Size]byte
	Size   int64
}

// Address returns the content address of the stream under alg.
func (d Digests) Address(alg Algorithm) Address {
	switch alg {
	case BLAKE3:
		return New(BLAKE3, d.BLAKE3)
	case SHA256:
		return New(SHA256, d.SHA256)
	default:
		panic("digest: Digests.Address of an unknown algorithm")
	}
}

// Matches reports whether addr is the address of these digests.
func (d Digests) Matches(addr Address) bool {
	return !addr.IsZero() && d.Address(addr.Algorithm()) == addr
}

// parallelThreshold is the write size above which the two hashes run on two
// goroutines. Below it, handing a chunk to another goroutine costs more than
// hashing it.
const parallelThreshold = 32 << 10

// DualHasher computes BLAKE3-256 and SHA-256 over the same bytes in one
// pass, and with BLAKE3 the object's BLAKE3 tree (Tree): the tree's root
// is the BLAKE3 digest, so the tree costs no hashing of its own. Large
// writes are hashed by both algorithms at once on two goroutines, so
// throughput approaches that of the slower hash alone (SHA-256) rather
// than the sum of both. It adds no allocation of its own per write.
//
// A DualHasher is not safe for concurrent use. Close releases its helper
// goroutine and the tree's temp file; Sum may be called before or after
// Close, Tree only before.
type DualHasher struct {
	b3   *blaketree.Builder
	bare *blake3.Hasher // instead of b3, WithoutTree
	s256 hash.Hash
	n    int64
	err  error // of the tree's temp file, sticky

	once sync.Once
	work chan []byte
	done chan struct{}
}

var _ io.WriteCloser = (*DualHasher)(nil)

// HasherOption configures NewDualHasher.
type HasherOption func(*hasherConfig)

type hasherConfig struct {
	spillDir string
	noTree   bool
}

// WithTreeSpillDir sets where a very large tree keeps its nodes while it
// is built (an unlinked temp file; default os.TempDir()).
func WithTreeSpillDir(dir string) HasherOption {
	return func(c *hasherConfig) { c.spillDir = dir }
}

// WithoutTree computes the digests only, with the plain BLAKE3 hasher:
// for measuring what the tree costs, never for storing objects.
func WithoutTree() HasherOption { return func(c *hasherConfig) { c.noTree = true } }

// NewDualHasher returns a hasher ready for writes.
func NewDualHasher(opts ...HasherOption) *DualHasher {
	var c hasherConfig
	for _, o := range opts {
		o(&c)
	}
	h := &DualHasher{s256: sha256.New()}
	switch {
	case c.noTree:
		h.bare = blake3.New(Size, nil)
	case c.spillDir != "":
		h.b3 = blaketree.NewBuilder(blaketree.WithSpillDir(c.spillDir))
	default:
		h.b3 = blaketree.NewBuilder()
	}
	return h
}

func (h *DualHasher) writeB3(p []byte) error {
	if h.bare != nil {
		h.bare.Write(p)
		return nil
	}
	_, err := h.b3.Write(p)
	return err
}

func (h *DualHasher) start() {
	h.work = make(chan []byte)
	h.done = make(chan struct{})
	go func() {
		for p := range h.work {
			if err := h.writeB3(p); err != nil && h.err == nil {
				h.err = err
			}
			h.done <- struct{}{}
		}
		close(h.done)
	}()
}

// Write hashes p with both algorithms. It fails only when a large tree's
// temp file fails; that error sticks.
func (h *DualHasher) Write(p []byte) (int, error) {
	if h.err != nil {
		return 0, h.err
	}
	h.n += int64(len(p))
	if len(p) < parallelThreshold {
		if err := h.writeB3(p); err != nil {
			h.err = err
		}
		h.s256.Write(p)
		return len(p), h.err
	}
	h.once.Do(h.start)
	h.work <- p
	h.s256.Write(p)
	<-h.done
	return len(p), h.err
}

// Tree returns the BLAKE3 tree (Bao outboard) of everything written so
// far; it stays valid until the next Write, Reset or Close. It panics on a
// hasher made WithoutTree.
func (h *DualHasher) Tree() blaketree.Outboard { return h.b3.Outboard() }

// Err returns the sticky error of Write, if any.
func (h *DualHasher) Err() error { return h.err }

// Sum returns the digests of everything written so far.
func (h *DualHasher) Sum() Digests {
	var d Digests
	if h.bare != nil {
		h.bare.Sum(d.BLAKE3[:0])
	} else {
		d.BLAKE3 = h.b3.Sum()
	}
	h.s256.Sum(d.SHA256[:0])
	d.Size = h.n
	return d
}

// Reset forgets everything written, keeping the helper goroutine.
func (h *DualHasher) Reset() {
	if h.bare != nil {
		h.bare.Reset()
	} else {
		h.b3.Reset()
	}
	h.s256.Reset()
	h.n = 0
	h.err = nil
}

// Close stops the helper goroutine and releases the tree's temp file. It
// is safe to call more than once.
func (h *DualHasher) Close() error {
	h.once.Do(func() {}) // a hasher that never started needs no stop
	if h.work != nil {
		close(h.work)
		for range h.done {
		}
		h.work = nil
	}
	if h.b3 == nil {
		return nil
	}
	return h.b3.Close()
}

// Compute reads r to its end and returns its digests. buf is reused for the
// reads; when nil, a 1 MiB buffer is allocated.
func Compute(r io.Reader, buf []byte) (Digests, error) {
	h := NewDualHasher()
	defer h.Close()
	if buf == nil {
		buf = make([]byte, 1<<20)
	}
	if _, err := io.CopyBuffer(struct{ io.Writer }{h}, struct{ io.Reader }{r}, buf); err != nil {
		return Digests{}, err
	}
	return h.Sum(), nil
}
