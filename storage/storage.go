// Package storage declares what a place that holds object bytes must do: the
// Backend interface, its request and result types, the sentinel errors every
// backend translates its own failures into, and a Registry that finds
// backends by id.
//
// Nothing outside the data plane and the process wiring names a concrete
// backend; everything else sees only this package.
package storage

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/artifactstore/artifactstore/digest"
)

// NoSizeClaim is the PutOptions.ExpectSize (and similar fields) meaning "the
// caller makes no claim about the size". Note that the zero value, 0, is a
// claim that the object is empty.
const NoSizeClaim int64 = -1

// Range is an inclusive byte range [Start, End] of an object. End < 0 means
// "to the last byte".
type Range struct{ Start, End int64 }

// String formats r like the HTTP Range header's byte-range-spec.
func (r Range) String() string {
	if r.End < 0 {
		return fmt.Sprintf("%d-", r.Start)
	}
	return fmt.Sprintf("%d-%d", r.Start, r.End)
}

// Resolve turns r into an offset and a length within an object of size
// bytes. A range that ends past the last byte is clamped to it. A range that
// starts before 0, ends before it starts, or starts at or past size (so an
// empty object has no valid range) fails with ErrInvalidRange.
func (r Range) Resolve(size int64) (off, n int64, err error) {
	if r.Start < 0 || (r.End >= 0 && r.Start > r.End) || r.Start >= size {
		return 0, 0, fmt.Errorf("%w: bytes %s of an object of %d bytes; ask for a start in [0, %d] and an end not before the start",
			ErrInvalidRange, r, size, size-1)
	}
	end := r.End
	if end < 0 || end >= size {
		end = size - 1
	}
	return r.Start, end - r.Start + 1, nil
}

// PutOptions are the caller's choices and claims for one Put.
type PutOptions struct {
	// Primary is the algorithm of the returned address; 0 means digest.BLAKE3.
	Primary digest.Algorithm
	// Expect holds addresses the caller claims for the bytes, in any
	// algorithm. Each must equal the digest computed over the bytes, or the
	// put fails with a *MismatchError and stores nothing.
	Expect []digest.Address
	// ExpectAtEnd, when set, is asked once the stream has ended and
	// before the object is committed, for claims that are known only
	// after the last byte (a streaming upload's SHA-256, carried by its
	// last chunk); they are checked as Expect is.
	ExpectAtEnd func() []digest.Address
	// ExpectSize is the claimed size in bytes; < 0 (NoSizeClaim) means no
	// claim. A wrong claim fails like a wrong digest.
	ExpectSize int64
	// MaxSize caps the object size; 0 means unlimited. A longer stream fails
	// with ErrTooLarge after at most MaxSize+1 bytes were read from it.
	MaxSize int64
	// Condition, when set, tells what the caller's records say of the
	// object at an address on a backend. Putter asks it once the bytes are
	// hashed and before it looks at the stored copy, so that a copy the
	// records know to be damaged is replaced rather than deduplicated
	// against, and a copy the records hold but the backend lost counts as
	// repaired. An error fails the put (nothing is stored).
	Condition func(ctx context.Context, backendID string, addr digest.Address) (Condition, error)
}

// Condition is what the caller's records say of one stored object
// (PutOptions.Condition).
type Condition struct {
	// Recorded is true when the records say the backend holds the
	// object: a copy that turns out absent was lost, and storing it
	// again is a repair.
	Recorded bool
	// Damage is what the records say is wrong with the stored copy:
	// DamageCorrupt, DamageMissing, or "" when nothing is known.
	Damage string
	// Detail says it in words (for the repair's record).
	Detail string
}

// What was wrong with a stored copy before a put repaired it
// (Condition.Damage, Repair.Was).
const (
	// DamageCorrupt: the stored bytes or their tree did not match the
	// address (or could not be read).
	DamageCorrupt = "corrupt"
	// DamageMissing: the backend did not hold the object.
	DamageMissing = "missing"
)

// Repair says that a put found the stored copy of its content damaged or
// lost, and what it was; the put then stored its own verified bytes in
// its place.
type Repair struct {
	// Was is DamageCorrupt or DamageMissing.
	Was string
	// Detail says what was found, in words.
	Detail string
}

// Receipt describes a successful Put.
type Receipt struct {
	// Address is the content address under PutOptions.Primary, computed
	// from the bytes (never taken from a claim).
	Address digest.Address
	// Digests holds both digests and the size of the bytes read.
	Digests digest.Digests
	// BackendID is the id of the backend that holds the bytes.
	BackendID string
	// StoredAt is when the backend first stored these bytes (for a
	// deduplicated put, the earlier time).
	StoredAt time.Time
	// Deduplicated is true when the backend already held the content and
	// left it untouched.
	Deduplicated bool
	// Repaired is set when the stored copy was damaged or missing and the
	// put's verified bytes replaced it (then Deduplicated is false).
	Repaired *Repair
}

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Address  digest.Address
	Size     int64
	StoredAt time.Time
}

// Health is a backend's state at one moment.
type Health struct {
	// Healthy is false when the backend cannot serve or store bytes.
	Healthy bool
	// Detail says why, in words for an operator.
	Detail string
	// FreeBytes and UsedBytes describe the underlying capacity, when known.
	FreeBytes, UsedBytes uint64
}

// Backend holds object bytes, and the BLAKE3 tree of each object, under
// their content addresses. A backend only moves bytes: what is hashed,
// claimed and proven is decided above it (Putter streams objects in,
// package dataplane checks them on the way out), so that every backend
// gets the same guarantees.
//
// Every method is safe for concurrent use. Errors a caller must tell apart
// are wrapped sentinels of this package (ErrNotFound, ErrNoTree,
// ErrInvalidRange) or the context's error; test them with errors.Is.
type Backend interface {
	// ID returns the backend's id in a Registry, e.g. "local".
	ID() string

	// Create starts a new object: the caller writes its bytes to the
	// returned ObjectWriter, then commits them under their address or
	// aborts. Nothing is visible before Commit. opts are hints about the
	// object (a claimed address, a claimed size) that a backend may use
	// to write in place; they are never trusted.
	Create(ctx context.Context, opts CreateOptions) (ObjectWriter, error)

	// Get opens the object at addr, whole when rng is nil or the inclusive
	// range *rng, as stored: unchecked. The caller closes the returned
	// reader. A missing object is ErrNotFound; a range outside the object
	// is ErrInvalidRange.
	Get(ctx context.Context, addr digest.Address, rng *Range) (io.ReadCloser, error)

	// Tree opens the stored tree of the object at addr (its Bao outboard,
	// see package blaketree), to be read with ReadAt. The caller closes
	// it. ErrNoTree: the backend holds the object but no tree for it
	// (stored before trees existed, or its tree has no nodes);
	// ErrNotFound: it does not hold the object.
	Tree(ctx context.Context, addr digest.Address) (TreeReader, error)

	// PutTree durably stores tree as the tree of the object at addr,
	// replacing any stored one (a legacy object gets its tree, a damaged
	// tree is rewritten). ErrNotFound when the object is not held.
	PutTree(ctx context.Context, addr digest.Address, tree TreeSource) error

	// Head returns the size and store time of the object at addr, or
	// ErrNotFound.
	Head(ctx context.Context, addr digest.Address) (ObjectInfo, error)

	// Delete removes the object at addr and its tree, and reports whether
	// the object existed. Deleting a missing object is not an error.
	Delete(ctx context.Context, addr digest.Address) (existed bool, err error)

	// Health reports whether the backend can serve and store bytes.
	Health(ctx context.Context) Health
}

// CreateOptions are what a producer claimed about an object before its
// bytes arrive (Backend.Create). They are hints: a backend may start
// writing where the object will live (a store without rename, such as S3,
// then saves a copy), but the address passed to Commit is the only one
// that counts, and a backend must leave nothing at the claimed place when
// Commit names another address or the writer is aborted.
type CreateOptions struct {
	// Claimed is the claimed address under the primary algorithm of the
	// put, or the zero Address when there is no such claim.
	Claimed digest.Address
	// Size is the claimed size in bytes when > 0; 0 or less: unknown.
	Size int64
}

// ObjectWriter receives the bytes of one new object (Backend.Create). It
// is used by one goroutine.
type ObjectWriter interface {
	// Write appends bytes to the object.
	io.Writer

	// Commit makes the bytes written durable under addr together with
	// tree, the tree visible no later than the object, and ends the
	// writer. A nil tree means the object's tree has no nodes (one chunk
	// group): nothing is stored for it. When the backend already holds
	// addr, mode decides: CommitKeep discards the bytes written, leaves
	// the stored object untouched (a missing tree is added) and reports
	// Deduplicated; CommitReplace replaces the stored object and its tree
	// (see CommitReplace). The caller vouches that addr is the address
	// of the bytes and tree their tree; a backend does not check.
	Commit(ctx context.Context, addr digest.Address, tree TreeSource, mode CommitMode) (Committed, error)

	// Abort discards the bytes written and ends the writer. It is safe
	// after Commit (then it does nothing) and more than once.
	Abort() error
}

// CommitMode says what ObjectWriter.Commit does when the backend already
// holds the address.
type CommitMode int

const (
	// CommitKeep keeps the stored object: content is stored once, and a
	// second copy of it is discarded (deduplicated).
	CommitKeep CommitMode = iota
	// CommitReplace puts the bytes written and their tree in place of
	// whatever is stored under the address, atomically: a reader opening
	// the object sees the old bytes or the new ones, never a mix, and the
	// new tree is in place no later than the new bytes. A stale tree of
	// an object that now has none (one chunk group) is removed. It is how
	// a verified upload repairs a damaged copy; with nothing stored it is
	// a plain store.
	CommitReplace
)

// Committed is the backend's part of a Receipt.
type Committed struct {
	// StoredAt is when the backend first stored the bytes (for a
	// deduplicated commit, the earlier time).
	StoredAt time.Time
	// Deduplicated is true when the backend already held the content.
	Deduplicated bool
}

// TreeSource is a tree to store: a Bao outboard of known size, written in
// one sequential pass (blaketree.Outboard is one).
type TreeSource interface {
	Size() int64
	WriteTo(w io.Writer) (int64, error)
}

// TreeReader is a stored tree, read at offsets so that a range's check
// reads only the nodes it needs.
type TreeReader interface {
	io.ReaderAt
	io.Closer
	// Size returns the stored tree's length in bytes.
	Size() int64
}

// Lister is implemented by backends that can enumerate what they hold, for
// scrubbing and orphan detection.
type Lister interface {
	// Walk calls fn once for every stored object, in no particular order,
	// and stops at the first error fn returns (which Walk returns) or when
	// ctx is done.
	Walk(ctx context.Context, fn func(ObjectInfo) error) error
}
