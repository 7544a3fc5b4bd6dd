// Package dataplane moves object bytes between callers and storage
// backends: ingest (dual-hash and tree while writing once), serve (whole
// or a byte range, every chunk group proven against the object's BLAKE3
// tree before its bytes leave), verify (re-read, re-digest, check the
// tree), delete and health. It sees backends only through storage.Backend
// and a storage.Registry; the ingester, the verifier and the read API use
// this package and never a concrete backend.
//
// A served read that finds bytes that do not match their tree stops before
// them with a *CorruptError, remembers the object as corrupt (every later
// Serve of it fails at once until a Verify proves it good again or its
// copy is replaced, e.g. by a repairing ingest) and tells the
// CorruptionReporter, which records it in the event log. An ingest of
// content whose stored copy is corrupt or lost replaces the copy with its
// own verified bytes (see Ingest).
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sync/singleflight"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
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

// WithCorruptionReporter sets who is told when a served read finds
// corrupt bytes (see CorruptionReporter).
func WithCorruptionReporter(r CorruptionReporter) Option {
	return func(d *DataPlane) { d.reporter = r }
}

// WithPutter sets the Putter of Ingest (default storage.NewPutter()).
func WithPutter(p *storage.Putter) Option { return func(d *DataPlane) { d.putter = p } }

// WithCorruptMemory sets how many corrupt objects a data plane remembers
// at most (default 10,000): enough to cover the time until the event log's
// projection marks them, whatever a burst of damage brings.
func WithCorruptMemory(n int) Option { return func(d *DataPlane) { d.marks.max = n } }

// DataPlane is safe for concurrent use.
type DataPlane struct {
	reg        *storage.Registry
	def        string
	wrapVerify func(io.Reader) io.Reader
	reporter   CorruptionReporter
	putter     *storage.Putter
	bufs       sync.Pool // verify's read buffers
	batchBufs  sync.Pool // Serve's batches of chunk groups
	trees      singleflight.Group
	marks      marks
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
	d := &DataPlane{reg: reg, def: defaultBackend, marks: marks{max: 10_000}}
	d.bufs.New = func() any { b := make([]byte, verifyBufSize); return &b }
	d.batchBufs.New = func() any { b := make([]byte, blaketree.DefaultBatchGroups*blaketree.GroupSize); return &b }
	for _, o := range opts {
		o(d)
	}
	if d.putter == nil {
		d.putter = storage.NewPutter()
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
	// ExpectAtEnd, when set, gives claims known only after the last byte
	// (see storage.PutOptions.ExpectAtEnd).
	ExpectAtEnd func() []digest.Address
	// ExpectSize is the claimed size; < 0 (storage.NoSizeClaim) means no
	// claim. Beware: 0 claims an empty object.
	ExpectSize int64
	// MaxSize caps the object size; 0 means unlimited.
	MaxSize int64
	// Condition, when set, says what the caller's records know of the
	// stored copy (see storage.PutOptions.Condition); the data plane adds
	// what it remembers itself: a copy a served read found corrupt.
	Condition func(ctx context.Context, backendID string, addr digest.Address) (storage.Condition, error)
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

// Ingest streams r into a backend, computing both digests and the BLAKE3
// tree over exactly the bytes written, and returns once the object and its
// tree are durable. A wrong claim
// fails with an error matching storage.ErrDigestMismatch or
// storage.ErrSizeMismatch (a *storage.MismatchError carries the actual
// digests) and stores nothing; a stream over MaxSize fails with
// storage.ErrTooLarge. Ingest does not close r.
//
// Content already stored is deduplicated against only when its copy is
// trusted: a copy this data plane found corrupt, one h.Condition reports
// damaged, or one that fails the Putter's check is replaced by the new
// verified bytes, and a recorded copy the backend lost is stored again;
// the receipt's Repaired says so.
func (d *DataPlane) Ingest(ctx context.Context, r io.Reader, h IngestHints) (IngestResult, error) {
	b, err := d.backend(h.BackendID)
	if err != nil {
		return IngestResult{}, err
	}
	rc, err := d.putter.Put(ctx, b, r, storage.PutOptions{
		Primary:     h.Primary,
		Expect:      h.Expect,
		ExpectAtEnd: h.ExpectAtEnd,
		ExpectSize:  h.ExpectSize,
		MaxSize:     h.MaxSize,
		Condition: func(ctx context.Context, backendID string, addr digest.Address) (storage.Condition, error) {
			var c storage.Condition
			if h.Condition != nil {
				var err error
				if c, err = h.Condition(ctx, backendID, addr); err != nil {
					return c, err
				}
			}
			if ce := d.marks.get(backendID, addr); ce != nil && c.Damage == "" {
				c.Recorded, c.Damage, c.Detail = true, storage.DamageCorrupt, "a served read found it corrupt: "+ce.Error()
			}
			return c, nil
		},
	})
	if err != nil {
		return IngestResult{}, fmt.Errorf("dataplane: ingest into %q: %w", b.ID(), err)
	}
	if !rc.Deduplicated {
		// New bytes (after a delete, or a repair): whatever was
		// remembered of the old ones no longer holds.
		d.marks.remove(b.ID(), rc.Address)
	}
	return IngestResult{Address: rc.Address, Digests: rc.Digests, Receipt: rc}, nil
}

// Head returns the size and store time of the object at addr on backend
// backendID ("" = default), or an error matching storage.ErrNotFound. It
// reads no bytes and proves nothing.
func (d *DataPlane) Head(ctx context.Context, backendID string, addr digest.Address) (storage.ObjectInfo, error) {
	b, err := d.backend(backendID)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	info, err := b.Head(ctx, addr)
	if err != nil {
		return info, fmt.Errorf("dataplane: head %s on %q: %w", addr, b.ID(), err)
	}
	return info, nil
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
	d.marks.remove(b.ID(), addr)
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
