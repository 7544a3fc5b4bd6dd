package ingest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/explain"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/producer"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
	"github.com/artifactstore/artifactstore/verifier"
)

// repairEnv is an ingester whose data plane the test also reads and
// verifies through, a projector and an explainer on the same database.
type repairEnv struct {
	*env
	dp   *dataplane.DataPlane
	proj *projector.Projector
	vw   *verifier.Worker
}

// newRepairEnv starts an ingester whose puts prove only the first and
// last chunk group of a stored copy (WithSampleGroups(0)): damage in a
// middle group is then found only through the records, damage in the
// first group always by the sample.
func newRepairEnv(t *testing.T) *repairEnv {
	e := newEnv(t)
	b, err := local.Open(e.root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	reg := storage.NewRegistry()
	if err := reg.Register(b); err != nil {
		t.Fatal(err)
	}
	dp, err := dataplane.New(reg, b.ID(), dataplane.WithPutter(storage.NewPutter(storage.WithSampleGroups(0))))
	if err != nil {
		t.Fatal(err)
	}
	e.startIngester(func(c *ingest.Config) { c.DataPlane = dp })
	l := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
	return &repairEnv{
		env:  e,
		dp:   dp,
		proj: projector.New(e.pool, e.log, e.codec, projector.Config{Logger: &l}),
		vw:   verifier.NewWorker(dp, e.log, e.pool, e.codec, nil, verifier.WorkerConfig{Logger: &l}),
	}
}

func (r *repairEnv) project() {
	r.t.Helper()
	if _, err := r.proj.CatchUp(context.Background()); err != nil {
		r.t.Fatalf("project: %v", err)
	}
}

func (r *repairEnv) file(a digest.Address) string {
	return filepath.Join(r.root, filepath.FromSlash(local.ObjectPath(a)))
}

// location returns the projected state and repair count of a on local.
func (r *repairEnv) location(a digest.Address) (string, int64) {
	r.t.Helper()
	var state string
	var repairs int64
	if err := r.pool.QueryRow(context.Background(), `SELECT state, repair_count FROM storage_locations
		WHERE content_address = $1 AND backend_id = 'local'`, a.String()).Scan(&state, &repairs); err != nil {
		r.t.Fatalf("location of %s: %v", a, err)
	}
	return state, repairs
}

// objectEvents returns the types of the events about a, in log order.
func (r *repairEnv) objectEvents(a digest.Address) []string {
	r.t.Helper()
	rows, err := r.pool.Query(context.Background(), `SELECT event_type FROM events
		WHERE subject_kind = 'object' AND subject_id = $1 ORDER BY sequence`, a.String())
	if err != nil {
		r.t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			r.t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// requireServed reads a whole through the data plane, every chunk group
// proven, and checks the bytes.
func (r *repairEnv) requireServed(a digest.Address, p []byte) {
	r.t.Helper()
	o, err := r.dp.Serve(context.Background(), "local", a, nil, dataplane.Expected{Size: int64(len(p))})
	if err != nil {
		r.t.Fatalf("serve %s: %v", a, err)
	}
	defer o.Close()
	got, err := io.ReadAll(o)
	if err != nil || !bytes.Equal(got, p) {
		r.t.Fatalf("proven read of %s: %d bytes, %v; want the %d put", a, len(got), err, len(p))
	}
	if disk, err := os.ReadFile(r.file(a)); err != nil || !bytes.Equal(disk, p) {
		r.t.Fatalf("the file of %s does not hold the put's bytes (%v)", a, err)
	}
}

func flipOnDisk(t *testing.T, path string, at int64) {
	t.Helper()
	p, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p[at] ^= 0x20
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, p, 0o640); err != nil {
		t.Fatal(err)
	}
}

func (r *repairEnv) putFile(pkg, path string, p []byte) commands.Reply {
	r.t.Helper()
	rep := r.put(r.client, blob(producer.Put{Package: pkg, Path: path}, p))
	if err := rep.Err(); err != nil {
		r.t.Fatalf("put %s/%s: %v", pkg, path, err)
	}
	return rep
}

// TestRePutRepairsCorruptObject: a byte flipped on disk in a chunk group
// the put's sample does not reach; a verification records the object
// corrupt; putting the original file again replaces the bytes, appends
// object.repaired, answers "repaired", makes the location ok again, and
// the object is served, proven, and explained as repaired.
func TestRePutRepairsCorruptObject(t *testing.T) {
	t.Parallel()
	r := newRepairEnv(t)
	ctx := context.Background()
	p := randomBytes(t, 9*blaketree.GroupSize+321)
	first := r.putFile("ci/run-1", "big.bin", p)
	a := digest.MustParse(first.Address)
	r.project()
	flipOnDisk(t, r.file(a), 4*blaketree.GroupSize+10)

	v, err := r.vw.Verify(ctx, commands.Verify{V: commands.Version, RequestID: "verify-1", Address: a, BackendID: "local", Origin: commands.OriginOnDemand})
	if err != nil || v.Outcome != commands.OutcomeCorrupt {
		t.Fatalf("verify of the damaged object: %+v, %v; want corrupt", v, err)
	}
	r.project()
	if st, _ := r.location(a); st != "corrupt" {
		t.Fatalf("location after verify: %s, want corrupt", st)
	}

	rep := r.putFile("ci/run-2", "big.bin", p)
	if rep.Status != commands.StatusRepaired || rep.Repaired != "corrupt" || rep.Deduplicated || rep.Err() != nil {
		t.Fatalf("re-put of the original file: %+v; want status repaired (corrupt), a success", rep)
	}
	evs := r.eventsOf(rep.CommandID)
	var got *events.ObjectRepairedV1
	for _, ev := range evs {
		if ev.Type == events.TypeObjectStored {
			t.Errorf("the repairing command appended object.stored too")
		}
		if ev.Type == events.TypeObjectRepaired {
			pl, err := r.codec.DecodeEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			x := pl.(events.ObjectRepairedV1)
			got = &x
		}
	}
	if got == nil || got.Address != a || got.BackendID != "local" || got.Was != events.RepairedCorrupt ||
		got.Source != events.RepairSourceReupload || got.CommandID != rep.CommandID || got.Size != int64(len(p)) {
		t.Fatalf("object.repaired of the re-put: %+v", got)
	}
	r.project()
	if st, n := r.location(a); st != "ok" || n != 1 {
		t.Fatalf("location after the repair: %s with %d repairs, want ok with 1", st, n)
	}
	r.requireServed(a, p)

	x := explain.New(r.pool, r.codec, nil)
	rp, err := x.Object(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rp.Verdict, "repaired at") || !strings.Contains(rp.Verdict, "from a re-upload") {
		t.Fatalf("explain verdict %q does not say the object was repaired from a re-upload", rp.Verdict)
	}
	var text bytes.Buffer
	if err := rp.WriteText(&text); err != nil || !strings.Contains(text.String(), "REPAIRED on local from a re-upload") {
		t.Fatalf("explain text lacks the repair (%v):\n%s", err, text.String())
	}

	// The same command again gets the same answer, from the log.
	body := fmt.Sprintf(`{"v":1,"command_id":%q,"package":"ci/run-2","path":"big.bin","inline":"aGVsbG8K"}`, rep.CommandID)
	again := r.request(bus.CmdIngest, []byte(body), commands.ContentTypeJSON, "")
	if again.Status != commands.StatusRepaired || !again.Duplicate || again.Repaired != "corrupt" {
		t.Fatalf("duplicate of the repairing command: %+v; want its first answer, repaired", again)
	}
}

// TestRePutFindsUnrecordedDamage: damage nothing has recorded yet, in the
// first chunk group (which every put's check proves), is found by the
// re-put itself and repaired; the location, ok all along, counts it.
func TestRePutFindsUnrecordedDamage(t *testing.T) {
	t.Parallel()
	r := newRepairEnv(t)
	p := randomBytes(t, 5*blaketree.GroupSize+7)
	a := digest.MustParse(r.putFile("ci/run-1", "x.bin", p).Address)
	flipOnDisk(t, r.file(a), 100)
	rep := r.putFile("ci/run-2", "x.bin", p)
	if rep.Status != commands.StatusRepaired || rep.Repaired != "corrupt" {
		t.Fatalf("re-put over unrecorded damage: %+v; want repaired", rep)
	}
	r.project()
	if st, n := r.location(a); st != "ok" || n != 1 {
		t.Fatalf("location: %s with %d repairs, want ok with 1", st, n)
	}
	if evs := r.objectEvents(a); strings.Join(evs, ",") != "object.stored,object.repaired" {
		t.Fatalf("object events %v", evs)
	}
	r.requireServed(a, p)
}

// TestRePutRestoresMissingObject: the file (and its tree) deleted behind
// the store's back; the re-put stores it again and records a repair of a
// missing copy.
func TestRePutRestoresMissingObject(t *testing.T) {
	t.Parallel()
	// An inline blob (its records are read with its pre-check) and a
	// staged one (read by the data plane after the write).
	for _, size := range []int{4 << 10, 3*blaketree.GroupSize + 1} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			r := newRepairEnv(t)
			p := randomBytes(t, size)
			a := digest.MustParse(r.putFile("ci/run-1", "gone.bin", p).Address)
			for _, f := range []string{r.file(a), r.file(a) + ".bao"} {
				if err := os.Remove(f); err != nil && (f == r.file(a) || !errors.Is(err, fs.ErrNotExist)) {
					t.Fatal(err)
				}
			}
			rep := r.putFile("ci/run-2", "gone.bin", p)
			if rep.Status != commands.StatusRepaired || rep.Repaired != "missing" {
				t.Fatalf("re-put of a lost object: %+v; want repaired (missing)", rep)
			}
			r.project()
			if st, n := r.location(a); st != "ok" || n != 1 {
				t.Fatalf("location: %s with %d repairs, want ok with 1", st, n)
			}
			r.requireServed(a, p)
		})
	}
}

// TestDedupOfIntactObjectRewritesNothing: a re-put of intact content is a
// plain deduplicated store: no repair event, and the file is the same
// file (inode and modification time unchanged).
func TestDedupOfIntactObjectRewritesNothing(t *testing.T) {
	t.Parallel()
	r := newRepairEnv(t)
	p := randomBytes(t, 4*blaketree.GroupSize+99)
	a := digest.MustParse(r.putFile("ci/run-1", "same.bin", p).Address)
	before, err := os.Stat(r.file(a))
	if err != nil {
		t.Fatal(err)
	}
	rep := r.putFile("ci/run-2", "same.bin", p)
	if rep.Status != commands.StatusStored || !rep.Deduplicated || rep.Repaired != "" {
		t.Fatalf("re-put of intact content: %+v; want stored, deduplicated", rep)
	}
	after, err := os.Stat(r.file(a))
	if err != nil {
		t.Fatal(err)
	}
	if before.Sys().(*syscall.Stat_t).Ino != after.Sys().(*syscall.Stat_t).Ino || !before.ModTime().Equal(after.ModTime()) {
		t.Fatalf("the dedup rewrote the file: inode %d -> %d, mtime %v -> %v",
			before.Sys().(*syscall.Stat_t).Ino, after.Sys().(*syscall.Stat_t).Ino, before.ModTime(), after.ModTime())
	}
	if evs := r.objectEvents(a); strings.Join(evs, ",") != "object.stored,object.stored" {
		t.Fatalf("object events %v, want two stores", evs)
	}
	r.project()
	if st, n := r.location(a); st != "ok" || n != 0 {
		t.Fatalf("location: %s with %d repairs, want ok with none", st, n)
	}
}
