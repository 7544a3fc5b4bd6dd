package blaketree

import (
	"bufio"
	"fmt"
	"io"
	"math/bits"
	"os"

	"lukechampine.com/blake3/guts"
)

// DefaultMemoryLimit is how many bytes of tree nodes a Builder keeps in
// memory before it moves them to a temp file: 1 MiB holds the tree of a
// 1 GiB object.
const DefaultMemoryLimit = 1 << 20

// BuilderOption configures NewBuilder.
type BuilderOption func(*Builder)

// WithMemoryLimit sets how many bytes of nodes stay in memory (default
// DefaultMemoryLimit); beyond it they go to an unlinked temp file.
func WithMemoryLimit(n int) BuilderOption { return func(b *Builder) { b.store.limit = n } }

// WithSpillDir sets the directory of the temp file (default os.TempDir()).
func WithSpillDir(dir string) BuilderOption { return func(b *Builder) { b.store.dir = dir } }

// Builder hashes a stream into its BLAKE3 tree: Sum is the BLAKE3-256
// digest of everything written and Outboard its Bao outboard encoding.
//
// While streaming it keeps the chaining values of the complete subtrees in
// post-order (64 bytes per chunk group), which is what laying out the
// pre-order outboard at the end needs; past the memory limit they go to an
// unlinked temp file, so memory does not grow with the object. Sum and
// Outboard do not change the state: writing may go on after them.
//
// A Builder is not safe for concurrent use. Close releases the temp file.
type Builder struct {
	n       int64
	partial []byte // bytes of the group being filled when writes are not aligned

	// pending is the node of the latest full group, not yet pushed: it is
	// the last group when nothing follows.
	pending    guts.Node
	hasPending bool
	pushed     int64 // groups whose chaining value is in the store
	stack      [64][8]uint32

	store nodeStore
}

// NewBuilder returns an empty Builder.
func NewBuilder(opts ...BuilderOption) *Builder {
	b := &Builder{store: nodeStore{limit: DefaultMemoryLimit}}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Write hashes p. It fails only when the temp file of a large tree fails;
// the error then sticks and every later call returns it.
func (b *Builder) Write(p []byte) (int, error) {
	if b.store.err != nil {
		return 0, b.store.err
	}
	total := len(p)
	for len(p) > 0 {
		if len(b.partial) > 0 || len(p) < GroupSize {
			if b.partial == nil {
				b.partial = make([]byte, 0, GroupSize)
			}
			k := copy(b.partial[len(b.partial):GroupSize], p)
			b.partial = b.partial[:len(b.partial)+k]
			p = p[k:]
			if len(b.partial) == GroupSize {
				b.addGroup(b.partial)
				b.partial = b.partial[:0]
			}
			continue
		}
		b.addGroup(p[:GroupSize])
		p = p[GroupSize:]
	}
	b.n += int64(total)
	return total, b.store.err
}

// addGroup hashes one full group; the previous one, now known not to be
// the last, goes into the tree.
func (b *Builder) addGroup(g []byte) {
	n := groupNode(g, uint64(b.groupsSeen())*(GroupSize/guts.ChunkSize))
	if b.hasPending {
		b.push(guts.ChainingValue(b.pending))
	}
	b.pending, b.hasPending = n, true
}

func (b *Builder) groupsSeen() int64 {
	if b.hasPending {
		return b.pushed + 1
	}
	return b.pushed
}

// push adds the chaining value of group b.pushed, merging complete
// subtrees as the BLAKE3 hasher does, and records every new node.
func (b *Builder) push(cv [8]uint32) {
	b.store.add(cv)
	h := 0
	for b.pushed&(1<<h) != 0 {
		cv = parentCV(b.stack[h], cv, 0)
		b.store.add(cv)
		h++
	}
	b.stack[h] = cv
	b.pushed++
}

// Size returns the number of bytes written.
func (b *Builder) Size() int64 { return b.n }

// tail returns the node of the last group and the number of groups.
func (b *Builder) tail() (guts.Node, int64) {
	switch {
	case len(b.partial) > 0 || !b.hasPending:
		return groupNode(b.partial, uint64(b.groupsSeen())*(GroupSize/guts.ChunkSize)), b.groupsSeen() + 1
	default:
		return b.pending, b.pushed + 1
	}
}

// Sum returns the BLAKE3-256 digest of everything written: the root of
// the tree.
func (b *Builder) Sum() [32]byte {
	n, _ := b.tail()
	// With a partial group after a pending one, the pending group is
	// pushed in a copy of the stack.
	stack, pushed := b.stack, b.pushed
	if len(b.partial) > 0 && b.hasPending {
		cv := guts.ChainingValue(b.pending)
		h := 0
		for pushed&(1<<h) != 0 {
			cv = parentCV(stack[h], cv, 0)
			h++
		}
		stack[h] = cv
		pushed++
	}
	for i := bits.TrailingZeros64(uint64(pushed)); i < bits.Len64(uint64(pushed)); i++ {
		if pushed&(1<<i) != 0 {
			n = guts.ParentNode(stack[i], guts.ChainingValue(n), &guts.IV, 0)
		}
	}
	n.Flags |= guts.FlagRoot
	var out [32]byte
	cvToBytes(guts.ChainingValue(n), out[:])
	return out
}

// Reset forgets everything written; the temp file, if any, is released.
func (b *Builder) Reset() {
	b.store.close()
	*b = Builder{partial: b.partial[:0], store: nodeStore{limit: b.store.limit, dir: b.store.dir}}
}

// Close releases the temp file of a large tree. It is safe to call more
// than once; the Builder is unusable after.
func (b *Builder) Close() error { return b.store.close() }

// Outboard returns the outboard of everything written so far; it stays
// valid until the next Write, Reset or Close.
func (b *Builder) Outboard() Outboard { return Outboard{b: b} }

// Outboard is the Bao outboard encoding of a Builder's stream.
type Outboard struct{ b *Builder }

// Size returns the length of the encoding in bytes.
func (o Outboard) Size() int64 { return OutboardSize(o.b.n) }

// WriteTo writes the encoding to w, sequentially: the header, then every
// parent node in pre-order.
func (o Outboard) WriteTo(w io.Writer) (int64, error) {
	b := o.b
	if b.store.err != nil {
		return 0, b.store.err
	}
	tailNode, groups := b.tail()
	l := layout{b: b, tailCV: guts.ChainingValue(tailNode), groups: groups}
	if b.hasPending && len(b.partial) > 0 {
		l.pendingCV, l.hasPendingCV = guts.ChainingValue(b.pending), true
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	h := Header(b.n)
	if _, err := bw.Write(h[:]); err != nil {
		return 0, err
	}
	if err := l.emit(bw, 0, groups); err != nil {
		return 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	return o.Size(), nil
}

// Bytes returns the encoding in memory (for small trees and tests).
func (o Outboard) Bytes() ([]byte, error) {
	buf := make([]byte, 0, o.Size())
	w := &sliceWriter{buf: buf}
	if _, err := o.WriteTo(w); err != nil {
		return nil, err
	}
	return w.buf, nil
}

type sliceWriter struct{ buf []byte }

func (s *sliceWriter) Write(p []byte) (int, error) { s.buf = append(s.buf, p...); return len(p), nil }

// layout lays out the pre-order outboard from the stored post-order nodes,
// in units of groups.
type layout struct {
	b            *Builder
	tailCV       [8]uint32
	groups       int64
	pendingCV    [8]uint32
	hasPendingCV bool
	node         [NodeSize]byte
}

// cv returns the chaining value of the subtree over groups [a, a+c).
func (l *layout) cv(a, c int64) ([8]uint32, error) {
	last := l.groups - 1
	switch {
	case c == 1 && a == last:
		return l.tailCV, nil
	case c == 1 && a == l.b.pushed && l.hasPendingCV:
		return l.pendingCV, nil
	case a+c <= l.b.pushed && c&(c-1) == 0:
		// A complete subtree, every group pushed: it is stored.
		h := bits.TrailingZeros64(uint64(c))
		return l.b.store.get(2*a - int64(bits.OnesCount64(uint64(a))) + (2 << h) - 2)
	}
	mid := int64(1) << (bits.Len64(uint64(c-1)) - 1)
	left, err := l.cv(a, mid)
	if err != nil {
		return left, err
	}
	right, err := l.cv(a+mid, c-mid)
	if err != nil {
		return right, err
	}
	return parentCV(left, right, 0), nil
}

// emit writes the parent nodes of the subtree over groups [a, a+c) in
// pre-order.
func (l *layout) emit(w *bufio.Writer, a, c int64) error {
	if c <= 1 {
		return nil
	}
	mid := int64(1) << (bits.Len64(uint64(c-1)) - 1)
	left, err := l.cv(a, mid)
	if err != nil {
		return err
	}
	right, err := l.cv(a+mid, c-mid)
	if err != nil {
		return err
	}
	cvToBytes(left, l.node[:32])
	cvToBytes(right, l.node[32:])
	if _, err := w.Write(l.node[:]); err != nil {
		return err
	}
	if err := l.emit(w, a, mid); err != nil {
		return err
	}
	return l.emit(w, a+mid, c-mid)
}

// nodeStore is an append-only array of chaining values, in memory up to
// limit bytes and then in an unlinked temp file.
type nodeStore struct {
	limit int
	dir   string

	mem     []byte
	f       *os.File
	w       *bufio.Writer
	n       int64
	err     error
	scratch [cvSize]byte

	// A one-page cache for reads from the file: the layout reads nearby
	// nodes one after another.
	page     []byte
	pageOff  int64
	pageSize int
}

const cvSize = 32

func (s *nodeStore) add(cv [8]uint32) {
	if s.err != nil {
		return
	}
	b := s.scratch[:]
	cvToBytes(cv, b)
	if s.f == nil && len(s.mem)+cvSize > s.limit {
		s.spill()
	}
	if s.f != nil {
		if _, err := s.w.Write(b); err != nil {
			s.err = fmt.Errorf("blaketree: write tree nodes to a temp file: %w", err)
			return
		}
	} else {
		s.mem = append(s.mem, b...)
	}
	s.n++
}

func (s *nodeStore) spill() {
	f, err := os.CreateTemp(s.dir, "blaketree-*")
	if err != nil {
		s.err = fmt.Errorf("blaketree: create a temp file for a large tree (set the spill directory to a writable one): %w", err)
		return
	}
	// Unlinked at once: a crash leaves nothing behind.
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		s.err = fmt.Errorf("blaketree: unlink temp file: %w", err)
		return
	}
	s.f = f
	s.w = bufio.NewWriterSize(f, 64<<10)
	if _, err := s.w.Write(s.mem); err != nil {
		s.err = fmt.Errorf("blaketree: write tree nodes to a temp file: %w", err)
	}
	s.mem = nil
}

func (s *nodeStore) get(i int64) ([8]uint32, error) {
	if s.err != nil {
		return [8]uint32{}, s.err
	}
	if i < 0 || i >= s.n {
		return [8]uint32{}, fmt.Errorf("blaketree: node %d of %d (a bug)", i, s.n)
	}
	off := i * cvSize
	if s.f == nil {
		return bytesToCV(s.mem[off:]), nil
	}
	if s.w.Buffered() > 0 {
		if err := s.w.Flush(); err != nil {
			s.err = fmt.Errorf("blaketree: write tree nodes to a temp file: %w", err)
			return [8]uint32{}, s.err
		}
	}
	if s.page == nil {
		s.page = make([]byte, 4096)
		s.pageOff = -1
	}
	if s.pageOff < 0 || off < s.pageOff || off+cvSize > s.pageOff+int64(s.pageSize) {
		s.pageOff = off &^ 4095
		n, err := s.f.ReadAt(s.page, s.pageOff)
		if err != nil && err != io.EOF {
			s.err = fmt.Errorf("blaketree: read tree nodes from a temp file: %w", err)
			return [8]uint32{}, s.err
		}
		s.pageSize = n
		if off+cvSize > s.pageOff+int64(n) {
			s.err = fmt.Errorf("blaketree: temp file of tree nodes is short (%d bytes at %d)", n, s.pageOff)
			return [8]uint32{}, s.err
		}
	}
	return bytesToCV(s.page[off-s.pageOff:]), nil
}

func (s *nodeStore) close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f, s.w = nil, nil
	if s.err == nil {
		s.err = fmt.Errorf("blaketree: builder closed")
	}
	return err
}
