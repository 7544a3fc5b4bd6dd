package ingest

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/internal/pgtest"
)

// TestGroupTx checks the committer's transaction, whose BEGIN and COMMIT
// ride with its first and last batches: a commit is reported only when
// PostgreSQL committed, and every other ending rolls back and leaves the
// connection idle.
func TestGroupTx(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE t (v int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	insert := func(v int, commit bool) func(tx *groupTx) error {
		return func(tx *groupTx) error {
			b := &pgx.Batch{}
			queueBegin(b)
			b.Queue(`INSERT INTO t VALUES ($1)`, v)
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
			wb := &pgx.Batch{}
			wb.Queue(`INSERT INTO t VALUES ($1)`, v+1000)
			if commit {
				queueCommit(wb)
			}
			return tx.SendBatch(ctx, wb).Close()
		}
	}
	has := func(v int) bool {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM t WHERE v = $1`, v).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}

	if err := runGroupTx(ctx, pool, insert(1, true)); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if !has(1) || !has(1001) {
		t.Fatal("a committed transaction's rows are missing")
	}

	if err := runGroupTx(ctx, pool, insert(2, false)); !errors.Is(err, errNoCommit) {
		t.Fatalf("no COMMIT sent: got %v, want errNoCommit", err)
	}
	if has(2) {
		t.Fatal("a transaction without COMMIT left its rows")
	}

	// The last batch fails before its COMMIT (duplicate key 1001).
	err := runGroupTx(ctx, pool, func(tx *groupTx) error {
		b := &pgx.Batch{}
		queueBegin(b)
		b.Queue(`INSERT INTO t VALUES (3)`)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		wb := &pgx.Batch{}
		wb.Queue(`INSERT INTO t VALUES (1001)`)
		queueCommit(wb)
		return tx.SendBatch(ctx, wb).Close()
	})
	if err == nil {
		t.Fatal("a failed statement before COMMIT reported success")
	}
	if has(3) {
		t.Fatal("a failed transaction left its rows")
	}

	// A COMMIT of a transaction that failed earlier (its error ignored by
	// the caller) is PostgreSQL's ROLLBACK, never success.
	err = runGroupTx(ctx, pool, func(tx *groupTx) error {
		b := &pgx.Batch{}
		queueBegin(b)
		b.Queue(`INSERT INTO t VALUES (4)`)
		_ = tx.SendBatch(ctx, b).Close()
		_, _ = tx.Exec(ctx, `INSERT INTO t VALUES (1)`)
		wb := &pgx.Batch{}
		queueCommit(wb)
		return tx.SendBatch(ctx, wb).Close()
	})
	if !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Fatalf("COMMIT of a failed transaction: got %v, want pgx.ErrTxCommitRollback", err)
	}
	if has(4) {
		t.Fatal("a rolled back transaction left its rows")
	}

	// Every connection went back idle: a transaction on each works.
	for range pool.Stat().TotalConns() + 1 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s := c.Conn().PgConn().TxStatus(); s != 'I' {
			t.Fatalf("connection returned to the pool in transaction status %q", s)
		}
		c.Release()
	}
}
