package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// catalogReader is what the API reads of the projections.
type catalogReader interface {
	ObjectLocation(ctx context.Context, addr digest.Address) (catalog.Location, error)
	Packages(ctx context.Context, q catalog.PackageQuery) ([]catalog.Package, error)
	Package(ctx context.Context, name string) (catalog.Package, error)
	PackageExists(ctx context.Context, name string) (bool, error)
	PackageFiles(ctx context.Context, pkg string) ([]catalog.File, error)
	File(ctx context.Context, pkg, path string) (catalog.File, error)
}

var _ catalogReader = (*catalog.Catalog)(nil)

// object is what the API needs to serve one object: where, how big, and
// its recorded digests (Address is the address it is stored under, its
// primary). Asked is the address the client named, either digest.
type object struct {
	catalog.Location
	Asked digest.Address
}

// expected is what the data plane proves the bytes against.
func (o object) expected() dataplane.Expected {
	return dataplane.Expected{BLAKE3: &o.BLAKE3, SHA256: &o.SHA256, Size: o.Size}
}

// backends returns where o may be served from, in order: its best
// location's backend, then the other ok copies.
func (o object) backends() []string {
	out := []string{o.Backend}
	for _, b := range o.OKBackends() {
		if b != o.Backend {
			out = append(out, b)
		}
	}
	return out
}

// addresses returns both content addresses of o, primary first.
func (o object) addresses() [2]digest.Address {
	b3, s256 := digest.New(digest.BLAKE3, o.BLAKE3), digest.New(digest.SHA256, o.SHA256)
	if o.Address.Algorithm() == digest.SHA256 {
		return [2]digest.Address{s256, b3}
	}
	return [2]digest.Address{b3, s256}
}

// lookupObject returns the best location of the object with address addr
// under either of its digests, or a not_found error when no location is
// recorded.
func (s *Server) lookupObject(ctx context.Context, addr digest.Address) (object, error) {
	l, err := s.catalog.ObjectLocation(ctx, addr)
	if errors.Is(err, catalog.ErrNotFound) {
		return object{Asked: addr}, &apiError{status: http.StatusNotFound, code: CodeNotFound,
			msg: fmt.Sprintf("no object %s is stored here; check the address (ETag or package listing)", addr)}
	}
	if err != nil {
		return object{Asked: addr}, fmt.Errorf("look up object %s: %w", addr, err)
	}
	return object{Location: l, Asked: addr}, nil
}

// unservable is the error for a location whose state is not ok; what
// names the thing asked for ("object X" or "file P of package N").
func unservable(what string, state catalog.LocationState) *apiError {
	switch state {
	case catalog.LocationCorrupt:
		return &apiError{status: http.StatusConflict, code: CodeObjectCorrupt,
			msg: what + " failed verification: its stored bytes do not match its digests, so they are not served; run 'artifactstore explain' on it and restore it from another copy"}
	case catalog.LocationMissing:
		return &apiError{status: http.StatusConflict, code: CodeObjectMissing,
			msg: what + " is missing from its storage backend; run 'artifactstore explain' on it and restore it from another copy"}
	case catalog.LocationDeleted:
		return &apiError{status: http.StatusGone, code: CodeObjectDeleted,
			msg: what + " was deleted by retention; 'artifactstore explain' tells why"}
	default:
		return &apiError{status: http.StatusConflict, code: CodeObjectMissing,
			msg: fmt.Sprintf("%s is in storage state %q and cannot be served", what, state)}
	}
}

// isUnavailable reports whether err means that PostgreSQL could not be
// reached (worth a retry) rather than a bug.
func isUnavailable(err error) bool {
	var ne net.Error
	var ce *pgconn.ConnectError
	return errors.As(err, &ne) || errors.As(err, &ce) || pgconn.Timeout(err)
}
