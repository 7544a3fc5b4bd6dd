package storage

import (
	"errors"
	"fmt"
	"strings"

	"github.com/artifactstore/artifactstore/digest"
)

// Sentinel errors. Backends wrap them with %w; callers test with errors.Is.
var (
	// ErrNotFound: the backend holds no object at the address.
	ErrNotFound = errors.New("object not found")
	// ErrNoTree: the backend holds the object but no tree for it.
	ErrNoTree = errors.New("no tree stored for the object")
	// ErrInvalidRange: a byte range lies outside the object or is malformed.
	ErrInvalidRange = errors.New("invalid byte range")
	// ErrDigestMismatch: a claimed digest differs from the computed one.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: a claimed size differs from the number of bytes read.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrTooLarge: the stream is longer than PutOptions.MaxSize.
	ErrTooLarge = errors.New("object too large")
	// ErrUnknownBackend: no backend with that id is registered.
	ErrUnknownBackend = errors.New("unknown storage backend")
)

// MismatchError reports claims that disagree with the bytes. It wraps
// ErrDigestMismatch when a claimed digest was wrong and ErrSizeMismatch when
// the claimed size was wrong (both when both were), and carries what was
// actually computed so that a rejection can say it.
type MismatchError struct {
	// WrongDigests are the claimed addresses that did not match.
	WrongDigests []digest.Address
	// ClaimedSize is the wrong size claim, or NoSizeClaim when the size
	// claim (if any) was right.
	ClaimedSize int64
	// Actual holds both digests and the size computed over the bytes read.
	Actual digest.Digests
}

// Error says what was claimed, what was computed, and what to do.
func (e *MismatchError) Error() string {
	var b strings.Builder
	b.WriteString("content does not match its claim:")
	for _, w := range e.WrongDigests {
		fmt.Fprintf(&b, " claimed %s but the bytes are %s;", w, e.Actual.Address(w.Algorithm()))
	}
	if e.ClaimedSize >= 0 {
		fmt.Fprintf(&b, " claimed %d bytes but read %d;", e.ClaimedSize, e.Actual.Size)
	}
	fmt.Fprintf(&b, " computed %s %s (%d bytes); nothing was stored — send the exact bytes or correct the claim",
		e.Actual.Address(digest.BLAKE3), e.Actual.Address(digest.SHA256), e.Actual.Size)
	return b.String()
}

// Unwrap returns ErrDigestMismatch and/or ErrSizeMismatch.
func (e *MismatchError) Unwrap() []error {
	var errs []error
	if len(e.WrongDigests) > 0 {
		errs = append(errs, ErrDigestMismatch)
	}
	if e.ClaimedSize >= 0 {
		errs = append(errs, ErrSizeMismatch)
	}
	return errs
}

// CheckClaims compares the claims in opts with the digests computed over the
// bytes. It returns nil when every claim holds and a *MismatchError
// otherwise. Putter calls it after reading the stream and before making the
// object visible.
func CheckClaims(opts PutOptions, actual digest.Digests) error {
	e := &MismatchError{ClaimedSize: NoSizeClaim, Actual: actual}
	for _, a := range opts.Expect {
		if !actual.Matches(a) {
			e.WrongDigests = append(e.WrongDigests, a)
		}
	}
	if opts.ExpectSize >= 0 && opts.ExpectSize != actual.Size {
		e.ClaimedSize = opts.ExpectSize
	}
	if len(e.WrongDigests) == 0 && e.ClaimedSize < 0 {
		return nil
	}
	return e
}

// ValidateOptions checks opts before any byte is read and returns the
// primary algorithm to use. A zero claimed address or an unknown algorithm
// is a caller's error.
func ValidateOptions(opts PutOptions) (digest.Algorithm, error) {
	primary := opts.Primary
	if primary == 0 {
		primary = digest.BLAKE3
	}
	if !primary.Valid() {
		return 0, fmt.Errorf("put: %w: primary algorithm %v; use blake3 or sha256", digest.ErrInvalid, opts.Primary)
	}
	for i, a := range opts.Expect {
		if a.IsZero() {
			return 0, fmt.Errorf("put: %w: claimed address #%d is empty; drop it or parse it with digest.Parse", digest.ErrInvalid, i)
		}
	}
	if opts.MaxSize < 0 {
		return 0, fmt.Errorf("put: max size %d is negative; use 0 for unlimited", opts.MaxSize)
	}
	return primary, nil
}

// ValidateAddress refuses the zero Address before it reaches a backend.
func ValidateAddress(addr digest.Address) error {
	if addr.IsZero() {
		return fmt.Errorf("%w: empty content address; parse one with digest.Parse", digest.ErrInvalid)
	}
	return nil
}
