package pkgstate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ObjectState is the state of a gc_objects row.
type ObjectState string

// Object states.
const (
	// ObjectLive: the bytes must be on the backend; a reference may use
	// them.
	ObjectLive ObjectState = "live"
	// ObjectMarked: no live package referenced the content when the
	// reaper marked it; the sweep deletes it after the grace period unless
	// an ingest or a hold makes it live again first.
	ObjectMarked ObjectState = "marked"
)

// The states as SQL literals: constants in the statements, so that the
// planner uses the partial index on marked rows.
const (
	sqlLive   = "'" + string(ObjectLive) + "'"
	sqlMarked = "'" + string(ObjectMarked) + "'"
)

// ObjectKey names one stored object: a content address on a backend, the
// key of its gc_objects row.
type ObjectKey struct{ Address, Backend string }

// ObjectStateOf reads the state of the row of k outside the lock (what a
// put asks before it trusts a stored copy); ok is false when there is no
// row.
func ObjectStateOf(ctx context.Context, q Querier, k ObjectKey) (state ObjectState, ok bool, err error) {
	var s *string
	err = q.QueryRow(ctx, `SELECT (SELECT state FROM gc_objects WHERE content_address = $1 AND backend_id = $2)`, k.Address, k.Backend).Scan(&s)
	if err != nil || s == nil {
		return "", false, err
	}
	return ObjectState(*s), true, nil
}

// ObjectStatesOf is ObjectStateOf for several rows in one round trip:
// each key's state (no entry: no row).
func ObjectStatesOf(ctx context.Context, q Querier, keys []ObjectKey) (map[ObjectKey]ObjectState, error) {
	addrs, backends := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		addrs[i], backends[i] = k.Address, k.Backend
	}
	sql, args := byKeys(`SELECT content_address, backend_id, state FROM gc_objects WHERE content_address = $1 AND backend_id = $2`,
		`SELECT u.a, u.b, g.state FROM unnest($1::text[], $2::text[]) AS u(a, b)
		CROSS JOIN LATERAL (SELECT state FROM gc_objects WHERE content_address = u.a AND backend_id = u.b OFFSET 0) g`,
		addrs, backends)
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read the gc rows of %d objects: %w", len(keys), err)
	}
	defer rows.Close()
	out := map[ObjectKey]ObjectState{}
	for rows.Next() {
		var k ObjectKey
		var state string
		if err := rows.Scan(&k.Address, &k.Backend, &state); err != nil {
			return nil, fmt.Errorf("read the gc rows of %d objects: %w", len(keys), err)
		}
		out[k] = ObjectState(state)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the gc rows of %d objects: %w", len(keys), err)
	}
	return out, nil
}

// QueueLockObjects queues on b, after the lock, the read of the rows of
// keys FOR UPDATE (in key order, so that lockers never deadlock: the keys
// are sorted here, and each row is locked by its own lookup as the keys
// are walked in array order); once the batch ran, into holds each row's
// state (no entry: no row).
func QueueLockObjects(b *pgx.Batch, keys []ObjectKey, into map[ObjectKey]ObjectState) {
	keys = slices.Clone(keys)
	slices.SortFunc(keys, func(x, y ObjectKey) int {
		return cmp.Or(strings.Compare(x.Address, y.Address), strings.Compare(x.Backend, y.Backend))
	})
	addrs, backends := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		addrs[i], backends[i] = k.Address, k.Backend
	}
	sql, args := byKeys(`SELECT content_address, backend_id, state FROM gc_objects WHERE content_address = $1 AND backend_id = $2 FOR UPDATE`,
		`SELECT u.a, u.b, g.state FROM unnest($1::text[], $2::text[]) AS u(a, b)
		CROSS JOIN LATERAL (SELECT state FROM gc_objects WHERE content_address = u.a AND backend_id = u.b FOR UPDATE) g`,
		addrs, backends)
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var k ObjectKey
			var state string
			if err := rows.Scan(&k.Address, &k.Backend, &state); err != nil {
				return fmt.Errorf("lock the gc rows of the stored objects: %w", err)
			}
			into[k] = ObjectState(state)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lock the gc rows of the stored objects: %w", err)
		}
		return nil
	})
}

// Sized is a stored object and its size.
type Sized struct {
	Key  ObjectKey
	Size int64
}

// QueueKeepLive queues on b that the rows of objs are live (inserted, or
// unmarked), at now.
func QueueKeepLive(b *pgx.Batch, objs []Sized, now time.Time) {
	addrs, backends, sizes := make([]string, len(objs)), make([]string, len(objs)), make([]int64, len(objs))
	for i, o := range objs {
		addrs[i], backends[i], sizes[i] = o.Key.Address, o.Key.Backend, o.Size
	}
	b.Queue(`INSERT INTO gc_objects (content_address, backend_id, size_bytes, state, updated_at)
		SELECT a, b, s, `+sqlLive+`, $4 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(a, b, s)
		ON CONFLICT (content_address, backend_id) DO UPDATE SET state = `+sqlLive+`, marked_at = NULL, updated_at = excluded.updated_at`,
		addrs, backends, sizes, now)
}

// liveRefSQL is true when a live package (not expired, or held) has a file
// naming g.content_address: the one definition of a live reference.
const liveRefSQL = `EXISTS (SELECT 1 FROM ingest_files f JOIN ingest_packages p ON p.name = f.package
	WHERE f.content_address = g.content_address AND (p.expired_at IS NULL OR p.legal_hold))`

// ObjectsAfter lists, in key order, at most limit row keys after after
// (the zero key: from the start).
func ObjectsAfter(ctx context.Context, tx pgx.Tx, after ObjectKey, limit int) ([]ObjectKey, error) {
	rows, err := tx.Query(ctx, `SELECT content_address, backend_id FROM gc_objects
		WHERE (content_address, backend_id) > ($1, $2) ORDER BY content_address, backend_id LIMIT $3`,
		after.Address, after.Backend, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ObjectKey, error) {
		var k ObjectKey
		err := row.Scan(&k.Address, &k.Backend)
		return k, err
	})
}

// MarkUnreferenced marks, at now, the live rows among keys whose content
// no live package references, and returns them.
func MarkUnreferenced(ctx context.Context, tx pgx.Tx, keys []ObjectKey, now time.Time) ([]Sized, error) {
	addrs, backends := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		addrs[i], backends[i] = k.Address, k.Backend
	}
	rows, err := tx.Query(ctx, `UPDATE gc_objects g SET state = `+sqlMarked+`, marked_at = $3, updated_at = $3
		FROM unnest($1::text[], $2::text[]) AS k(content_address, backend_id)
		WHERE g.content_address = k.content_address AND g.backend_id = k.backend_id
		  AND g.state = `+sqlLive+` AND NOT `+liveRefSQL+`
		RETURNING g.content_address, g.backend_id, g.size_bytes`, addrs, backends, now)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Sized, error) {
		var s Sized
		err := row.Scan(&s.Key.Address, &s.Key.Backend, &s.Size)
		return s, err
	})
}

// Marked is a marked row.
type Marked struct {
	Sized
	MarkedAt time.Time
}

// MarkedBefore lists at most limit rows marked at or before cutoff, in
// (marked_at, key) order after after (the zero value: from the start).
func MarkedBefore(ctx context.Context, q Querier, cutoff time.Time, after Marked, limit int) ([]Marked, error) {
	rows, err := q.Query(ctx, `SELECT content_address, backend_id, size_bytes, marked_at FROM gc_objects
		WHERE state = `+sqlMarked+` AND marked_at <= $1 AND (marked_at, content_address, backend_id) > ($2, $3, $4)
		ORDER BY marked_at, content_address, backend_id LIMIT $5`,
		cutoff, after.MarkedAt, after.Key.Address, after.Key.Backend, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Marked, error) {
		var m Marked
		err := row.Scan(&m.Key.Address, &m.Key.Backend, &m.Size, &m.MarkedAt)
		return m, err
	})
}

// Recheck is a row as the sweep reads it again under the lock.
type Recheck struct {
	State    ObjectState
	MarkedAt *time.Time
	Size     int64
	// Referenced is true when a live package references the content.
	Referenced bool
}

// LockObject reads the row of k FOR UPDATE, with whether a live package
// references its content; ErrNotFound when there is no row.
func LockObject(ctx context.Context, tx pgx.Tx, k ObjectKey) (Recheck, error) {
	var (
		r     Recheck
		state string
	)
	err := tx.QueryRow(ctx, `SELECT g.state, g.marked_at, g.size_bytes, `+liveRefSQL+` FROM gc_objects g
		WHERE g.content_address = $1 AND g.backend_id = $2 FOR UPDATE OF g`, k.Address, k.Backend).
		Scan(&state, &r.MarkedAt, &r.Size, &r.Referenced)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, ErrNotFound
	}
	r.State = ObjectState(state)
	return r, err
}

// Unmark makes the row of k live again, at now.
func Unmark(ctx context.Context, tx pgx.Tx, k ObjectKey, now time.Time) error {
	_, err := tx.Exec(ctx, `UPDATE gc_objects SET state = `+sqlLive+`, marked_at = NULL, updated_at = $3
		WHERE content_address = $1 AND backend_id = $2`, k.Address, k.Backend, now)
	return err
}

// Forget deletes the row of k (its bytes are deleted in the same
// transaction).
func Forget(ctx context.Context, tx pgx.Tx, k ObjectKey) error {
	_, err := tx.Exec(ctx, `DELETE FROM gc_objects WHERE content_address = $1 AND backend_id = $2`, k.Address, k.Backend)
	return err
}

// Known returns which of addrs have a row on backend.
func Known(ctx context.Context, q Querier, backend string, addrs []string) (map[string]bool, error) {
	return addressSet(ctx, q, `SELECT content_address FROM gc_objects WHERE backend_id = $1 AND content_address = ANY($2)`, backend, addrs)
}

// Referenced returns which of addrs a file of any package names (live or
// not).
func Referenced(ctx context.Context, q Querier, addrs []string) (map[string]bool, error) {
	return addressSet(ctx, q, `SELECT content_address FROM ingest_files WHERE content_address = ANY($1)`, addrs)
}

// Adopt gives a stored object that has no row a live one, at now; false
// when a row exists already.
func Adopt(ctx context.Context, tx pgx.Tx, o Sized, now time.Time) (bool, error) {
	tag, err := tx.Exec(ctx, `INSERT INTO gc_objects (content_address, backend_id, size_bytes, state, updated_at)
		VALUES ($1, $2, $3, `+sqlLive+`, $4) ON CONFLICT DO NOTHING`, o.Key.Address, o.Key.Backend, o.Size, now)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

func addressSet(ctx context.Context, q Querier, sql string, args ...any) (map[string]bool, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out[a] = true
	}
	return out, rows.Err()
}

// LiveClasses returns the retention classes of the live packages (not
// expired, or held) that have a file naming addr, sorted; none when
// nothing live references it. It is what the replication policy decides
// on: the strongest class among the references wins.
func LiveClasses(ctx context.Context, q Querier, addr string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT DISTINCT p.retention_class FROM ingest_files f JOIN ingest_packages p ON p.name = f.package
		WHERE f.content_address = $1 AND (p.expired_at IS NULL OR p.legal_hold) ORDER BY 1`, addr)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// KeepCopy records, at now, that o.Key.Backend holds a copy of
// o.Key.Address: its row is inserted live, or made live again, so that
// the reaper deletes that copy too once nothing references the content.
// Call it under the lock (InTx).
func KeepCopy(ctx context.Context, tx pgx.Tx, o Sized, now time.Time) error {
	b := &pgx.Batch{}
	QueueKeepLive(b, []Sized{o}, now)
	return tx.SendBatch(ctx, b).Close()
}
