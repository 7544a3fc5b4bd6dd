package dataplane_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// TestIngestRepairsWhatAReadFoundCorrupt: damage in a group the put's
// sample never reaches (its sampler proves the first and last groups
// only) is known to the data plane once a served read found it; a re-put
// of the content then replaces the copy instead of deduplicating against
// it, and the object is served again, proven.
func TestIngestRepairsWhatAReadFoundCorrupt(t *testing.T) {
	t.Parallel()
	const size = 10*blaketree.GroupSize + 77
	f := newFixture(t, dataplane.WithPutter(storage.NewPutter(storage.WithSampleGroups(0))))
	p := randomBytes(t, size)
	res := f.ingest(t, p, noClaims)
	exp := dataplane.Expected{Size: size}
	flipByte(t, f.path(res.Address), 5*blaketree.GroupSize+3)

	// Unnoticed, the damage is deduplicated against: the sample misses it.
	if again := f.ingest(t, p, noClaims); !again.Receipt.Deduplicated || again.Receipt.Repaired != nil {
		t.Fatalf("re-put before any read noticed the damage: %+v", again.Receipt)
	}
	if _, err := serveAll(t, f.dp, res.Address, nil, exp); !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("read of the damaged object: %v, want ErrCorrupt", err)
	}
	rep := f.ingest(t, p, noClaims)
	if rep.Receipt.Deduplicated || rep.Receipt.Repaired == nil || rep.Receipt.Repaired.Was != storage.DamageCorrupt {
		t.Fatalf("re-put after a read found the damage: %+v; want a repair", rep.Receipt)
	}
	if f.dp.Corrupt("", res.Address) != nil {
		t.Fatal("the repair left the object marked corrupt")
	}
	if got, err := serveAll(t, f.dp, res.Address, nil, exp); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read after the repair: %d bytes, %v", len(got), err)
	}
}

// TestMarkDroppedWhenAnotherProcessReplacedTheCopy: a data plane that
// found a copy corrupt serves the object again once another data plane
// (another process: the ingester's) replaced the copy, without hearing
// from it; while the copy is the old one, the mark holds.
func TestMarkDroppedWhenAnotherProcessReplacedTheCopy(t *testing.T) {
	t.Parallel()
	const size = 6*blaketree.GroupSize + 5
	f := newFixture(t)
	reg := storage.NewRegistry()
	if err := reg.Register(f.local); err != nil {
		t.Fatal(err)
	}
	ingester, err := dataplane.New(reg, "local")
	if err != nil {
		t.Fatal(err)
	}
	p := randomBytes(t, size)
	res := f.ingest(t, p, noClaims)
	exp := dataplane.Expected{Size: size}
	flipByte(t, f.path(res.Address), 2*blaketree.GroupSize)
	if _, err := serveAll(t, f.dp, res.Address, nil, exp); !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("read of the damaged object: %v", err)
	}
	if _, err := serveAll(t, f.dp, res.Address, nil, exp); !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("second read of the unrepaired object: %v, want the mark's ErrCorrupt", err)
	}
	known := func(context.Context, string, digest.Address) (storage.Condition, error) {
		return storage.Condition{Recorded: true, Damage: storage.DamageCorrupt, Detail: "verify found it"}, nil
	}
	h := noClaims
	h.Condition = known
	rep, err := ingester.Ingest(t.Context(), bytes.NewReader(p), h)
	if err != nil || rep.Receipt.Repaired == nil {
		t.Fatalf("repair in the other data plane: %+v, %v", rep.Receipt, err)
	}
	if got, err := serveAll(t, f.dp, res.Address, nil, exp); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read after another process repaired the copy: %d bytes, %v", len(got), err)
	}
	if f.dp.Corrupt("", res.Address) != nil {
		t.Fatal("the mark of the replaced copy is still remembered")
	}
}
