package blaketree

import (
	"errors"
	"fmt"
	"io"
)

// span is a subtree of the tree: the bytes [pos, pos+size) of the object,
// and, when it has parent nodes, the outboard offset of its own.
type span struct {
	pos, size int64
	off       int64
	// cv and flags are what the subtree's root must hash to; only a
	// verifier fills them in.
	cv    [8]uint32
	flags uint32
}

// walk visits, in pre-order, the subtrees of an object of size bytes that
// intersect the range [start, end): the order in which a proof holds their
// parent nodes and a verifier consumes them.
type walk struct {
	start, end int64
	stack      []span
}

func newWalk(size, start, end int64) walk {
	return walk{start: start, end: end, stack: []span{{pos: 0, size: size, off: HeaderSize}}}
}

func (w *walk) intersects(s span) bool {
	// The only empty span is the root of an empty object, whose one
	// (empty) group every read of it checks.
	return s.size == 0 || s.pos < w.end && w.start < s.pos+s.size
}

// next returns the next intersecting span, leaf or parent, and false at
// the end. A parent's children are visited next, left first.
func (w *walk) next() (span, bool) {
	for len(w.stack) > 0 {
		s := w.stack[len(w.stack)-1]
		w.stack = w.stack[:len(w.stack)-1]
		if !w.intersects(s) {
			continue
		}
		if s.size > GroupSize {
			mid := leftSize(s.size)
			w.stack = append(w.stack,
				span{pos: s.pos + mid, size: s.size - mid, off: s.off + NodeSize + NodeSize*nodesWithin(mid)},
				span{pos: s.pos, size: mid, off: s.off + NodeSize})
		}
		return s, true
	}
	return span{}, false
}

// ProofSize returns the size of the proof of the range [off, off+n) of an
// object of size bytes: the header and one node per parent on the paths
// to the groups the range touches.
func ProofSize(size, off, n int64) int64 {
	w := newWalk(size, off, off+n)
	total := int64(HeaderSize)
	for {
		s, ok := w.next()
		if !ok {
			return total
		}
		if s.size > GroupSize {
			total += NodeSize
		}
	}
}

// maxRun caps one read of a proof's nodes from the outboard, and the gap
// between two needed nodes that is read through rather than skipped with
// a second read.
const (
	maxRun   = 64 << 10
	maxGap   = 4 << 10
	maxAhead = maxRun / NodeSize
)

// Proof returns the proof of the range [off, off+n) of an object of size
// bytes, read from its stored outboard: the outboard's header, then the
// parent nodes a verifier of that range needs, in the order it needs them.
// For the whole object the proof is the whole outboard. Only the needed
// nodes are read, in a few ReadAt calls of nearby nodes; memory stays
// under 128 KiB whatever the size.
//
// A short outboard makes the proof end early, which a verifier reports as
// a mismatch of the tree; other read errors are returned as they are.
func Proof(outboard io.ReaderAt, size, off, n int64) io.Reader {
	return &proofReader{src: outboard, walk: newWalk(size, off, off+n), hdr: true}
}

type proofReader struct {
	src  io.ReaderAt
	walk walk
	hdr  bool

	offs []int64
	run  []byte
	out  []byte
	done bool
	err  error
}

func (p *proofReader) Read(b []byte) (int, error) {
	for len(p.out) == 0 {
		if p.err != nil {
			return 0, p.err
		}
		if p.done {
			return 0, io.EOF
		}
		p.fill()
	}
	n := copy(b, p.out)
	p.out = p.out[n:]
	return n, nil
}

// fill reads the next batch of needed nodes into p.out.
func (p *proofReader) fill() {
	if p.hdr {
		p.hdr = false
		p.offs = append(p.offs[:0], 0)
	} else {
		p.offs = p.offs[:0]
	}
	for len(p.offs) < maxAhead {
		s, ok := p.walk.next()
		if !ok {
			p.done = true
			break
		}
		if s.size > GroupSize {
			p.offs = append(p.offs, s.off)
		}
	}
	if cap(p.out) == 0 {
		p.out = make([]byte, 0, maxRun+NodeSize)
	}
	p.out = p.out[:0]
	for i := 0; i < len(p.offs); {
		// A run of nodes close enough to read at once.
		j := i + 1
		for j < len(p.offs) && p.offs[j]-p.offs[j-1] <= maxGap && p.offs[j]+NodeSize-p.offs[i] <= maxRun {
			j++
		}
		first, last := p.offs[i], p.offs[j-1]
		length := last + NodeSize - first
		if first == 0 && j-i == 1 {
			length = HeaderSize
		}
		if cap(p.run) < int(length) {
			p.run = make([]byte, max(length, maxRun))
		}
		run := p.run[:length]
		m, err := p.src.ReadAt(run, first)
		if err != nil && !errors.Is(err, io.EOF) {
			p.err = fmt.Errorf("read the tree at offset %d: %w", first, err)
			return
		}
		for k := i; k < j; k++ {
			o := p.offs[k] - first
			size := int64(NodeSize)
			if p.offs[k] == 0 {
				size = HeaderSize
			}
			if o+size > int64(m) {
				// The outboard ends here: hand out what it had and stop.
				p.out = append(p.out, run[o:max(o, int64(m))]...)
				p.done = true
				return
			}
			p.out = append(p.out, run[o:o+size]...)
		}
		i = j
	}
}
