package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"syscall"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
)

// putBufSize is the size of one chunk of a put: what is read, written and
// hashed at a time.
const putBufSize = 1 << 20

// PutterOption configures NewPutter.
type PutterOption func(*Putter)

// WithSpillDir sets where the tree of a very large object keeps its nodes
// while it is built (an unlinked temp file; default os.TempDir()).
func WithSpillDir(dir string) PutterOption { return func(p *Putter) { p.spillDir = dir } }

// WithSampleGroups sets how many chunk groups, besides the first and the
// last, a put proves of a stored copy before it deduplicates against it
// (default DefaultSampleGroups; 0 proves the first and last only).
func WithSampleGroups(n int) PutterOption {
	return func(p *Putter) { p.sampleN = max(n, 0) }
}

// WithSampleRand sets where the sampled groups come from: intN(n) returns
// a number in [0, n). The default is math/rand/v2; tests pass their own
// to choose the groups.
func WithSampleRand(intN func(n int64) int64) PutterOption {
	return func(p *Putter) { p.intN = intN }
}

// WithoutDedupCheck trusts a stored copy as before repairs existed: no
// look at the caller's records, no proof of sampled groups; content
// already stored is deduplicated against whatever its copy holds. It
// exists to measure what the check costs a re-put (BenchmarkDedup);
// production wiring never uses it.
func WithoutDedupCheck() PutterOption { return func(p *Putter) { p.noCheck = true } }

// WithoutTrees stores objects without their trees, as before trees
// existed (the data plane then builds a tree at the first read). It exists
// to measure what the tree costs a put; production wiring never uses it.
func WithoutTrees() PutterOption { return func(p *Putter) { p.noTrees = true } }

// Putter streams objects into backends: it verifies while writing, so
// that a backend only moves bytes. For each object it reads the stream
// once, and every chunk it reads is written to the backend and hashed
// (BLAKE3 with its tree, and SHA-256) from the same buffer, so the
// digests and the tree are of exactly the bytes written; it enforces the
// size cap, checks the caller's claims, and only then commits the object
// under the address computed from the bytes, with its tree. A failure
// aborts the write: nothing is left behind.
//
// Content the backend already holds is not simply trusted: before a put
// deduplicates against a stored copy it checks that copy (see check and
// PutOptions.Condition), and a copy that is damaged or lost is replaced
// by the put's own verified bytes, atomically (CommitReplace); the
// receipt then says Repaired. A re-upload never reports as stored bytes
// that no longer match.
//
// It is safe for concurrent use; memory per put is two chunk buffers
// and the tree's bounded node store, whatever the object's size.
type Putter struct {
	bufs     sync.Pool
	spillDir string
	noTrees  bool
	sampleN  int
	intN     func(int64) int64
	noCheck  bool
}

// NewPutter returns a Putter.
func NewPutter(opts ...PutterOption) *Putter {
	p := &Putter{sampleN: DefaultSampleGroups, intN: rand.Int64N}
	p.bufs.New = func() any { b := make([]byte, putBufSize); return &b }
	for _, o := range opts {
		o(p)
	}
	return p
}

// Put reads r to its end (or to MaxSize+1 bytes) into a new object of
// backend b, computing both digests and the tree of exactly the bytes it
// writes, checks the claims in opts, and commits the object under the
// address computed from the bytes; it returns once the object is durable.
// A wrong claim fails with a *MismatchError (ErrDigestMismatch,
// ErrSizeMismatch), a stream over MaxSize with ErrTooLarge; either way
// nothing is stored. Putting content the backend already holds drains the
// stream and, when the stored copy passes the check, leaves it untouched
// (the receipt says Deduplicated); a stored copy that fails the check, or
// that opts.Condition says is damaged, is replaced, and a recorded copy
// the backend lost is stored again (the receipt says Repaired). Put does
// not close r; it stops between chunks when ctx is
// done. A full file system or quota (ENOSPC, EDQUOT) fails with an error
// matching ErrInsufficientStorage, so that the ingester answers it as such
// rather than retrying it.
func (p *Putter) Put(ctx context.Context, b Backend, r io.Reader, opts PutOptions) (Receipt, error) {
	rc, err := p.put(ctx, b, r, opts)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		err = fmt.Errorf("%w: %w", ErrInsufficientStorage, err)
	}
	return rc, err
}

func (p *Putter) put(ctx context.Context, b Backend, r io.Reader, opts PutOptions) (Receipt, error) {
	primary, err := ValidateOptions(opts)
	if err != nil {
		return Receipt{}, err
	}
	if err := ctx.Err(); err != nil {
		return Receipt{}, err
	}
	w, err := b.Create(ctx, createHints(primary, opts))
	if err != nil {
		return Receipt{}, err
	}
	defer w.Abort()

	var hopts []digest.HasherOption
	if p.spillDir != "" {
		hopts = append(hopts, digest.WithTreeSpillDir(p.spillDir))
	}
	if p.noTrees {
		hopts = append(hopts, digest.WithoutTree())
	}
	h := digest.NewDualHasher(hopts...)
	defer h.Close()
	if err := p.copyHashed(ctx, w, h, r, opts.MaxSize); err != nil {
		return Receipt{}, err
	}
	d := h.Sum()
	if opts.ExpectAtEnd != nil {
		late := opts.ExpectAtEnd()
		for i, a := range late {
			if a.IsZero() {
				return Receipt{}, fmt.Errorf("put: %w: claimed address #%d at the end is empty", digest.ErrInvalid, i)
			}
		}
		opts.Expect = append(opts.Expect[:len(opts.Expect):len(opts.Expect)], late...)
	}
	if err := CheckClaims(opts, d); err != nil {
		return Receipt{}, err
	}
	var tree TreeSource
	if blaketree.HasNodes(d.Size) && !p.noTrees {
		tree = h.Tree()
	}
	addr := d.Address(primary)
	mode, repair, err := p.judge(ctx, b, addr, d, opts)
	if err != nil {
		return Receipt{}, err
	}
	c, err := w.Commit(ctx, addr, tree, mode)
	if err != nil {
		return Receipt{}, fmt.Errorf("store %s on %q: %w", addr, b.ID(), err)
	}
	if c.Deduplicated {
		// A lost copy that a concurrent put stored again meanwhile: that
		// put reports the repair.
		repair = nil
	}
	return Receipt{Address: addr, Digests: d, BackendID: b.ID(), StoredAt: c.StoredAt, Deduplicated: c.Deduplicated, Repaired: repair}, nil
}

// createHints passes the claims of opts on to the backend: the claimed
// address under the primary algorithm and the claimed size.
func createHints(primary digest.Algorithm, opts PutOptions) CreateOptions {
	var co CreateOptions
	for _, a := range opts.Expect {
		if a.Algorithm() == primary {
			co.Claimed = a
			break
		}
	}
	if opts.ExpectSize > 0 {
		co.Size = opts.ExpectSize
	}
	return co
}

// copyHashed copies r into w while hashing, one buffer per chunk: the bytes
// hashed are exactly the bytes written. Reading is pipelined with writing
// and hashing: a reader goroutine fills one pooled buffer while this one
// writes and hashes the other, so a network stream, the backend and both
// hashes work at the same time. Memory stays two buffers whatever the
// size.
func (p *Putter) copyHashed(ctx context.Context, w io.Writer, h *digest.DualHasher, r io.Reader, maxSize int64) error {
	if maxSize > 0 {
		r = io.LimitReader(r, maxSize+1)
	}
	type chunk struct {
		buf *[]byte
		n   int
		err error
	}
	free := make(chan *[]byte, 2)
	full := make(chan chunk)
	stop := make(chan struct{})
	for range 2 {
		free <- p.bufs.Get().(*[]byte)
	}
	go func() {
		defer close(full)
		for {
			var bp *[]byte
			select {
			case bp = <-free:
			case <-stop:
				return
			}
			m, err := io.ReadFull(r, *bp)
			select {
			case full <- chunk{bp, m, err}:
			case <-stop:
				free <- bp
				return
			}
			if err != nil {
				return
			}
		}
	}()
	// On return, stop the reader and wait for it: r is the caller's and
	// must not be read after Put returns. Then give the buffers back.
	defer func() {
		close(stop)
		for c := range full {
			free <- c.buf
		}
		for range 2 {
			p.bufs.Put(<-free)
		}
	}()

	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var c chunk
		select {
		case c = <-full:
		case <-ctx.Done():
			return ctx.Err()
		}
		m := c.n
		if m > 0 {
			n += int64(m)
			if maxSize > 0 && n > maxSize {
				free <- c.buf
				return fmt.Errorf("%w: the stream is longer than the limit of %d bytes; send a smaller object or raise the limit", ErrTooLarge, maxSize)
			}
			if _, err := w.Write((*c.buf)[:m]); err != nil {
				free <- c.buf
				return fmt.Errorf("write the object: %w", err)
			}
			if _, err := h.Write((*c.buf)[:m]); err != nil {
				free <- c.buf
				return fmt.Errorf("hash the object: %w", err)
			}
		}
		free <- c.buf
		switch {
		case c.err == nil:
		case errors.Is(c.err, io.EOF), errors.Is(c.err, io.ErrUnexpectedEOF):
			return nil
		default:
			return fmt.Errorf("read the object stream: %w", c.err)
		}
	}
}
