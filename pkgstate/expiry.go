package pkgstate

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Due is a package whose retain-until has passed.
type Due struct {
	Name, Class string
	RetainUntil time.Time
}

// dueSQL selects the packages that expire at $1: retain-until passed, no
// hold, not expired, and a class that may expire.
const dueSQL = `SELECT p.name, p.retention_class, p.retain_until
	FROM ingest_packages p LEFT JOIN retention_classes c ON c.name = p.retention_class
	WHERE p.expired_at IS NULL AND NOT p.legal_hold AND p.retain_until IS NOT NULL AND p.retain_until <= $1
	  AND NOT COALESCE(c.never_expires, false)`

// LockDue returns at most limit packages due at now, earliest first, and
// locks their rows until tx ends.
func LockDue(ctx context.Context, tx pgx.Tx, now time.Time, limit int) ([]Due, error) {
	return collectDue(tx.Query(ctx, dueSQL+` ORDER BY p.retain_until, p.name LIMIT $2 FOR UPDATE OF p`, now, limit))
}

// DueAt returns every package due at now, earliest first (a dry run).
func DueAt(ctx context.Context, q Querier, now time.Time) ([]Due, error) {
	return collectDue(q.Query(ctx, dueSQL+` ORDER BY p.retain_until, p.name`, now))
}

func collectDue(rows pgx.Rows, err error) ([]Due, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Due, error) {
		var d Due
		err := row.Scan(&d.Name, &d.Class, &d.RetainUntil)
		return d, err
	})
}

// Expire records that the packages named expired at now.
func Expire(ctx context.Context, tx pgx.Tx, names []string, now time.Time) error {
	_, err := tx.Exec(ctx, `UPDATE ingest_packages SET expired_at = $2 WHERE name = ANY($1)`, names, now)
	return err
}

// Unreferenced is an object that nothing live would reference once the
// due packages expired.
type Unreferenced struct {
	Sized
	// MarkedAt is set when the row is marked already.
	MarkedAt *time.Time
}

// UnreferencedAfterDue lists, in key order, the objects no package would
// keep once the packages due at now expired: a reference keeps an object
// while its package is held, or neither expired nor due.
func UnreferencedAfterDue(ctx context.Context, q Querier, now time.Time) ([]Unreferenced, error) {
	rows, err := q.Query(ctx, `WITH due AS (`+dueSQL+`)
		SELECT g.content_address, g.backend_id, g.size_bytes, g.marked_at FROM gc_objects g
		WHERE NOT EXISTS (SELECT 1 FROM ingest_files f JOIN ingest_packages p ON p.name = f.package
			WHERE f.content_address = g.content_address
			  AND (p.legal_hold OR (p.expired_at IS NULL AND p.name NOT IN (SELECT name FROM due))))
		ORDER BY g.content_address, g.backend_id`, now)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Unreferenced, error) {
		var u Unreferenced
		err := row.Scan(&u.Key.Address, &u.Key.Backend, &u.Size, &u.MarkedAt)
		return u, err
	})
}
