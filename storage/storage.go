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
	// ExpectSize is the claimed size in bytes; < 0 (NoSizeClaim) means no
	// claim. A wrong claim fails like a wrong digest.
	ExpectSize int64
	// MaxSize caps the object size; 0 means unlimited. A longer stream fails
	// with ErrTooLarge after at most MaxSize+1 bytes were read from it.
	MaxSize int64
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

// Backend holds object bytes under their content addresses.
//
// Every method is safe for concurrent use. Errors a caller must tell apart
// are wrapped sentinels of this package (ErrNotFound, ErrInvalidRange,
// ErrDigestMismatch, ErrSizeMismatch, ErrTooLarge) or the context's error;
// test them with errors.Is.
type Backend interface {
	// ID returns the backend's id in a Registry, e.g. "local".
	ID() string

	// Put reads r to its end (or to MaxSize+1 bytes), computing both
	// digests of exactly the bytes it stores, checks the claims in opts,
	// and makes the object durable under the address computed from the
	// bytes before it returns. When anything fails, nothing is left
	// behind. Putting content the backend already holds is idempotent: the
	// stream is drained, the stored bytes are untouched, and the receipt
	// says Deduplicated. Put does not close r; it stops between chunks
	// when ctx is done.
	Put(ctx context.Context, r io.Reader, opts PutOptions) (Receipt, error)

	// Get opens the object at addr, whole when rng is nil or the inclusive
	// range *rng. The caller closes the returned reader. A missing object
	// is ErrNotFound; a range outside the object is ErrInvalidRange.
	Get(ctx context.Context, addr digest.Address, rng *Range) (io.ReadCloser, error)

	// Head returns the size and store time of the object at addr, or
	// ErrNotFound.
	Head(ctx context.Context, addr digest.Address) (ObjectInfo, error)

	// Delete removes the object at addr and reports whether it existed.
	// Deleting a missing object is not an error.
	Delete(ctx context.Context, addr digest.Address) (existed bool, err error)

	// Health reports whether the backend can serve and store bytes.
	Health(ctx context.Context) Health
}

// Lister is implemented by backends that can enumerate what they hold, for
// scrubbing and orphan detection.
type Lister interface {
	// Walk calls fn once for every stored object, in no particular order,
	// and stops at the first error fn returns (which Walk returns) or when
	// ctx is done.
	Walk(ctx context.Context, fn func(ObjectInfo) error) error
}
