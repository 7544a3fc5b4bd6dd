package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// env is one API over its own database and object directory.
type env struct {
	t     testing.TB
	pool  *pgxpool.Pool
	dp    *dataplane.DataPlane
	local *local.Backend
	srv   *httptest.Server
	reg   *prometheus.Registry
	token string
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func newEnv(t testing.TB, token string, opts ...dataplane.Option) *env {
	t.Helper()
	pool, _ := pgtest.NewDB(t)
	b, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	dp, err := dataplane.New(storageRegistry(t, b), b.ID(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	metrics := prometheus.NewRegistry()
	s, err := api.New(pool, dp, api.Options{Token: token, Logger: zerolog.New(zerolog.NewTestWriter(t)), Registerer: metrics})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return &env{t: t, pool: pool, dp: dp, local: b, srv: srv, reg: metrics, token: token}
}

// storageRegistry registers b alone.
func storageRegistry(t testing.TB, b storage.Backend) *storage.Registry {
	t.Helper()
	reg := storage.NewRegistry()
	if err := reg.Register(b); err != nil {
		t.Fatal(err)
	}
	return reg
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// store puts data through the data plane and records its location in
// state.
func (e *env) store(data []byte, state string) digest.Address {
	e.t.Helper()
	return e.storeFull(data, state).Address
}

func (e *env) storeFull(data []byte, state string) dataplane.IngestResult {
	e.t.Helper()
	res, err := e.dp.Ingest(context.Background(), bytes.NewReader(data), dataplane.IngestHints{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		e.t.Fatal(err)
	}
	b3, s256 := res.Digests.BLAKE3, res.Digests.SHA256
	e.exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256,
			size_bytes, state, stored_at) VALUES ($1, $2, 'blake3', $3, $4, $5, $6, $7)
		ON CONFLICT (content_address, backend_id) DO UPDATE SET state = EXCLUDED.state`,
		res.Address.String(), res.Receipt.BackendID, b3[:], s256[:], int64(len(data)), state, t0)
	return res
}

// objectPath is where the local backend keeps addr.
func (e *env) objectPath(addr digest.Address) string {
	return filepath.Join(e.local.Root(), filepath.FromSlash(local.ObjectPath(addr)))
}

type file struct {
	path  string
	data  []byte
	state string // of the object's location; "" = ok
	media string
}

// addPackage records a package with its files and retention; every file's
// bytes go through the data plane.
func (e *env) addPackage(name, class, state string, files ...file) map[string]digest.Address {
	e.t.Helper()
	var total int64
	addrs := map[string]digest.Address{}
	for i, f := range files {
		st := f.state
		if st == "" {
			st = "ok"
		}
		res := e.storeFull(f.data, st)
		addr, d := res.Address, res.Digests
		addrs[f.path] = addr
		sum := addr.Sum()
		var media *string
		if f.media != "" {
			media = &f.media
		}
		e.exec(`INSERT INTO artifact_files (package, path, content_address, digest_algorithm, digest_primary,
				digest_blake3, digest_sha256, size_bytes, media_type, added_at)
			VALUES ($1, $2, $3, 'blake3', $4, $5, $6, $7, $8, $9)`,
			name, f.path, addr.String(), sum[:], d.BLAKE3[:], d.SHA256[:], int64(len(f.data)), media, t0.Add(time.Duration(i)*time.Minute))
		total += int64(len(f.data))
	}
	e.exec(`INSERT INTO artifact_packages (name, retention_class, metadata, created_at, file_count, total_bytes, state)
		VALUES ($1, $2, '{"ci":"yes"}', $3, $4, $5, $6)`, name, class, t0, int64(len(files)), total, state)
	e.exec(`INSERT INTO retention_state (package, retention_class, retain_until) VALUES ($1, $2, $3)`,
		name, class, t0.Add(90*24*time.Hour))
	return addrs
}

type response struct {
	status int
	header http.Header
	body   []byte
	err    error // reading the body
}

func (e *env) do(method, path string, hdr ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.token != "" {
		req.Header.Set("Authorization", "Bearer "+e.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: rerr}
}

// raw sends one request with target written as it is on the request line
// (so that "..", "//" and percent-encodings reach the server unchanged,
// which http.Client does not promise) and reads the whole response.
func (e *env) raw(method, target string, hdr ...string) response {
	e.t.Helper()
	return e.rawT(e.t, method, target, hdr...)
}

// rawT is raw failing t (a fuzz target's own t).
func (e *env) rawT(t testing.TB, method, target string, hdr ...string) response {
	t.Helper()
	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var req bytes.Buffer
	fmt.Fprintf(&req, "%s %s HTTP/1.1\r\nHost: artifactstore.test\r\nConnection: close\r\n", method, target)
	if e.token != "" {
		fmt.Fprintf(&req, "Authorization: Bearer %s\r\n", e.token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&req, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	req.WriteString("\r\n")
	if _, err := c.Write(req.Bytes()); err != nil {
		t.Fatalf("%s %q: %v", method, target, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %q: read the response: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, rerr := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: rerr}
}

func (r response) wantStatus(t *testing.T, want int) {
	t.Helper()
	if r.status != want {
		t.Fatalf("status %d, want %d; body %s", r.status, want, r.body)
	}
	if r.err != nil {
		t.Fatalf("read body: %v", r.err)
	}
}

// wantError checks a JSON error response.
func (r response) wantError(t *testing.T, status int, code string) api.ErrorDetail {
	t.Helper()
	r.wantStatus(t, status)
	if ct := r.header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
		t.Fatalf("error Content-Type %q, want JSON", ct)
	}
	var b api.ErrorBody
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	if b.Error.Code != code || b.Error.Message == "" {
		t.Fatalf("error %+v, want code %q and a message", b.Error, code)
	}
	return b.Error
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// counter returns the value of a counter metric with the given labels.
func (e *env) counter(name string, labels map[string]string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func damage(t testing.TB, path string) {
	t.Helper()
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("XX"), 10); err != nil {
		t.Fatal(err)
	}
}
