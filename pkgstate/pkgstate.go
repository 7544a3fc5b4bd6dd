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

// byKeySQL makes the lookup of one row by its primary key (a statement
// whose WHERE names the columns of an outer unnest) the inner side of a
// LATERAL join over many keys: each key is one index lookup, whatever
// the planner believes of the table. A plain join with unnest lets a
// cached generic plan, made while the table was empty or small (a fresh
// database, before autovacuum analyzed it), hash the keys and scan the
// whole table on every execution; that scan grew with the table and made
// each ingest's pre-check slower than the one before. OFFSET 0 keeps the
// planner from flattening the subquery back into such a join.
func byKeySQL(lookup string) string { return lookup + ` OFFSET 0` }
