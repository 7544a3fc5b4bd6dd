package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// getEnv is a read API over a real database and object directory, behind
// a proxy that can tamper with what passes through.
type getEnv struct {
	t     *testing.T
	api   *httptest.Server
	proxy *httptest.Server
	// flip, when >= 0, is the offset within the object (after any Range
	// start) whose byte the proxy flips in object bodies; tree makes it
	// flip in tree bodies instead.
	flip atomic.Int64
	tree atomic.Bool
}

func newGetEnv(t *testing.T) (*getEnv, func(name string, data []byte, primary digest.Algorithm) digest.Address) {
	t.Helper()
	pool, _ := pgtest.NewDB(t)
	b, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	reg := storage.NewRegistry()
	if err := reg.Register(b); err != nil {
		t.Fatal(err)
	}
	dp, err := dataplane.New(reg, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	a, err := api.New(pool, dp, api.Options{Logger: zerolog.New(zerolog.NewTestWriter(t)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e := &getEnv{t: t, api: httptest.NewServer(a.Handler())}
	t.Cleanup(e.api.Close)
	e.flip.Store(-1)
	target, _ := url.Parse(e.api.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		at := e.flip.Load()
		isTree := strings.HasSuffix(resp.Request.URL.Path, "/tree")
		if at < 0 || isTree != e.tree.Load() || !strings.HasPrefix(resp.Request.URL.Path, "/v1/objects/") || resp.StatusCode >= 300 {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if start := rangeStart(resp.Header.Get("Content-Range")); at-start >= 0 && at-start < int64(len(body)) {
			body[at-start] ^= 0x01
		} else if isTree && at < int64(len(body)) {
			body[at] ^= 0x01
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		return nil
	}
	e.proxy = httptest.NewServer(rp)
	t.Cleanup(e.proxy.Close)

	ctx := context.Background()
	store := func(name string, data []byte, primary digest.Algorithm) digest.Address {
		t.Helper()
		res, err := dp.Ingest(ctx, bytes.NewReader(data), dataplane.IngestHints{Primary: primary, ExpectSize: storage.NoSizeClaim})
		if err != nil {
			t.Fatal(err)
		}
		d, addr := res.Digests, res.Address
		sum := addr.Sum()
		t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, state, stored_at)
				VALUES ($1, 'local', $2, $3, $4, $5, 'ok', $6)`, []any{addr.String(), addr.Algorithm().String(), d.BLAKE3[:], d.SHA256[:], d.Size, t0}},
			{`INSERT INTO artifact_packages (name, retention_class, metadata, created_at, file_count, total_bytes, state)
				VALUES ($1, 'raw-evidence', '{}', $2, 1, $3, 'open')`, []any{name, t0, d.Size}},
			{`INSERT INTO artifact_files (package, path, content_address, digest_algorithm, digest_primary, digest_blake3, digest_sha256, size_bytes, added_at)
				VALUES ($1, 'data.bin', $2, $3, $4, $5, $6, $7, $8)`, []any{name, addr.String(), addr.Algorithm().String(), sum[:], d.BLAKE3[:], d.SHA256[:], d.Size, t0}},
		} {
			if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
				t.Fatalf("%s: %v", q.sql, err)
			}
		}
		return addr
	}
	return e, store
}

func rangeStart(cr string) int64 {
	if cr == "" {
		return 0
	}
	spec := strings.TrimPrefix(cr, "bytes ")
	first, _, _ := strings.Cut(spec, "-")
	n, _ := strconv.ParseInt(first, 10, 64)
	return n
}

// get runs `artifactstore get args...` against the proxy.
func (e *getEnv) get(args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), append([]string{"get", "--api-url", e.proxy.URL}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestGetProvesEveryByte: `get` writes proven bytes, whole or a range, by
// address or by package and path; a byte flipped in transit (in the
// object or in its tree) makes it exit 3 with a clear message, leave no
// -o file, and never write the flipped byte.
func TestGetProvesEveryByte(t *testing.T) {
	t.Parallel()
	e, store := newGetEnv(t)
	const size = 5*blaketree.GroupSize + 321
	data := bytes.Repeat([]byte("artifactstore get proves bytes. "), size/32+1)[:size]
	addr := store("pkg", data, digest.BLAKE3)
	shaData := bytes.Repeat([]byte("sha256 "), 30_000)
	shaAddr := store("shapkg", shaData, digest.SHA256)
	dir := t.TempDir()

	// Honest transfers.
	out := filepath.Join(dir, "whole.bin")
	if code, _, stderr := e.get(addr.String(), "-o", out); code != 0 {
		t.Fatalf("get by address: exit %d: %s", code, stderr)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("-o file differs from the object")
	}
	if code, stdout, stderr := e.get("--package", "pkg", "--path", "data.bin", "--range", "70000-140000"); code != 0 || stdout != string(data[70000:140001]) {
		t.Fatalf("get --range: exit %d, %d bytes: %s", code, len(stdout), stderr)
	}
	if code, stdout, stderr := e.get(addr.String(), "--range=-10"); code != 0 || stdout != string(data[size-10:]) {
		t.Fatalf("get --range -10: exit %d, %q: %s", code, stdout, stderr)
	}
	if code, stdout, stderr := e.get(shaAddr.String()); code != 0 || stdout != string(shaData) {
		t.Fatalf("get of a sha256 address: exit %d, %d bytes: %s", code, len(stdout), stderr)
	}
	if code, stdout, stderr := e.get("--package", "shapkg", "--path", "data.bin", "--range", "5-9"); code != 0 || stdout != string(shaData[5:10]) {
		t.Fatalf("get --range of a sha256 file by package: exit %d, %q: %s", code, stdout, stderr)
	}

	// Tampered transfers.
	for _, tc := range []struct {
		name string
		at   int64
		tree bool
		args []string
	}{
		{"object byte, whole, -o", 3*blaketree.GroupSize + 7, false, []string{addr.String(), "-o", filepath.Join(dir, "tampered.bin")}},
		{"object byte, whole, stdout", 3*blaketree.GroupSize + 7, false, []string{"--package", "pkg", "--path", "data.bin"}},
		{"object byte, range", 2*blaketree.GroupSize + 5, false, []string{addr.String(), "--range", fmt.Sprintf("%d-%d", 2*blaketree.GroupSize, 2*blaketree.GroupSize+9)}},
		{"tree byte, whole", blaketree.HeaderSize + 70, true, []string{addr.String()}},
		{"tree byte, range", blaketree.HeaderSize + 1, true, []string{addr.String(), "--range", "0-9"}},
		{"sha256 object, whole", 1000, false, []string{shaAddr.String()}},
	} {
		e.flip.Store(tc.at)
		e.tree.Store(tc.tree)
		code, stdout, stderr := e.get(tc.args...)
		if code != 3 || !strings.Contains(stderr, "not the object's") {
			t.Fatalf("%s: exit %d, stderr %q; want 3 and a message that the bytes are not the object's", tc.name, code, stderr)
		}
		if !tc.tree && !strings.HasPrefix(string(data), stdout) && !strings.HasPrefix(string(shaData), stdout) {
			t.Fatalf("%s: stdout carried bytes that are not the object's", tc.name)
		}
		if int64(len(stdout)) > tc.at && !tc.tree && tc.name != "object byte, range" {
			t.Fatalf("%s: %d bytes written, past the flipped byte at %d", tc.name, len(stdout), tc.at)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "tampered.bin")); !os.IsNotExist(err) {
		t.Fatalf("-o of a tampered transfer left a file: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temp files left in the output directory: %v", ents)
	}
	e.flip.Store(-1)

	// Usage errors say what to do.
	if code, _, stderr := e.get(); code != 1 || !strings.Contains(stderr, "--package") {
		t.Fatalf("get without a target: exit %d, %q", code, stderr)
	}
	if code, _, stderr := e.get(shaAddr.String(), "--range", "0-9"); code != 1 || !strings.Contains(stderr, "--package") {
		t.Fatalf("range of a bare sha256 address: exit %d, %q", code, stderr)
	}
}
