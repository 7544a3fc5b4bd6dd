package ingest

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// groupTx is the committer's transaction on one connection. Its BEGIN
// travels in front of the first batch and its COMMIT behind the last one
// (queueBegin, queueCommit) instead of costing a round trip each: the
// ingest lock is held from the first batch to the commit, and every round
// trip under it is time that every ingester waits. Statements in between
// run as in any transaction; it satisfies pgx.Tx for the event log's
// AppendTx.
type groupTx struct {
	conn *pgx.Conn
}

var _ pgx.Tx = (*groupTx)(nil)

// errNested reports a use of groupTx that it does not offer.
var errNested = errors.New("ingest: the commit transaction has no nested transactions or large objects")

// queueBegin queues the transaction's BEGIN as the first statement of b,
// which must be the first batch sent.
func queueBegin(b *pgx.Batch) {
	b.Queue(`BEGIN ISOLATION LEVEL READ COMMITTED`)
}

// queueCommit queues the COMMIT as the last statement of b, which must be
// the last batch sent. PostgreSQL answers a COMMIT of a failed transaction
// with ROLLBACK and no error; that becomes pgx.ErrTxCommitRollback.
func queueCommit(b *pgx.Batch) {
	b.Queue(`COMMIT`).Exec(func(ct pgconn.CommandTag) error {
		if ct.String() == "ROLLBACK" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	})
}

// runGroupTx runs fn on a connection of pool; fn sends BEGIN with its
// first batch and COMMIT with its last. When fn fails, or the connection
// is still in a transaction after it (its COMMIT never ran), the
// transaction is rolled back and fn's error (or errNoCommit) returned; a
// connection that cannot roll back is closed, which rolls back too.
func runGroupTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx *groupTx) error) error {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire a database connection: %w", err)
	}
	defer pc.Release()
	tx := &groupTx{conn: pc.Conn()}
	err = fn(tx)
	if err == nil && tx.conn.PgConn().TxStatus() == 'I' {
		return nil
	}
	if err == nil {
		err = errNoCommit
	}
	if rerr := tx.Rollback(ctx); rerr != nil {
		_ = tx.conn.Close(ctx)
	}
	return err
}

// errNoCommit reports a commit function that returned without sending its
// COMMIT: a bug, and nothing was committed.
var errNoCommit = errors.New("ingest: the commit transaction ended without its COMMIT; nothing was committed")

// Begin is not offered.
func (t *groupTx) Begin(context.Context) (pgx.Tx, error) { return nil, errNested }

// Commit is not offered: the COMMIT is queued with the last batch.
func (t *groupTx) Commit(context.Context) error {
	return fmt.Errorf("%w (queue the COMMIT with the last batch)", errNested)
}

// Rollback rolls back the transaction when one is open.
func (t *groupTx) Rollback(ctx context.Context) error {
	if t.conn.PgConn().TxStatus() == 'I' {
		return nil
	}
	_, err := t.conn.Exec(ctx, `ROLLBACK`)
	return err
}

// CopyFrom implements pgx.Tx.
func (t *groupTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	return t.conn.CopyFrom(ctx, table, cols, src)
}

// SendBatch implements pgx.Tx.
func (t *groupTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.conn.SendBatch(ctx, b)
}

// LargeObjects is not offered; the zero value it returns fails on use.
func (t *groupTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

// Prepare implements pgx.Tx.
func (t *groupTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.conn.Prepare(ctx, name, sql)
}

// Exec implements pgx.Tx.
func (t *groupTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.conn.Exec(ctx, sql, args...)
}

// Query implements pgx.Tx.
func (t *groupTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.conn.Query(ctx, sql, args...)
}

// QueryRow implements pgx.Tx.
func (t *groupTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.conn.QueryRow(ctx, sql, args...)
}

// Conn implements pgx.Tx.
func (t *groupTx) Conn() *pgx.Conn { return t.conn }
