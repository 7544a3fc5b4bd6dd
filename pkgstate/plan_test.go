package pkgstate_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/pkgstate"
)

// TestLookupsByKeyUseTheIndexWhateverTheStats: the reads of many rows by
// their keys (an ingest's pre-check and group commit run them for every
// command) are one index lookup per key even in the generic plan that a
// connection caches while the tables are empty and never analyzed (a
// fresh database). A join with unnest there hashed the keys and scanned
// the whole table on each later execution, so each ingest got slower as
// the tables grew.
func TestLookupsByKeyUseTheIndexWhateverTheStats(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	ctx := context.Background()

	b := &pgx.Batch{}
	pkgstate.QueueFiles(b, []pkgstate.FileKey{{Package: "p", Path: "a"}}, map[pkgstate.FileKey]string{})
	pkgstate.QueueLockObjects(b, []pkgstate.ObjectKey{{Address: "blake3:00", Backend: "local"}}, map[pkgstate.ObjectKey]pkgstate.ObjectState{})
	stmts := map[string]string{"QueueFiles": b.QueuedQueries[0].SQL, "QueueLockObjects": b.QueuedQueries[1].SQL}
	rec := &sqlRecorder{}
	if _, err := pkgstate.ObjectStatesOf(ctx, rec, []pkgstate.ObjectKey{{Address: "blake3:00", Backend: "local"}}); !errors.Is(err, errRecorded) {
		t.Fatalf("ObjectStatesOf through the recorder: %v", err)
	}
	stmts["ObjectStatesOf"] = rec.sql

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	for name, sql := range stmts {
		if _, err := conn.Exec(ctx, `PREPARE lookup(text[], text[]) AS `+sql); err != nil {
			t.Fatalf("%s: prepare: %v", name, err)
		}
		rows, err := conn.Query(ctx, `EXPLAIN EXECUTE lookup('{a,b}', '{c,d}')`, pgx.QueryExecModeSimpleProtocol)
		if err != nil {
			t.Fatalf("%s: explain: %v", name, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: explain: %v", name, err)
		}
		plan := strings.Join(lines, "\n")
		if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "Index Scan") {
			t.Errorf("%s: the generic plan on empty tables does not look the keys up in the index:\n%s", name, plan)
		}
		if _, err := conn.Exec(ctx, `DEALLOCATE lookup`); err != nil {
			t.Fatal(err)
		}
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
