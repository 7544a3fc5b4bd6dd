package api_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/api"
)

func TestObjectGetAndHead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	data := pattern(300_000)
	addr := e.store(data, "ok")
	sum := sha256.Sum256(data)
	b64 := base64.StdEncoding.EncodeToString(sum[:])
	path := "/v1/objects/" + addr.String()

	checkHeaders := func(t *testing.T, r response) {
		t.Helper()
		for k, want := range map[string]string{
			"ETag":           `"` + addr.String() + `"`,
			"Content-Length": strconv.Itoa(len(data)),
			"Accept-Ranges":  "bytes",
			"Repr-Digest":    "sha-256=:" + b64 + ":",
			"Digest":         "SHA-256=" + b64,
			"Content-Type":   "application/octet-stream",
		} {
			if got := r.header.Get(k); got != want {
				t.Errorf("%s: %q, want %q", k, got, want)
			}
		}
	}

	get := e.do("GET", path)
	get.wantStatus(t, http.StatusOK)
	checkHeaders(t, get)
	if string(get.body) != string(data) {
		t.Fatalf("GET body: %d bytes, differs from the %d stored", len(get.body), len(data))
	}

	head := e.do("HEAD", path)
	head.wantStatus(t, http.StatusOK)
	checkHeaders(t, head)
	if len(head.body) != 0 {
		t.Fatalf("HEAD has a body of %d bytes", len(head.body))
	}

	nm := e.do("GET", path, "If-None-Match", `"`+addr.String()+`"`)
	nm.wantStatus(t, http.StatusNotModified)
	if len(nm.body) != 0 || nm.header.Get("ETag") == "" {
		t.Fatalf("304: body %d bytes, ETag %q", len(nm.body), nm.header.Get("ETag"))
	}
	e.do("GET", path, "If-None-Match", `"sha256:00"`).wantStatus(t, http.StatusOK)

	if got := e.counter("artifactstore_api_bytes_served_total", map[string]string{"route": "object"}); got != float64(2*len(data)) {
		t.Errorf("bytes served metric %v, want %d (two GETs; HEAD and 304 send none)", got, 2*len(data))
	}
	if got := e.counter("artifactstore_api_requests_total", map[string]string{"route": "object", "code": "304"}); got != 1 {
		t.Errorf("304 request counter %v, want 1", got)
	}
}

func TestObjectAddressErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	for _, bad := range []string{"blake3:ABC", "md5:" + strings.Repeat("0", 64), "blake3:" + strings.Repeat("A", 64), "..%2F..%2Fetc%2Fpasswd"} {
		e.do("GET", "/v1/objects/"+bad).wantError(t, http.StatusBadRequest, api.CodeInvalidAddress)
	}
	e.do("GET", "/v1/objects/blake3:"+strings.Repeat("ab", 32)).wantError(t, http.StatusNotFound, api.CodeNotFound)
	e.do("GET", "/v1/nothing-here").wantError(t, http.StatusNotFound, api.CodeNotFound)
}

func TestObjectRanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	data := pattern(1000)
	addr := e.store(data, "ok")
	path := "/v1/objects/" + addr.String()
	etag := `"` + addr.String() + `"`
	for _, tc := range []struct {
		name, rng, ifRange string
		start, end         int // inclusive; -1 = whole object with 200
	}{
		{"first byte", "bytes=0-0", "", 0, 0},
		{"middle", "bytes=100-199", "", 100, 199},
		{"suffix", "bytes=-10", "", 990, 999},
		{"suffix longer than the object", "bytes=-5000", "", 0, 999},
		{"open", "bytes=5-", "", 5, 999},
		{"end past the last byte", "bytes=990-2000", "", 990, 999},
		{"last byte", "bytes=999-999", "", 999, 999},
		{"several ranges are ignored", "bytes=0-1,5-6", "", -1, -1},
		{"another unit is ignored", "items=0-1", "", -1, -1},
		{"If-Range with the ETag", "bytes=1-2", etag, 1, 2},
		{"If-Range with another ETag", "bytes=1-2", `"sha256:00"`, -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := []string{"Range", tc.rng}
			if tc.ifRange != "" {
				hdr = append(hdr, "If-Range", tc.ifRange)
			}
			r := e.do("GET", path, hdr...)
			if tc.start < 0 {
				r.wantStatus(t, http.StatusOK)
				if string(r.body) != string(data) {
					t.Fatalf("body of %d bytes, want the whole object", len(r.body))
				}
				return
			}
			r.wantStatus(t, http.StatusPartialContent)
			if want := string(data[tc.start : tc.end+1]); string(r.body) != want {
				t.Fatalf("body %x, want %x", r.body, want)
			}
			if got, want := r.header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/1000", tc.start, tc.end); got != want {
				t.Fatalf("Content-Range %q, want %q", got, want)
			}
			if got := r.header.Get("Content-Length"); got != strconv.Itoa(tc.end-tc.start+1) {
				t.Fatalf("Content-Length %q", got)
			}
			if r.header.Get("Repr-Digest") == "" {
				t.Fatal("a partial response lacks Repr-Digest (of the whole representation)")
			}
		})
	}
	for _, rng := range []string{"bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=7-3", "bytes=x-1", "bytes=--1"} {
		t.Run("unsatisfiable "+rng, func(t *testing.T) {
			r := e.do("GET", path, "Range", rng)
			r.wantError(t, http.StatusRequestedRangeNotSatisfiable, api.CodeRangeNotSatisfiable)
			if got := r.header.Get("Content-Range"); got != "bytes */1000" {
				t.Fatalf("Content-Range %q, want bytes */1000", got)
			}
		})
	}
	t.Run("HEAD with a range", func(t *testing.T) {
		r := e.do("HEAD", path, "Range", "bytes=-10")
		r.wantStatus(t, http.StatusPartialContent)
		if len(r.body) != 0 || r.header.Get("Content-Length") != "10" || r.header.Get("Content-Range") != "bytes 990-999/1000" {
			t.Fatalf("HEAD: body %d bytes, headers %v", len(r.body), r.header)
		}
	})
	t.Run("empty object", func(t *testing.T) {
		empty := e.store(nil, "ok")
		r := e.do("GET", "/v1/objects/"+empty.String())
		r.wantStatus(t, http.StatusOK)
		if len(r.body) != 0 || r.header.Get("Content-Length") != "0" {
			t.Fatalf("empty object: %d bytes, Content-Length %q", len(r.body), r.header.Get("Content-Length"))
		}
		e.do("GET", "/v1/objects/"+empty.String(), "Range", "bytes=0-").wantError(t, http.StatusRequestedRangeNotSatisfiable, api.CodeRangeNotSatisfiable)
	})
}

func TestObjectNotServableStates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	for _, tc := range []struct {
		state  string
		status int
		code   string
	}{
		{"corrupt", http.StatusConflict, api.CodeObjectCorrupt},
		{"missing", http.StatusConflict, api.CodeObjectMissing},
		{"deleted", http.StatusGone, api.CodeObjectDeleted},
	} {
		t.Run(tc.state, func(t *testing.T) {
			addr := e.store([]byte("state "+tc.state), tc.state)
			for _, m := range []string{"GET", "HEAD"} {
				r := e.do(m, "/v1/objects/"+addr.String(), "Range", "bytes=0-")
				if r.status != tc.status {
					t.Fatalf("%s: status %d, want %d", m, r.status, tc.status)
				}
				if r.header.Get("ETag") != "" || r.header.Get("Repr-Digest") != "" {
					t.Fatalf("%s: a refused object still has ETag/Repr-Digest headers: %v", m, r.header)
				}
				if m == "GET" {
					d := r.wantError(t, tc.status, tc.code)
					if strings.Contains(string(r.body), "state "+tc.state) {
						t.Fatalf("the bytes leaked into the error: %s", d.Message)
					}
				}
			}
		})
	}
	t.Run("catalog ok but bytes gone", func(t *testing.T) {
		addr := e.store([]byte("vanishing"), "ok")
		if _, err := e.dp.Delete(t.Context(), "", addr); err != nil {
			t.Fatal(err)
		}
		e.do("GET", "/v1/objects/"+addr.String()).wantError(t, http.StatusConflict, api.CodeObjectMissing)
	})
}

// TestObjectDamagedStartIs409: bytes damaged on disk after the last scrub
// (the catalog still says ok) in the first chunk group are found before
// the status line: 409, and not one byte of the object.
func TestObjectDamagedStartIs409(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "")
	data := pattern(100_000)
	addr := e.store(data, "ok")
	damage(t, e.objectPath(addr))
	r := e.do("GET", "/v1/objects/"+addr.String())
	r.wantError(t, http.StatusConflict, api.CodeObjectCorrupt)
	if bytes.Contains(r.body, data[:8]) {
		t.Fatal("the object's bytes leaked into the error")
	}
	// HEAD and a range of the clean end are refused as well.
	e.do("HEAD", "/v1/objects/"+addr.String()).wantStatus(t, http.StatusConflict)
	e.do("GET", "/v1/objects/"+addr.String(), "Range", "bytes=99000-99999").wantError(t, http.StatusConflict, api.CodeObjectCorrupt)
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "s3cret-token")
	addr := e.store([]byte("guarded"), "ok")
	path := "/v1/objects/" + addr.String()
	e.do("GET", path).wantStatus(t, http.StatusOK)
	e.do("GET", "/v1/packages").wantStatus(t, http.StatusOK)

	e.token = ""
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer wrong"}, {"Authorization", "Basic czNjcmV0LXRva2Vu"}, {"Authorization", "Bearer s3cret-token-and-more"}} {
		for _, p := range []string{path, "/v1/packages", "/v1/packages/x.tar", "/v1/nowhere"} {
			r := e.do("GET", p, hdr...)
			r.wantError(t, http.StatusUnauthorized, api.CodeUnauthorized)
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
		}
	}
	e.do("GET", path, "Authorization", "bearer s3cret-token").wantStatus(t, http.StatusOK)

	open := newEnv(t, "")
	a := open.store([]byte("open"), "ok")
	open.do("GET", "/v1/objects/"+a.String()).wantStatus(t, http.StatusOK)
}

func TestCheckExposure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr, token string
		insecure    bool
		ok          bool
	}{
		{"127.0.0.1:8080", "", false, true},
		{"localhost:8080", "", false, true},
		{"[::1]:8080", "", false, true},
		{"0.0.0.0:8080", "", false, false},
		{":8080", "", false, false},
		{"10.1.2.3:8080", "", false, false},
		{"0.0.0.0:8080", "tok", false, true},
		{":8080", "", true, true},
		{"no-port", "", false, false},
	} {
		err := api.CheckExposure(tc.addr, tc.token, tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("CheckExposure(%q, token=%q, insecure=%v) = %v, want ok=%v", tc.addr, tc.token, tc.insecure, err, tc.ok)
		}
		if err != nil && tc.addr != "no-port" && !strings.Contains(err.Error(), "--insecure-no-auth") {
			t.Errorf("the refusal does not say how to override it: %v", err)
		}
	}
}
