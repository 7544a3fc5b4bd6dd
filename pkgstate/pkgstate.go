// Package pkgstate owns the package-state tables: ingest_packages (one row
// per package: class, metadata, retain-until, hold, seal, expiry),
// ingest_files (the object each path of a package names) and gc_objects
// (one row per object on a backend: live, or marked for deletion). They
// are the command side's state: the ingesters, the retention handler and
// the reaper decide against them, not against the projections, which lag
// the log.
//
// Every decision on them is taken in a transaction that holds one
// transaction-level advisory lock (Lock, QueueLock, InTx), so that the
// decisions and the events they append commit in one order: a hold set
// while the reaper decides is never missed, and two ingesters never both
// create a package. The package also holds the one retain-until rule
// (Class.RetainUntil), which creation and a change of class share.
//
// No other package names these tables (internal/archtest); callers keep
// their decisions and events, and read and write the state through the
// functions here, in their own transaction.
package pkgstate

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// KeyPackageState is the key of the transaction-level advisory lock under
// which every decision on the package-state tables is taken. It is not a
// leader lock; it shares the database's one bigint key space with the
// leader.Key… constants of internal/leader, and a test keeps them apart.
const KeyPackageState int64 = 0x6172746966616374 // "artifact"

// lockSQL takes the package-state lock until the transaction ends.
const lockSQL = `SELECT pg_advisory_xact_lock($1)`

// ErrNotFound means the package (or object) has no row.
var ErrNotFound = errors.New("pkgstate: not found")

// Querier runs statements: a transaction (pgx.Tx) or a pool.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	_ Querier = (pgx.Tx)(nil)
	_ Querier = (*pgxpool.Pool)(nil)
)

// Lock takes the package-state lock in tx; it is released when tx ends.
func Lock(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, lockSQL, KeyPackageState); err != nil {
		return fmt.Errorf("take the package-state lock: %w", err)
	}
	return nil
}

// QueueLock queues the lock on b, for a caller that sends its reads in
// the same round trip (the ingesters' group commit). Statements queued
// after it run once the lock is granted, each with a snapshot taken after
// that (READ COMMITTED), so they see every decision committed before.
func QueueLock(b *pgx.Batch) {
	b.Queue(lockSQL, KeyPackageState)
}

// InTx runs fn in a transaction of pool that holds the package-state
// lock, and commits when fn returns nil.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := Lock(ctx, tx); err != nil {
			return err
		}
		return fn(tx)
	})
}

// byKeys picks the statement that reads rows by their two-column keys
// (a[i], b[i]) and its arguments: one, comparing the key columns with $1
// and $2, for a single key; many, a lookup per key over unnest($1, $2),
// for more. many makes each lookup the inner side of a LATERAL join
// (CROSS JOIN LATERAL (... OFFSET 0), the OFFSET, or a FOR UPDATE, keeping
// the planner from flattening it): one index lookup per key whatever the planner believes
// of the table. A plain join with unnest let a connection cache a generic
// plan made while the table was empty and never analyzed (a fresh
// database, before autovacuum's first ANALYZE) that hashes the keys and
// scans the whole table on every later run, each run slower as the table
// grows. PostgreSQL plans the LATERAL form afresh on each run (its generic
// plan, sized for ten keys, looks dearer than a custom plan for a few),
// which a read of several keys can afford; the single key of an ingest's
// pre-check or of a group of one gets one, whose cached generic plan is
// the index lookup.
func byKeys(one, many string, a, b []string) (string, []any) {
	if len(a) == 1 {
		return one, []any{a[0], b[0]}
	}
	return many, []any{a, b}
}
