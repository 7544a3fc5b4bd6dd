// Package dataplane moves object bytes between callers and storage
// backends: ingest (dual-hash while writing once), serve (whole or a byte
// range), verify (re-read and re-digest), delete and health. It sees
// backends only through storage.Backend and a storage.Registry; the
// ingester, the verifier and the read API use this package and never a
// concrete backend.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

const verifyBufSize = 1 << 20

// Option configures New.
type Option func(*DataPlane)

// WithVerifyReader wraps the stream Verify reads from a backend, e.g. in a
// rate limiter so that scrubbing does not starve ingest. The wrapper sees
// the bytes in order and must return them unchanged; Verify calls it once
// per verification and does not close what it returns.
func WithVerifyReader(wrap func(io.Reader) io.Reader) Option {
	return func(d *DataPlane) { d.wrapVerify = wrap }
}

// DataPlane is safe for concurrent use.
type DataPlane struct {
	reg        *storage.Registry
	def        string
	wrapVerify func(io.Reader) io.Reader
	bufs       sync.Pool
}

// New returns a data plane over the backends in reg. defaultBackend is used
// wherever a backend id is empty and must be registered.
func New(reg *storage.Registry, defaultBackend string, opts ...Option) (*DataPlane, error) {
	if reg == nil {
		return nil, errors.New("dataplane: nil registry")
	}
	if _, err := reg.Get(defaultBackend); err != nil {
		return nil, fmt.Errorf("dataplane: default backend: %w", err)
	}
	d := &DataPlane{reg: reg, def: defaultBackend}
	d.bufs.New = func() any { b := make([]byte, verifyBufSize); return &b }
	for _, o := range opts {
		o(d)
	}
	return d, nil
}

// DefaultBackend returns the id used when a call names no backend.
func (d *DataPlane) DefaultBackend() string { return d.def }

func (d *DataPlane) backend(id string) (storage.Backend, error) {
	if id == "" {
		id = d.def
	}
	b, err := d.reg.Get(id)
	if err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	return b, nil
}

// IngestHints are a producer's choices and claims for one ingest.
type IngestHints struct {
	// Primary is the algorithm of the resulting address; 0 means BLAKE3.
	Primary digest.Algorithm
	// BackendID names the backend; "" means the default.
	BackendID string
	// Expect holds claimed addresses (producer's, staging store's); any
	// disagreement rejects the ingest and stores nothing.
	Expect []digest.Address
	// ExpectSize is the claimed size; < 0 (storage.NoSizeClaim) means no
	// claim. Beware: 0 claims an empty object.
	ExpectSize int64
	// MaxSize caps the object size; 0 means unlimited.
	MaxSize int64
}

// IngestResult is the outcome of a successful ingest.
type IngestResult struct {
	// Address is the content address under the primary algorithm.
	Address digest.Address
	// Digests holds both digests and the size.
	Digests digest.Digests
	// Receipt is the backend's receipt (backend id, stored time, dedup).
	Receipt storage.Receipt
}

// Ingest streams r into a backend, computing both digests over exactly the
// bytes written, and returns once the object is durable. A wrong claim
// fails with an error matching storage.ErrDigestMismatch or
// storage.ErrSizeMismatch (a *storage.MismatchError carries the actual
// digests) and stores nothing; a stream over MaxSize fails with
// storage.ErrTooLarge. Ingest does not close r.
func (d *DataPlane) Ingest(ctx context.Context, r io.Reader, h IngestHints) (IngestResult, error) {
	b, err := d.backend(h.BackendID)
	if err != nil {
		return IngestResult{}, err
	}
	rc, err := b.Put(ctx, r, storage.PutOptions{
		Primary:    h.Primary,
		Expect:     h.Expect,
		ExpectSize: h.ExpectSize,
		MaxSize:    h.MaxSize,
	})
	if err != nil {
		return IngestResult{}, fmt.Errorf("dataplane: ingest into %q: %w", b.ID(), err)
	}
	return IngestResult{Address: rc.Address, Digests: rc.Digests, Receipt: rc}, nil
}

// Serve opens the object at addr on backend backendID ("" = default),
// whole when rng is nil or the inclusive range *rng. The caller closes the
// reader. Errors match storage.ErrNotFound and storage.ErrInvalidRange.
func (d *DataPlane) Serve(ctx context.Context, backendID string, addr digest.Address, rng *storage.Range) (io.ReadCloser, error) {
	b, err := d.backend(backendID)
	if err != nil {
		return nil, err
	}
	rc, err := b.Get(ctx, addr, rng)
	if err != nil {
		return nil, fmt.Errorf("dataplane: serve %s from %q: %w", addr, b.ID(), err)
	}
	return rc, nil
}

// Expected is what the control plane recorded about an object. Nil digests
// and a negative Size are unknown and not checked.
type Expected struct {
	BLAKE3, SHA256 *[32]byte
	Size           int64
}

// VerifyResult is the verdict on one object.
type VerifyResult struct {
	Address   digest.Address
	BackendID string
	// Verified is true when every known digest and the size match.
	Verified bool
	// Missing is true when the backend does not hold the object.
	Missing bool
	// Reason says what differed (or that the object is missing); empty
	// when verified.
	Reason string
	// Actual holds the digests and size of the bytes read; zero when
	// missing.
	Actual digest.Digests
}

// Verify re-reads the object at addr on backend backendID ("" = default),
// recomputes both digests and the size in one streaming pass (memory does
// not grow with the object), and compares them with the address's own
// digest and with everything exp knows. A corrupt or missing object is a
// verdict (nil error, Verified false); an error means no verdict could be
// reached (unknown backend, read failure, ctx done).
func (d *DataPlane) Verify(ctx context.Context, backendID string, addr digest.Address, exp Expected) (VerifyResult, error) {
	b, err := d.backend(backendID)
	if err != nil {
		return VerifyResult{}, err
	}
	res := VerifyResult{Address: addr, BackendID: b.ID()}
	if err := storage.ValidateAddress(addr); err != nil {
		return res, fmt.Errorf("dataplane: verify: %w", err)
	}
	rc, err := b.Get(ctx, addr, nil)
	if errors.Is(err, storage.ErrNotFound) {
		res.Missing = true
		res.Reason = fmt.Sprintf("backend %q does not hold %s", b.ID(), addr)
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("dataplane: verify %s on %q: %w", addr, b.ID(), err)
	}
	defer rc.Close()
	actual, err := d.digestStream(ctx, rc)
	if err != nil {
		return res, fmt.Errorf("dataplane: verify %s on %q: %w", addr, b.ID(), err)
	}
	res.Actual = actual

	var reasons []string
	if got := actual.Address(addr.Algorithm()); got != addr {
		reasons = append(reasons, fmt.Sprintf("content hashes to %s", got))
	}
	if exp.BLAKE3 != nil && *exp.BLAKE3 != actual.BLAKE3 {
		reasons = append(reasons, fmt.Sprintf("blake3 is %s, recorded %s",
			actual.Address(digest.BLAKE3), digest.New(digest.BLAKE3, *exp.BLAKE3)))
	}
	if exp.SHA256 != nil && *exp.SHA256 != actual.SHA256 {
		reasons = append(reasons, fmt.Sprintf("sha256 is %s, recorded %s",
			actual.Address(digest.SHA256), digest.New(digest.SHA256, *exp.SHA256)))
	}
	if exp.Size >= 0 && exp.Size != actual.Size {
		what := "truncated"
		if actual.Size > exp.Size {
			what = "grown"
		}
		reasons = append(reasons, fmt.Sprintf("%s: %d bytes, recorded %d", what, actual.Size, exp.Size))
	}
	res.Verified = len(reasons) == 0
	res.Reason = strings.Join(reasons, "; ")
	return res, nil
}

func (d *DataPlane) digestStream(ctx context.Context, r io.Reader) (digest.Digests, error) {
	if d.wrapVerify != nil {
		r = d.wrapVerify(r)
	}
	bufp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bufp)
	buf := *bufp
	h := digest.NewDualHasher()
	defer h.Close()
	for {
		if err := ctx.Err(); err != nil {
			return digest.Digests{}, err
		}
		n, err := io.ReadFull(r, buf)
		h.Write(buf[:n])
		switch {
		case err == nil:
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return h.Sum(), nil
		default:
			return digest.Digests{}, fmt.Errorf("read: %w", err)
		}
	}
}

// Delete removes the object at addr from backend backendID ("" = default)
// and reports whether it existed. It does not ask whether anything still
// needs the bytes; that is the reaper's decision.
func (d *DataPlane) Delete(ctx context.Context, backendID string, addr digest.Address) (bool, error) {
	b, err := d.backend(backendID)
	if err != nil {
		return false, err
	}
	existed, err := b.Delete(ctx, addr)
	if err != nil {
		return existed, fmt.Errorf("dataplane: delete %s from %q: %w", addr, b.ID(), err)
	}
	return existed, nil
}

// Health returns the health of every registered backend by id.
func (d *DataPlane) Health(ctx context.Context) map[string]storage.Health {
	ids := d.reg.IDs()
	out := make(map[string]storage.Health, len(ids))
	for _, id := range ids {
		b, err := d.reg.Get(id)
		if err != nil {
			out[id] = storage.Health{Detail: err.Error()}
			continue
		}
		out[id] = b.Health(ctx)
	}
	return out
}
