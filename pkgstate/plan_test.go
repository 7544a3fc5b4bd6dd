package pkgstate_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/pkgstate"
)

// TestLookupsByKeyUseTheIndexWhateverTheStats: the reads of rows by
// their keys (an ingest's pre-check and group commit run them for every
// command) are one index lookup per key even in the generic plan that a
// connection caches while the tables are empty and never analyzed (a
// fresh database). A join with unnest there hashed the keys and scanned
// the whole table on each later execution, so each ingest got slower as
// the tables grew. The read of a single key (every inline ingest's
// pre-check) is also planned once, not on every run.
func TestLookupsByKeyUseTheIndexWhateverTheStats(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	ctx := context.Background()

	type stmt struct {
		name, sql string
		single    bool
	}
	var stmts []stmt
	for _, n := range []int{1, 2} {
		files := make([]pkgstate.FileKey, n)
		objs := make([]pkgstate.ObjectKey, n)
		for i := range n {
			files[i] = pkgstate.FileKey{Package: "p", Path: fmt.Sprint("f", i)}
			objs[i] = pkgstate.ObjectKey{Address: fmt.Sprint("blake3:", i), Backend: "local"}
		}
		b := &pgx.Batch{}
		pkgstate.QueueFiles(b, files, map[pkgstate.FileKey]string{})
		pkgstate.QueueLockObjects(b, objs, map[pkgstate.ObjectKey]pkgstate.ObjectState{})
		rec := &sqlRecorder{}
		if _, err := pkgstate.ObjectStatesOf(ctx, rec, objs); !errors.Is(err, errRecorded) {
			t.Fatalf("ObjectStatesOf through the recorder: %v", err)
		}
		stmts = append(stmts,
			stmt{fmt.Sprint("QueueFiles of ", n), b.QueuedQueries[0].SQL, n == 1},
			stmt{fmt.Sprint("QueueLockObjects of ", n), b.QueuedQueries[1].SQL, n == 1},
			stmt{fmt.Sprint("ObjectStatesOf ", n), rec.sql, n == 1})
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	argsOf := func(s stmt) (params, args string) {
		if strings.Contains(s.sql, "unnest") {
			return "text[], text[]", "'{a,b}', '{c,d}'"
		}
		return "text, text", "'a', 'c'"
	}
	for _, s := range stmts {
		params, args := argsOf(s)
		plan := pgtest.GenericPlan(t, pool, params, s.sql, args)
		if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "Index Scan") {
			t.Errorf("%s: the generic plan on empty tables does not look the keys up in the index:\n%s", s.name, plan)
		}
	}

	// With rows in the tables (not analyzed yet), a single key is still
	// planned once: PostgreSQL tries five custom plans, then keeps the
	// generic one unless it looks dearer.
	exec(`INSERT INTO ingest_packages (name, retention_class, created_seq) VALUES ('p', 'transient', 1)`)
	exec(`INSERT INTO ingest_files (package, path, content_address, added_seq)
		SELECT 'p', 'f' || i, 'blake3:' || i, i FROM generate_series(1, 3000) i`)
	exec(`INSERT INTO gc_objects (content_address, backend_id, size_bytes)
		SELECT 'blake3:' || i, 'local', i FROM generate_series(1, 3000) i`)
	for _, s := range stmts {
		if !s.single {
			continue
		}
		params, args := argsOf(s)
		exec(`PREPARE lookup(` + params + `) AS ` + s.sql)
		for range 7 {
			exec(`EXECUTE lookup(` + args + `)`)
		}
		var generic int64
		if err := conn.QueryRow(ctx, `SELECT generic_plans FROM pg_prepared_statements WHERE name = 'lookup'`).Scan(&generic); err != nil {
			t.Fatal(err)
		}
		if generic == 0 {
			t.Errorf("%s: planned afresh on each of 7 runs; its generic plan was never used", s.name)
		}
		exec(`DEALLOCATE lookup`)
	}
}

var errRecorded = errors.New("recorded, not run")

// sqlRecorder is a pkgstate.Querier that records the statement it is
// given and runs nothing.
type sqlRecorder struct{ sql string }

func (r *sqlRecorder) Exec(_ context.Context, sql string, _ ...any) (pgconn.CommandTag, error) {
	r.sql = sql
	return pgconn.CommandTag{}, errRecorded
}

func (r *sqlRecorder) Query(_ context.Context, sql string, _ ...any) (pgx.Rows, error) {
	r.sql = sql
	return nil, errRecorded
}

func (r *sqlRecorder) QueryRow(_ context.Context, sql string, _ ...any) pgx.Row {
	r.sql = sql
	return errRow{}
}

type errRow struct{}

func (errRow) Scan(...any) error { return errRecorded }
