package api_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/api"
	"github.com/artifactstore/artifactstore/internal/pgtest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// TestReadFailsOverToAnotherCopy: an object with copies on two backends,
// the best one damaged, is served whole and proven from the other; the
// client sees a plain 200 with the right bytes.
func TestReadFailsOverToAnotherCopy(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewDB(t)
	reg := storage.NewRegistry()
	var bs []*local.Backend
	for _, id := range []string{"a-local", "b-mirror"} {
		b, err := local.Open(t.TempDir(), local.WithID(id))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		if err := reg.Register(b); err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	dp, err := dataplane.New(reg, "a-local")
	if err != nil {
		t.Fatal(err)
	}
	s, err := api.New(pool, dp, api.Options{Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	e := &env{t: t, pool: pool, dp: dp, local: bs[0], srv: srv}

	data := pattern(3 << 20)
	res := e.storeFull(data, "ok")
	if _, err := dp.Ingest(context.Background(), bytes.NewReader(data), dataplane.IngestHints{BackendID: "b-mirror", ExpectSize: storage.NoSizeClaim}); err != nil {
		t.Fatal(err)
	}
	e.exec(`INSERT INTO storage_locations (content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, state, stored_at)
		SELECT content_address, 'b-mirror', digest_algorithm, digest_blake3, digest_sha256, size_bytes, 'ok', stored_at
		FROM storage_locations WHERE content_address = $1`, res.Address.String())
	damage(t, filepath.Join(bs[0].Root(), filepath.FromSlash(local.ObjectPath(res.Address))))

	r := e.do("GET", "/v1/objects/"+res.Address.String())
	r.wantStatus(t, http.StatusOK)
	if !bytes.Equal(r.body, data) {
		t.Fatalf("body: %d bytes, equal %v", len(r.body), bytes.Equal(r.body, data))
	}
	if dp.Corrupt("a-local", res.Address) == nil {
		t.Fatal("the damaged copy was not found (and so not recorded)")
	}
}
