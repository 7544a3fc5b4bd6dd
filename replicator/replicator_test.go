package replicator_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/reaper"
	"github.com/artifactstore/artifactstore/replicator"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

var releasePolicy = map[string]int{"release-evidence": 1, "permanent-record": 1}

// TestReplicatesTheClassesThatAskForIt: an object of a class the policy
// lists gets a verified copy on the mirror (gc row, object.replicated,
// a second ok location); one of another class gets none.
func TestReplicatesTheClassesThatAskForIt(t *testing.T) {
	t.Parallel()
	for _, mirror := range mirrors {
		t.Run(mirror, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mirror, releasePolicy)
			rel := e.ingest("release/1.0", "release-evidence", pattern(300<<10, 1))
			raw := e.ingest("ci/run-1", "raw-evidence", pattern(300<<10, 2))

			copies, err := e.rep.Replicate(e.ctx, rel.Stored, rel.seq)
			if err != nil {
				t.Fatal(err)
			}
			if len(copies) != 1 || copies[0].Target != "mirror" || copies[0].Source != "local" || copies[0].Duplicate {
				t.Fatalf("copies of the release object: %+v", copies)
			}
			if copies, err := e.rep.Replicate(e.ctx, raw.Stored, raw.seq); err != nil || len(copies) != 0 {
				t.Fatalf("copies of the raw-evidence object: %+v, %v", copies, err)
			}
			if !e.holds(e.mirror, rel.Address) || e.holds(e.mirror, raw.Address) {
				t.Fatalf("mirror holds release: %v, raw: %v; want true, false", e.holds(e.mirror, rel.Address), e.holds(e.mirror, raw.Address))
			}
			if v, err := e.dp.Verify(e.ctx, "mirror", rel.Address, dataplane.Expected{Size: rel.Size}); err != nil || !v.Verified || v.Tree != dataplane.TreeOK {
				t.Fatalf("the copy on the mirror does not verify with its tree: %+v, %v", v, err)
			}
			e.project()
			locs, err := catalog.New(e.pool).Locations(e.ctx, rel.Address)
			if err != nil || len(locs) != 2 || locs[0].State != catalog.LocationOK || locs[1].State != catalog.LocationOK {
				t.Fatalf("locations of the release object: %+v, %v", locs, err)
			}
			best, err := catalog.New(e.pool).ObjectLocation(e.ctx, rel.Address)
			if err != nil || len(best.OKBackends()) != 2 {
				t.Fatalf("ObjectLocation's copies: %+v, %v", best.Copies, err)
			}
			if n := e.count(events.TypeObjectReplicated); n != 1 {
				t.Fatalf("%d object.replicated events, want 1", n)
			}
			// The raw-evidence package is retained as release evidence:
			// its object gets its copy too.
			if _, err := e.pool.Exec(e.ctx, `UPDATE ingest_packages SET retention_class = 'release-evidence' WHERE name = 'ci/run-1'`); err != nil {
				t.Fatal(err)
			}
			copies, err = e.rep.ReplicatePackage(e.ctx, "ci/run-1", 999)
			if err != nil || len(copies) != 1 || !e.holds(e.mirror, raw.Address) {
				t.Fatalf("after the class change: %+v, %v, mirror holds it: %v", copies, err, e.holds(e.mirror, raw.Address))
			}
		})
	}
}

// TestRedeliveredReplicateIsIdempotent: the same object.stored handled
// twice (through Handle, as the consumer delivers it), before and after
// the projection caught up, copies and records once.
func TestRedeliveredReplicateIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "local", releasePolicy)
	rel := e.ingest("release/1.0", "release-evidence", pattern(200<<10, 3))
	msg := relayed(t, e, rel.seq)
	for i := range 2 {
		if err := e.rep.Handle(e.ctx, msg); err != nil {
			t.Fatalf("delivery %d: %v", i+1, err)
		}
	}
	e.project()
	if err := e.rep.Handle(e.ctx, msg); err != nil {
		t.Fatalf("delivery after the projection: %v", err)
	}
	if n := e.count(events.TypeObjectReplicated); n != 1 {
		t.Fatalf("%d object.replicated events after three deliveries, want 1", n)
	}
	var rows int
	if err := e.pool.QueryRow(e.ctx, `SELECT count(*) FROM gc_objects WHERE content_address = $1`, rel.Address.String()).Scan(&rows); err != nil || rows != 2 {
		t.Fatalf("gc rows of the object: %d, %v; want 2 (one per copy)", rows, err)
	}
	// A message that is not a relayed event is refused, not retried.
	var rej *bus.RejectError
	if err := e.rep.Handle(e.ctx, bus.Message{Data: []byte("{not json")}); !errors.As(err, &rej) {
		t.Fatalf("Handle of garbage: %v, want a rejection", err)
	}
}

// relayed builds the events-stream message of the event at seq, as the
// relay publishes it.
func relayed(t *testing.T, e *env, seq int64) bus.Message {
	t.Helper()
	evs, err := e.log.Read(e.ctx, seq-1, 1)
	if err != nil || len(evs) != 1 {
		t.Fatalf("read event %d: %v", seq, err)
	}
	body, err := json.Marshal(map[string]any{"sequence": evs[0].Sequence, "type": evs[0].Type,
		"payload_version": evs[0].PayloadVersion, "payload_cbor": evs[0].Payload})
	if err != nil {
		t.Fatal(err)
	}
	return bus.Message{Subject: "artifacts.events." + string(evs[0].Type), Data: body}
}

// TestDamagedCopyIsServedFromTheOtherAndRepaired: a replicated object
// damaged on the primary is served whole from the mirror without the
// reader noticing (the failure reported), recorded corrupt by the read
// reporter's verification, and repaired from the mirror's verified copy:
// object.repaired names the source, and the primary's copy verifies.
func TestDamagedCopyIsServedFromTheOtherAndRepaired(t *testing.T) {
	t.Parallel()
	for _, mirror := range mirrors {
		t.Run(mirror, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mirror, releasePolicy)
			data := pattern(3<<20, 4) // several batches: the damage is met mid-read
			rel := e.ingest("release/1.0", "release-evidence", data)
			if _, err := e.rep.Replicate(e.ctx, rel.Stored, rel.seq); err != nil {
				t.Fatal(err)
			}
			e.project()
			e.damage(e.primary, rel.Address, data)

			exp := dataplane.Expected{BLAKE3: (*[32]byte)(rel.BLAKE3), SHA256: (*[32]byte)(rel.SHA256), Size: rel.Size}
			obj, err := e.dp.ServeAny(e.ctx, []string{"local", "mirror"}, rel.Address, nil, exp)
			if err != nil {
				t.Fatalf("ServeAny: %v", err)
			}
			got, err := io.ReadAll(obj)
			obj.Close()
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read through failover: %d bytes, equal %v, err %v", len(got), bytes.Equal(got, data), err)
			}
			rs := e.reports.all()
			if len(rs) != 1 || rs[0].BackendID != "local" {
				t.Fatalf("reported corruption: %v; want one, on local", rs)
			}

			// The read reporter's verification records it.
			w := verifier.NewWorker(e.dp, e.log, e.pool, e.codec, nil, verifier.WorkerConfig{})
			if rep, err := w.Verify(e.ctx, commands.Verify{RequestID: "read-1", Address: rel.Address, BackendID: "local", Origin: commands.OriginRead}); err != nil || rep.Outcome != commands.OutcomeCorrupt {
				t.Fatalf("verify: %+v, %v", rep, err)
			}
			e.project()
			ok, err := e.rep.Repair(e.ctx, rel.Address, "local", e.lastSeq(events.TypeObjectCorrupt))
			if err != nil || !ok {
				t.Fatalf("Repair: %v, %v", ok, err)
			}
			if v, err := e.dp.Verify(e.ctx, "local", rel.Address, exp); err != nil || !v.Verified {
				t.Fatalf("the repaired copy: %+v, %v", v, err)
			}
			var src string
			if err := e.pool.QueryRow(e.ctx, `SELECT event_id::text FROM events WHERE event_type = 'object.repaired'`).Scan(&src); err != nil {
				t.Fatalf("no object.repaired: %v", err)
			}
			evs, _ := e.log.Read(e.ctx, e.lastSeq(events.TypeObjectRepaired)-1, 1)
			p, err := e.codec.DecodeEvent(evs[0])
			if err != nil {
				t.Fatal(err)
			}
			if r := p.(events.ObjectRepairedV1); r.Source != "replica:mirror" || r.BackendID != "local" || r.Was != events.RepairedCorrupt {
				t.Fatalf("object.repaired: %+v", r)
			}
			e.project()
			if l, err := catalog.New(e.pool).Location(e.ctx, rel.Address, "local"); err != nil || l.State != catalog.LocationOK {
				t.Fatalf("the primary's location after the repair: %+v, %v", l, err)
			}
			// A second delivery of the same report finds nothing to do.
			if ok, err := e.rep.Repair(e.ctx, rel.Address, "local", e.lastSeq(events.TypeObjectCorrupt)); err != nil || ok {
				t.Fatalf("second Repair: %v, %v; want nothing done", ok, err)
			}
		})
	}
}

// TestMissingCopyIsRepaired: a copy the backend lost comes back from the
// other copy.
func TestMissingCopyIsRepaired(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "s3", releasePolicy)
	rel := e.ingest("release/1.0", "release-evidence", pattern(100<<10, 5))
	if _, err := e.rep.Replicate(e.ctx, rel.Stored, rel.seq); err != nil {
		t.Fatal(err)
	}
	e.project()
	if _, err := e.mirror.Delete(e.ctx, rel.Address); err != nil {
		t.Fatal(err)
	}
	if ok, err := e.rep.Repair(e.ctx, rel.Address, "mirror", 1); err != nil || !ok {
		t.Fatalf("Repair: %v, %v", ok, err)
	}
	if !e.holds(e.mirror, rel.Address) {
		t.Fatal("the lost copy was not stored again")
	}
}

// TestCopyFromAnUnverifiedSourceIsRefused: when the only source fails
// verification on its way out, nothing reaches the target and nothing is
// recorded as replicated.
func TestCopyFromAnUnverifiedSourceIsRefused(t *testing.T) {
	t.Parallel()
	for _, mirror := range mirrors {
		t.Run(mirror, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mirror, releasePolicy)
			data := pattern(300<<10, 6)
			rel := e.ingest("release/1.0", "release-evidence", data)
			e.damage(e.primary, rel.Address, data)
			_, err := e.rep.Replicate(e.ctx, rel.Stored, rel.seq)
			if !errors.Is(err, replicator.ErrNoVerifiedSource) {
				t.Fatalf("Replicate from a damaged source: %v, want ErrNoVerifiedSource", err)
			}
			if e.holds(e.mirror, rel.Address) {
				t.Fatal("the mirror holds a copy of damaged bytes")
			}
			if n := e.count(events.TypeObjectReplicated); n != 0 {
				t.Fatalf("%d object.replicated events, want 0", n)
			}
			// Nor is a damaged copy a source for a repair.
			if _, err := e.mirror.Delete(e.ctx, rel.Address); err != nil {
				t.Fatal(err)
			}
			if ok, err := e.rep.Repair(e.ctx, rel.Address, "mirror", 1); err != nil || ok {
				t.Fatalf("Repair with no verified source: %v, %v; want nothing done", ok, err)
			}
		})
	}
}

// TestReaperDeletesEveryCopy: once the package expires, the reaper
// deletes the primary's copy and the replica.
func TestReaperDeletesEveryCopy(t *testing.T) {
	t.Parallel()
	for _, mirror := range mirrors {
		t.Run(mirror, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mirror, map[string]int{"transient": 1})
			o := e.ingest("ci/tmp", "transient", pattern(100<<10, 7))
			if _, err := e.rep.Replicate(e.ctx, o.Stored, o.seq); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(8 * 24 * time.Hour)
			r, err := reaper.New(reaper.Config{Pool: e.pool, Log: e.log, DataPlane: e.dp, Grace: -1, BatchJitter: -1, OrphanInterval: -1, Now: e.clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.RunOnce(e.ctx); err != nil {
				t.Fatal(err)
			}
			if e.holds(e.primary, o.Address) || e.holds(e.mirror, o.Address) {
				t.Fatalf("after the reap: primary holds %v, mirror holds %v; want neither", e.holds(e.primary, o.Address), e.holds(e.mirror, o.Address))
			}
			if n := e.count(events.TypeObjectDeleted); n != 2 {
				t.Fatalf("%d object.deleted events, want 2", n)
			}
			e.project()
			locs, _ := catalog.New(e.pool).Locations(e.ctx, o.Address)
			for _, l := range locs {
				if l.State != catalog.LocationDeleted {
					t.Fatalf("location on %s is %s after the reap", l.Backend, l.State)
				}
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	c, err := replicator.ParseCopies(" release-evidence=1, permanent-record=2 ")
	if err != nil || c["release-evidence"] != 1 || c["permanent-record"] != 2 {
		t.Fatalf("ParseCopies: %v, %v", c, err)
	}
	for _, bad := range []string{"release-evidence", "x=-1", "=1", "a=1,a=2", "a=two"} {
		if _, err := replicator.ParseCopies(bad); err == nil {
			t.Errorf("ParseCopies(%q) accepted", bad)
		}
	}
	p := replicator.Policy{Backends: []string{"local", "s3", "tape"}, Copies: c}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.Targets("local", []string{"raw-evidence", "permanent-record"}); len(got) != 2 || got[0] != "s3" || got[1] != "tape" {
		t.Fatalf("targets: %v", got)
	}
	if got, _ := p.Targets("s3", []string{"release-evidence"}); len(got) != 1 || got[0] != "local" {
		t.Fatalf("targets of a copy on s3: %v", got)
	}
	if got, _ := p.Targets("local", []string{"raw-evidence"}); len(got) != 0 {
		t.Fatalf("targets of raw evidence: %v", got)
	}
	if err := (replicator.Policy{Backends: []string{"local"}, Copies: c}).Validate(); err == nil {
		t.Fatal("a policy asking for more copies than backends validated")
	}
}

// TestCopyAllMovesEveryObject: --copy-all copies every object, whatever
// its class, to the named backend; a second run copies nothing again.
func TestCopyAllMovesEveryObject(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "s3", nil)
	a := e.ingest("ci/run-1", "raw-evidence", pattern(100<<10, 11))
	b := e.ingest("ci/run-2", "transient", pattern(10<<10, 12))
	copied, present, err := e.rep.CopyAll(e.ctx, "mirror")
	if err != nil || copied != 2 || present != 0 {
		t.Fatalf("CopyAll: %d copied, %d present, %v", copied, present, err)
	}
	if !e.holds(e.mirror, a.Address) || !e.holds(e.mirror, b.Address) {
		t.Fatal("the mirror lacks a copied object")
	}
	e.project()
	if copied, present, err := e.rep.CopyAll(e.ctx, "mirror"); err != nil || copied != 0 || present != 2 {
		t.Fatalf("second CopyAll: %d copied, %d present, %v", copied, present, err)
	}
	if n := e.count(events.TypeObjectReplicated); n != 2 {
		t.Fatalf("%d object.replicated events, want 2", n)
	}
}
