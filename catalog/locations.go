package catalog

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/digest"
)

// Location is one stored copy of an object (a storage_locations row). A
// query fills the fields its doc comment names; the others stay zero.
type Location struct {
	// Address is the address the object is stored under (its primary).
	Address           digest.Address
	Backend           string
	State             LocationState
	Size              int64
	BLAKE3, SHA256    [32]byte
	StoredAt          time.Time
	LastVerifiedAt    *time.Time
	VerificationCount int64
	// RepairedAt is when a corrupt or missing copy was last replaced by
	// verified bytes (object.repaired), RepairCount how many times.
	RepairedAt  *time.Time
	RepairCount int64
	// Copies are every location of the object, best first (state rank,
	// then backend id): one per backend, each with its state. Filled by
	// ObjectLocation and PackageFiles.
	Copies []CopyState
}

// CopyState is one copy of an object: its backend and state.
type CopyState struct {
	Backend string        `json:"backend"`
	State   LocationState `json:"state"`
}

// OKBackends returns the backends of l's ok copies, best first: where
// a read may be served from, in order.
func (l Location) OKBackends() []string {
	var out []string
	for _, c := range l.Copies {
		if c.State == LocationOK {
			out = append(out, c.Backend)
		}
	}
	return out
}

// copiesSQL selects, for the storage_locations row aliased l, the
// backends and states of every location of its address, best first.
const copiesSQL = `(SELECT array_agg(c.backend_id ORDER BY ` + copyRank + `, c.backend_id) FROM storage_locations c WHERE c.content_address = l.content_address),
	(SELECT array_agg(c.state ORDER BY ` + copyRank + `, c.backend_id) FROM storage_locations c WHERE c.content_address = l.content_address)`

func fillCopies(l *Location, backends, states []string) {
	l.Copies = nil
	for i := range backends {
		if i < len(states) {
			l.Copies = append(l.Copies, CopyState{Backend: backends[i], State: LocationState(states[i])})
		}
	}
}

// byEitherDigest finds the locations of an address by its primary
// (content_address) or, for an object stored under its other digest, by
// that digest column. The algorithm is a literal, not a parameter, so that
// the partial indexes of migration 000008 match every plan.
var byEitherDigest = map[digest.Algorithm]string{
	digest.SHA256: `content_address = $1 OR (digest_algorithm = 'blake3' AND digest_sha256 = $2)`,
	digest.BLAKE3: `content_address = $1 OR (digest_algorithm = 'sha256' AND digest_blake3 = $2)`,
}

// ObjectLocation returns the best location (see LocationState.Rank, then
// by backend id) of the object with address addr under either of its
// digests: Address, Backend, State, Size, both digests, StoredAt and
// Copies (every location of the object). It
// fails with ErrNotFound when no location is recorded.
func (c *Catalog) ObjectLocation(ctx context.Context, addr digest.Address) (Location, error) {
	var (
		l       Location
		stored  string
		b3, sha []byte
		sum     = addr.Sum()
	)
	var backends, states []string
	err := c.db.QueryRow(ctx, `SELECT l.content_address, l.backend_id, l.state, l.size_bytes, l.digest_blake3, l.digest_sha256, l.stored_at, `+copiesSQL+`
		FROM storage_locations l WHERE `+byEitherDigest[addr.Algorithm()]+` ORDER BY `+locationRank+`, backend_id LIMIT 1`,
		addr.String(), sum[:]).Scan(&stored, &l.Backend, &l.State, &l.Size, &b3, &sha, &l.StoredAt, &backends, &states)
	if err != nil {
		return l, noRow(err, "location of object "+addr.String())
	}
	fillCopies(&l, backends, states)
	return l, fillLocation(&l, stored, b3, sha)
}

// Location returns the location of addr on one backend: Address, Backend,
// State, Size and both digests. It fails with ErrNotFound when there is
// none (never stored there, or not projected yet).
func (c *Catalog) Location(ctx context.Context, addr digest.Address, backendID string) (Location, error) {
	l := Location{Address: addr, Backend: backendID}
	var b3, s256 []byte
	err := c.db.QueryRow(ctx, `SELECT digest_blake3, digest_sha256, size_bytes, state
		FROM storage_locations WHERE content_address = $1 AND backend_id = $2`,
		addr.String(), backendID).Scan(&b3, &s256, &l.Size, &l.State)
	if err != nil {
		return l, noRow(err, fmt.Sprintf("location of %s on backend %q", addr, backendID))
	}
	if err := digest32(&l.BLAKE3, b3, "storage_locations.digest_blake3"); err != nil {
		return l, err
	}
	return l, digest32(&l.SHA256, s256, "storage_locations.digest_sha256")
}

// LocationStates returns the state of the location of each of addrs on
// one backend that has one (no entry: none), in one round trip.
func (c *Catalog) LocationStates(ctx context.Context, addrs []digest.Address, backendID string) (map[digest.Address]LocationState, error) {
	strs := make([]string, len(addrs))
	byStr := make(map[string]digest.Address, len(addrs))
	for i, a := range addrs {
		strs[i] = a.String()
		byStr[strs[i]] = a
	}
	rows, err := c.db.Query(ctx, `SELECT content_address, state FROM storage_locations
		WHERE content_address = ANY($1) AND backend_id = $2`, strs, backendID)
	if err != nil {
		return nil, fmt.Errorf("catalog: read the locations of %d objects on %q: %w", len(addrs), backendID, err)
	}
	defer rows.Close()
	out := map[digest.Address]LocationState{}
	for rows.Next() {
		var a string
		var state LocationState
		if err := rows.Scan(&a, &state); err != nil {
			return nil, fmt.Errorf("catalog: read the locations of %d objects on %q: %w", len(addrs), backendID, err)
		}
		out[byStr[a]] = state
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: read the locations of %d objects on %q: %w", len(addrs), backendID, err)
	}
	return out, nil
}

// Locations returns every location of addr (by its primary address), in
// backend order: Address, Backend, State, Size, StoredAt, LastVerifiedAt,
// VerificationCount, RepairedAt and RepairCount. None is an empty list,
// not an error.
func (c *Catalog) Locations(ctx context.Context, addr digest.Address) ([]Location, error) {
	rows, err := c.db.Query(ctx, `SELECT backend_id, state, size_bytes, stored_at, last_verified_at, verification_count,
			repaired_at, repair_count
		FROM storage_locations WHERE content_address = $1 ORDER BY backend_id`, addr.String())
	if err != nil {
		return nil, fmt.Errorf("catalog: read locations of %s: %w", addr, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Location, error) {
		l := Location{Address: addr}
		err := r.Scan(&l.Backend, &l.State, &l.Size, &l.StoredAt, &l.LastVerifiedAt, &l.VerificationCount, &l.RepairedAt, &l.RepairCount)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: read locations of %s: %w", addr, err)
	}
	return out, nil
}

// LiveAddresses returns which of addrs have a location on backendID that
// is not deleted. Through a transaction's Catalog it reads in that
// transaction.
func (c *Catalog) LiveAddresses(ctx context.Context, backendID string, addrs []string) (map[string]bool, error) {
	rows, err := c.db.Query(ctx, `SELECT content_address FROM storage_locations
		WHERE backend_id = $1 AND state <> '`+string(LocationDeleted)+`' AND content_address = ANY($2)`, backendID, addrs)
	if err != nil {
		return nil, fmt.Errorf("catalog: find live locations on %q: %w", backendID, err)
	}
	out := map[string]bool{}
	var a string
	if _, err := pgx.ForEachRow(rows, []any{&a}, func() error {
		out[a] = true
		return nil
	}); err != nil {
		return nil, fmt.Errorf("catalog: find live locations on %q: %w", backendID, err)
	}
	return out, nil
}

// Copy is one stored copy chosen for a verification.
type Copy struct {
	Address digest.Address
	Backend string
	// Path is the file's path when the copies are a package's (else "").
	Path string
}

// PackageCopies returns the copies, not deleted, of every file of pkg, by
// path then backend. Corrupt and missing copies are included, so that a
// repair can be checked.
func (c *Catalog) PackageCopies(ctx context.Context, pkg string) ([]Copy, error) {
	return c.copies(ctx, `SELECT l.content_address, l.backend_id, f.path
			FROM artifact_files f JOIN storage_locations l ON l.content_address = f.content_address
			WHERE f.package = $1 AND l.state <> '`+string(LocationDeleted)+`'
			ORDER BY f.path, l.backend_id`, pkg)
}

// AllCopies returns every copy that is not deleted, by address then
// backend.
func (c *Catalog) AllCopies(ctx context.Context) ([]Copy, error) {
	return c.copies(ctx, `SELECT content_address, backend_id, '' FROM storage_locations
			WHERE state <> '`+string(LocationDeleted)+`' ORDER BY content_address, backend_id`)
}

// ObjectCopies returns the copies of addr that are not deleted, by
// backend.
func (c *Catalog) ObjectCopies(ctx context.Context, addr digest.Address) ([]Copy, error) {
	return c.copies(ctx, `SELECT content_address, backend_id, '' FROM storage_locations
			WHERE content_address = $1 AND state <> '`+string(LocationDeleted)+`' ORDER BY backend_id`, addr.String())
}

func (c *Catalog) copies(ctx context.Context, sql string, args ...any) ([]Copy, error) {
	rows, err := c.db.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("catalog: find stored copies: %w", err)
	}
	defer rows.Close()
	var out []Copy
	for rows.Next() {
		var (
			cp   Copy
			addr string
		)
		if err := rows.Scan(&addr, &cp.Backend, &cp.Path); err != nil {
			return nil, fmt.Errorf("catalog: find stored copies: %w", err)
		}
		if cp.Address, err = parseAddress(addr, "storage_locations"); err != nil {
			return nil, err
		}
		out = append(out, cp)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: find stored copies: %w", err)
	}
	return out, nil
}

// Due is a location whose scrub is due.
type Due struct {
	Address        digest.Address
	Backend        string
	LastVerifiedAt *time.Time
}

// DueForScrub returns at most limit ok locations last verified before
// cutoff (or never) and not queued for a scrub since cutoff
// (scrub_queue, which the scrub scheduler writes): never-verified first,
// then the longest unverified.
func (c *Catalog) DueForScrub(ctx context.Context, cutoff time.Time, limit int) ([]Due, error) {
	rows, err := c.db.Query(ctx, `
		SELECT l.content_address, l.backend_id, l.last_verified_at
		FROM storage_locations l
		LEFT JOIN scrub_queue q USING (content_address, backend_id)
		WHERE l.state = '`+string(LocationOK)+`'
		  AND (l.last_verified_at IS NULL OR l.last_verified_at < $1)
		  AND (q.queued_at IS NULL OR q.queued_at < $1)
		ORDER BY l.last_verified_at ASC NULLS FIRST, l.stored_at, l.content_address, l.backend_id
		LIMIT $2`, cutoff, limit)
	if err != nil {
		return nil, fmt.Errorf("catalog: find objects due for a scrub: %w", err)
	}
	defer rows.Close()
	var out []Due
	for rows.Next() {
		var (
			d    Due
			addr string
		)
		if err := rows.Scan(&addr, &d.Backend, &d.LastVerifiedAt); err != nil {
			return nil, fmt.Errorf("catalog: read objects due for a scrub: %w", err)
		}
		if d.Address, err = parseAddress(addr, "storage_locations"); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: read objects due for a scrub: %w", err)
	}
	return out, nil
}

// StateCount is how many locations are in one state and their bytes.
type StateCount struct {
	Locations, Bytes int64
}

// LocationCounts counts the locations by state (a state with none is
// absent).
func (c *Catalog) LocationCounts(ctx context.Context) (map[LocationState]StateCount, error) {
	rows, err := c.db.Query(ctx, `SELECT state, count(*), coalesce(sum(size_bytes), 0) FROM storage_locations GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("catalog: count objects: %w", err)
	}
	out := map[LocationState]StateCount{}
	var (
		st LocationState
		n  StateCount
	)
	if _, err := pgx.ForEachRow(rows, []any{&st, &n.Locations, &n.Bytes}, func() error {
		out[st] = n
		return nil
	}); err != nil {
		return nil, fmt.Errorf("catalog: count objects: %w", err)
	}
	return out, nil
}

// Coverage is how much of what is stored was verified lately.
type Coverage struct {
	// Live counts the locations that are not deleted; Since those verified
	// at or after the time asked for; Never those never verified.
	Live, Since, Never int64
	// Last is the newest verification of any location.
	Last *time.Time
}

// ScrubCoverage measures the verifications since since.
func (c *Catalog) ScrubCoverage(ctx context.Context, since time.Time) (Coverage, error) {
	var cv Coverage
	const live = `state <> '` + string(LocationDeleted) + `'`
	err := c.db.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE `+live+`),
		       count(*) FILTER (WHERE `+live+` AND last_verified_at >= $1),
		       count(*) FILTER (WHERE `+live+` AND last_verified_at IS NULL),
		       max(last_verified_at)
		FROM storage_locations`, since).Scan(&cv.Live, &cv.Since, &cv.Never, &cv.Last)
	if err != nil {
		return cv, fmt.Errorf("catalog: scrub coverage: %w", err)
	}
	return cv, nil
}

func fillLocation(l *Location, stored string, b3, sha []byte) error {
	var err error
	if l.Address, err = parseAddress(stored, "storage_locations"); err != nil {
		return err
	}
	if err := digest32(&l.BLAKE3, b3, "storage_locations.digest_blake3"); err != nil {
		return err
	}
	return digest32(&l.SHA256, sha, "storage_locations.digest_sha256")
}
