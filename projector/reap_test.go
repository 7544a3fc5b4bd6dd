package projector_test

import (
	"context"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/projector"
)

// TestReapIndexFollowsFiles plays, one batch per step, the cases where the
// reap index (the live location remembered for each expired, unreaped
// package) goes stale unless the projector notices: the remembered
// location is deleted, and the file that pointed at it is replaced in a
// batch that has no reap trigger at all. A later delete of another address
// of the package must still reap it, as a projector without the index does.
func TestReapIndexFollowsFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t)
	obj := func(b byte) (digest.Address, []byte, []byte) {
		b3, s2 := bytesOf(b), bytesOf(b+100)
		return digest.New(digest.BLAKE3, [32]byte(b3)), b3, s2
	}
	a, a3, a2 := obj(1)
	c, c3, c2 := obj(2)
	bb, b3, b2 := obj(3) // never stored
	other, o3, o2 := obj(4)
	const pkg, keep = "ci/p", "ci/keep"
	until := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := [][]events.Draft{
		{
			pkgDraft(pkg, events.PackageCreatedV1{Name: pkg, RetentionClass: "transient"}),
			pkgDraft(pkg, events.RetentionAssignedV1{Package: pkg, Class: "transient", RetainUntil: &until}),
			objDraft(a, events.ObjectStoredV1{Address: a, BLAKE3: a3, SHA256: a2, Size: 1, BackendID: "local"}),
			pkgDraft(pkg, events.FileAddedV1{Package: pkg, Path: "f", Address: a, BLAKE3: a3, SHA256: a2, Size: 1}),
			objDraft(c, events.ObjectStoredV1{Address: c, BLAKE3: c3, SHA256: c2, Size: 1, BackendID: "local"}),
			pkgDraft(pkg, events.FileAddedV1{Package: pkg, Path: "g", Address: c, BLAKE3: c3, SHA256: c2, Size: 1}),
			pkgDraft(keep, events.PackageCreatedV1{Name: keep, RetentionClass: "transient"}),
			pkgDraft(keep, events.RetentionAssignedV1{Package: keep, Class: "transient", RetainUntil: &until}),
			objDraft(other, events.ObjectStoredV1{Address: other, BLAKE3: o3, SHA256: o2, Size: 1, BackendID: "local"}),
			pkgDraft(keep, events.FileAddedV1{Package: keep, Path: "x", Address: other, BLAKE3: o3, SHA256: o2, Size: 1}),
		},
		// Both live: not reaped; the index remembers a or c.
		{pkgDraft(pkg, events.RetentionExpiredV1{Package: pkg, Class: "transient", RetainUntil: until})},
		// c goes: still a.
		{objDraft(c, events.ObjectDeletedV1{Address: c, BackendID: "local", Size: 1, Reason: "test"})},
		// f now names bytes with no location: no live location is left,
		// but nothing in this batch triggers the reap rule.
		{pkgDraft(pkg, events.FileAddedV1{Package: pkg, Path: "f", Address: bb, BLAKE3: b3, SHA256: b2, Size: 1})},
		// An unrelated delete in between.
		{objDraft(other, events.ObjectDeletedV1{Address: other, BackendID: "local", Size: 1, Reason: "test"})},
		// A delete of one of its addresses triggers the rule: reaped.
		{objDraft(c, events.ObjectDeletedV1{Address: c, BackendID: "local", Size: 1, Reason: "again"})},
	}
	p := f.projector(t, projector.Config{})
	for i, ds := range steps {
		appendAll(ctx, t, f.log, ds, len(ds))
		if n, err := p.RunOnce(ctx); err != nil || n != len(ds) {
			t.Fatalf("step %d: RunOnce = %d, %v; want %d", i, n, err, len(ds))
		}
		var state string
		if err := f.pool.QueryRow(ctx, `SELECT state FROM artifact_packages WHERE name = $1`, pkg).Scan(&state); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]string{true: string(catalog.PackageReaped), false: string(catalog.PackageExpired)}[i == len(steps)-1]; i > 0 && state != want {
			t.Errorf("after step %d: package state %q, want %q", i, state, want)
		}
	}
	incremental := snapshot(ctx, t, f.pool, "")
	if err := projector.WithoutMemo(f.projector(t, projector.Config{BatchSize: 1})).Rebuild(ctx); err != nil {
		t.Fatalf("Rebuild: %v", err)
	}
	compareSnapshots(t, "with the reap index vs without", incremental, snapshot(ctx, t, f.pool, ""))
}
