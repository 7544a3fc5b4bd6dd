package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// TestNoInputYieldsA500 sends what once reached PostgreSQL as text it
// cannot hold (500 internal) or was cleaned and redirected by the router
// (307): each gets its 400 code, and nothing is redirected.
func TestNoInputYieldsA500(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	e.addPackage("ci/run-1", "raw-evidence", "open", file{path: "logs/a.txt", data: []byte("hello")})
	pkg := "/v1/packages/ci%2Frun-1"
	nulCursor := base64.RawURLEncoding.EncodeToString([]byte("n1:a\x00"))
	badUTF8Cursor := base64.RawURLEncoding.EncodeToString([]byte("n1:a\xff"))
	for _, tc := range []struct {
		method, target string
		status         int
		code           string
	}{
		// Text PostgreSQL refuses, in each place a request carries text.
		{"GET", "/v1/packages/a%00b", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages/a%ffb", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages/a%07b", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages/a%C2%85b.tar", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages/a%00b/files/x", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/logs/a%00.txt", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/logs/%ff.txt", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/logs%5Ca.txt", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages?prefix=%00", 400, api.CodeInvalidParameter},
		{"GET", "/v1/packages?prefix=ci%ff", 400, api.CodeInvalidParameter},
		{"GET", "/v1/packages?class=raw%00", 400, api.CodeInvalidParameter},
		{"GET", "/v1/packages?prefix=a%0Ab", 400, api.CodeInvalidParameter},
		{"GET", "/v1/packages?pre%00fix=a", 400, api.CodeInvalidParameter},
		{"GET", "/v1/packages?prefix=%zz", 400, api.CodeInvalidParameter},
		{"GET", pkg + "?format=%00", 400, api.CodeInvalidParameter},
		{"GET", "/v1/objects/sha256:%00", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages?cursor=" + nulCursor, 400, api.CodeInvalidCursor},
		{"GET", "/v1/packages?cursor=" + badUTF8Cursor, 400, api.CodeInvalidCursor},
		// Dot segments, raw or percent-encoded, and empty segments.
		{"GET", pkg + "/files/../../x", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/logs/../logs/a.txt", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/%2e%2e/%2E%2E/x", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/.%2e/x", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/./logs/a.txt", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/%2e/logs/a.txt", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/logs%2F..%2F..%2Fx", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/logs//a.txt", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/logs/a.txt/", 400, api.CodeInvalidPath},
		{"GET", pkg + "/files/", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages/..", 400, api.CodeInvalidPath},
		{"GET", "/v1/packages/%2E%2E", 400, api.CodeInvalidPath},
		{"GET", "/v1/../metrics", 400, api.CodeInvalidPath},
		{"GET", "/v1//packages", 400, api.CodeInvalidPath},
		{"HEAD", pkg + "/files/../logs/a.txt", 400, ""},
		// Paths a ServeMux would redirect to add a trailing slash.
		{"GET", "/v1", 404, api.CodeNotFound},
		{"GET", pkg + "/files", 404, api.CodeNotFound},
		{"GET", "/v1/objects", 404, api.CodeNotFound},
		// Methods the API does not answer.
		{"POST", "/v1/packages", 405, api.CodeMethodNotAllowed},
		{"DELETE", pkg + "/files/../x", 405, api.CodeMethodNotAllowed},
		// And what is fine stays fine.
		{"GET", pkg + "/files/logs/a.txt", 200, ""},
		{"GET", pkg + "/files/logs%2Fa.txt", 200, ""},
		{"GET", "/v1/packages?prefix=ci%2F&class=raw-evidence", 200, ""},
		{"GET", "/v1/packages?prefix=%E2%9C%93", 200, ""},
		{"GET", "/v1/packages/ci%2F..%2Fnone", 404, api.CodeNotFound},
	} {
		r := e.raw(tc.method, tc.target)
		if r.status != tc.status {
			t.Errorf("%s %s: status %d (Location %q), want %d; body %s", tc.method, tc.target, r.status, r.header.Get("Location"), tc.status, r.body)
			continue
		}
		if tc.code != "" {
			r.wantError(t, tc.status, tc.code)
		}
	}
}

// TestRefusalsNeedTheToken: a request refused for its path or method is
// still answered 401 without the token, as any other request.
func TestRefusalsNeedTheToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "tok")
	e.raw("GET", "/v1/packages/a%00b").wantError(t, http.StatusBadRequest, api.CodeInvalidPath)
	e.token = ""
	for _, target := range []string{"/v1/packages/a%00b", "/v1/packages/x/files/../y", "/v1/packages?prefix=%00"} {
		e.raw("GET", target).wantError(t, http.StatusUnauthorized, api.CodeUnauthorized)
	}
	e.raw("PUT", "/v1/packages").wantError(t, http.StatusUnauthorized, api.CodeUnauthorized)
	if got := e.counter("artifactstore_api_requests_total", map[string]string{"route": "invalid", "code": "401"}); got != 4 {
		t.Errorf("refused requests counted %v times as route=invalid code=401, want 4", got)
	}
}

// TestObjectByEitherAddress: an object is served under both of its
// content addresses, with the ETag of the address asked for, and
// conditions accept a validator naming either.
func TestObjectByEitherAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	data := pattern(70_000)
	res := e.storeFull(data, "ok") // stored under its blake3 address
	b3 := res.Address
	s256 := res.Digests.Address(digest.SHA256)
	sum := sha256.Sum256(data)
	reprDigest := "sha-256=:" + base64.StdEncoding.EncodeToString(sum[:]) + ":"

	for _, asked := range []digest.Address{b3, s256} {
		path := "/v1/objects/" + asked.String()
		r := e.do("GET", path)
		r.wantStatus(t, http.StatusOK)
		if !bytes.Equal(r.body, data) {
			t.Fatalf("GET %s: %d bytes, not the stored %d", path, len(r.body), len(data))
		}
		if got := r.header.Get("ETag"); got != `"`+asked.String()+`"` {
			t.Errorf("GET %s: ETag %s, want the address asked for", path, got)
		}
		if got := r.header.Get("Repr-Digest"); got != reprDigest {
			t.Errorf("GET %s: Repr-Digest %s, want %s", path, got, reprDigest)
		}
		e.do("HEAD", path).wantStatus(t, http.StatusOK)
		for _, v := range []digest.Address{b3, s256} {
			e.do("GET", path, "If-None-Match", `"`+v.String()+`"`).wantStatus(t, http.StatusNotModified)
			rg := e.do("GET", path, "Range", "bytes=10-19", "If-Range", `"`+v.String()+`"`)
			rg.wantStatus(t, http.StatusPartialContent)
			if !bytes.Equal(rg.body, data[10:20]) {
				t.Fatalf("range of %s with If-Range %s: %q", path, v, rg.body)
			}
		}
		e.do("GET", path, "Range", "bytes=10-19", "If-Range", `"sha256:`+strings.Repeat("0", 64)+`"`).wantStatus(t, http.StatusOK)
	}

	// The reverse: an object stored under its sha256 address, asked for
	// by its blake3 one.
	other := pattern(5000)[1:]
	rs, err := e.dp.Ingest(context.Background(), bytes.NewReader(other), dataplane.IngestHints{Primary: digest.SHA256, ExpectSize: storage.NoSizeClaim})
	if err != nil {
		t.Fatal(err)
	}
	ob3, os256 := rs.Digests.BLAKE3, rs.Digests.SHA256
	e.exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256,
			size_bytes, state, stored_at) VALUES ($1, $2, 'sha256', $3, $4, $5, 'ok', $6)`,
		rs.Address.String(), rs.Receipt.BackendID, ob3[:], os256[:], int64(len(other)), t0)
	byB3 := rs.Digests.Address(digest.BLAKE3)
	r := e.do("GET", "/v1/objects/"+byB3.String())
	r.wantStatus(t, http.StatusOK)
	if !bytes.Equal(r.body, other) || r.header.Get("ETag") != `"`+byB3.String()+`"` {
		t.Fatalf("sha256-primary object by its blake3 address: %d bytes, ETag %s", len(r.body), r.header.Get("ETag"))
	}

	// A digest of bytes nobody stored is still not found, under either
	// algorithm, and so is a state other than ok under the other address.
	e.do("GET", "/v1/objects/sha256:"+strings.Repeat("ab", 32)).wantError(t, http.StatusNotFound, api.CodeNotFound)
	corrupt := e.storeFull(pattern(900), "corrupt")
	e.do("GET", "/v1/objects/"+corrupt.Digests.Address(digest.SHA256).String()).wantError(t, http.StatusConflict, api.CodeObjectCorrupt)
}
