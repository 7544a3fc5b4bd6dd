package reaper_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/reaper"
	"github.com/artifactstore/artifactstore/storage/local"
)

const day = 24 * time.Hour

func TestExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for i, class := range []string{"transient", "transient", "transient", "transient", "release-evidence", "permanent-record"} {
		e.ingest(pkgName("p", i), class, map[string][]byte{"f": []byte(pkgName("data", i))})
	}
	e.exec(`UPDATE ingest_packages SET legal_hold = true, legal_hold_reason = 'case' WHERE name = $1`, pkgName("p", 0))
	r := e.reaper(nil)

	if rep := e.runOnce(r); rep.Expired != 0 || rep.Marked != 0 {
		t.Fatalf("nothing is due yet, but the pass did %+v", rep)
	}
	e.clock.Advance(7*day + time.Second)
	rep := e.runOnce(r)
	// Three transient packages without hold; BatchSize 3 makes this two
	// expire batches (3, then 0).
	if rep.Expired != 3 {
		t.Fatalf("expired %d; want the 3 transient packages without a hold", rep.Expired)
	}
	if n := e.countEvents(events.TypeRetentionExpired); n != 3 {
		t.Fatalf("%d retention.expired events; want 3", n)
	}
	var expired []string
	rows, err := e.pool.Query(context.Background(), `SELECT name FROM ingest_packages WHERE expired_at IS NOT NULL ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		expired = append(expired, n)
	}
	if strings.Join(expired, ",") != "p1,p2,p3" {
		t.Fatalf("expired packages %v; want p1,p2,p3 (p0 is held)", expired)
	}

	// Far future: release-evidence expires, permanent-record never; the
	// hold still blocks p0 until released.
	e.clock.Advance(3000 * day)
	if rep := e.runOnce(r); rep.Expired != 1 {
		t.Fatalf("expired %d; want release-evidence only", rep.Expired)
	}
	e.exec(`UPDATE ingest_packages SET legal_hold = false, legal_hold_reason = NULL WHERE name = $1`, pkgName("p", 0))
	if rep := e.runOnce(r); rep.Expired != 1 {
		t.Fatalf("expired %d after the release; want p0", rep.Expired)
	}
	var permanentExpired bool
	if err := e.pool.QueryRow(context.Background(), `SELECT expired_at IS NOT NULL FROM ingest_packages WHERE name = 'p5'`).Scan(&permanentExpired); err != nil || permanentExpired {
		t.Fatalf("permanent-record expired = %v (%v)", permanentExpired, err)
	}
	// A second pass appends nothing.
	head := e.head()
	e.runOnce(r)
	if e.head() != head {
		t.Fatalf("an idle pass appended %d events", e.head()-head)
	}
}

func pkgName(prefix string, i int) string { return prefix + string(rune('0'+i)) }

// TestDeleteByReference is the acceptance scenario without the
// bus: a transient package shares one file with a permanent-record
// package; once the transient package expired and the grace period
// passed, only the bytes nothing else references are deleted.
func TestDeleteByReference(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tr := e.ingest("ci/transient", "transient", map[string][]byte{"shared.txt": []byte("shared"), "own.txt": []byte("only transient")})
	pr := e.ingest("rel/permanent", "permanent-record", map[string][]byte{"shared.txt": []byte("shared"), "mine.txt": []byte("permanent only")})
	reg := prometheus.NewRegistry()
	r := e.reaper(func(c *reaper.Config) { c.Metrics = reaper.NewMetrics(reg) }) // grace: 1 hour

	e.clock.Advance(8 * day)
	plan, err := r.Plan(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Packages) != 1 || plan.Packages[0].Name != "ci/transient" {
		t.Fatalf("plan packages = %+v; want ci/transient", plan.Packages)
	}
	if len(plan.Objects) != 1 || plan.Objects[0].Address != tr["own.txt"] || plan.BytesFreed != int64(len("only transient")) || plan.Objects[0].Marked {
		t.Fatalf("plan objects = %+v (%d bytes); want own.txt only, not marked", plan.Objects, plan.BytesFreed)
	}
	head := e.head()
	rep := e.runOnce(r)
	if rep.Expired != 1 || rep.Marked != 1 || rep.Deleted != 0 {
		t.Fatalf("first pass = %+v; want 1 expired, 1 marked, nothing deleted within the grace period", rep)
	}
	if e.gcState(tr["own.txt"]) != "marked" || e.gcState(pr["shared.txt"]) != "live" {
		t.Fatalf("gc states: own %s shared %s", e.gcState(tr["own.txt"]), e.gcState(pr["shared.txt"]))
	}
	if e.head() != head+1 {
		t.Fatalf("first pass appended %d events; want retention.expired only", e.head()-head)
	}
	e.clock.Advance(59 * time.Minute)
	if rep := e.runOnce(r); rep.Deleted != 0 {
		t.Fatalf("deleted within the grace period: %+v", rep)
	}
	e.clock.Advance(2 * time.Minute)
	rep = e.runOnce(r)
	if rep.Deleted != 1 || rep.BytesFreed != int64(len("only transient")) {
		t.Fatalf("second pass = %+v; want own.txt deleted", rep)
	}
	if e.exists(tr["own.txt"]) {
		t.Fatal("own.txt's bytes are still there")
	}
	for _, a := range []digest.Address{pr["shared.txt"], pr["mine.txt"]} {
		if !e.exists(a) {
			t.Fatalf("%s was deleted although a permanent-record package references it", a)
		}
	}
	if e.gcState(tr["own.txt"]) != "absent" {
		t.Fatalf("gc row of a deleted object is %s", e.gcState(tr["own.txt"]))
	}
	wantMetrics := fmt.Sprintf(`
# HELP artifactstore_reaper_deleted_objects_total Objects whose bytes were deleted because nothing live referenced them.
# TYPE artifactstore_reaper_deleted_objects_total counter
artifactstore_reaper_deleted_objects_total 1
# HELP artifactstore_reaper_expired_packages_total Packages whose retention expired.
# TYPE artifactstore_reaper_expired_packages_total counter
artifactstore_reaper_expired_packages_total 1
# HELP artifactstore_reaper_freed_bytes_total Bytes freed by deleted objects.
# TYPE artifactstore_reaper_freed_bytes_total counter
artifactstore_reaper_freed_bytes_total %d
`, len("only transient"))
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantMetrics), "artifactstore_reaper_deleted_objects_total",
		"artifactstore_reaper_expired_packages_total", "artifactstore_reaper_freed_bytes_total"); err != nil {
		t.Fatal(err)
	}
	evs, err := e.log.ByCommand(context.Background(), "reaper-delete:"+tr["own.txt"].String()+"@local:"+strconv.FormatInt(e.clock.Now().Add(-61*time.Minute).UnixMicro(), 10))
	if err != nil || len(evs) != 1 || evs[0].Type != events.TypeObjectDeleted || evs[0].Actor != "reaper" {
		t.Fatalf("object.deleted under its command id: %v %+v", err, evs)
	}
	p, err := e.codec.DecodeEvent(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	if od := p.(events.ObjectDeletedV1); od.Address != tr["own.txt"] || od.Size != int64(len("only transient")) || od.BackendID != "local" {
		t.Fatalf("object.deleted = %+v", od)
	}
	// Nothing more to do.
	head = e.head()
	if rep := e.runOnce(r); rep.Deleted+rep.Marked+rep.Expired != 0 || e.head() != head {
		t.Fatalf("idle pass = %+v", rep)
	}
	e.checkLiveBytes(context.Background())
}

// TestSweepRechecks: a marked object that became referenced again before
// the sweep (a hold on the expired package) is kept and set live.
func TestSweepRechecks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.ingest("t/1", "transient", map[string][]byte{"f": []byte("keep me")})["f"]
	r := e.reaper(func(c *reaper.Config) { c.Grace = -1 })
	e.clock.Advance(8 * day)
	// Stop the first pass after the mark phase: hold the package then.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r2 := e.reaper(func(c *reaper.Config) {
		c.Grace = -1
		c.Hook = func(_ context.Context, p reaper.Point, _ *reaper.Object) {
			if p == reaper.PointMarked {
				e.exec(`UPDATE ingest_packages SET legal_hold = true, legal_hold_reason = 'late' WHERE name = 't/1'`)
			}
		}
	})
	rep, err := r2.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Marked != 1 || rep.Unmarked != 1 || rep.Deleted != 0 {
		t.Fatalf("pass = %+v; want marked then kept", rep)
	}
	if !e.exists(a) || e.gcState(a) != "live" {
		t.Fatalf("held content: exists %v, gc %s", e.exists(a), e.gcState(a))
	}
	// Released: the package is expired and unheld again, the bytes go.
	e.exec(`UPDATE ingest_packages SET legal_hold = false, legal_hold_reason = NULL WHERE name = 't/1'`)
	if rep := e.runOnce(r); rep.Deleted != 1 {
		t.Fatalf("after release: %+v; want the object deleted", rep)
	}
	if e.exists(a) {
		t.Fatal("bytes still there")
	}
}

// TestDryRun deletes, expires and moves nothing, and lists orphans.
func TestDryRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tr := e.ingest("t/1", "transient", map[string][]byte{"a": []byte("a"), "b": []byte("b")})
	orphan := e.store([]byte("nobody knows me"))
	r := e.reaper(nil)
	e.clock.Advance(8 * day)
	head := e.head()
	plan, err := r.Plan(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Packages) != 1 || len(plan.Objects) != 2 || plan.BytesFreed != 2 {
		t.Fatalf("plan = %+v", plan)
	}
	if len(plan.Orphans) != 1 || plan.Orphans[0].Address != orphan || plan.Orphans[0].QuarantinedAs != "" {
		t.Fatalf("plan orphans = %+v; want %s, not moved", plan.Orphans, orphan)
	}
	if e.head() != head || !e.exists(tr["a"]) || !e.exists(orphan) || e.gcState(tr["a"]) != "live" {
		t.Fatal("the dry run changed something")
	}
	var expired int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM ingest_packages WHERE expired_at IS NOT NULL`).Scan(&expired); err != nil || expired != 0 {
		t.Fatalf("dry run expired %d packages (%v)", expired, err)
	}
}

func TestOrphans(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	orphan := e.store([]byte("an orphan"))
	// Referenced content whose gc row is missing (stored before the
	// reaper's migration and not in storage_locations): adopted.
	adopted := e.ingest("p/1", "permanent-record", map[string][]byte{"f": []byte("adopt me")})["f"]
	e.exec(`DELETE FROM gc_objects WHERE content_address = $1`, adopted.String())
	r := e.reaper(nil)

	// Too young: left alone, but the referenced one is adopted at once.
	rep := e.runOnce(r)
	if !rep.OrphanScan || rep.Orphans != 0 || rep.Adopted != 1 {
		t.Fatalf("first pass = %+v; want a scan that adopts 1 and finds no old orphan", rep)
	}
	if e.gcState(adopted) != "live" {
		t.Fatalf("adopted row = %s", e.gcState(adopted))
	}
	// The scan runs once per OrphanInterval.
	e.clock.Advance(23 * time.Hour)
	if rep := e.runOnce(r); rep.OrphanScan {
		t.Fatal("scanned again within the orphan interval")
	}
	e.clock.Advance(2 * time.Hour)
	// A file stored "now" by the test clock is too young to judge: it may
	// be an ingest between its put and its commit.
	young := e.store([]byte("an ingest in flight"))
	if err := os.Chtimes(filepath.Join(e.root, filepath.FromSlash(local.ObjectPath(young))), e.clock.Now(), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	rep = e.runOnce(r)
	if !rep.OrphanScan || rep.Orphans != 1 || rep.Quarantined != 1 {
		t.Fatalf("second scan = %+v; want 1 orphan quarantined", rep)
	}
	if e.exists(orphan) || !e.exists(young) || !e.exists(adopted) {
		t.Fatalf("after the scan: orphan %v young %v adopted %v; want only the orphan gone", e.exists(orphan), e.exists(young), e.exists(adopted))
	}
	q := e.quarantined()
	if len(q) != 1 || !strings.Contains(filepath.ToSlash(q[0]), local.ObjectPath(orphan)) {
		t.Fatalf("quarantine holds %v; want the orphan %s", q, local.ObjectPath(orphan))
	}
	if b, err := os.ReadFile(q[0]); err != nil || string(b) != "an orphan" {
		t.Fatalf("quarantined bytes = %q, %v", b, err)
	}
	if n := e.countEvents(events.TypeObjectDeleted); n != 0 {
		t.Fatalf("an orphan produced %d object.deleted events", n)
	}
}

// TestOrphansKnownByTheCatalog: a file no package-state row knows, but
// that has a location on its backend in the catalog (not deleted), is
// adopted, not quarantined; a deleted location, or one on another backend,
// does not save a file.
func TestOrphansKnownByTheCatalog(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	located, deleted, elsewhere := e.store([]byte("located")), e.store([]byte("deleted")), e.store([]byte("elsewhere"))
	for _, l := range []struct {
		data    string
		backend string
		state   catalog.LocationState
	}{{"located", e.be.ID(), catalog.LocationOK}, {"deleted", e.be.ID(), catalog.LocationDeleted}, {"elsewhere", "other", catalog.LocationOK}} {
		d, err := digest.Compute(strings.NewReader(l.data), nil)
		if err != nil {
			t.Fatal(err)
		}
		e.exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, state, stored_at)
			VALUES ($1, $2, 'blake3', $3, $4, $5, $6, $7)`, d.Address(digest.BLAKE3).String(), l.backend, d.BLAKE3[:], d.SHA256[:], d.Size, string(l.state), e.clock.Now())
	}
	e.clock.Advance(2 * day)
	rep := e.runOnce(e.reaper(nil))
	if !rep.OrphanScan || rep.Adopted != 1 || rep.Orphans != 2 || rep.Quarantined != 2 {
		t.Fatalf("scan = %+v; want 1 adopted, 2 orphans quarantined", rep)
	}
	if e.gcState(located) != "live" || !e.exists(located) || e.exists(deleted) || e.exists(elsewhere) {
		t.Fatalf("after the scan: located %s (exists %v), deleted exists %v, elsewhere exists %v; want only the located one kept, live",
			e.gcState(located), e.exists(located), e.exists(deleted), e.exists(elsewhere))
	}
}

// TestZeroReferences: content whose only path was replaced in an open
// package is referenced by nothing and is reaped.
func TestZeroReferences(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old := e.ingest("open/1", "permanent-record", map[string][]byte{"f": []byte("v1")})["f"]
	now := e.ingest("open/1", "permanent-record", map[string][]byte{"f": []byte("v2")})["f"]
	r := e.reaper(func(c *reaper.Config) { c.Grace = -1 })
	rep := e.runOnce(r)
	if rep.Deleted != 1 || e.exists(old) || !e.exists(now) {
		t.Fatalf("pass = %+v; old exists %v, new exists %v; want the replaced object deleted", rep, e.exists(old), e.exists(now))
	}
}

// TestCleanAbandoned: a store's cleaner of interrupted writes runs with
// each orphan scan, bounded by the orphan age, and never in a dry run.
func TestCleanAbandoned(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var calls []time.Duration
	r := e.reaper(func(c *reaper.Config) {
		c.OrphanMinAge = 5 * time.Hour
		c.Stores[0].CleanAbandoned = func(_ context.Context, olderThan time.Duration) (int, error) {
			calls = append(calls, olderThan)
			return 2, nil
		}
	})
	if _, err := r.Plan(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 0 {
		t.Fatalf("a dry run cleaned %d times", len(calls))
	}
	rep := e.runOnce(r)
	if rep.Abandoned != 2 || fmt.Sprint(calls) != "[5h0m0s]" {
		t.Fatalf("pass = %+v after calls %v; want 2 abandoned, one call bounded by the orphan age", rep, calls)
	}
	if rep := e.runOnce(r); rep.Abandoned != 0 || len(calls) != 1 {
		t.Fatalf("a pass between orphan scans cleaned (%+v, %d calls)", rep, len(calls))
	}
}
