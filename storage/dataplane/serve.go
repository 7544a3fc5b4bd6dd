package dataplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
)

// Expected is what the control plane recorded about an object. Nil digests
// and a negative Size are unknown and not checked.
type Expected struct {
	BLAKE3, SHA256 *[32]byte
	Size           int64
}

// Object is a proven stream of a stored object's bytes (Serve).
type Object interface {
	io.ReadCloser
	io.WriterTo
	// Size is the size of the whole object, Offset and Length those of
	// the range served.
	Size() int64
	Offset() int64
	Length() int64
}

// Serve opens the object at addr on backend backendID ("" = default),
// whole when rng is nil or the inclusive range *rng, and proves every
// byte before it leaves: each chunk group the read touches is checked
// against the object's BLAKE3 tree, whose root is the address (or, for a
// sha256 address, exp.BLAKE3, the BLAKE3 digest recorded with it); only
// the tree nodes on the range's paths are read. A whole read of a sha256
// address is also checked against the address's SHA-256 before its last
// byte. exp.Size, when known, is the recorded size (else the backend's).
//
// The first batch of groups (1 MiB) is proven before Serve returns, so a
// corrupt start fails here, before a caller commits to an answer. Later a
// Read fails with a *CorruptError before the first bad byte. Either way
// the object is remembered as corrupt and reported (see
// CorruptionReporter): every later Serve of it fails at once with the
// same *CorruptError, until Verify proves it good or the copy is
// replaced (a repair; see stillCorrupt).
//
// An object stored before trees existed first gets its tree: it is read
// whole once and checked against its address, and its tree stored.
//
// The caller closes the Object. Other errors match storage.ErrNotFound and
// storage.ErrInvalidRange.
func (d *DataPlane) Serve(ctx context.Context, backendID string, addr digest.Address, rng *storage.Range, exp Expected) (Object, error) {
	b, err := d.backend(backendID)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (Object, error) {
		return nil, fmt.Errorf("dataplane: serve %s from %q: %w", addr, b.ID(), err)
	}
	if err := storage.ValidateAddress(addr); err != nil {
		return fail(err)
	}
	if ce := d.stillCorrupt(ctx, b, addr); ce != nil {
		return nil, ce
	}
	size := exp.Size
	if size < 0 {
		info, err := b.Head(ctx, addr)
		if err != nil {
			return fail(err)
		}
		size = info.Size
	}
	root, err := rootOf(addr, exp)
	if err != nil {
		return fail(err)
	}
	off, n := int64(0), size
	if rng != nil {
		if off, n, err = rng.Resolve(size); err != nil {
			return fail(err)
		}
	}

	proof, tree, err := d.proof(ctx, b, addr, root, size, off, n)
	if err != nil {
		return nil, err
	}
	data, err := d.groups(ctx, b, addr, size, off, n)
	if err != nil {
		if tree != nil {
			tree.Close()
		}
		return nil, err
	}
	o := &object{
		dp: d, backend: b.ID(), addr: addr, data: data, tree: tree,
		size: size, off: off, n: n,
		r: blaketree.NewReader(data, proof, root, size, off, n, blaketree.WithBufferPool(&d.batchBufs)),
	}
	if addr.Algorithm() == digest.SHA256 && off == 0 && n == size {
		o.sha, o.wantSHA = sha256.New(), addr.Sum()
	}
	if err := o.r.Prime(); err != nil {
		o.Close()
		return nil, o.wrap(err)
	}
	return o, nil
}

// rootOf returns the root the tree of addr must have.
func rootOf(addr digest.Address, exp Expected) ([32]byte, error) {
	switch {
	case addr.Algorithm() == digest.BLAKE3:
		if exp.BLAKE3 != nil && *exp.BLAKE3 != addr.Sum() {
			return [32]byte{}, fmt.Errorf("the recorded BLAKE3 digest %x is not the address's; the catalog is inconsistent", *exp.BLAKE3)
		}
		return addr.Sum(), nil
	case exp.BLAKE3 != nil:
		return *exp.BLAKE3, nil
	default:
		return [32]byte{}, errors.New("a sha256 address is proven with the BLAKE3 digest recorded with it; pass Expected.BLAKE3")
	}
}

// proof opens the proof of [off, off+n) of the object: from its stored
// tree when it has nodes (building a legacy object's first), else the
// bare header. The returned tree, when not nil, is the caller's to close.
func (d *DataPlane) proof(ctx context.Context, b storage.Backend, addr digest.Address, root [32]byte, size, off, n int64) (io.Reader, storage.TreeReader, error) {
	if !blaketree.HasNodes(size) {
		h := blaketree.Header(size)
		return bytes.NewReader(h[:]), nil, nil
	}
	tr, err := b.Tree(ctx, addr)
	if errors.Is(err, storage.ErrNoTree) {
		if err = d.ensureTree(ctx, b, addr, root, size); err != nil {
			return nil, nil, err
		}
		tr, err = b.Tree(ctx, addr)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("dataplane: serve %s from %q: open its tree: %w", addr, b.ID(), err)
	}
	return blaketree.Proof(tr, size, off, n), tr, nil
}

// groups opens the chunk groups [off, off+n) touches.
func (d *DataPlane) groups(ctx context.Context, b storage.Backend, addr digest.Address, size, off, n int64) (io.ReadCloser, error) {
	var rng *storage.Range
	if size > 0 {
		start, end := blaketree.AlignedRange(size, off, n)
		rng = &storage.Range{Start: start, End: end - 1}
	}
	rc, err := b.Get(ctx, addr, rng)
	if errors.Is(err, storage.ErrInvalidRange) {
		// The range lies inside the recorded size, so the stored object is
		// shorter than it should be.
		return nil, d.reportAndReturn(&CorruptError{Address: addr, BackendID: b.ID(), Offset: rng.Start, Length: rng.End - rng.Start + 1,
			Detail: fmt.Sprintf("the stored object is shorter than its recorded %d bytes", size)})
	}
	if err != nil {
		return nil, fmt.Errorf("dataplane: serve %s from %q: %w", addr, b.ID(), err)
	}
	return rc, nil
}

func (d *DataPlane) reportAndReturn(ce *CorruptError) error {
	d.reportCorrupt(ce)
	return ce
}

// ensureTree gives a legacy object (stored before trees) its tree: one
// whole read, checked against the address (both digests when the address
// is sha256) and the recorded size, then the tree is stored. Concurrent
// reads of one object share one build; it runs to its end even when the
// reader that started it goes away.
func (d *DataPlane) ensureTree(ctx context.Context, b storage.Backend, addr digest.Address, root [32]byte, size int64) error {
	key := b.ID() + "\x00" + addr.String()
	_, err, _ := d.trees.Do(key, func() (any, error) {
		ctx := context.WithoutCancel(ctx)
		if _, err := b.Tree(ctx, addr); err == nil {
			return nil, nil // built meanwhile
		}
		rc, err := b.Get(ctx, addr, nil)
		if err != nil {
			return nil, fmt.Errorf("dataplane: build the tree of %s on %q: %w", addr, b.ID(), err)
		}
		defer rc.Close()
		h := digest.NewDualHasher()
		defer h.Close()
		bp := d.bufs.Get().(*[]byte)
		defer d.bufs.Put(bp)
		if _, err := io.CopyBuffer(h, struct{ io.Reader }{rc}, *bp); err != nil {
			return nil, fmt.Errorf("dataplane: build the tree of %s on %q: %w", addr, b.ID(), err)
		}
		got := h.Sum()
		if got.BLAKE3 != root || got.Size != size || !got.Matches(addr) {
			return nil, d.reportAndReturn(&CorruptError{Address: addr, BackendID: b.ID(), Length: size,
				Detail: fmt.Sprintf("stored before trees existed, it reads as %d bytes hashing to %s, not its recorded %d bytes", got.Size, got.Address(addr.Algorithm()), size)})
		}
		if err := b.PutTree(ctx, addr, h.Tree()); err != nil {
			return nil, fmt.Errorf("dataplane: store the tree of %s on %q: %w", addr, b.ID(), err)
		}
		return nil, nil
	})
	return err
}

// object is a proven stream of one served object.
type object struct {
	dp           *DataPlane
	backend      string
	addr         digest.Address
	data         io.ReadCloser
	tree         storage.TreeReader
	r            *blaketree.Reader
	size, off, n int64

	// A whole read of a sha256 address is also checked against it: the
	// last byte is held back until the digest matches.
	sha     hash.Hash
	wantSHA [32]byte
	read    int64
	last    [1]byte
	lastErr error
	closed  bool
}

func (o *object) Size() int64   { return o.size }
func (o *object) Offset() int64 { return o.off }
func (o *object) Length() int64 { return o.n }

// wrap turns a mismatch into the object's *CorruptError, remembered and
// reported.
func (o *object) wrap(err error) error {
	var me *blaketree.MismatchError
	if errors.As(err, &me) {
		return o.dp.corrupt(o.backend, o.addr, me)
	}
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return fmt.Errorf("dataplane: serve %s from %q: %w", o.addr, o.backend, err)
}

func (o *object) Read(p []byte) (int, error) {
	if o.sha == nil {
		n, err := o.r.Read(p)
		return n, o.wrap(err)
	}
	return o.readSHA(p)
}

// readSHA reads through the SHA-256 gate: every byte but the last is
// released as the tree proves it; the last only once the whole object
// hashes to the address.
func (o *object) readSHA(p []byte) (int, error) {
	if o.lastErr != nil {
		return 0, o.lastErr
	}
	remaining := o.n - 1 - o.read
	if remaining > 0 {
		n, err := o.r.Read(p[:min(int64(len(p)), remaining)])
		o.sha.Write(p[:n])
		o.read += int64(n)
		return n, o.wrap(err)
	}
	if o.n == 0 || len(p) == 0 {
		o.lastErr = o.checkSHA()
		if o.lastErr == nil {
			o.lastErr = io.EOF
		}
		return 0, o.lastErr
	}
	if _, err := io.ReadFull(o.r, o.last[:]); err != nil {
		o.lastErr = o.wrap(err)
		return 0, o.lastErr
	}
	o.sha.Write(o.last[:])
	if o.lastErr = o.checkSHA(); o.lastErr != nil {
		return 0, o.lastErr
	}
	o.lastErr = io.EOF
	p[0] = o.last[0]
	o.read++
	return 1, nil
}

func (o *object) checkSHA() error {
	if [32]byte(o.sha.Sum(nil)) == o.wantSHA {
		return nil
	}
	return o.dp.reportAndReturn(&CorruptError{Address: o.addr, BackendID: o.backend, Length: o.size,
		Detail: "the bytes match the recorded BLAKE3 tree but not the SHA-256 address; the catalog's digests disagree"})
}

// WriteTo writes the proven bytes to w without an extra copy (unless the
// SHA-256 gate is on).
func (o *object) WriteTo(w io.Writer) (int64, error) {
	if o.sha == nil {
		n, err := o.r.WriteTo(w)
		return n, o.wrap(err)
	}
	return io.CopyBuffer(w, struct{ io.Reader }{o}, make([]byte, 256<<10))
}

// Close stops the read-ahead, then closes the backend's streams.
func (o *object) Close() error {
	if o.closed {
		return nil
	}
	o.closed = true
	err := o.r.Close()
	if cerr := o.data.Close(); err == nil {
		err = cerr
	}
	if o.tree != nil {
		if cerr := o.tree.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// Proof returns the proof of the range *rng (whole object when nil) of the
// object at addr: the Bao outboard header and the tree nodes a client
// needs to check those bytes against the object's BLAKE3 digest (for the
// whole object, its whole outboard; see blaketree.Proof). The bytes of
// the tree are not checked here: the client checks them against the
// root. A legacy object gets its tree first. The caller closes the
// reader; size is the proof's length.
func (d *DataPlane) Proof(ctx context.Context, backendID string, addr digest.Address, rng *storage.Range, exp Expected) (r io.ReadCloser, size int64, err error) {
	b, err := d.backend(backendID)
	if err != nil {
		return nil, 0, err
	}
	if err := storage.ValidateAddress(addr); err != nil {
		return nil, 0, fmt.Errorf("dataplane: proof of %s: %w", addr, err)
	}
	if ce := d.stillCorrupt(ctx, b, addr); ce != nil {
		return nil, 0, ce
	}
	root, err := rootOf(addr, exp)
	if err != nil {
		return nil, 0, fmt.Errorf("dataplane: proof of %s: %w", addr, err)
	}
	osize := exp.Size
	if osize < 0 {
		info, err := b.Head(ctx, addr)
		if err != nil {
			return nil, 0, fmt.Errorf("dataplane: proof of %s: %w", addr, err)
		}
		osize = info.Size
	}
	off, n := int64(0), osize
	if rng != nil {
		if off, n, err = rng.Resolve(osize); err != nil {
			return nil, 0, fmt.Errorf("dataplane: proof of %s: %w", addr, err)
		}
	}
	proof, tree, err := d.proof(ctx, b, addr, root, osize, off, n)
	if err != nil {
		return nil, 0, err
	}
	if tree == nil {
		return io.NopCloser(proof), blaketree.HeaderSize, nil
	}
	return &proofCloser{Reader: proof, c: tree}, blaketree.ProofSize(osize, off, n), nil
}

type proofCloser struct {
	io.Reader
	c io.Closer
}

func (p *proofCloser) Close() error { return p.c.Close() }
