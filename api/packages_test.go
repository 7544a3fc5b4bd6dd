package api_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/api"
)

func TestPackageListPaginationAndFilters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	classes := []string{"transient", "raw-evidence", "release-evidence"}
	states := []string{"open", "sealed", "expired"}
	var all []string
	for i := range 23 {
		// Names with "/" and a mix of cases and digits, so that the
		// cursor's byte order is exercised.
		name := fmt.Sprintf("ci/run-%02d", i)
		switch i % 4 {
		case 1:
			name = fmt.Sprintf("Release/v1.%d", i)
		case 2:
			name = fmt.Sprintf("ci/run-%02d/b", i)
		}
		all = append(all, name)
		e.exec(`INSERT INTO artifact_packages (name, retention_class, created_at, state) VALUES ($1, $2, $3, $4)`,
			name, classes[i%3], t0, states[i%3])
	}
	sort.Strings(all)

	list := func(t *testing.T, q string) api.PackageList {
		t.Helper()
		r := e.do("GET", "/v1/packages?"+q)
		r.wantStatus(t, http.StatusOK)
		var l api.PackageList
		r.json(t, &l)
		return l
	}

	for _, limit := range []int{1, 7, 23, 100} {
		t.Run(fmt.Sprintf("walk limit %d", limit), func(t *testing.T) {
			var got []string
			cursor, pages := "", 0
			for {
				q := url.Values{"limit": {fmt.Sprint(limit)}}
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				l := list(t, q.Encode())
				pages++
				if len(l.Packages) > limit {
					t.Fatalf("page of %d packages, limit %d", len(l.Packages), limit)
				}
				for _, p := range l.Packages {
					got = append(got, p.Name)
				}
				if l.NextCursor == "" {
					break
				}
				cursor = l.NextCursor
				if pages > 100 {
					t.Fatal("the cursor does not end")
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(all) {
				t.Fatalf("walk gave\n%v\nwant each package once, in order:\n%v", got, all)
			}
		})
	}

	count := func(q string) int { return len(list(t, q+"&limit=1000").Packages) }
	if n := count("prefix=ci/"); n != 17 {
		t.Errorf("prefix=ci/: %d packages, want 17", n)
	}
	if n := count("prefix=ci/run-02"); n != 1 {
		t.Errorf("prefix=ci/run-02: %d packages, want 1", n)
	}
	if n := count("class=release-evidence"); n != 7 {
		t.Errorf("class=release-evidence: %d, want 7", n)
	}
	if n := count("state=sealed&class=raw-evidence"); n != 8 {
		t.Errorf("state=sealed&class=raw-evidence: %d, want 8", n)
	}
	if n := count("prefix=%25"); n != 0 {
		t.Errorf("prefix=%%: %d packages; a prefix is not a LIKE pattern", n)
	}
	if l := list(t, "class=none"); l.Packages == nil || len(l.Packages) != 0 {
		t.Errorf("an empty page must be [] (got %#v)", l.Packages)
	}

	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "state=gone"} {
		e.do("GET", "/v1/packages?"+q).wantError(t, http.StatusBadRequest, api.CodeInvalidParameter)
	}
	e.do("GET", "/v1/packages?cursor=bm90LW91cnM").wantError(t, http.StatusBadRequest, api.CodeInvalidCursor)
	e.do("GET", "/v1/packages?cursor=!!").wantError(t, http.StatusBadRequest, api.CodeInvalidCursor)
}

func TestPackageDetail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	addrs := e.addPackage("ci/run-1", "raw-evidence", "sealed",
		file{path: "logs/build.txt", data: []byte("build ok\n"), media: "text/plain"},
		file{path: "a.bin", data: pattern(5000)},
		file{path: "bad.bin", data: []byte("rotten"), state: "corrupt"},
	)
	e.exec(`UPDATE retention_state SET legal_hold = true, legal_hold_reason = 'audit 7' WHERE package = 'ci/run-1'`)
	e.exec(`UPDATE storage_locations SET last_verified_at = $1, verification_count = 3 WHERE content_address = $2`,
		t0.Add(time.Hour), addrs["a.bin"].String())
	// A second copy of a.bin, which a scrub found missing.
	e.exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, state, stored_at)
		SELECT content_address, 'mirror', digest_algorithm, digest_blake3, digest_sha256, size_bytes, 'missing', stored_at
		FROM storage_locations WHERE content_address = $1`, addrs["a.bin"].String())

	r := e.do("GET", "/v1/packages/ci%2Frun-1")
	r.wantStatus(t, http.StatusOK)
	var p api.Package
	r.json(t, &p)
	if p.Name != "ci/run-1" || p.RetentionClass != "raw-evidence" || p.State != "sealed" || p.FileCount != 3 || string(p.Metadata) != `{"ci":"yes"}` {
		t.Fatalf("package %+v", p)
	}
	if p.Retention == nil || !p.Retention.LegalHold || p.Retention.LegalHoldReason != "audit 7" ||
		p.Retention.RetainUntil == nil || !p.Retention.RetainUntil.Equal(t0.Add(90*24*time.Hour)) {
		t.Fatalf("retention %+v", p.Retention)
	}
	if len(p.Files) != 3 || p.Files[0].Path != "a.bin" || p.Files[1].Path != "bad.bin" || p.Files[2].Path != "logs/build.txt" {
		t.Fatalf("files not in path order: %+v", p.Files)
	}
	a := p.Files[0]
	if a.Address != addrs["a.bin"].String() || len(a.BLAKE3) != 64 || len(a.SHA256) != 64 || a.Size != 5000 ||
		a.Verification.State != "ok" || a.Verification.VerificationCount != 3 || a.Verification.LastVerifiedAt == nil {
		t.Fatalf("file a.bin %+v", a)
	}
	if c := a.Verification.Copies; len(c) != 2 || c[0].Backend != "local" || c[0].State != "ok" || c[1].Backend != "mirror" || c[1].State != "missing" {
		t.Fatalf("copies of a.bin: %+v; want local ok, mirror missing", c)
	}
	if a.Address != "blake3:"+a.BLAKE3 {
		t.Fatalf("address %s is not the BLAKE3 digest %s", a.Address, a.BLAKE3)
	}
	if p.Files[1].Verification.State != "corrupt" || p.Files[2].MediaType != "text/plain" {
		t.Fatalf("files %+v", p.Files[1:])
	}

	e.do("GET", "/v1/packages/nope").wantError(t, http.StatusNotFound, api.CodeNotFound)
	d := e.do("GET", "/v1/packages/ci/run-1").wantError(t, http.StatusNotFound, api.CodeNotFound)
	if !bytes.Contains([]byte(d.Message), []byte("%2F")) {
		t.Errorf("an unencoded '/' gets no hint: %s", d.Message)
	}
	e.do("GET", "/v1/packages/ci%2Frun-1?format=xml").wantError(t, http.StatusBadRequest, api.CodeInvalidParameter)
}

func TestPackageFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	big := pattern(70_000)
	e.addPackage("rel/v2", "release-evidence", "sealed",
		file{path: "dir/sub/big.bin", data: big},
		file{path: "notes.md", data: []byte("# notes\n"), media: "text/markdown"},
		file{path: "gone.txt", data: []byte("reaped"), state: "deleted"},
	)
	base := "/v1/packages/rel%2Fv2/files/"
	r := e.do("GET", base+"dir/sub/big.bin")
	r.wantStatus(t, http.StatusOK)
	if !bytes.Equal(r.body, big) || r.header.Get("Repr-Digest") == "" || r.header.Get("ETag") == "" {
		t.Fatalf("file: %d bytes, headers %v", len(r.body), r.header)
	}
	r = e.do("GET", base+"dir/sub/big.bin", "Range", "bytes=-10")
	r.wantStatus(t, http.StatusPartialContent)
	if !bytes.Equal(r.body, big[len(big)-10:]) {
		t.Fatalf("file range %x", r.body)
	}
	r = e.do("HEAD", base+"notes.md")
	r.wantStatus(t, http.StatusOK)
	if len(r.body) != 0 || r.header.Get("Content-Type") != "text/markdown" || r.header.Get("Content-Length") != "8" {
		t.Fatalf("HEAD file: %d bytes, headers %v", len(r.body), r.header)
	}
	e.do("GET", base+"gone.txt").wantError(t, http.StatusGone, api.CodeObjectDeleted)
	e.do("GET", base+"dir/sub").wantError(t, http.StatusNotFound, api.CodeNotFound)
	e.do("GET", "/v1/packages/nope/files/notes.md").wantError(t, http.StatusNotFound, api.CodeNotFound)
	if got := e.counter("artifactstore_api_requests_total", map[string]string{"route": "file", "code": "410"}); got != 1 {
		t.Errorf("file 410 counter %v, want 1", got)
	}
}

func TestPackageTar(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	files := []file{
		{path: "z-last.txt", data: []byte("last\n")},
		{path: "a/deep/nested/path/that/is/rather/long/so/that/it/does/not/fit/a/ustar/name/field/of/one/hundred/bytes.bin", data: pattern(3000)},
		{path: "empty", data: nil},
		{path: "a/b.txt", data: []byte("b\n")},
		{path: "shared.txt", data: []byte("same bytes\n")},
		{path: "shared-copy.txt", data: []byte("same bytes\n")},
	}
	e.addPackage("ci/tar", "raw-evidence", "sealed", files...)

	r := e.do("GET", "/v1/packages/ci%2Ftar.tar")
	r.wantStatus(t, http.StatusOK)
	if r.header.Get("Content-Type") != "application/x-tar" {
		t.Fatalf("Content-Type %q", r.header.Get("Content-Type"))
	}
	want := map[string][]byte{}
	var order []string
	for i, f := range files {
		want[f.path] = f.data
		order = append(order, f.path)
		_ = i
	}
	sort.Strings(order)
	tr := tar.NewReader(bytes.NewReader(r.body))
	var got []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want[h.Name]) {
			t.Errorf("%s: %d bytes differ from the %d stored", h.Name, len(b), len(want[h.Name]))
		}
		if h.Mode != 0o644 || h.Typeflag != tar.TypeReg {
			t.Errorf("%s: mode %o type %c", h.Name, h.Mode, h.Typeflag)
		}
		if h.ModTime.Before(t0) || h.ModTime.After(t0.Add(time.Hour)) {
			t.Errorf("%s: mtime %v, want its added_at", h.Name, h.ModTime)
		}
		got = append(got, h.Name)
	}
	if fmt.Sprint(got) != fmt.Sprint(order) {
		t.Fatalf("tar entries\n%v\nwant path order\n%v", got, order)
	}
	if n := e.counter("artifactstore_api_bytes_served_total", map[string]string{"route": "tar"}); n != 3000+5+2+22 {
		t.Errorf("tar bytes metric %v", n)
	}

	t.Run("format=json for a name ending in .tar", func(t *testing.T) {
		e.addPackage("odd.tar", "transient", "open", file{path: "x", data: []byte("x")})
		r := e.do("GET", "/v1/packages/odd.tar?format=json")
		r.wantStatus(t, http.StatusOK)
		var p api.Package
		r.json(t, &p)
		if p.Name != "odd.tar" {
			t.Fatalf("got package %q", p.Name)
		}
		e.do("GET", "/v1/packages/odd.tar.tar").wantStatus(t, http.StatusOK)
		e.do("GET", "/v1/packages/odd.tar").wantError(t, http.StatusNotFound, api.CodeNotFound)
	})

	t.Run("unservable file fails before any byte", func(t *testing.T) {
		e.addPackage("mixed", "transient", "sealed",
			file{path: "fine.txt", data: []byte("fine")},
			file{path: "gone.txt", data: []byte("gone"), state: "deleted"},
			file{path: "rot.txt", data: []byte("rot"), state: "corrupt"},
		)
		d := e.do("GET", "/v1/packages/mixed.tar").wantError(t, http.StatusConflict, api.CodeObjectCorrupt)
		if !bytes.Contains([]byte(d.Message), []byte("rot.txt")) || !bytes.Contains([]byte(d.Message), []byte("gone.txt")) {
			t.Errorf("message does not name the bad files: %s", d.Message)
		}
	})

	t.Run("damaged bytes abort the stream", func(t *testing.T) {
		addrs := e.addPackage("damaged", "transient", "sealed", file{path: "a", data: pattern(2000)}, file{path: "b", data: pattern(3000)[1000:]})
		damage(t, e.objectPath(addrs["b"]))
		r := e.do("GET", "/v1/packages/damaged.tar")
		tr := tar.NewReader(bytes.NewReader(r.body))
		var err error
		for err == nil {
			if _, err = tr.Next(); err == nil {
				_, err = io.Copy(io.Discard, tr)
			}
		}
		if r.err == nil && errors.Is(err, io.EOF) {
			t.Fatal("a tar with damaged bytes arrived complete")
		}
	})

	e.do("GET", "/v1/packages/nope.tar").wantError(t, http.StatusNotFound, api.CodeNotFound)
}
