package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// Location states (storage_locations.state), as the projector writes them.
const (
	stateOK      = "ok"
	stateCorrupt = "corrupt"
	stateMissing = "missing"
	stateDeleted = "deleted"
)

// locationOrder ranks the locations of one address: an ok one first, then
// the state that best explains why none is ok.
const locationOrder = `CASE state WHEN 'ok' THEN 0 WHEN 'corrupt' THEN 1 WHEN 'missing' THEN 2 ELSE 3 END, backend_id`

// object is what the API needs to serve one object: where, how big, and
// its recorded digests.
type object struct {
	Address  digest.Address
	Backend  string
	State    string
	Size     int64
	BLAKE3   [32]byte
	SHA256   [32]byte
	StoredAt time.Time
}

// expected is what the data plane proves the bytes against.
func (o object) expected() dataplane.Expected {
	return dataplane.Expected{BLAKE3: &o.BLAKE3, SHA256: &o.SHA256, Size: o.Size}
}

// lookupObject returns the best location of addr, or a not_found error
// when no location is recorded.
func (s *Server) lookupObject(ctx context.Context, addr digest.Address) (object, error) {
	o := object{Address: addr}
	var b3, sha []byte
	err := s.db.QueryRow(ctx, `SELECT backend_id, state, size_bytes, digest_blake3, digest_sha256, stored_at
		FROM storage_locations WHERE content_address = $1 ORDER BY `+locationOrder+` LIMIT 1`,
		addr.String()).Scan(&o.Backend, &o.State, &o.Size, &b3, &sha, &o.StoredAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, &apiError{status: http.StatusNotFound, code: CodeNotFound,
			msg: fmt.Sprintf("no object %s is stored here; check the address (ETag or package listing)", addr)}
	}
	if err != nil {
		return o, fmt.Errorf("look up object %s: %w", addr, err)
	}
	copy(o.BLAKE3[:], b3)
	copy(o.SHA256[:], sha)
	return o, nil
}

// unservable is the error for a location whose state is not ok; what
// names the thing asked for ("object X" or "file P of package N").
func unservable(what, state string) *apiError {
	switch state {
	case stateCorrupt:
		return &apiError{status: http.StatusConflict, code: CodeObjectCorrupt,
			msg: what + " failed verification: its stored bytes do not match its digests, so they are not served; run 'artifactstore explain' on it and restore it from another copy"}
	case stateMissing:
		return &apiError{status: http.StatusConflict, code: CodeObjectMissing,
			msg: what + " is missing from its storage backend; run 'artifactstore explain' on it and restore it from another copy"}
	case stateDeleted:
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
