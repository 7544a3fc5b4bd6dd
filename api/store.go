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
// its recorded digests. Address is the address it is stored under (its
// primary); Asked is the address the client named, either digest.
type object struct {
	Address  digest.Address
	Asked    digest.Address
	Backend  string
	State    string
	Size     int64
	BLAKE3   [32]byte
	SHA256   [32]byte
	StoredAt time.Time
}

// addresses returns both content addresses of o, primary first.
func (o object) addresses() [2]digest.Address {
	b3, s256 := digest.New(digest.BLAKE3, o.BLAKE3), digest.New(digest.SHA256, o.SHA256)
	if o.Address.Algorithm() == digest.SHA256 {
		return [2]digest.Address{s256, b3}
	}
	return [2]digest.Address{b3, s256}
}

// byEitherDigest finds the locations of an address by its primary
// (content_address) or, for an object stored under its other digest, by
// that digest column. The algorithm is a literal, not a parameter, so that
// the partial indexes of migration 000008 match every plan.
var byEitherDigest = map[digest.Algorithm]string{
	digest.SHA256: `content_address = $1 OR (digest_algorithm = 'blake3' AND digest_sha256 = $2)`,
	digest.BLAKE3: `content_address = $1 OR (digest_algorithm = 'sha256' AND digest_blake3 = $2)`,
}

// lookupObject returns the best location of the object with address addr
// under either of its digests, or a not_found error when no location is
// recorded.
func (s *Server) lookupObject(ctx context.Context, addr digest.Address) (object, error) {
	o := object{Asked: addr}
	var (
		stored  string
		b3, sha []byte
		sum     = addr.Sum()
	)
	err := s.db.QueryRow(ctx, `SELECT content_address, backend_id, state, size_bytes, digest_blake3, digest_sha256, stored_at
		FROM storage_locations WHERE `+byEitherDigest[addr.Algorithm()]+` ORDER BY `+locationOrder+` LIMIT 1`,
		addr.String(), sum[:]).Scan(&stored, &o.Backend, &o.State, &o.Size, &b3, &sha, &o.StoredAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, &apiError{status: http.StatusNotFound, code: CodeNotFound,
			msg: fmt.Sprintf("no object %s is stored here; check the address (ETag or package listing)", addr)}
	}
	if err != nil {
		return o, fmt.Errorf("look up object %s: %w", addr, err)
	}
	if o.Address, err = digest.Parse(stored); err != nil {
		return o, fmt.Errorf("object %s: the catalog holds a bad address: %w", addr, err)
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
