package catalog_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func exec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func address(t *testing.T, data string) (digest.Address, digest.Digests) {
	t.Helper()
	d, err := digest.Compute(strings.NewReader(data), nil)
	if err != nil {
		t.Fatal(err)
	}
	return d.Address(digest.BLAKE3), d
}

func insertLocation(t *testing.T, pool *pgxpool.Pool, a digest.Address, d digest.Digests, backend string, st catalog.LocationState) {
	t.Helper()
	exec(t, pool, `INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256,
			size_bytes, state, stored_at) VALUES ($1, $2, $3, $4, $5, 3, $6, $7)`,
		a.String(), backend, a.Algorithm().String(), d.BLAKE3[:], d.SHA256[:], string(st), t0)
}

// TestLocationStatesAreTheSchemas: the CHECK constraint of
// storage_locations.state admits exactly the catalog's location states, so
// that a state added on one side only fails here.
func TestLocationStatesAreTheSchemas(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	var def string
	err := pool.QueryRow(context.Background(), `SELECT pg_get_constraintdef(oid) FROM pg_constraint
		WHERE conrelid = 'storage_locations'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%state%'`).Scan(&def)
	if err != nil {
		t.Fatal(err)
	}
	var inSchema []string
	for _, part := range strings.Split(def, "'")[1:] {
		if !strings.HasPrefix(part, "::") && !strings.ContainsAny(part, " ,()") {
			inSchema = append(inSchema, part)
		}
	}
	var ours []string
	for _, s := range catalog.LocationStates() {
		ours = append(ours, string(s))
	}
	slices.Sort(inSchema)
	slices.Sort(ours)
	if !slices.Equal(inSchema, ours) {
		t.Fatalf("storage_locations.state admits %v (%s); the catalog knows %v", inSchema, def, ours)
	}
}

// TestRankIsTheSQLRank: a location is picked by LocationState.Rank in Go
// and by its SQL form in queries; both give every state the same rank.
func TestRankIsTheSQLRank(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	for _, st := range append(catalog.LocationStates(), catalog.LocationUnknown, "anything") {
		var rank int
		if err := pool.QueryRow(context.Background(), `SELECT `+catalog.LocationRank+` FROM (SELECT $1::text AS state) s`, string(st)).Scan(&rank); err != nil {
			t.Fatal(err)
		}
		if rank != st.Rank() {
			t.Errorf("state %q: SQL rank %d, Go rank %d", st, rank, st.Rank())
		}
	}
	states := catalog.LocationStates()
	if !slices.IsSortedFunc(states, func(a, b catalog.LocationState) int { return a.Rank() - b.Rank() }) {
		t.Errorf("LocationStates %v is not best first", states)
	}
}

// TestObjectLocationPicksTheBest: of the locations of one object, the
// look-up answers the best state, then the first backend; a state is
// reported once no better one is left.
func TestObjectLocationPicksTheBest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	cat := catalog.New(pool)
	a, d := address(t, "abc")
	// Backends named against the rank, so that the order by backend alone
	// would pick the worst.
	states := catalog.LocationStates()
	for i, st := range states {
		insertLocation(t, pool, a, d, string(rune('z'-i)), st)
	}
	exec(t, pool, `INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256,
			size_bytes, state, stored_at) VALUES ($1, 'a', $2, $3, $4, 3, 'ok', $5)`, a.String(), a.Algorithm().String(), d.BLAKE3[:], d.SHA256[:], t0)
	l, err := cat.ObjectLocation(ctx, a)
	if err != nil || l.State != catalog.LocationOK || l.Backend != "a" {
		t.Fatalf("ObjectLocation = %+v, %v; want ok on backend a", l, err)
	}
	exec(t, pool, `DELETE FROM storage_locations WHERE backend_id = 'a'`)
	for i, st := range states {
		// By its other digest too.
		for _, asked := range []digest.Address{a, d.Address(digest.SHA256)} {
			l, err := cat.ObjectLocation(ctx, asked)
			if err != nil || l.State != st || l.Address != a || l.BLAKE3 != d.BLAKE3 || l.SHA256 != d.SHA256 || l.Size != 3 || !l.StoredAt.Equal(t0) {
				t.Fatalf("ObjectLocation(%s) = %+v, %v; want %s of %s", asked, l, err, st, a)
			}
		}
		exec(t, pool, `DELETE FROM storage_locations WHERE backend_id = $1`, string(rune('z'-i)))
	}
	if _, err := cat.ObjectLocation(ctx, a); !errors.Is(err, catalog.ErrNotFound) {
		t.Fatalf("ObjectLocation of an object without locations: %v; want ErrNotFound", err)
	}
}

// TestNotFoundIsTheCatalogs: every single-row read of something that does
// not exist fails with catalog.ErrNotFound and never lets pgx's error out.
func TestNotFoundIsTheCatalogs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	cat := catalog.New(pool)
	a, _ := address(t, "nothing")
	reads := map[string]func() error{
		"ObjectLocation": func() error { _, err := cat.ObjectLocation(ctx, a); return err },
		"Location":       func() error { _, err := cat.Location(ctx, a, "local"); return err },
		"Package":        func() error { _, err := cat.Package(ctx, "p"); return err },
		"Retention":      func() error { _, err := cat.Retention(ctx, "p"); return err },
		"File":           func() error { _, err := cat.File(ctx, "p", "f"); return err },
	}
	for name, read := range reads {
		err := read()
		if !errors.Is(err, catalog.ErrNotFound) || errors.Is(err, pgx.ErrNoRows) {
			t.Errorf("%s of nothing: %v; want catalog.ErrNotFound and not pgx.ErrNoRows", name, err)
		}
	}
	// Reads of sets and counts find nothing without an error.
	if ok, err := cat.PackageExists(ctx, "p"); ok || err != nil {
		t.Errorf("PackageExists = %v, %v", ok, err)
	}
	if cp, err := cat.Checkpoint(ctx, "projector"); cp != 0 || err != nil {
		t.Errorf("Checkpoint = %d, %v; want 0", cp, err)
	}
	if st, err := cat.ProjectorStop(ctx, "projector"); st != nil || err != nil {
		t.Errorf("ProjectorStop = %+v, %v; want nil", st, err)
	}
	if ls, err := cat.Locations(ctx, a); len(ls) != 0 || err != nil {
		t.Errorf("Locations = %v, %v", ls, err)
	}
}

// TestLiveAddressesReadsInTheTransaction: through a transaction's Catalog,
// the check sees the transaction's own writes; deleted locations and other
// backends are not live.
func TestLiveAddressesReadsInTheTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewDB(t)
	a, da := address(t, "a")
	b, db := address(t, "b")
	c, dc := address(t, "c")
	insertLocation(t, pool, a, da, "local", catalog.LocationCorrupt)
	insertLocation(t, pool, b, db, "local", catalog.LocationDeleted)
	insertLocation(t, pool, c, dc, "other", catalog.LocationOK)
	addrs := []string{a.String(), b.String(), c.String()}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE storage_locations SET state = 'ok' WHERE content_address = $1`, b.String()); err != nil {
			return err
		}
		live, err := catalog.New(tx).LiveAddresses(ctx, "local", addrs)
		if err != nil {
			return err
		}
		if want := map[string]bool{a.String(): true, b.String(): true}; !mapsEqual(live, want) {
			t.Errorf("in the transaction: live %v, want %v", live, want)
		}
		return errors.New("roll back")
	})
	if err == nil || err.Error() != "roll back" {
		t.Fatal(err)
	}
	live, err := catalog.New(pool).LiveAddresses(ctx, "local", addrs)
	if want := map[string]bool{a.String(): true}; err != nil || !mapsEqual(live, want) {
		t.Errorf("after the roll-back: live %v, %v; want %v", live, err, want)
	}
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestSecondaryDigestLookupUsesAnIndex: the look-up by the other digest
// is an index scan, not a scan of every location (the plan is checked
// with sequential scans off, so the table's size does not matter).
func TestSecondaryDigestLookupUsesAnIndex(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET enable_seqscan = off`); err != nil {
		t.Fatal(err)
	}
	for alg, index := range map[digest.Algorithm]string{digest.SHA256: "storage_locations_digest_sha256_idx", digest.BLAKE3: "storage_locations_digest_blake3_idx"} {
		var plan strings.Builder
		rows, err := conn.Query(ctx, `EXPLAIN SELECT content_address FROM storage_locations WHERE `+catalog.LookupWhere[alg],
			alg.String()+":"+strings.Repeat("0", 64), make([]byte, 32))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan.WriteString(line + "\n")
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(plan.String(), index) {
			t.Errorf("look-up of a %s address by its other digest does not use %s:\n%s", alg, index, plan.String())
		}
	}
}
