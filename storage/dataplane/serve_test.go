package dataplane_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// recorder is a CorruptionReporter that keeps what it was told.
type recorder struct {
	mu  sync.Mutex
	got []*dataplane.CorruptError
}

func (r *recorder) ReportCorruption(c *dataplane.CorruptError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, c)
}

func (r *recorder) reports() []*dataplane.CorruptError {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*dataplane.CorruptError(nil), r.got...)
}

// flipByte damages one byte of the object file at path.
func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	corrupt(t, path, func(p []byte) []byte { p[at] ^= 0x55; return p })
}

// serveAll reads [off, off+n) (whole when rng is nil) and returns what the
// reader released and the error that stopped it.
func serveAll(t *testing.T, dp *dataplane.DataPlane, addr digest.Address, rng *storage.Range, exp dataplane.Expected) ([]byte, error) {
	t.Helper()
	o, err := dp.Serve(t.Context(), "", addr, rng, exp)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	var out bytes.Buffer
	_, err = io.Copy(&out, o)
	return out.Bytes(), err
}

// TestServeStopsBeforeDamage flips a byte in the middle and in the last
// chunk group: a whole read releases exactly the groups before the bad
// one and then fails; the object is remembered and reported at once, and
// every later read, also of a clean range, fails without reading.
func TestServeStopsBeforeDamage(t *testing.T) {
	t.Parallel()
	const size = 40*blaketree.GroupSize + 1000
	for _, at := range []int64{size / 2, size - 10} {
		rec := &recorder{}
		f := newFixture(t, dataplane.WithCorruptionReporter(rec))
		p := randomBytes(t, size)
		res := f.ingest(t, p, noClaims)
		exp := dataplane.Expected{Size: size}
		flipByte(t, f.path(res.Address), at)
		group := at / blaketree.GroupSize * blaketree.GroupSize

		got, err := serveAll(t, f.dp, res.Address, nil, exp)
		var ce *dataplane.CorruptError
		if !errors.As(err, &ce) || !errors.Is(err, dataplane.ErrCorrupt) {
			t.Fatalf("damage at %d: whole read: err = %v, want a *CorruptError", at, err)
		}
		if ce.Offset != group || ce.Address != res.Address || ce.BackendID != "local" {
			t.Fatalf("damage at %d: %+v, want the group at %d", at, ce, group)
		}
		if !bytes.Equal(got, p[:group]) {
			t.Fatalf("damage at %d: released %d bytes, want exactly the %d before the bad group", at, len(got), group)
		}
		if r := rec.reports(); len(r) != 1 || r[0].Offset != group {
			t.Fatalf("damage at %d: reports %+v, want one for the group at %d", at, r, group)
		}
		if f.dp.Corrupt("", res.Address) == nil {
			t.Fatal("the data plane does not remember the corrupt object")
		}
		// Later reads fail before reading anything: the damaged range, a
		// clean range, the whole object.
		for _, rng := range []*storage.Range{{Start: at, End: at}, {Start: 0, End: 99}, nil} {
			if _, err := f.dp.Serve(t.Context(), "", res.Address, rng, exp); !errors.As(err, &ce) {
				t.Fatalf("damage at %d: later read %v: err = %v, want the remembered *CorruptError", at, rng, err)
			}
		}
		if len(rec.reports()) != 1 {
			t.Fatalf("reported %d times; one detection is one report", len(rec.reports()))
		}
		// The scrub's verdict agrees and keeps the mark.
		v, err := f.dp.Verify(t.Context(), "", res.Address, exp)
		if err != nil || v.Verified || v.Tree != dataplane.TreeUnchecked {
			t.Fatalf("Verify of the damaged object: %+v, %v", v, err)
		}
		if f.dp.Corrupt("", res.Address) == nil {
			t.Fatal("a failed Verify cleared the mark")
		}
	}
}

// TestServeRangeOverDamageFailsBeforeReturning checks that a range over a
// damaged group fails in Serve itself (before a caller answers), with no
// byte released, and that a range elsewhere is served while nothing has
// noticed the damage yet.
func TestServeRangeOverDamageFailsBeforeReturning(t *testing.T) {
	t.Parallel()
	const size = 20 * blaketree.GroupSize
	rec := &recorder{}
	f := newFixture(t, dataplane.WithCorruptionReporter(rec))
	p := randomBytes(t, size)
	res := f.ingest(t, p, noClaims)
	exp := dataplane.Expected{Size: size}
	at := int64(13*blaketree.GroupSize + 77)
	flipByte(t, f.path(res.Address), at)

	clean := &storage.Range{Start: 100, End: 3 * blaketree.GroupSize}
	if got, err := serveAll(t, f.dp, res.Address, clean, exp); err != nil || !bytes.Equal(got, p[100:3*blaketree.GroupSize+1]) {
		t.Fatalf("clean range before any detection: %v", err)
	}
	_, err := f.dp.Serve(t.Context(), "", res.Address, &storage.Range{Start: at - 5, End: at + 5}, exp)
	var ce *dataplane.CorruptError
	if !errors.As(err, &ce) || ce.Offset != 13*blaketree.GroupSize {
		t.Fatalf("Serve of a range over the damage: %v, want a *CorruptError at the group", err)
	}
	if len(rec.reports()) != 1 {
		t.Fatalf("%d reports, want 1", len(rec.reports()))
	}
	if _, err := f.dp.Serve(t.Context(), "", res.Address, clean, exp); !errors.As(err, &ce) {
		t.Fatalf("clean range after the detection: %v, want the *CorruptError (a corrupt object is never served)", err)
	}
}

// TestServeDamagedTree damages the stored tree, not the bytes: the read
// fails (the data plane cannot tell which is bad), and Verify, which reads
// the bytes against both digests, finds them good, rewrites the tree and
// lifts the mark.
func TestServeDamagedTree(t *testing.T) {
	t.Parallel()
	const size = 9*blaketree.GroupSize + 3
	rec := &recorder{}
	f := newFixture(t, dataplane.WithCorruptionReporter(rec))
	p := randomBytes(t, size)
	res := f.ingest(t, p, noClaims)
	exp := dataplane.Expected{Size: size}
	treePath := f.path(res.Address) + ".bao"
	flipByte(t, treePath, blaketree.HeaderSize+3)

	_, err := serveAll(t, f.dp, res.Address, nil, exp)
	var ce *dataplane.CorruptError
	if !errors.As(err, &ce) || !ce.Tree {
		t.Fatalf("read with a damaged tree: %v, want a *CorruptError of a tree node", err)
	}
	v, err := f.dp.Verify(t.Context(), "", res.Address, exp)
	if err != nil || !v.Verified || v.Tree != dataplane.TreeRebuilt || v.TreeDetail == "" {
		t.Fatalf("Verify: %+v, %v; want verified bytes and a rebuilt tree", v, err)
	}
	if f.dp.Corrupt("", res.Address) != nil {
		t.Fatal("Verify proved the bytes good but the mark stayed")
	}
	if got, err := serveAll(t, f.dp, res.Address, nil, exp); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read after the tree was rebuilt: %v", err)
	}
	if v, err := f.dp.Verify(t.Context(), "", res.Address, exp); err != nil || v.Tree != dataplane.TreeOK {
		t.Fatalf("second Verify: %+v, %v; want the tree ok", v, err)
	}
}

// commitLegacy stores p as an object stored before trees existed: bytes
// only.
func commitLegacy(t *testing.T, f fixture, p []byte, addr digest.Address) {
	t.Helper()
	w, err := f.local.Create(t.Context(), storage.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if _, err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(t.Context(), addr, nil, storage.CommitKeep); err != nil {
		t.Fatal(err)
	}
}

// TestLegacyObjectGetsItsTree: a range read of an object without a tree
// first proves the whole object against its address and stores its tree;
// the scrub builds it too; a damaged legacy object is refused and reported.
func TestLegacyObjectGetsItsTree(t *testing.T) {
	t.Parallel()
	const size = 6*blaketree.GroupSize + 5
	f := newFixture(t)
	p := randomBytes(t, size)
	d, err := digest.Compute(bytes.NewReader(p), nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := d.Address(digest.BLAKE3)
	commitLegacy(t, f, p, addr)
	if _, err := f.local.Tree(t.Context(), addr); !errors.Is(err, storage.ErrNoTree) {
		t.Fatalf("legacy object has a tree: %v", err)
	}
	got, err := serveAll(t, f.dp, addr, &storage.Range{Start: 2*blaketree.GroupSize + 1, End: 3 * blaketree.GroupSize}, dataplane.Expected{Size: size})
	if err != nil || !bytes.Equal(got, p[2*blaketree.GroupSize+1:3*blaketree.GroupSize+1]) {
		t.Fatalf("range of a legacy object: %v", err)
	}
	if _, err := f.local.Tree(t.Context(), addr); err != nil {
		t.Fatalf("the read did not store the legacy object's tree: %v", err)
	}

	// The scrub builds the tree of another legacy object (sha256 address).
	q := randomBytes(t, size)
	dq, _ := digest.Compute(bytes.NewReader(q), nil)
	qaddr := dq.Address(digest.SHA256)
	commitLegacy(t, f, q, qaddr)
	v, err := f.dp.Verify(t.Context(), "", qaddr, dataplane.Expected{BLAKE3: &dq.BLAKE3, SHA256: &dq.SHA256, Size: size})
	if err != nil || !v.Verified || v.Tree != dataplane.TreeBuilt {
		t.Fatalf("Verify of a legacy object: %+v, %v; want the tree built", v, err)
	}
	if got, err := serveAll(t, f.dp, qaddr, nil, dataplane.Expected{BLAKE3: &dq.BLAKE3, Size: size}); err != nil || !bytes.Equal(got, q) {
		t.Fatalf("whole read of the sha256 object after its tree was built: %v", err)
	}

	// A damaged legacy object has no tree to build: refused and reported.
	rec := &recorder{}
	f2 := newFixture(t, dataplane.WithCorruptionReporter(rec))
	commitLegacy(t, f2, p, addr)
	flipByte(t, f2.path(addr), size-1)
	_, err = f2.dp.Serve(t.Context(), "", addr, &storage.Range{Start: 0, End: 9}, dataplane.Expected{Size: size})
	if !errors.Is(err, dataplane.ErrCorrupt) || len(rec.reports()) != 1 {
		t.Fatalf("range of a damaged legacy object: %v (%d reports), want ErrCorrupt, reported", err, len(rec.reports()))
	}
	if _, err := f2.local.Tree(t.Context(), addr); !errors.Is(err, storage.ErrNoTree) {
		t.Fatalf("a tree was stored for damaged bytes: %v", err)
	}
}

// TestServeTruncatedObject: a stored object shorter than its recorded size
// is corrupt, also for a range past its new end.
func TestServeTruncatedObject(t *testing.T) {
	t.Parallel()
	const size = 5 * blaketree.GroupSize
	f := newFixture(t)
	p := randomBytes(t, size)
	res := f.ingest(t, p, noClaims)
	corrupt(t, f.path(res.Address), func(b []byte) []byte { return b[:3*blaketree.GroupSize+7] })
	_, err := f.dp.Serve(t.Context(), "", res.Address, &storage.Range{Start: size - 10, End: -1}, dataplane.Expected{Size: size})
	if !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("range past the end of a truncated object: %v, want ErrCorrupt", err)
	}
}

// TestServeSHA256WholeChecksAddress: a sha256 address is proven through
// the recorded BLAKE3; a recorded BLAKE3 that does not belong to the
// bytes is caught.
func TestServeSHA256WholeChecksAddress(t *testing.T) {
	t.Parallel()
	const size = 3*blaketree.GroupSize + 1
	f := newFixture(t)
	p := randomBytes(t, size)
	res := f.ingest(t, p, dataplane.IngestHints{Primary: digest.SHA256, ExpectSize: size})
	b3 := res.Digests.BLAKE3
	if got, err := serveAll(t, f.dp, res.Address, nil, dataplane.Expected{BLAKE3: &b3, Size: size}); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("whole read: %v", err)
	}
	wrong := b3
	wrong[0] ^= 1
	if _, err := serveAll(t, f.dp, res.Address, &storage.Range{Start: 0, End: 0}, dataplane.Expected{BLAKE3: &wrong, Size: size}); !errors.Is(err, dataplane.ErrCorrupt) {
		t.Fatalf("read with a wrong recorded BLAKE3: %v, want ErrCorrupt", err)
	}
}

// TestProof checks the proof the API serves to clients: with the range's
// groups it proves the range, and it is the outboard for the whole object.
func TestProof(t *testing.T) {
	t.Parallel()
	const size = 11*blaketree.GroupSize + 9
	f := newFixture(t)
	p := randomBytes(t, size)
	res := f.ingest(t, p, noClaims)
	exp := dataplane.Expected{Size: size}
	for _, rng := range []*storage.Range{nil, {Start: 5, End: 5}, {Start: 4*blaketree.GroupSize - 1, End: 6 * blaketree.GroupSize}} {
		off, n := int64(0), int64(size)
		if rng != nil {
			off, n, _ = rng.Resolve(size)
		}
		pr, psize, err := f.dp.Proof(t.Context(), "", res.Address, rng, exp)
		if err != nil {
			t.Fatal(err)
		}
		proof, err := io.ReadAll(pr)
		pr.Close()
		if err != nil || int64(len(proof)) != psize {
			t.Fatalf("proof %v: %d bytes (announced %d): %v", rng, len(proof), psize, err)
		}
		start, end := blaketree.AlignedRange(size, off, n)
		r := blaketree.NewReader(bytes.NewReader(p[start:end]), bytes.NewReader(proof), res.Address.Sum(), size, off, n)
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, p[off:off+n]) {
			t.Fatalf("proof %v does not prove the range: %v", rng, err)
		}
	}
	// A one-group object's proof is the header alone.
	small := f.ingest(t, []byte("small"), noClaims)
	pr, psize, err := f.dp.Proof(t.Context(), "", small.Address, nil, dataplane.Expected{Size: 5})
	if err != nil || psize != blaketree.HeaderSize {
		t.Fatalf("proof of a small object: %d bytes, %v", psize, err)
	}
	pr.Close()
	if _, err := os.Stat(f.path(small.Address) + ".bao"); !os.IsNotExist(err) {
		t.Fatalf("a one-group object has a tree file: %v", err)
	}
}
