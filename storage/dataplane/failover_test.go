package dataplane_test

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

// TestServeAnyFailsOverMidRead: with the first copy damaged in the middle
// of a range, ServeAny releases the proven bytes before the damage from
// the first copy and the rest from the second, so the reader gets exactly
// the range; with both copies damaged it fails, and a copy the first
// backend lost is served from the second.
func TestServeAnyFailsOverMidRead(t *testing.T) {
	t.Parallel()
	const size = 40*blaketree.GroupSize + 123
	f := newFixture(t)
	mirror, err := local.Open(t.TempDir(), local.WithID("mirror"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mirror.Close() })
	reg := storage.NewRegistry()
	for _, b := range []storage.Backend{f.local, mirror} {
		if err := reg.Register(b); err != nil {
			t.Fatal(err)
		}
	}
	dp, err := dataplane.New(reg, "local")
	if err != nil {
		t.Fatal(err)
	}
	p := randomBytes(t, size)
	res, err := dp.Ingest(t.Context(), bytes.NewReader(p), noClaims)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dp.Ingest(t.Context(), bytes.NewReader(p), dataplane.IngestHints{BackendID: "mirror", ExpectSize: storage.NoSizeClaim}); err != nil {
		t.Fatal(err)
	}
	exp := dataplane.Expected{Size: size}
	both := []string{"local", "mirror"}
	flipByte(t, f.path(res.Address), 30*blaketree.GroupSize+9)

	rng := &storage.Range{Start: 3*blaketree.GroupSize + 11, End: 35*blaketree.GroupSize - 2}
	o, err := dp.ServeAny(t.Context(), both, res.Address, rng, exp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(o)
	o.Close()
	if err != nil || !bytes.Equal(got, p[rng.Start:rng.End+1]) {
		t.Fatalf("range through failover: %d bytes (want %d), equal %v, %v", len(got), rng.End-rng.Start+1, bytes.Equal(got, p[rng.Start:rng.End+1]), err)
	}
	if o.Offset() != rng.Start || o.Length() != rng.End-rng.Start+1 || o.Size() != size {
		t.Fatalf("offset %d length %d size %d", o.Offset(), o.Length(), o.Size())
	}
	if dp.Corrupt("local", res.Address) == nil {
		t.Fatal("the damaged copy is not remembered corrupt")
	}

	// The first copy is now refused at once; the whole object comes from
	// the second.
	if got, err := readAny(t, dp, both, res.Address, exp); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("whole read: %d bytes, %v", len(got), err)
	}
	// A lost first copy: served from the second.
	if _, err := f.local.Delete(t.Context(), res.Address); err != nil {
		t.Fatal(err)
	}
	if got, err := readAny(t, dp, both, res.Address, exp); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read with the first copy lost: %d bytes, %v", len(got), err)
	}
	// Both bad: no copy serves, and the reader is told.
	flipByte(t, filepath.Join(mirror.Root(), filepath.FromSlash(local.ObjectPath(res.Address))), 2*blaketree.GroupSize)
	if _, err := readAny(t, dp, both, res.Address, exp); !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("read with no good copy: %v, want ErrCorrupt", err)
	}
}

func readAny(t *testing.T, dp *dataplane.DataPlane, ids []string, addr digest.Address, exp dataplane.Expected) ([]byte, error) {
	t.Helper()
	o, err := dp.ServeAny(t.Context(), ids, addr, nil, exp)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return io.ReadAll(o)
}
