package api_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/api"
)

// fuzzMethods are the methods FuzzRequest picks from.
var fuzzMethods = []string{"GET", "HEAD", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"}

// FuzzRequest sends arbitrary requests (method, path, query, Range and
// If-None-Match) to the real API over HTTP, in front of its own
// PostgreSQL database holding a few packages and objects, and asserts that
// no request gets a 5xx while PostgreSQL is up, none is redirected, and
// every error the API writes is its JSON error with a code. The seeds run
// in every `go test`; `make fuzz` explores from them.
func FuzzRequest(f *testing.F) {
	e := newEnv(f, "")
	addrs := e.addPackage("ci/run-1", "raw-evidence", "open",
		file{path: "logs/a.txt", data: []byte("hello"), media: "text/plain"},
		file{path: "dir/sub/b.bin", data: pattern(3000)})
	e.addPackage("odd.tar", "transient", "sealed", file{path: "x", data: []byte("odd")})
	e.addPackage("bad", "transient", "open", file{path: "c", data: []byte("corrupt bytes"), state: "corrupt"})
	obj := addrs["logs/a.txt"].String()
	cursor := base64.RawURLEncoding.EncodeToString([]byte("n1:ci/run-1"))

	for _, s := range []struct{ path, query, rng, inm string }{
		{"v1/objects/" + obj, "", "", ""},
		{"v1/objects/" + obj, "", "bytes=1-3", ""},
		{"v1/objects/" + obj, "", "bytes=-2", `"` + obj + `"`},
		{"v1/objects/sha256:" + strings.Repeat("0", 64), "", "", ""},
		{"v1/objects/sha256:%00", "", "", ""},
		{"v1/objects/..%2F..%2Fetc%2Fpasswd", "", "", ""},
		{"v1/packages", "prefix=ci%2F&class=raw-evidence&state=open&limit=1", "", ""},
		{"v1/packages", "cursor=" + cursor, "", ""},
		{"v1/packages", "prefix=%00", "", ""},
		{"v1/packages", "prefix=%ff%fe", "", ""},
		{"v1/packages", "limit=99999999999999999999", "", ""},
		{"v1/packages", "prefix=%zz;a=b", "", ""},
		{"v1/packages", "cursor=" + base64.RawURLEncoding.EncodeToString([]byte("n1:\x00")), "", ""},
		{"v1/packages/ci%2Frun-1", "", "", ""},
		{"v1/packages/ci%2Frun-1.tar", "", "", ""},
		{"v1/packages/odd.tar", "format=json", "", ""},
		{"v1/packages/bad.tar", "", "", ""},
		{"v1/packages/ci%2Frun-1", "format=%00", "", ""},
		{"v1/packages/a%00b", "", "", ""},
		{"v1/packages/a%c3%28", "", "", ""},
		{"v1/packages/ci%2Frun-1/files/logs/a.txt", "", "bytes=0-0", ""},
		{"v1/packages/ci%2Frun-1/files/dir/sub/b.bin", "", "bytes=5-", ""},
		{"v1/packages/bad/files/c", "", "", ""},
		{"v1/packages/ci%2Frun-1/files/../../x", "", "", ""},
		{"v1/packages/ci%2Frun-1/files/%2e%2e/x", "", "", ""},
		{"v1/packages/ci%2Frun-1/files/logs%2F..%2Fa.txt", "", "", ""},
		{"v1/packages/ci%2Frun-1/files/a%00", "", "", ""},
		{"v1/packages/ci%2Frun-1/files", "", "", ""},
		{"v1/packages/ci%2Frun-1/files/", "", "", ""},
		{"v1//packages", "", "", ""},
		{"v1", "", "", ""},
		{"v1/.", "", "", ""},
		{"metrics", "", "", ""},
	} {
		for m := range 2 {
			f.Add(uint8(m), s.path, s.query, s.rng, s.inm)
		}
	}
	f.Add(uint8(4), "v1/packages", "", "", "")

	f.Fuzz(func(t *testing.T, method uint8, path, query, rng, inm string) {
		target := "/" + requestLine(path)
		if query != "" {
			target += "?" + requestLine(query)
		}
		var hdr []string
		if rng != "" {
			hdr = append(hdr, "Range", headerValue(rng))
		}
		if inm != "" {
			hdr = append(hdr, "If-None-Match", headerValue(inm), "If-Range", headerValue(inm))
		}
		m := fuzzMethods[int(method)%len(fuzzMethods)]
		r := e.rawT(t, m, target, hdr...)
		req := fmt.Sprintf("%s %q %q", m, target, hdr)
		switch {
		case r.status >= 500:
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := e.pool.Ping(ctx); err != nil {
				t.Fatalf("PostgreSQL is down (%v), so this run says nothing; start it: pg_ctlcluster --skip-systemctl-redirect 15 main start", err)
			}
			t.Fatalf("%s: status %d with PostgreSQL up; body %s", req, r.status, r.body)
		case r.status >= 300 && r.status < 400 && r.status != http.StatusNotModified:
			t.Fatalf("%s: redirected with %d to %q", req, r.status, r.header.Get("Location"))
		case r.err != nil:
			t.Fatalf("%s: status %d, but the body broke off: %v", req, r.status, r.err)
		case r.status >= 400 && m == "HEAD":
			// No body to read: the headers of the API's JSON error, or
			// of net/http refusing a request it could not parse.
			ct := r.header.Get("Content-Type")
			if ct != "application/json; charset=utf-8" && ct != "text/plain; charset=utf-8" {
				t.Fatalf("%s: status %d with Content-Type %q", req, r.status, ct)
			}
		case r.status >= 400:
			// Either the API's JSON error, or net/http refusing a request
			// it could not parse (before any handler ran).
			var b api.ErrorBody
			if json.Unmarshal(r.body, &b) == nil && b.Error.Code != "" && b.Error.Message != "" {
				return
			}
			if strings.HasPrefix(string(r.body), fmt.Sprintf("%d ", r.status)) {
				return
			}
			t.Fatalf("%s: status %d without a JSON error: %q", req, r.status, r.body)
		}
	})
}

// requestLine makes s fit in a request line: bytes that would end the
// target or the line (space, controls, '#') and non-ASCII bytes are
// percent-encoded, so they reach the API as the encoded text a client
// would send; everything else, '%' included, goes as it is.
func requestLine(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '#' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// headerValue keeps a header on its line.
func headerValue(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, s)
}
