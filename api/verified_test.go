package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/verifier"
)

// pipelineEnv is an env whose catalog comes from the event log through the
// projector, and whose data plane reports corrupt reads to a ReadReporter
// that appends object.corrupt: the read path of a running store.
type pipelineEnv struct {
	*env
	log     *events.Log
	codec   *events.Codec
	proj    *projector.Projector
	handled chan commands.VerifyReply
}

func newPipelineEnv(t *testing.T) *pipelineEnv {
	t.Helper()
	handled := make(chan commands.VerifyReply, 16)
	rr := verifier.NewReadReporter(verifier.ReadReporterConfig{
		Done: func(_ *dataplane.CorruptError, rep commands.VerifyReply, err error) {
			if err != nil {
				t.Errorf("verification of a corrupt read: %v", err)
			}
			handled <- rep
		},
	})
	e := newEnv(t, "", dataplane.WithCorruptionReporter(rr))
	p := &pipelineEnv{env: e, codec: events.NewCodec(), handled: handled}
	p.log = events.NewLog(e.pool, p.codec)
	p.proj = projector.New(e.pool, p.log, p.codec, projector.Config{})
	lg := zerolog.New(zerolog.NewTestWriter(t))
	if err := rr.Service(verifier.NewWorker(e.dp, p.log, e.pool, p.codec, nil, verifier.WorkerConfig{Actor: "read", Logger: &lg})).Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rr.Stop(ctx)
	})
	return p
}

// ingestPackage stores data as file "f.bin" of package name through the
// data plane and the log, and projects it.
func (p *pipelineEnv) ingestPackage(name string, data []byte) digest.Address {
	p.t.Helper()
	ctx := context.Background()
	res, err := p.dp.Ingest(ctx, bytes.NewReader(data), dataplane.IngestHints{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		p.t.Fatal(err)
	}
	d := res.Digests
	_, err = p.log.Append(ctx, events.Batch{CommandID: "put-" + name, Events: []events.Draft{
		{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test", Payload: events.PackageCreatedV1{Name: name, RetentionClass: "raw-evidence"}},
		{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test", Payload: events.RetentionAssignedV1{Package: name, Class: "raw-evidence"}},
		{SubjectKind: events.SubjectObject, SubjectID: res.Address.String(), Actor: "test", Payload: events.ObjectStoredV1{
			Address: res.Address, BLAKE3: d.BLAKE3[:], SHA256: d.SHA256[:], Size: d.Size, BackendID: res.Receipt.BackendID}},
		{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "test", Payload: events.FileAddedV1{
			Package: name, Path: "f.bin", Address: res.Address, BLAKE3: d.BLAKE3[:], SHA256: d.SHA256[:], Size: d.Size}},
	}})
	if err != nil {
		p.t.Fatal(err)
	}
	p.project()
	return res.Address
}

func (p *pipelineEnv) project() {
	p.t.Helper()
	if _, err := p.proj.CatchUp(context.Background()); err != nil {
		p.t.Fatal(err)
	}
}

// waitHandled waits for the ReadReporter's verification of a detection.
func (p *pipelineEnv) waitHandled() commands.VerifyReply {
	p.t.Helper()
	select {
	case rep := <-p.handled:
		return rep
	case <-time.After(60 * time.Second):
		p.t.Fatal("the corrupt read was not verified within 60 s")
		return commands.VerifyReply{}
	}
}

func (p *pipelineEnv) locationState(addr digest.Address) string {
	p.t.Helper()
	var st string
	if err := p.pool.QueryRow(context.Background(), `SELECT state FROM storage_locations WHERE content_address = $1`, addr.String()).Scan(&st); err != nil {
		p.t.Fatal(err)
	}
	return st
}

// flipAt damages one byte of the stored object.
func flipAt(t *testing.T, path string, at int64) {
	t.Helper()
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], at); err != nil {
		t.Fatal(err)
	}
}

// freshServer is another API process over the same database and disk: it
// remembers nothing, so what it answers comes from the projection.
func (p *pipelineEnv) freshServer(t *testing.T) *httptest.Server {
	t.Helper()
	dp, err := dataplane.New(storageRegistry(t, p.local), p.local.ID())
	if err != nil {
		t.Fatal(err)
	}
	s, err := api.New(p.pool, dp, api.Options{Logger: zerolog.New(zerolog.NewTestWriter(t)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

// expectCorrupt checks that every kind of read of the package's file and
// object answers 409 object_corrupt.
func expectCorrupt(t *testing.T, base string, pkg string, addr digest.Address, size int64) {
	t.Helper()
	for _, c := range []struct{ method, path, rng string }{
		{"GET", "/v1/objects/" + addr.String(), ""},
		{"HEAD", "/v1/objects/" + addr.String(), ""},
		{"GET", "/v1/objects/" + addr.String(), "bytes=0-99"},
		{"GET", "/v1/objects/" + addr.String(), fmt.Sprintf("bytes=%d-", size-10)},
		{"GET", "/v1/packages/" + pkg + "/files/f.bin", ""},
		{"GET", "/v1/packages/" + pkg + "/files/f.bin", "bytes=5-6"},
		{"GET", "/v1/packages/" + pkg + ".tar", ""},
		{"GET", "/v1/objects/" + addr.String() + "/tree", ""},
	} {
		req, _ := http.NewRequest(c.method, base+c.path, nil)
		if c.rng != "" {
			req.Header.Set("Range", c.rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusConflict || (c.method == "GET" && !bytes.Contains(body, []byte(api.CodeObjectCorrupt))) {
			t.Fatalf("%s %s (Range %q): status %d, body %.200s; want 409 %s", c.method, c.path, c.rng, resp.StatusCode, body, api.CodeObjectCorrupt)
		}
	}
}

// TestDamagedObjectWholeGet flips one byte in the middle, and one in the
// last chunk group, of an object whose first MiB is intact: the whole GET
// has already answered 200, so it stops before the bad group's first byte
// with a broken connection; the object is recorded corrupt at once (every
// read answers 409 before the projector has caught up, and from the
// projection afterwards, in another API process too).
func TestDamagedObjectWholeGet(t *testing.T) {
	t.Parallel()
	const size = 4<<20 + 1234
	for i, at := range []int64{size / 2, size - 3} {
		p := newPipelineEnv(t)
		pkg := fmt.Sprintf("whole-%d", i)
		data := pattern(size)
		addr := p.ingestPackage(pkg, data)
		flipAt(t, p.objectPath(addr), at)
		group := at / blaketree.GroupSize * blaketree.GroupSize

		r := p.do("GET", "/v1/objects/"+addr.String())
		if r.status != http.StatusOK || r.err == nil {
			t.Fatalf("damage at %d: status %d, %d bytes, err %v; want 200 and a broken transfer", at, r.status, len(r.body), r.err)
		}
		if int64(len(r.body)) > group || !bytes.Equal(r.body, data[:len(r.body)]) {
			t.Fatalf("damage at %d: the client got %d bytes; want at most the %d before the bad group, all of them right", at, len(r.body), group)
		}
		// Before the projector knows: refused from the data plane's memory.
		p.do("GET", "/v1/objects/"+addr.String(), "Range", "bytes=0-9").wantError(t, http.StatusConflict, api.CodeObjectCorrupt)
		p.do("GET", "/v1/packages/"+pkg+".tar").wantError(t, http.StatusConflict, api.CodeObjectCorrupt)

		if rep := p.waitHandled(); rep.Outcome != commands.OutcomeCorrupt {
			t.Fatalf("damage at %d: verification outcome %+v, want corrupt", at, rep)
		}
		p.project()
		if st := p.locationState(addr); st != "corrupt" {
			t.Fatalf("damage at %d: projected state %q, want corrupt", at, st)
		}
		expectCorrupt(t, p.srv.URL, pkg, addr, size)
		expectCorrupt(t, p.freshServer(t).URL, pkg, addr, size)
	}
}

// TestDamagedObjectRangeGet: the first read to meet the damage is a range
// over it: 409 before any byte, the object recorded corrupt, and after
// that no range is served, not even one that does not touch the damage
// (a corrupt object is never served).
func TestDamagedObjectRangeGet(t *testing.T) {
	t.Parallel()
	const size = 3<<20 + 77
	p := newPipelineEnv(t)
	data := pattern(size)
	addr := p.ingestPackage("range", data)
	at := int64(2<<20 + 5000)
	flipAt(t, p.objectPath(addr), at)

	// A range elsewhere, before anything noticed, is proven and served.
	r := p.do("GET", "/v1/objects/"+addr.String(), "Range", "bytes=100-199")
	r.wantStatus(t, http.StatusPartialContent)
	if !bytes.Equal(r.body, data[100:200]) {
		t.Fatal("clean range differs")
	}
	r = p.do("GET", "/v1/packages/range/files/f.bin", "Range", fmt.Sprintf("bytes=%d-%d", at-100, at+100))
	d := r.wantError(t, http.StatusConflict, api.CodeObjectCorrupt)
	if bytes.Contains(r.body, data[at-100:at-90]) {
		t.Fatalf("bytes of the range leaked into the error: %s", d.Message)
	}
	if rep := p.waitHandled(); rep.Outcome != commands.OutcomeCorrupt {
		t.Fatalf("verification outcome %+v, want corrupt", rep)
	}
	p.project()
	if st := p.locationState(addr); st != "corrupt" {
		t.Fatalf("projected state %q, want corrupt", st)
	}
	expectCorrupt(t, p.srv.URL, "range", addr, size)
	expectCorrupt(t, p.freshServer(t).URL, "range", addr, size)
}

// TestDamagedObjectInTar: a tar stream stops inside the damaged file,
// before its bad group.
func TestDamagedObjectInTar(t *testing.T) {
	t.Parallel()
	const size = 2<<20 + 9
	p := newPipelineEnv(t)
	data := pattern(size)
	addr := p.ingestPackage("tarred", data)
	at := int64(size - 100)
	flipAt(t, p.objectPath(addr), at)
	r := p.do("GET", "/v1/packages/tarred.tar")
	if r.status != http.StatusOK || r.err == nil {
		t.Fatalf("tar with a damaged file: status %d, err %v; want 200 and a broken transfer", r.status, r.err)
	}
	if i := bytes.Index(r.body, data[:4096]); i < 0 || int64(len(r.body)-i) > at/blaketree.GroupSize*blaketree.GroupSize {
		t.Fatalf("the tar stream carried %d bytes of the file; want fewer than the bad group's offset", len(r.body)-i)
	}
	if rep := p.waitHandled(); rep.Outcome != commands.OutcomeCorrupt {
		t.Fatalf("verification outcome %+v, want corrupt", rep)
	}
}

// TestTreeEndpoint serves the outboard and a range's proof; both prove
// the bytes against the address.
func TestTreeEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	const size = 9*blaketree.GroupSize + 5
	data := pattern(size)
	addr := e.store(data, "ok")
	r := e.do("GET", "/v1/objects/"+addr.String()+"/tree")
	r.wantStatus(t, http.StatusOK)
	if r.header.Get("Bao-Group") != fmt.Sprint(blaketree.Group) {
		t.Fatalf("Bao-Group %q", r.header.Get("Bao-Group"))
	}
	check := func(proof []byte, off, n int64) {
		t.Helper()
		start, end := blaketree.AlignedRange(size, off, n)
		rd := blaketree.NewReader(bytes.NewReader(data[start:end]), bytes.NewReader(proof), addr.Sum(), size, off, n)
		defer rd.Close()
		got, err := io.ReadAll(rd)
		if err != nil || !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("proof of %d+%d does not prove the bytes: %v", off, n, err)
		}
	}
	check(r.body, 0, size)
	r = e.do("GET", "/v1/objects/"+addr.String()+"/tree?range=70000-70010")
	r.wantStatus(t, http.StatusOK)
	if int64(len(r.body)) != blaketree.ProofSize(size, 70000, 11) || len(r.body) >= int(blaketree.OutboardSize(size)) {
		t.Fatalf("range proof of %d bytes; want only the nodes the range needs", len(r.body))
	}
	check(r.body, 70000, 11)
	e.do("GET", "/v1/objects/"+addr.String()+"/tree?range=99999999-").wantError(t, http.StatusRequestedRangeNotSatisfiable, api.CodeRangeNotSatisfiable)
	e.do("GET", "/v1/objects/blake3:nothex/tree").wantError(t, http.StatusBadRequest, api.CodeInvalidAddress)
}
