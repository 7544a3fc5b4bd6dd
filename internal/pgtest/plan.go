package pgtest

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// GenericPlan returns the EXPLAIN text of the generic plan PostgreSQL
// makes for sql on pool's database as it is now: the plan a connection
// caches for a prepared statement and may use on every later run,
// whatever the arguments. params are sql's parameter types and args the
// arguments of the EXPLAIN, both as SQL text (e.g. "text[], text[]" and
// "'{a,b}', '{c,d}'").
func GenericPlan(t testing.TB, pool *pgxpool.Pool, params, sql, args string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatalf("pgtest: acquire a connection: %v", err)
	}
	defer conn.Release()
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("pgtest: %s: %v", sql, err)
		}
	}
	exec(`PREPARE pgtest_plan(` + params + `) AS ` + sql)
	defer exec(`DEALLOCATE pgtest_plan`)
	exec(`SET plan_cache_mode = force_generic_plan`)
	defer exec(`RESET plan_cache_mode`)
	rows, err := conn.Query(ctx, `EXPLAIN EXECUTE pgtest_plan(`+args+`)`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatalf("pgtest: explain %s: %v", sql, err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("pgtest: explain %s: %v", sql, err)
	}
	return strings.Join(lines, "\n")
}
