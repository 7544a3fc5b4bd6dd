package projector_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/projector"
)

// TestLookupsByKeyUseTheIndexWhateverTheStats: a batch reads the file and
// location rows of its keys with one index lookup per key, also in the
// generic plan a connection caches while the tables are empty and never
// analyzed (a fresh database). A join with unnest there hashed the keys
// and scanned the whole table on each later batch.
func TestLookupsByKeyUseTheIndexWhateverTheStats(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	ctx := context.Background()
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
	for name, sql := range projector.LookupByKeySQL() {
		exec(`PREPARE lookup(text[], text[]) AS ` + sql)
		exec(`SET plan_cache_mode = force_generic_plan`)
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
		exec(`RESET plan_cache_mode`)
		exec(`DEALLOCATE lookup`)
	}
}
