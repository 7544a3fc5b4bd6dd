package explain_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/explain"
	"github.com/artifactstore/artifactstore/internal/pgtest"
)

var t0 = time.Date(2025, 1, 10, 9, 0, 0, 0, time.UTC)

// fixture appends real events (so that the history is the log's) and
// writes the projection rows those events would give, without depending on
// the projector.
type fixture struct {
	t     *testing.T
	pool  *pgxpool.Pool
	log   *events.Log
	mu    sync.Mutex
	clock time.Time
}

func newFixture(t *testing.T) *fixture {
	pool, _ := pgtest.NewDB(t)
	f := &fixture{t: t, pool: pool, clock: t0}
	f.log = events.NewLog(pool, events.NewCodec(), events.WithClock(func() time.Time {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.clock = f.clock.Add(time.Hour)
		return f.clock
	}))
	return f
}

func (f *fixture) append(kind, id, actor string, p events.Payload) {
	f.t.Helper()
	if _, err := f.log.Append(context.Background(), events.Batch{Events: []events.Draft{{SubjectKind: kind, SubjectID: id, Actor: actor, Payload: p}}}); err != nil {
		f.t.Fatalf("append %s: %v", p.EventType(), err)
	}
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

func (f *fixture) object(data string) (digest.Address, digest.Digests) {
	d, err := digest.Compute(strings.NewReader(data), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	return d.Address(digest.BLAKE3), d
}

func (f *fixture) pkg(name, class string, until *time.Time) {
	f.append(events.SubjectPackage, name, "ingester", events.PackageCreatedV1{Name: name, RetentionClass: class})
	f.append(events.SubjectPackage, name, "ingester", events.RetentionAssignedV1{Package: name, Class: class, RetainUntil: until})
	f.exec(`INSERT INTO artifact_packages (name, retention_class, created_at, state) VALUES ($1, $2, $3, 'sealed')`, name, class, t0)
	f.exec(`INSERT INTO retention_state (package, retention_class, retain_until) VALUES ($1, $2, $3)`, name, class, until)
}

func (f *fixture) file(pkg, path string, addr digest.Address, d digest.Digests) {
	f.append(events.SubjectPackage, pkg, "ingester", events.FileAddedV1{Package: pkg, Path: path, Address: addr, BLAKE3: d.BLAKE3[:], SHA256: d.SHA256[:], Size: d.Size})
	f.exec(`INSERT INTO artifact_files (package, path, content_address, digest_algorithm, digest_primary, digest_blake3,
			digest_sha256, size_bytes, added_at) VALUES ($1, $2, $3, 'blake3', $4, $4, $5, $6, $7)`,
		pkg, path, addr.String(), d.BLAKE3[:], d.SHA256[:], d.Size, t0)
}

func (f *fixture) stored(addr digest.Address, d digest.Digests, state string) {
	f.append(events.SubjectObject, addr.String(), "ingester", events.ObjectStoredV1{Address: addr, BLAKE3: d.BLAKE3[:], SHA256: d.SHA256[:], Size: d.Size, BackendID: "local"})
	f.exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256,
			size_bytes, state, stored_at) VALUES ($1, 'local', 'blake3', $2, $3, $4, $5, $6)`,
		addr.String(), d.BLAKE3[:], d.SHA256[:], d.Size, state, t0)
}

func TestExplainSharedObject(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	now := t0.AddDate(0, 6, 0)
	past, future := t0.AddDate(0, 3, 0), t0.AddDate(7, 0, 0)

	shared, sd := f.object("shared bytes")
	only, od := f.object("only in the CI run")
	other, xd := f.object("unrelated")

	f.pkg("ci/run-1", "raw-evidence", &past)
	f.pkg("rel/v1", "release-evidence", &future)
	f.file("ci/run-1", "logs/out.txt", shared, sd)
	f.file("ci/run-1", "only.txt", only, od)
	f.file("rel/v1", "evidence/out.txt", shared, sd)
	f.file("rel/v1", "unrelated.txt", other, xd)
	f.stored(shared, sd, "ok")
	f.stored(only, od, "deleted")
	f.stored(other, xd, "ok")
	f.append(events.SubjectObject, shared.String(), "verifier", events.ObjectVerifiedV1{Address: shared, BackendID: "local", Size: sd.Size})
	f.append(events.SubjectPackage, "rel/v1", "alice", events.LegalHoldSetV1{Package: "rel/v1", Reason: "case 12"})
	f.append(events.SubjectPackage, "rel/v1", "alice", events.LegalHoldReleasedV1{Package: "rel/v1", Reason: "closed"})
	f.append(events.SubjectPackage, "ci/run-1", "reaper", events.RetentionExpiredV1{Package: "ci/run-1", Class: "raw-evidence", RetainUntil: past})
	f.append(events.SubjectObject, only.String(), "reaper", events.ObjectDeletedV1{Address: only, BackendID: "local", Size: od.Size, Reason: "no live package references it"})
	f.exec(`UPDATE retention_state SET expired_at = $1 WHERE package = 'ci/run-1'`, past.Add(time.Hour))
	f.exec(`UPDATE artifact_packages SET state = 'expired' WHERE name = 'ci/run-1'`)
	f.exec(`UPDATE storage_locations SET last_verified_at = $1, verification_count = 1 WHERE content_address = $2`, t0.Add(24*time.Hour), shared.String())

	x := explain.New(f.pool, events.NewCodec(), func() time.Time { return now })
	ctx := context.Background()

	rep, err := x.Object(ctx, shared)
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	t.Logf("explain %s:\n%s", shared, out)
	if len(rep.References) != 2 || rep.References[0].Package != "ci/run-1" || rep.References[1].Package != "rel/v1" {
		t.Fatalf("references %+v", rep.References)
	}
	if rep.References[0].Keeps || !rep.References[1].Keeps {
		t.Fatalf("keeps: ci/run-1 %v (expired: want false), rel/v1 %v (retained: want true)", rep.References[0].Keeps, rep.References[1].Keeps)
	}
	for _, want := range []string{
		"Present and served; kept by 1 of 2",
		"rel/v1 (release-evidence: retained until " + future.Format(time.RFC3339),
		"ci/run-1", "logs/out.txt", "evidence/out.txt", "retention expired",
		"local", "ok", "last verified",
		"object.stored", "object.verified", "verified on local", "file.added",
		"legal hold set: case 12", "legal hold released: closed", "retention.expired",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain text lacks %q", want)
		}
	}
	for _, h := range rep.History {
		if strings.Contains(h.Summary, "unrelated.txt") || strings.Contains(h.Summary, "only.txt") {
			t.Errorf("history of %s holds an event about another object: %s", shared, h.Summary)
		}
	}
	for i := 1; i < len(rep.History); i++ {
		if rep.History[i].Sequence <= rep.History[i-1].Sequence {
			t.Fatalf("history not in log order: %+v", rep.History)
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil || back["address"] != shared.String() || back["verdict"] == "" {
		t.Fatalf("JSON %s: %v", b, err)
	}

	del, err := x.Object(ctx, only)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(del.Verdict, "Deleted at ") || !strings.Contains(del.Verdict, "by reaper (no live package references it)") ||
		!strings.Contains(del.Verdict, "none of the 1 referencing") {
		t.Errorf("verdict for a deleted object: %q", del.Verdict)
	}

	p, err := x.Package(ctx, "ci/run-1")
	if err != nil {
		t.Fatal(err)
	}
	text.Reset()
	if err := p.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	t.Logf("explain ci/run-1:\n%s", text.String())
	if len(p.Files) != 2 || p.Files[0].Path != "logs/out.txt" || p.Files[0].SharedWith != 1 || p.Files[0].State != "ok" || p.Files[1].State != "deleted" {
		t.Fatalf("package files %+v", p.Files)
	}
	if p.Retention == nil || p.Retention.ExpiredAt == nil || !strings.Contains(p.Verdict, "retention expired") {
		t.Fatalf("package retention %+v, verdict %q", p.Retention, p.Verdict)
	}
	if len(p.History) != 5 { // created, assigned, 2 files, expired
		t.Fatalf("package history %+v", p.History)
	}
	for _, want := range []string{"package.created", "retention class raw-evidence", "shared with 1 other package", "1 ok, 1 deleted"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("package text lacks %q", want)
		}
	}

	if _, err := x.Object(ctx, digest.MustParse("sha256:"+strings.Repeat("0", 64))); !errors.Is(err, explain.ErrNotFound) {
		t.Errorf("unknown object: %v, want ErrNotFound", err)
	}
	if _, err := x.Package(ctx, "nope"); !errors.Is(err, explain.ErrNotFound) {
		t.Errorf("unknown package: %v, want ErrNotFound", err)
	}
}
