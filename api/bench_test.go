package api_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// BenchmarkObjectGet measures reads through the API: a whole 256 MiB
// object, and a 1 MiB range (unaligned) of a 1 GiB object, each proven
// against the object's tree on the way out, next to baselines served by
// an API whose object server streams the backend's bytes unchecked:
// baseline_unverified copies them through the process as the proven read
// does (the same read without the check), baseline_sendfile (whole only)
// lets the kernel send the file without a copy, which a check cannot do.
// B/op shows that memory does not grow with the object.
func BenchmarkObjectGet(b *testing.B) {
	for _, bc := range []struct {
		name       string
		size, n    int64
		rangeStart int64
	}{
		{"whole_256MiB", 256 << 20, 256 << 20, -1},
		{"range_1MiB_of_1GiB", 1 << 30, 1 << 20, 600<<20 + 12345},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, "")
			addr := e.storeStream(&patternReader{n: bc.size}, "ok")
			servers := []struct {
				name string
				url  string
			}{
				{"verified", e.srv.URL},
				{"baseline_unverified", e.unverifiedServer(b, false).URL},
			}
			if bc.rangeStart < 0 {
				servers = append(servers, struct{ name, url string }{"baseline_sendfile", e.unverifiedServer(b, true).URL})
			}
			for _, sc := range servers {
				b.Run(sc.name, func(b *testing.B) {
					url := sc.url + "/v1/objects/" + addr.String()
					b.SetBytes(bc.n)
					b.ReportAllocs()
					for b.Loop() {
						req, _ := http.NewRequest("GET", url, nil)
						want := http.StatusOK
						if bc.rangeStart >= 0 {
							req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", bc.rangeStart, bc.rangeStart+bc.n-1))
							want = http.StatusPartialContent
						}
						resp, err := http.DefaultClient.Do(req)
						if err != nil {
							b.Fatal(err)
						}
						n, err := io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if err != nil || n != bc.n || resp.StatusCode != want {
							b.Fatalf("status %d, %d bytes, %v", resp.StatusCode, n, err)
						}
					}
				})
			}
		})
	}
}

// storeStream ingests r (without holding it in memory) and records its
// location in state.
func (e *env) storeStream(r io.Reader, state string) digest.Address {
	e.t.Helper()
	res, err := e.dp.Ingest(context.Background(), r, dataplane.IngestHints{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		e.t.Fatal(err)
	}
	b3, s256 := res.Digests.BLAKE3, res.Digests.SHA256
	e.exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256,
			size_bytes, state, stored_at) VALUES ($1, $2, 'blake3', $3, $4, $5, $6, $7)`,
		res.Address.String(), res.Receipt.BackendID, b3[:], s256[:], res.Digests.Size, state, t0)
	return res.Address
}

// unverifiedServer is the API over the same database whose object server
// hands out the backend's bytes unchecked: the baseline of the cost of
// proving them. With sendfile the bytes may go from the file to the socket
// in the kernel.
func (e *env) unverifiedServer(b *testing.B, sendfile bool) *httptest.Server {
	s, err := api.New(e.pool, rawServer{b: e.local, dp: e.dp, sendfile: sendfile}, api.Options{Logger: zerolog.Nop(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	b.Cleanup(srv.Close)
	return srv
}

type rawServer struct {
	b        storage.Backend
	dp       *dataplane.DataPlane
	sendfile bool
}

func (r rawServer) Serve(ctx context.Context, _ string, addr digest.Address, rng *storage.Range, exp dataplane.Expected) (dataplane.Object, error) {
	rc, err := r.b.Get(ctx, addr, rng)
	if err != nil {
		return nil, err
	}
	off, n := int64(0), exp.Size
	if rng != nil {
		off, n, _ = rng.Resolve(exp.Size)
	}
	return &rawObject{ReadCloser: rc, size: exp.Size, off: off, n: n, sendfile: r.sendfile}, nil
}

func (r rawServer) ServeAny(ctx context.Context, backendIDs []string, addr digest.Address, rng *storage.Range, exp dataplane.Expected) (dataplane.Object, error) {
	return r.Serve(ctx, backendIDs[0], addr, rng, exp)
}

func (r rawServer) Proof(ctx context.Context, backendID string, addr digest.Address, rng *storage.Range, exp dataplane.Expected) (io.ReadCloser, int64, error) {
	return r.dp.Proof(ctx, backendID, addr, rng, exp)
}

func (r rawServer) Corrupt(backendID string, addr digest.Address) *dataplane.CorruptError {
	return r.dp.Corrupt(backendID, addr)
}

// rawObject streams the backend's bytes unchecked: through a 1 MiB
// buffer like a proven read, or (sendfile) as a limited reader of the
// file, which the HTTP server hands to sendfile.
type rawObject struct {
	io.ReadCloser
	size, off, n int64
	sendfile     bool
}

func (o *rawObject) WriteTo(w io.Writer) (int64, error) {
	if o.sendfile {
		return io.Copy(w, io.LimitReader(o.ReadCloser, o.n))
	}
	return io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{io.LimitReader(o.ReadCloser, o.n)}, make([]byte, 1<<20))
}
func (o *rawObject) Size() int64   { return o.size }
func (o *rawObject) Offset() int64 { return o.off }
func (o *rawObject) Length() int64 { return o.n }

// patternReader yields n deterministic bytes without holding them.
type patternReader struct{ off, n int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		x := p.off + int64(i)
		b[i] = byte(x*7 + x/251)
	}
	p.off += int64(len(b))
	return len(b), nil
}
