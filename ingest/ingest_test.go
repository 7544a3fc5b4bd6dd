package ingest_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/producer"
)

func TestPutInlineAndStaged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	small := []byte("hello\n")
	large := randomBytes(t, 300<<10)
	for _, tc := range []struct {
		path   string
		data   []byte
		staged bool
	}{{"logs/small.txt", small, false}, {"bin/large.bin", large, true}} {
		d, _ := digest.Compute(bytes.NewReader(tc.data), nil)
		ctx := context.Background()
		pend, err := e.client.Put(ctx, blob(producer.Put{Package: "ci/run-1", Path: tc.path, Metadata: map[string]string{"k": "v"}}, tc.data))
		if err != nil {
			t.Fatal(err)
		}
		if pend.Staged != tc.staged {
			t.Fatalf("%s: staged = %v, want %v", tc.path, pend.Staged, tc.staged)
		}
		r, err := pend.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != commands.StatusStored || r.Err() != nil {
			t.Fatalf("%s: reply %+v", tc.path, r)
		}
		if r.Address != d.Address(digest.BLAKE3).String() || r.SHA256 != d.Address(digest.SHA256).Hex() || r.Size != int64(len(tc.data)) || r.Sequence == 0 {
			t.Fatalf("%s: reply %+v does not describe the blob", tc.path, r)
		}
		e.checkObject(r.Address, r.BLAKE3, r.SHA256, r.Size)
		if tc.staged {
			obs, _ := e.js.ObjectStore(ctx, e.topo.StagingBucket)
			if _, err := obs.GetInfo(ctx, pend.CommandID); err == nil {
				t.Fatalf("staged object %s still there after the ingest", pend.CommandID)
			}
		}
		evs := e.eventsOf(pend.CommandID)
		if evs[len(evs)-1].Sequence != r.Sequence {
			t.Fatalf("reply sequence %d, last event %d", r.Sequence, evs[len(evs)-1].Sequence)
		}
		want := []string{"object.stored", "file.added"}
		if !tc.staged {
			want = []string{"package.created", "retention.assigned", "object.stored", "file.added"}
		}
		if got := types(evs); !slices.Equal(got, want) {
			t.Fatalf("%s: events %v, want %v", tc.path, got, want)
		}
	}
	// Retention assigned with now + 90 days for raw-evidence.
	evs, _ := e.log.Read(context.Background(), 0, 10)
	p, err := e.codec.DecodeEvent(evs[1])
	if err != nil {
		t.Fatal(err)
	}
	ra := p.(events.RetentionAssignedV1)
	if ra.Class != "raw-evidence" || ra.RetainUntil == nil || time.Until(*ra.RetainUntil) < 89*24*time.Hour {
		t.Fatalf("retention assigned %+v", ra)
	}
	e.waitSettled()
}

func TestJSONCommandFromTheDocs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	body := `{"v":1,"command_id":"0f8e3c1e-cli-demo-1","package":"ci/run-42","path":"logs/hello.txt","retention_class":"raw-evidence","metadata":{"git_commit":"4b825dc"},"expect_size":6,"inline":"aGVsbG8K"}`
	r := e.request(bus.CmdIngest, []byte(body), "application/json", "0f8e3c1e-cli-demo-1")
	if r.Status != commands.StatusStored || r.Size != 6 {
		t.Fatalf("reply %+v", r)
	}
	// A JSON reply to a JSON command.
	if r.SHA256 != "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03" {
		t.Fatalf("sha256 of hello\\n: %s", r.SHA256)
	}
}

func TestRedeliveredCommandHasOneEffect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	cmd := commands.Ingest{V: 1, CommandID: "dup-1", Package: "p", Path: "a.txt", Inline: []byte("same bytes")}
	body, _ := commands.Encode(e.codec, cmd, false)
	// No Nats-Msg-Id: JetStream does not de-duplicate, the ingester must.
	r1 := e.request(bus.CmdIngest, body, "", "")
	r2 := e.request(bus.CmdIngest, body, "", "")
	if r1.Status != commands.StatusStored || r2.Status != commands.StatusStored {
		t.Fatalf("replies %+v %+v", r1, r2)
	}
	if !r2.Duplicate || r2.Address != r1.Address || r2.Sequence != r1.Sequence || r2.SHA256 != r1.SHA256 {
		t.Fatalf("second reply %+v is not the first outcome %+v", r2, r1)
	}
	if n := len(e.eventsOf("dup-1")); n != 4 {
		t.Fatalf("%d events for the command, want 4", n)
	}
	if head, _ := e.log.Head(context.Background()); head != 4 {
		t.Fatalf("log head %d after a duplicate, want 4", head)
	}
	if n := len(e.objectFiles()); n != 1 {
		t.Fatalf("%d object files, want 1", n)
	}
	e.waitSettled()
}

func TestSameFileTwiceIsDeduplicated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	data := randomBytes(t, 100<<10)
	r1 := e.put(e.client, blob(producer.Put{Package: "p", Path: "f"}, data))
	r2 := e.put(e.client, blob(producer.Put{Package: "p", Path: "f"}, data))
	r3 := e.put(e.client, blob(producer.Put{Package: "q", Path: "g"}, data))
	if r1.Address != r2.Address || r2.Address != r3.Address || !r2.Deduplicated || !r3.Deduplicated || r1.Deduplicated {
		t.Fatalf("replies %+v / %+v / %+v", r1, r2, r3)
	}
	if files := e.objectFiles(); len(files) != 1 {
		t.Fatalf("object files %v, want one", files)
	}
	if got := types(e.eventsOf(r2.CommandID)); !slices.Equal(got, []string{"object.stored"}) {
		t.Fatalf("re-put of the same file at the same path appended %v", got)
	}
}

func TestRejections(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(func(c *ingest.Config) { c.MaxBlobSize = 200 << 10 })
	ctx := context.Background()
	data := []byte("some bytes")
	wrong := digest.MustParse("sha256:" + strings.Repeat("0", 64))

	type rejection struct {
		name string
		code string
		send func() commands.Reply
	}
	ingestJSON := func(s string) func() commands.Reply {
		return func() commands.Reply { return e.request(bus.CmdIngest, []byte(s), "application/json", "") }
	}
	cases := []rejection{
		{"digest mismatch", commands.CodeDigestMismatch, func() commands.Reply {
			return e.put(e.client, blob(producer.Put{Package: "p", Path: "a", Expect: []digest.Address{wrong}}, data))
		}},
		{"size mismatch", commands.CodeSizeMismatch, func() commands.Reply {
			p := blob(producer.Put{Package: "p", Path: "a"}, data)
			p.Size = 3
			return e.put(e.client, p)
		}},
		{"staged size mismatch", commands.CodeSizeMismatch, func() commands.Reply {
			obs, _ := e.js.ObjectStore(ctx, e.topo.StagingBucket)
			if _, err := obs.PutBytes(ctx, "sized", randomBytes(t, 100<<10)); err != nil {
				t.Fatal(err)
			}
			cmd := commands.Ingest{V: 1, CommandID: "staged-size", Package: "p", Path: "a", Staged: "sized", ExpectSize: ptr(int64(5))}
			body, _ := commands.Encode(e.codec, cmd, false)
			return e.request(bus.CmdIngest, body, "", "")
		}},
		{"unknown class", commands.CodeUnknownClass, func() commands.Reply {
			return e.put(e.client, blob(producer.Put{Package: "newpkg", Path: "a", Class: "forever-ish"}, data))
		}},
		{"dotdot path", commands.CodeInvalidPath, ingestJSON(`{"v":1,"command_id":"r-dotdot","package":"p","path":"../../etc/passwd","inline":"eA=="}`)},
		{"absolute path", commands.CodeInvalidPath, ingestJSON(`{"v":1,"command_id":"r-abs","package":"p","path":"/etc/passwd","inline":"eA=="}`)},
		{"nul path", commands.CodeInvalidPath, ingestJSON(`{"v":1,"command_id":"r-nul","package":"p","path":"a\u0000b","inline":"eA=="}`)},
		{"empty path", commands.CodeInvalidPath, ingestJSON(`{"v":1,"command_id":"r-empty","package":"p","path":"","inline":"eA=="}`)},
		// Text PostgreSQL cannot hold is refused by validation, never
		// by a database error that would retry the command.
		{"nul package", commands.CodeInvalidPackage, ingestJSON(`{"v":1,"command_id":"r-nul-pkg","package":"p\u0000q","path":"a","inline":"eA=="}`)},
		{"nul seal", commands.CodeInvalidPackage, func() commands.Reply {
			return e.request(bus.CmdSeal, []byte(`{"v":1,"command_id":"r-nul-seal","package":"p\u0000q"}`), "application/json", "")
		}},
		{"nul metadata", commands.CodeInvalidMetadata, ingestJSON(`{"v":1,"command_id":"r-nul-meta","package":"p","path":"a","metadata":{"k":"v\u0000"},"inline":"eA=="}`)},
		{"inline over the limit, CBOR", commands.CodeTooLarge, func() commands.Reply {
			body, _ := commands.Encode(e.codec, commands.Ingest{V: 1, CommandID: "r-big-cbor", Package: "p", Path: "big-inline", Inline: make([]byte, commands.MaxInline+1)}, false)
			return e.request(bus.CmdIngest, body, "", "")
		}},
		{"inline over the limit, JSON", commands.CodeTooLarge, func() commands.Reply {
			body, _ := commands.Encode(e.codec, commands.Ingest{V: 1, CommandID: "r-big-json", Package: "p", Path: "big-inline", Inline: make([]byte, commands.MaxInline+1)}, true)
			return e.request(bus.CmdIngest, body, "application/json", "")
		}},
		{"too large staged", commands.CodeTooLarge, func() commands.Reply {
			return e.put(e.client, blob(producer.Put{Package: "p", Path: "big"}, randomBytes(t, 300<<10)))
		}},
		{"too large unknown size", commands.CodeTooLarge, func() commands.Reply {
			p := blob(producer.Put{Package: "p", Path: "big2"}, randomBytes(t, 300<<10))
			p.Size = -1
			return e.put(e.client, p)
		}},
		{"malformed CBOR", commands.CodeMalformed, func() commands.Reply {
			return e.request(bus.CmdIngest, []byte{0xbf, 0x61, 0x76, 0x01}, "", "poison-1")
		}},
		{"malformed JSON", commands.CodeMalformed, ingestJSON(`{"v":1,`)},
		{"oversized command", commands.CodeMalformed, func() commands.Reply {
			return e.request(bus.CmdIngest, bytes.Repeat([]byte{0}, commands.MaxCommandBytes+1), "", "")
		}},
		{"staged missing", commands.CodeStagedMissing, ingestJSON(`{"v":1,"command_id":"r-missing","package":"p","path":"m","staged":"no-such-object"}`)},
		{"staged digest", commands.CodeStagedDigest, func() commands.Reply {
			name := "tampered"
			obs, _ := e.js.ObjectStore(ctx, e.topo.StagingBucket)
			if _, err := obs.PutBytes(ctx, name, randomBytes(t, 100<<10)); err != nil {
				t.Fatal(err)
			}
			tamperDigest(t, e.js, e.nc, e.topo.StagingBucket, name)
			return e.request(bus.CmdIngest, []byte(`{"v":1,"command_id":"r-tampered","package":"p","path":"t","staged":"tampered"}`), "application/json", "")
		}},
		{"header and body ids differ", commands.CodeInvalidCommandID, func() commands.Reply {
			return e.request(bus.CmdIngest, []byte(`{"v":1,"command_id":"body-id","package":"p","path":"a","inline":""}`), "application/json", "header-id")
		}},
	}
	before := len(e.objectFiles())
	for _, tc := range cases {
		r := tc.send()
		if r.Status != commands.StatusRejected || r.Code != tc.code || r.Reason == "" {
			t.Errorf("%s: reply %+v, want rejected %s", tc.name, r, tc.code)
			continue
		}
		evs := e.eventsOf(r.CommandID)
		if len(evs) != 1 || evs[0].Type != events.TypeIngestRejected {
			t.Errorf("%s: events %v, want one ingest.rejected", tc.name, types(evs))
			continue
		}
		p, _ := e.codec.DecodeEvent(evs[0])
		if rej := p.(events.IngestRejectedV1); rej.Code != tc.code || rej.Reason != r.Reason {
			t.Errorf("%s: event %+v does not carry the reason", tc.name, rej)
		}
	}
	if files := e.objectFiles(); len(files) != before {
		t.Fatalf("rejected ingests left object files: %v", files)
	}
	e.waitSettled()
	if n := e.deadLetters(); n != uint64(len(cases)) {
		t.Fatalf("%d dead letters, want %d (one per rejected command)", n, len(cases))
	}
	// A poison message did not stop the worker.
	if r := e.put(e.client, blob(producer.Put{Package: "p", Path: "after"}, data)); r.Status != commands.StatusStored {
		t.Fatalf("put after the rejections: %+v", r)
	}
}

func ptr[T any](v T) *T { return &v }

// tamperDigest rewrites the staged object's metadata with a wrong SHA-256,
// as a corrupted staging store would.
func tamperDigest(t *testing.T, js jetstream.JetStream, nc *nats.Conn, bucket, name string) {
	t.Helper()
	obs, _ := js.ObjectStore(context.Background(), bucket)
	info, err := obs.GetInfo(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info.Digest = "SHA-256=" + base64.URLEncoding.EncodeToString(make([]byte, 32))
	b, _ := json.Marshal(info)
	m := nats.NewMsg(fmt.Sprintf("$O.%s.M.%s", bucket, base64.URLEncoding.EncodeToString([]byte(name))))
	m.Header.Set("Nats-Rollup", "sub")
	m.Data = b
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func TestSealedAndOpenPackages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	ctx := context.Background()
	a, b := []byte("version A"), []byte("version B")

	// Open package: another object at an existing path replaces it.
	r := e.put(e.client, blob(producer.Put{Package: "open", Path: "f"}, a))
	r2 := e.put(e.client, blob(producer.Put{Package: "open", Path: "f"}, b))
	if r2.Status != commands.StatusStored || r2.Address == r.Address {
		t.Fatalf("replace in an open package: %+v", r2)
	}
	if got := types(e.eventsOf(r2.CommandID)); !slices.Equal(got, []string{"object.stored", "file.added"}) {
		t.Fatalf("replace appended %v", got)
	}

	seal := func(pkg string) commands.Reply {
		pend, err := e.client.Seal(ctx, pkg)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := pend.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := seal("open"); rep.Status != commands.StatusSealed || rep.Sequence == 0 {
		t.Fatalf("seal: %+v", rep)
	}
	if rep := seal("open"); rep.Status != commands.StatusSealed {
		t.Fatalf("second seal: %+v", rep)
	}
	if rep := seal("nope"); rep.Code != commands.CodeUnknownPackage {
		t.Fatalf("seal of an unknown package: %+v", rep)
	}
	if rep := e.put(e.client, blob(producer.Put{Package: "open", Path: "new"}, a)); rep.Code != commands.CodePackageSealed {
		t.Fatalf("new path in a sealed package: %+v", rep)
	}
	if rep := e.put(e.client, blob(producer.Put{Package: "open", Path: "f"}, a)); rep.Code != commands.CodePathConflict {
		t.Fatalf("other object at a sealed path: %+v", rep)
	}
	if rep := e.put(e.client, blob(producer.Put{Package: "open", Path: "f"}, b)); rep.Status != commands.StatusStored {
		t.Fatalf("same object at a sealed path: %+v", rep)
	}
	var sealed int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'package.sealed'`).Scan(&sealed); err != nil || sealed != 1 {
		t.Fatalf("%d package.sealed events (%v), want 1", sealed, err)
	}
	// Class and metadata conflicts with the existing package.
	if rep := e.put(e.client, blob(producer.Put{Package: "open", Path: "f", Class: "transient"}, b)); rep.Code != commands.CodeClassConflict {
		t.Fatalf("class conflict: %+v", rep)
	}
	if rep := e.put(e.client, blob(producer.Put{Package: "open", Path: "f", Metadata: map[string]string{"x": "y"}}, b)); rep.Code != commands.CodeMetadataConflict {
		t.Fatalf("metadata conflict: %+v", rep)
	}
}

// TestExpiredPackageRefusesFiles: once the reaper expired a package, an
// ingest into it is refused (its bytes are being reaped), and nothing is
// stored for it.
func TestExpiredPackageRefusesFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	ctx := context.Background()
	if r := e.put(e.client, blob(producer.Put{Package: "old", Path: "a", Class: "transient"}, []byte("first"))); r.Status != commands.StatusStored {
		t.Fatalf("first put: %+v", r)
	}
	if _, err := e.pool.Exec(ctx, `UPDATE ingest_packages SET expired_at = now() WHERE name = 'old'`); err != nil {
		t.Fatal(err)
	}
	before := len(e.objectFiles())
	r := e.put(e.client, blob(producer.Put{Package: "old", Path: "b"}, []byte("a new file, never stored")))
	if r.Code != commands.CodePackageExpired || !strings.Contains(r.Reason, "new package") {
		t.Fatalf("put into an expired package: %+v", r)
	}
	if got := types(e.eventsOf(r.CommandID)); !slices.Equal(got, []string{"ingest.rejected"}) {
		t.Fatalf("rejection appended %v", got)
	}
	if after := len(e.objectFiles()); after != before {
		t.Fatalf("%d object files after the refused put, %d before", after, before)
	}
}

func TestConcurrentIngestsCreateAPackageOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(func(c *ingest.Config) { c.Concurrency = 16 })
	e.startIngester(func(c *ingest.Config) { c.Concurrency = 16 })
	ctx := context.Background()
	var pends []*producer.Pending
	for i := range 64 {
		p, err := e.client.Put(ctx, blob(producer.Put{Package: fmt.Sprintf("pkg-%d", i%4), Path: fmt.Sprintf("f%d", i)}, []byte(fmt.Sprint(i))))
		if err != nil {
			t.Fatal(err)
		}
		pends = append(pends, p)
	}
	for _, p := range pends {
		r, err := p.Wait(ctx)
		if err != nil || r.Status != commands.StatusStored {
			t.Fatalf("reply %+v %v", r, err)
		}
	}
	e.checkOneSetPerCommand()
	var created int
	_ = e.pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE event_type = 'package.created'`).Scan(&created)
	if created != 4 {
		t.Fatalf("%d package.created events for 4 packages", created)
	}
}

func TestTwoIngestersSplitTheWork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(func(c *ingest.Config) { c.Concurrency = 8 })
	e.startIngester(func(c *ingest.Config) { c.Concurrency = 8 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // only stops a hung test: 300 ingests on a loaded machine can take minutes
	defer cancel()
	const n = 300
	var (
		mu      sync.Mutex
		replies = map[string]commands.Reply{}
		wg      sync.WaitGroup
		errs    = make(chan error, n)
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				p, err := e.client.Put(ctx, blob(producer.Put{Package: fmt.Sprintf("scale-%d", i%10), Path: fmt.Sprintf("f-%d", i)}, []byte(fmt.Sprintf("blob %d", i))))
				if err != nil {
					errs <- err
					return
				}
				r, err := p.Wait(ctx)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				replies[p.CommandID] = r
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for id, r := range replies {
		if r.Status != commands.StatusStored {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	if total := e.checkOneSetPerCommand(); total != n {
		t.Fatalf("%d commands in the log, want %d", total, n)
	}
	e.waitSettled()
}

func TestMetadataSchema(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	schema := `{"type":"object","required":["version","git_commit"],"properties":{"git_commit":{"type":"string","pattern":"^[0-9a-f]{7,40}$"}}}`
	if _, err := e.pool.Exec(ctx, `INSERT INTO metadata_schemas (retention_class, schema) VALUES ('release-evidence', $1)`, schema); err != nil {
		t.Fatal(err)
	}
	e.startIngester(nil)
	r := e.put(e.client, blob(producer.Put{Package: "rel-1", Path: "a", Class: "release-evidence", Metadata: map[string]string{"version": "1.0"}}, []byte("x")))
	if r.Code != commands.CodeSchemaViolation || !strings.Contains(r.Reason, "git_commit") {
		t.Fatalf("missing git_commit: %+v", r)
	}
	r = e.put(e.client, blob(producer.Put{Package: "rel-1", Path: "a", Class: "release-evidence", Metadata: map[string]string{"version": "1.0", "git_commit": "NOTHEX"}}, []byte("x")))
	if r.Code != commands.CodeSchemaViolation {
		t.Fatalf("bad git_commit: %+v", r)
	}
	r = e.put(e.client, blob(producer.Put{Package: "rel-1", Path: "a", Class: "release-evidence", Metadata: map[string]string{"version": "1.0", "git_commit": "4b825dc"}}, []byte("x")))
	if r.Status != commands.StatusStored {
		t.Fatalf("valid metadata: %+v", r)
	}
	// Other classes are not bound by the schema.
	if r := e.put(e.client, blob(producer.Put{Package: "raw-1", Path: "a"}, []byte("x"))); r.Status != commands.StatusStored {
		t.Fatalf("raw-evidence package: %+v", r)
	}
	// Permanent records never expire.
	r = e.put(e.client, blob(producer.Put{Package: "perm", Path: "a", Class: "permanent-record"}, []byte("x")))
	evs := e.eventsOf(r.CommandID)
	p, _ := e.codec.DecodeEvent(evs[1])
	if ra := p.(events.RetentionAssignedV1); ra.RetainUntil != nil {
		t.Fatalf("permanent-record got retain-until %v", ra.RetainUntil)
	}
}

// TestMetricsCountOutcomes checks the ingester's Prometheus counters: a
// stored file, a deduplicated one, a rejection by code, one handling time
// per command, and every command in a commit group.
func TestMetricsCountOutcomes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	e.startIngester(func(c *ingest.Config) { c.Metrics = ingest.NewMetrics(reg) })
	data := []byte("counted bytes")
	e.put(e.client, blob(producer.Put{Package: "m", Path: "a"}, data))
	e.put(e.client, blob(producer.Put{Package: "m", Path: "b"}, data))
	e.put(e.client, blob(producer.Put{Package: "m2", Path: "a", Class: "no-such-class"}, data))
	want := `
# HELP artifactstore_ingest_bytes_total Bytes of blobs ingested (deduplicated ones included).
# TYPE artifactstore_ingest_bytes_total counter
artifactstore_ingest_bytes_total 26
# HELP artifactstore_ingest_objects_total Files ingested, by whether the backend already held their bytes.
# TYPE artifactstore_ingest_objects_total counter
artifactstore_ingest_objects_total{deduplicated="false"} 1
artifactstore_ingest_objects_total{deduplicated="true"} 1
# HELP artifactstore_ingest_rejections_total Commands rejected, by reason code.
# TYPE artifactstore_ingest_rejections_total counter
artifactstore_ingest_rejections_total{code="unknown_retention_class"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"artifactstore_ingest_bytes_total", "artifactstore_ingest_objects_total", "artifactstore_ingest_rejections_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(reg, "artifactstore_ingest_duration_seconds"); n != 1 {
		t.Fatalf("duration histogram series: %d", n)
	}
	// Every command went through one group commit.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var grouped float64
	for _, mf := range mfs {
		if mf.GetName() == "artifactstore_ingest_commit_group_size" {
			grouped = mf.GetMetric()[0].GetHistogram().GetSampleSum()
		}
	}
	if grouped != 3 {
		t.Fatalf("commit group sizes add up to %v, want 3 (one per command)", grouped)
	}
}
