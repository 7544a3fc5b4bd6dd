package projector_test

import (
	"context"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/projector"
)

// TestOnlyRepairOrVerifyMakesADamagedLocationOK plays a location's life
// through damage: a store (deduplicated or not) of a corrupt or missing
// location leaves it as it is; object.repaired makes it ok and counts the
// repair; a store after a delete is a new copy. Each step is projected on
// its own (incremental) and the whole log again (rebuild).
func TestOnlyRepairOrVerifyMakesADamagedLocationOK(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	b3, s2 := bytesOf(41), bytesOf(42)
	a := digest.New(digest.BLAKE3, [32]byte(b3))
	stored := func(dedup bool) events.Draft {
		return objDraft(a, events.ObjectStoredV1{Address: a, BLAKE3: b3, SHA256: s2, Size: 99, BackendID: "local", Deduplicated: dedup})
	}
	repaired := func(was string) events.Draft {
		return objDraft(a, events.ObjectRepairedV1{Address: a, BLAKE3: b3, SHA256: s2, Size: 99, BackendID: "local",
			Was: was, Source: events.RepairSourceReupload, CommandID: "c-" + was})
	}
	p := f.projector(t, projector.Config{BatchSize: 3})
	type loc struct {
		state    string
		repairs  int64
		repaired bool
	}
	read := func() loc {
		t.Helper()
		var l loc
		var at *time.Time
		if err := f.pool.QueryRow(ctx, `SELECT state, repair_count, repaired_at FROM storage_locations
			WHERE content_address = $1 AND backend_id = 'local'`, a.String()).Scan(&l.state, &l.repairs, &at); err != nil {
			t.Fatal(err)
		}
		l.repaired = at != nil
		return l
	}
	steps := []struct {
		name string
		ev   events.Draft
		want loc
	}{
		{"stored", stored(false), loc{"ok", 0, false}},
		{"corrupt", objDraft(a, events.ObjectCorruptV1{Address: a, BackendID: "local", ActualBLAKE3: bytesOf(1), ActualSHA256: bytesOf(2), ActualSize: 99, ExpectedSize: 99}), loc{"corrupt", 0, false}},
		{"deduplicated store of a corrupt location", stored(true), loc{"corrupt", 0, false}},
		{"store of a corrupt location", stored(false), loc{"corrupt", 0, false}},
		{"repaired", repaired(events.RepairedCorrupt), loc{"ok", 1, true}},
		{"missing", objDraft(a, events.ObjectMissingV1{Address: a, BackendID: "local"}), loc{"missing", 1, true}},
		{"deduplicated store of a missing location", stored(true), loc{"missing", 1, true}},
		{"repaired again", repaired(events.RepairedMissing), loc{"ok", 2, true}},
		{"deleted", objDraft(a, events.ObjectDeletedV1{Address: a, BackendID: "local", Size: 99, Reason: "expired"}), loc{"deleted", 2, true}},
		{"stored after the delete", stored(false), loc{"ok", 2, true}},
	}
	for _, s := range steps {
		appendAll(ctx, t, f.log, []events.Draft{s.ev}, 1)
		if _, err := p.CatchUp(ctx); err != nil {
			t.Fatalf("%s: CatchUp: %v", s.name, err)
		}
		if got := read(); got != s.want {
			t.Fatalf("after %s: location %+v, want %+v", s.name, got, s.want)
		}
	}
	incremental := snapshot(ctx, t, f.pool, "")
	if err := p.Rebuild(ctx); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	compareSnapshots(t, "incremental vs rebuild", incremental, snapshot(ctx, t, f.pool, ""))

	// A repair of a location the log never stored records it.
	o3 := digest.New(digest.BLAKE3, [32]byte(bytesOf(43)))
	appendAll(ctx, t, f.log, []events.Draft{objDraft(o3, events.ObjectRepairedV1{Address: o3, BLAKE3: bytesOf(43), SHA256: bytesOf(44), Size: 7,
		BackendID: "s3", Was: events.RepairedMissing, Source: "replica:local"})}, 1)
	if _, err := p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(ctx, t, f.pool, `SELECT count(*) FROM storage_locations WHERE content_address = $1 AND backend_id = 's3' AND state = 'ok' AND repair_count = 1`, o3.String()); n != 1 {
		t.Fatalf("repair of an unknown location: %d ok rows with one repair, want 1", n)
	}
}
