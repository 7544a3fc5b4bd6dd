package projector_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/projector"
)

// TestCheckpointCommitsWithRows checks that a batch's rows and its
// checkpoint become visible together, never one without the other. At
// every stage of every batch a reader reads the checkpoint and the tables
// in one REPEATABLE READ snapshot; and from the moment a batch locks the
// checkpoint, another reader waits for a lock on the checkpoints table
// and reads the checkpoint and the tables as soon as the batch's
// transaction ends, before any other transaction can write a checkpoint. Every
// reader must see exactly the tables that a projector nobody watched,
// over the same log in a second database, had at the checkpoint it read.
// A projector that committed the checkpoint in a transaction of its own,
// before its rows or after them, shows one of the readers the tables of
// another checkpoint, whether or not applying a batch twice would show in
// the final tables.
func TestCheckpointCommitsWithRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f, ref := newFixture(t), newFixture(t)
	ds := newGen(14, coverageMix).drafts(700)
	appendAll(ctx, t, f.log, ds, 100)
	appendAll(ctx, t, ref.log, ds, 100)
	const batch = 41

	// The tables at every checkpoint the projector under test will reach.
	want := map[int64]map[string][]string{0: snapshot(ctx, t, ref.pool, "")}
	rp := ref.projector(t, projector.Config{BatchSize: batch})
	for {
		n, err := rp.RunOnce(ctx)
		if err != nil {
			t.Fatalf("reference RunOnce: %v", err)
		}
		if n == 0 {
			break
		}
		cp, err := projector.Checkpoint(ctx, ref.pool, projector.DefaultName)
		if err != nil {
			t.Fatal(err)
		}
		want[cp] = snapshot(ctx, t, ref.pool, "")
	}

	// The readers have connections of their own, apart from the
	// projector's pool.
	readers, err := pgxpool.New(ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer readers.Close()

	type observation struct {
		what   string
		from   int64 // the batch's checkpoint before it
		cp     int64 // the checkpoint the reader saw
		tables map[string][]string
		err    error
	}
	var (
		mu       sync.Mutex
		seen     []observation
		ends     = map[int64]int64{} // batch start → end, for the batches that committed
		queued   sync.WaitGroup
		expected = map[int]int64{} // index in seen → the checkpoint the reader must see
	)
	record := func(o observation, wantCP int64) {
		mu.Lock()
		defer mu.Unlock()
		if wantCP >= 0 {
			expected[len(seen)] = wantCP
		}
		seen = append(seen, o)
	}
	p := f.projector(t, projector.Config{BatchSize: batch})
	projector.SetHook(p, func(b projector.BatchPoint) error {
		if b.Checkpoint != projector.DefaultName {
			return nil
		}
		cp, tables, err := readInSnapshot(ctx, readers)
		wantCP := b.From
		if b.Stage == projector.AtCommitted {
			wantCP = b.To
			mu.Lock()
			ends[b.From] = b.To
			mu.Unlock()
		}
		record(observation{"at " + b.Stage.String(), b.From, cp, tables, err}, wantCP)
		if b.Stage != projector.AtLocked {
			return nil
		}
		conn, err := readers.Acquire(ctx)
		if err != nil {
			return err
		}
		queued.Add(1)
		done := make(chan struct{})
		go func() {
			defer queued.Done()
			defer close(done)
			defer conn.Release()
			cp, tables, err := readAfterLock(ctx, conn.Conn())
			record(observation{"queued behind the batch", b.From, cp, tables, err}, -1)
		}()
		return awaitBlocked(ctx, readers, conn.Conn().PgConn().PID(), done)
	})
	n, err := p.CatchUp(ctx)
	if err != nil || n != len(ds) {
		t.Fatalf("CatchUp = %d, %v; want %d, nil", n, err, len(ds))
	}
	queued.Wait()

	stages := map[string]int{}
	for i, o := range seen {
		stages[o.what]++
		wantCP, ok := expected[i]
		if !ok { // queued: it reads when the batch ends
			wantCP = o.from
			if end, ok := ends[o.from]; ok {
				wantCP = end
			}
		}
		if o.err != nil {
			t.Errorf("batch after %d: reader %s: %v", o.from, o.what, o.err)
			continue
		}
		if o.cp != wantCP {
			t.Errorf("batch after %d: reader %s saw checkpoint %d, want %d", o.from, o.what, o.cp, wantCP)
		}
		if w, ok := want[o.cp]; ok {
			compareSnapshots(t, fmt.Sprintf("batch after %d: reader %s, tables at checkpoint %d vs the reference", o.from, o.what, o.cp), o.tables, w)
		} else {
			t.Errorf("batch after %d: reader %s saw checkpoint %d, which no batch ends at", o.from, o.what, o.cp)
		}
	}
	t.Logf("%d readers: %v", len(seen), stages)
	for _, what := range []string{"at locked", "at read", "at folded", "at written", "at committed", "queued behind the batch"} {
		if stages[what] < len(want)-1 {
			t.Errorf("%d readers %s, want one per batch (%d)", stages[what], what, len(want)-1)
		}
	}
	if len(ends) != len(want)-1 {
		t.Errorf("%d batches committed, the reference has %d", len(ends), len(want)-1)
	}
}

// readInSnapshot reads the live checkpoint and the tables in one
// REPEATABLE READ transaction.
func readInSnapshot(ctx context.Context, pool *pgxpool.Pool) (cp int64, tables map[string][]string, err error) {
	err = pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, checkpointSQL, projector.DefaultName).Scan(&cp); err != nil {
			return fmt.Errorf("read the checkpoint: %w", err)
		}
		tables, err = readTables(ctx, tx, "")
		return err
	})
	return cp, tables, err
}

// readAfterLock waits for a SHARE lock on the checkpoints table, then
// reads the live checkpoint and the tables while holding it. A batch holds
// ROW EXCLUSIVE on that table from its start to its end, so the lock is
// granted when the batch's transaction ends; and since PostgreSQL queues
// table locks in order, any later writer of a checkpoint waits until this
// reader is done.
func readAfterLock(ctx context.Context, conn *pgx.Conn) (cp int64, tables map[string][]string, err error) {
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE projector_checkpoints IN SHARE MODE`); err != nil {
			return fmt.Errorf("lock the checkpoints: %w", err)
		}
		if err := tx.QueryRow(ctx, checkpointSQL, projector.DefaultName).Scan(&cp); err != nil {
			return fmt.Errorf("read the checkpoint: %w", err)
		}
		tables, err = readTables(ctx, tx, "")
		return err
	})
	return cp, tables, err
}

const checkpointSQL = `SELECT coalesce((SELECT sequence FROM projector_checkpoints WHERE projector = $1), 0)`

// awaitBlocked returns once the backend pid waits for a lock, or fails if
// done closes first: the reader did not wait.
func awaitBlocked(ctx context.Context, pool *pgxpool.Pool, pid uint32, done <-chan struct{}) error {
	deadline := time.Now().Add(hangGuard) // only stops a hung test
	for {
		var blocked bool
		if err := pool.QueryRow(ctx, `SELECT cardinality(pg_blocking_pids($1)) > 0`, int32(pid)).Scan(&blocked); err != nil {
			return fmt.Errorf("is backend %d blocked: %w", pid, err)
		}
		if blocked {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("backend %d did not wait for the lock on the checkpoints", pid)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backend %d still not waiting for the lock on the checkpoints after %s", pid, hangGuard)
		}
		time.Sleep(time.Millisecond)
	}
}
