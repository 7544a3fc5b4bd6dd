package projector_test

import (
	"strings"
	"testing"

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
	for name, sql := range projector.LookupByKeySQL() {
		plan := pgtest.GenericPlan(t, pool, "text[], text[]", sql, "'{a,b}', '{c,d}'")
		if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "Index Scan") {
			t.Errorf("%s: the generic plan on empty tables does not look the keys up in the index:\n%s", name, plan)
		}
	}
}
