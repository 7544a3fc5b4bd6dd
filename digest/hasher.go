package digest

import (
	"crypto/sha256"
	"hash"
	"io"
	"sync"

	"lukechampine.com/blake3"
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
// pass. Large writes are hashed by both algorithms at once on two
// goroutines, so throughput approaches that of the slower hash alone rather
// than the sum of both. It adds no allocation of its own per write
// (lukechampine.com/blake3 itself allocates short-lived garbage inside Write).
//
// A DualHasher is not safe for concurrent use. Close releases its helper
// goroutine; Sum may be called before or after Close.
type DualHasher struct {
	b3   *blake3.Hasher
	s256 hash.Hash
	n    int64

	once sync.Once
	work chan []byte
	done chan struct{}
}

var _ io.WriteCloser = (*DualHasher)(nil)

// NewDualHasher returns a hasher ready for writes.
func NewDualHasher() *DualHasher {
	return &DualHasher{b3: blake3.New(Size, nil), s256: sha256.New()}
}

func (h *DualHasher) start() {
	h.work = make(chan []byte)
	h.done = make(chan struct{})
	go func() {
		for p := range h.work {
			h.b3.Write(p)
			h.done <- struct{}{}
		}
		close(h.done)
	}()
}

// Write hashes p with both algorithms. It never fails.
func (h *DualHasher) Write(p []byte) (int, error) {
	h.n += int64(len(p))
	if len(p) < parallelThreshold {
		h.b3.Write(p)
		h.s256.Write(p)
		return len(p), nil
	}
	h.once.Do(h.start)
	h.work <- p
	h.s256.Write(p)
	<-h.done
	return len(p), nil
}

// Sum returns the digests of everything written so far.
func (h *DualHasher) Sum() Digests {
	var d Digests
	h.b3.Sum(d.BLAKE3[:0])
	h.s256.Sum(d.SHA256[:0])
	d.Size = h.n
	return d
}

// Reset forgets everything written, keeping the helper goroutine.
func (h *DualHasher) Reset() {
	h.b3.Reset()
	h.s256.Reset()
	h.n = 0
}

// Close stops the helper goroutine. It is safe to call more than once.
func (h *DualHasher) Close() error {
	h.once.Do(func() {}) // a hasher that never started needs no stop
	if h.work != nil {
		close(h.work)
		for range h.done {
		}
		h.work = nil
	}
	return nil
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
