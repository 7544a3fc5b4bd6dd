package blaketree

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"lukechampine.com/blake3/guts"
)

// DefaultBatchGroups is how many chunk groups a Reader checks at once
// (1 MiB): enough to spread the hashing over cores and to amortise a
// hand-over between the read-ahead and the consumer.
const DefaultBatchGroups = 16

// ReaderOption configures NewReader.
type ReaderOption func(*Reader)

// WithParallelism sets how many goroutines hash one batch (default
// GOMAXPROCS).
func WithParallelism(n int) ReaderOption {
	return func(r *Reader) {
		if n > 0 {
			r.par = n
		}
	}
}

// WithBatchGroups sets how many chunk groups are checked and handed out at
// once (default DefaultBatchGroups).
func WithBatchGroups(n int) ReaderOption {
	return func(r *Reader) {
		if n > 0 {
			r.batch = n
		}
	}
}

// WithBufferPool makes the Reader take its batch buffers from pool (of
// *[]byte) and give them back on Close; a buffer smaller than a batch is
// replaced.
func WithBufferPool(pool *sync.Pool) ReaderOption { return func(r *Reader) { r.pool = pool } }

// Reader streams the range [off, off+n) of an object and releases each
// chunk group's bytes only after they matched the tree, so a reader never
// sees a byte that was not proven against the root.
//
// It reads the object's whole chunk groups from data, which must start at
// AlignedRange's start, and the range's proof (see Proof) from proof. A
// failed check is a *MismatchError returned after the bytes of the groups
// before the bad one and before any of its own.
//
// A goroutine reads and checks the next batch while the caller consumes
// the current one; it starts at the first Read, WriteTo or Prime. Close
// stops it; the caller must call Close (it does not close data or proof),
// and data and proof must not be used by anyone else until then.
type Reader struct {
	data, proof io.Reader
	size        int64
	root        [8]uint32
	walk        walk
	hdrDone     bool

	par, batch int
	pool       *sync.Pool
	leaves     []span
	cvs        [][8]uint32
	node       [NodeSize]byte // scratch for a parent node read from proof

	once    sync.Once
	free    chan *[]byte
	results chan batchResult
	stop    chan struct{}
	done    chan struct{}
	closed  bool

	cur    batchResult
	hasCur bool
}

type batchResult struct {
	buf *[]byte
	out []byte
	err error
}

// NewReader returns a Reader of the range [off, off+n) of an object of
// size bytes whose BLAKE3-256 digest is root. For the whole object, off
// is 0 and n is size (also when size is 0: the empty object is checked
// too).
func NewReader(data, proof io.Reader, root [32]byte, size, off, n int64, opts ...ReaderOption) *Reader {
	r := &Reader{
		data: data, proof: proof, size: size, root: rootCV(root),
		walk: newWalk(size, off, off+n),
		par:  runtime.GOMAXPROCS(0), batch: DefaultBatchGroups,
	}
	for _, o := range opts {
		o(r)
	}
	r.walk.stack[0].cv, r.walk.stack[0].flags = r.root, guts.FlagRoot
	return r
}

func (r *Reader) start() {
	r.once.Do(func() {
		// Three buffers let the read-ahead fill one while the consumer
		// holds another and a third waits; a short range needs fewer.
		bufs := 3
		if start, end := AlignedRange(r.size, r.walk.start, r.walk.end-r.walk.start); end-start <= int64(r.batch*GroupSize) {
			bufs = 2
		}
		r.free = make(chan *[]byte, bufs)
		r.results = make(chan batchResult, 1)
		r.stop = make(chan struct{})
		r.done = make(chan struct{})
		for range bufs {
			r.free <- r.getBuf()
		}
		go r.produce()
	})
}

func (r *Reader) getBuf() *[]byte {
	want := r.batch * GroupSize
	if r.pool != nil {
		if bp, ok := r.pool.Get().(*[]byte); ok && cap(*bp) >= want {
			return bp
		}
	}
	b := make([]byte, want)
	return &b
}

func (r *Reader) putBuf(bp *[]byte) {
	if r.pool != nil && bp != nil {
		r.pool.Put(bp)
	}
}

func (r *Reader) produce() {
	defer close(r.done)
	for {
		var bp *[]byte
		select {
		case bp = <-r.free:
		case <-r.stop:
			return
		}
		out, err := r.fill((*bp)[:cap(*bp)])
		select {
		case r.results <- batchResult{buf: bp, out: out, err: err}:
		case <-r.stop:
			r.free <- bp
			return
		}
		if err != nil {
			return
		}
	}
}

// next makes the next batch current; false when there is none (r.cur.err
// says why).
func (r *Reader) next() bool {
	r.start()
	for {
		if r.hasCur {
			if len(r.cur.out) > 0 {
				return true
			}
			if r.cur.err != nil {
				return false
			}
			r.free <- r.cur.buf
			r.hasCur = false
		}
		r.cur, r.hasCur = <-r.results, true
	}
}

// Prime checks the first batch now, so that a caller can learn of a
// mismatch before it commits to an answer (e.g. sends HTTP headers). It
// returns the first batch's error, or nil when the batch was good (also
// when it was the last one).
func (r *Reader) Prime() error {
	if r.next() {
		return nil
	}
	if errors.Is(r.cur.err, io.EOF) {
		return nil
	}
	return r.cur.err
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errors.New("blaketree: read after Close")
	}
	if !r.next() {
		return 0, r.cur.err
	}
	n := copy(p, r.cur.out)
	r.cur.out = r.cur.out[n:]
	return n, nil
}

// WriteTo implements io.WriterTo: each proven batch is written to w as it
// is, without a copy.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	if r.closed {
		return 0, errors.New("blaketree: read after Close")
	}
	var total int64
	for r.next() {
		n, err := w.Write(r.cur.out)
		total += int64(n)
		r.cur.out = r.cur.out[n:]
		if err != nil {
			return total, err
		}
	}
	if errors.Is(r.cur.err, io.EOF) {
		return total, nil
	}
	return total, r.cur.err
}

// Close stops the read-ahead and releases the buffers. It waits for a read
// of data in flight to return: when data's reads can block (a network
// stream), close data or cancel its context first. It is safe to call more
// than once.
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.stop == nil {
		return nil
	}
	close(r.stop)
	<-r.done
	if r.hasCur {
		r.putBuf(r.cur.buf)
	}
	for {
		select {
		case res := <-r.results:
			r.putBuf(res.buf)
		case bp := <-r.free:
			r.putBuf(bp)
		default:
			return nil
		}
	}
}

// fill checks the next batch of groups into buf and returns the bytes of
// the range they hold: all of them, or those before the first bad group
// together with its *MismatchError. io.EOF follows the last batch.
func (r *Reader) fill(buf []byte) ([]byte, error) {
	if !r.hdrDone {
		if err := r.checkHeader(); err != nil {
			return nil, err
		}
		r.hdrDone = true
	}
	leaves, total, walkErr := r.collect(len(buf))
	if len(leaves) == 0 {
		if walkErr != nil {
			return nil, walkErr
		}
		return nil, io.EOF
	}
	got, readErr := io.ReadFull(r.data, buf[:total])
	// Check every group read in full; a short read stops at the group it
	// cut.
	complete := 0
	for end := int64(0); complete < len(leaves); complete++ {
		end += leaves[complete].size
		if end > int64(got) {
			break
		}
	}
	r.hash(buf, leaves[:complete])
	good := 0
	for good < complete && r.cvs[good] == leaves[good].cv {
		good++
	}
	var out []byte
	if good > 0 {
		first, last := leaves[0], leaves[good-1]
		lo := max(r.walk.start, first.pos) - first.pos
		hi := min(r.walk.end, last.pos+last.size) - first.pos
		if hi > lo {
			out = buf[lo:hi]
		}
	}
	switch {
	case good < complete:
		l := leaves[good]
		return out, &MismatchError{Offset: l.pos, Length: l.size, Detail: "its BLAKE3 chaining value differs from the tree's"}
	case complete < len(leaves):
		l := leaves[complete]
		if errors.Is(readErr, io.ErrUnexpectedEOF) || errors.Is(readErr, io.EOF) {
			return out, &MismatchError{Offset: l.pos, Length: l.size,
				Detail: fmt.Sprintf("the object ends at byte %d, before its recorded size of %d bytes", leaves[0].pos+int64(got), r.size)}
		}
		return out, fmt.Errorf("read bytes %d-%d: %w", l.pos, l.pos+l.size-1, readErr)
	case walkErr != nil:
		return out, walkErr
	}
	return out, nil
}

func (r *Reader) checkHeader() error {
	var h [HeaderSize]byte
	if _, err := io.ReadFull(r.proof, h[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &MismatchError{Length: r.size, Node: true, Detail: "the tree is empty or shorter than its header"}
		}
		return fmt.Errorf("read the tree's header: %w", err)
	}
	if got := int64(binary.LittleEndian.Uint64(h[:])); got != r.size {
		return &MismatchError{Length: r.size, Node: true, Detail: fmt.Sprintf("the tree is of an object of %d bytes, not %d", got, r.size)}
	}
	return nil
}

// collect walks the tree to the next groups of the range, up to max bytes
// and the batch size, checking every parent node on the way. An error
// (a bad or missing node) comes after the groups collected before it.
func (r *Reader) collect(maxBytes int) ([]span, int64, error) {
	r.leaves = r.leaves[:0]
	var total int64
	for len(r.leaves) < r.batch {
		top := len(r.walk.stack) - 1
		if top < 0 {
			break
		}
		// Peek: a group that would overflow the buffer waits for the next
		// batch.
		if s := r.walk.stack[top]; s.size <= GroupSize && r.walk.intersects(s) && total+s.size > int64(maxBytes) {
			break
		}
		s, ok := r.walk.next()
		if !ok {
			break
		}
		if s.size <= GroupSize {
			r.leaves = append(r.leaves, s)
			total += s.size
			continue
		}
		node := r.node[:]
		if _, err := io.ReadFull(r.proof, node); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return r.leaves, total, &MismatchError{Offset: s.pos, Length: s.size, Node: true, Detail: "the tree ends before this node"}
			}
			return r.leaves, total, fmt.Errorf("read the tree node of bytes %d-%d: %w", s.pos, s.pos+s.size-1, err)
		}
		l, rt := bytesToCV(node[:32]), bytesToCV(node[32:])
		if parentCV(l, rt, s.flags) != s.cv {
			return r.leaves, total, &MismatchError{Offset: s.pos, Length: s.size, Node: true, Detail: "the node's chaining values do not hash to their parent's"}
		}
		n := len(r.walk.stack)
		r.walk.stack[n-1].cv, r.walk.stack[n-2].cv = l, rt
	}
	return r.leaves, total, nil
}

// hash computes the chaining value of every leaf into r.cvs, spreading the
// leaves over r.par goroutines.
func (r *Reader) hash(buf []byte, leaves []span) {
	if cap(r.cvs) < len(leaves) {
		r.cvs = make([][8]uint32, len(leaves))
	}
	r.cvs = r.cvs[:len(leaves)]
	if len(leaves) == 0 {
		return
	}
	base := leaves[0].pos
	one := func(i int) {
		l := leaves[i]
		r.cvs[i] = groupCV(buf[l.pos-base:l.pos-base+l.size], l.pos, l.flags)
	}
	par := min(r.par, len(leaves))
	if par <= 1 {
		for i := range leaves {
			one(i)
		}
		return
	}
	var wg sync.WaitGroup
	per := (len(leaves) + par - 1) / par
	for lo := per; lo < len(leaves); lo += per {
		hi := min(lo+per, len(leaves))
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				one(i)
			}
		})
	}
	for i := 0; i < min(per, len(leaves)); i++ {
		one(i)
	}
	wg.Wait()
}
