// Package storagetest is the conformance suite every storage.Backend must
// pass. A backend's own tests call Run with a constructor that returns a
// fresh, empty backend for each subtest. Objects go in through
// storage.Putter, as in production, so the suite checks the backend's part
// of every guarantee: bytes and trees stored, found, proven and removed.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"lukechampine.com/blake3"
	"lukechampine.com/blake3/bao"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
)

// Run runs the suite. newBackend must return a new, empty backend and
// arrange its cleanup with t.Cleanup; subtests run in parallel.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, b storage.Backend)
	}{
		{"PutGetRoundTrip", testPutGetRoundTrip},
		{"SHA256Primary", testSHA256Primary},
		{"EmptyObject", testEmptyObject},
		{"LargeObject", testLargeObject},
		{"DedupRePut", testDedupRePut},
		{"CorrectClaims", testCorrectClaims},
		{"WrongDigestClaimLeavesNothing", testWrongDigestClaim},
		{"WrongSizeClaimLeavesNothing", testWrongSizeClaim},
		{"MaxSize", testMaxSize},
		{"Ranges", testRanges},
		{"Head", testHead},
		{"Delete", testDelete},
		{"Missing", testMissing},
		{"ZeroAddress", testZeroAddress},
		{"ConcurrentSamePut", testConcurrentSamePut},
		{"ContextCanceledBeforePut", testContextCanceledBefore},
		{"ContextCanceledDuringPut", testContextCanceledDuring},
		{"ReaderError", testReaderError},
		{"Health", testHealth},
		{"Walk", testWalk},
		{"TreeStored", testTreeStored},
		{"TreeProvesReads", testTreeProvesReads},
		{"DamagedTreeDetected", testDamagedTree},
		{"LegacyObjectGetsTree", testLegacyObject},
		{"DeleteRemovesTree", testDeleteRemovesTree},
		{"AbortLeavesNothing", testAbort},
		{"ReplaceCommit", testReplaceCommit},
		{"ReplaceCommitOfAbsent", testReplaceAbsent},
		{"RePutRepairsDamage", testRePutRepairs},
		{"RePutRepairsRecordedDamage", testRePutRecordedDamage},
		{"RePutRestoresLostCopy", testRePutLost},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t)
			if b == nil {
				t.Fatal("newBackend returned nil")
			}
			tc.fn(t, b)
		})
	}
}

// noClaims are PutOptions without claims or limits.
var noClaims = storage.PutOptions{ExpectSize: storage.NoSizeClaim}

// putter is the production write path; one per call keeps subtests
// independent.
func putter() *storage.Putter { return storage.NewPutter() }

func digestsOf(p []byte) digest.Digests {
	return digest.Digests{BLAKE3: blake3.Sum256(p), SHA256: sha256.Sum256(p), Size: int64(len(p))}
}

// pattern returns n deterministic bytes that differ with seed.
func pattern(seed string, n int) []byte {
	out := make([]byte, n)
	key := []byte(fmt.Sprintf("%-32.32s", seed))
	if _, err := io.ReadFull(blake3.New(32, key).XOF(), out); err != nil {
		panic(err)
	}
	return out
}

func put(t *testing.T, b storage.Backend, p []byte, opts storage.PutOptions) storage.Receipt {
	t.Helper()
	rc, err := putter().Put(t.Context(), b, bytes.NewReader(p), opts)
	if err != nil {
		t.Fatalf("Put(%d bytes): %v", len(p), err)
	}
	return rc
}

func readAll(t *testing.T, b storage.Backend, addr digest.Address, rng *storage.Range) []byte {
	t.Helper()
	rc, err := b.Get(t.Context(), addr, rng)
	if err != nil {
		t.Fatalf("Get(%s, %v): %v", addr, rng, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", addr, err)
	}
	return got
}

// requireMissing checks that addr is not stored and that the backend holds
// exactly want objects.
func requireMissing(t *testing.T, b storage.Backend, addr digest.Address, want int) {
	t.Helper()
	if _, err := b.Head(t.Context(), addr); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Head(%s) after a failed put: err = %v, want ErrNotFound (nothing may be left behind)", addr, err)
	}
	requireCount(t, b, want)
}

// requireCount checks the number of stored objects when b is a Lister.
func requireCount(t *testing.T, b storage.Backend, want int) {
	t.Helper()
	l, ok := b.(storage.Lister)
	if !ok {
		return
	}
	n := 0
	if err := l.Walk(t.Context(), func(storage.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	if n != want {
		t.Fatalf("Walk found %d objects, want %d", n, want)
	}
}

func checkReceipt(t *testing.T, b storage.Backend, rc storage.Receipt, p []byte, primary digest.Algorithm, dedup bool) {
	t.Helper()
	want := digestsOf(p)
	if rc.Digests != want {
		t.Errorf("receipt digests = %+v, want %+v", rc.Digests, want)
	}
	if rc.Address != want.Address(primary) {
		t.Errorf("receipt address = %s, want %s", rc.Address, want.Address(primary))
	}
	if rc.BackendID != b.ID() {
		t.Errorf("receipt backend id = %q, want %q", rc.BackendID, b.ID())
	}
	if rc.StoredAt.IsZero() {
		t.Error("receipt StoredAt is zero")
	}
	if rc.Deduplicated != dedup {
		t.Errorf("receipt Deduplicated = %v, want %v", rc.Deduplicated, dedup)
	}
}

func testPutGetRoundTrip(t *testing.T, b storage.Backend) {
	p := pattern("roundtrip", 300_000)
	rc := put(t, b, p, storage.PutOptions{ExpectSize: storage.NoSizeClaim})
	checkReceipt(t, b, rc, p, digest.BLAKE3, false)
	if got := readAll(t, b, rc.Address, nil); !bytes.Equal(got, p) {
		t.Fatalf("Get returned %d bytes that differ from the %d put", len(got), len(p))
	}
	// The object is found under its address, whatever the backend's layout:
	// also after a fresh lookup of the address from its string.
	again := digest.MustParse(rc.Address.String())
	if got := readAll(t, b, again, nil); !bytes.Equal(got, p) {
		t.Fatal("Get by re-parsed address differs")
	}
	requireCount(t, b, 1)
}

func testSHA256Primary(t *testing.T, b storage.Backend) {
	p := pattern("sha256", 5000)
	rc := put(t, b, p, storage.PutOptions{Primary: digest.SHA256, ExpectSize: storage.NoSizeClaim})
	checkReceipt(t, b, rc, p, digest.SHA256, false)
	if got := readAll(t, b, rc.Address, nil); !bytes.Equal(got, p) {
		t.Fatal("Get under the sha256 address differs")
	}
	if _, err := b.Head(t.Context(), rc.Digests.Address(digest.BLAKE3)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Head of the blake3 address of an object put under sha256: err = %v, want ErrNotFound", err)
	}
}

func testEmptyObject(t *testing.T, b storage.Backend) {
	rc := put(t, b, nil, storage.PutOptions{ExpectSize: 0})
	checkReceipt(t, b, rc, nil, digest.BLAKE3, false)
	info, err := b.Head(t.Context(), rc.Address)
	if err != nil || info.Size != 0 {
		t.Fatalf("Head(empty) = %+v, %v; want size 0", info, err)
	}
	if got := readAll(t, b, rc.Address, nil); len(got) != 0 {
		t.Fatalf("Get(empty) returned %d bytes", len(got))
	}
	if _, err := b.Get(t.Context(), rc.Address, &storage.Range{Start: 0, End: -1}); !errors.Is(err, storage.ErrInvalidRange) {
		t.Fatalf("range on the empty object: err = %v, want ErrInvalidRange", err)
	}
}

func testLargeObject(t *testing.T, b storage.Backend) {
	// Several chunks of any plausible buffer size, not a multiple of one.
	p := pattern("large", 5<<20+17)
	rc := put(t, b, p, storage.PutOptions{ExpectSize: int64(len(p))})
	checkReceipt(t, b, rc, p, digest.BLAKE3, false)
	if got := readAll(t, b, rc.Address, nil); !bytes.Equal(got, p) {
		t.Fatal("large object differs after the round trip")
	}
}

func testDedupRePut(t *testing.T, b storage.Backend) {
	p := pattern("dedup", 70_000)
	first := put(t, b, p, noClaims)
	r := &countingReader{r: bytes.NewReader(p)}
	second, err := putter().Put(t.Context(), b, r, noClaims)
	if err != nil {
		t.Fatalf("re-put: %v", err)
	}
	checkReceipt(t, b, second, p, digest.BLAKE3, true)
	if second.Address != first.Address {
		t.Fatalf("re-put address %s != first %s", second.Address, first.Address)
	}
	if r.n != int64(len(p)) {
		t.Fatalf("re-put read %d of %d bytes; the stream must be drained", r.n, len(p))
	}
	if !second.StoredAt.Equal(first.StoredAt) {
		t.Errorf("re-put StoredAt %v, want the first put's %v (the bytes stay untouched)", second.StoredAt, first.StoredAt)
	}
	info, err := b.Head(t.Context(), first.Address)
	if err != nil || !info.StoredAt.Equal(first.StoredAt) {
		t.Errorf("Head after re-put = %+v, %v; want StoredAt %v", info, err, first.StoredAt)
	}
	// The same content under the other primary is a second object.
	third := put(t, b, p, storage.PutOptions{Primary: digest.SHA256, ExpectSize: storage.NoSizeClaim})
	if third.Deduplicated {
		t.Error("put under sha256 reported Deduplicated although only the blake3 object existed")
	}
	requireCount(t, b, 2)
}

func testCorrectClaims(t *testing.T, b storage.Backend) {
	p := pattern("claims", 4096)
	d := digestsOf(p)
	rc := put(t, b, p, storage.PutOptions{
		Expect:     []digest.Address{d.Address(digest.SHA256), d.Address(digest.BLAKE3)},
		ExpectSize: int64(len(p)),
		MaxSize:    int64(len(p)),
	})
	checkReceipt(t, b, rc, p, digest.BLAKE3, false)
}

func testWrongDigestClaim(t *testing.T, b storage.Backend) {
	p := pattern("wrong-digest", 10_000)
	d := digestsOf(p)
	other := digestsOf([]byte("something else"))
	for _, claim := range []digest.Address{other.Address(digest.BLAKE3), other.Address(digest.SHA256)} {
		_, err := putter().Put(t.Context(), b, bytes.NewReader(p), storage.PutOptions{
			Expect:     []digest.Address{d.Address(digest.SHA256), claim},
			ExpectSize: storage.NoSizeClaim,
		})
		if !errors.Is(err, storage.ErrDigestMismatch) {
			t.Fatalf("claim %s: err = %v, want ErrDigestMismatch", claim, err)
		}
		if errors.Is(err, storage.ErrSizeMismatch) {
			t.Errorf("claim %s: err also says size mismatch: %v", claim, err)
		}
		var me *storage.MismatchError
		if !errors.As(err, &me) {
			t.Fatalf("err %T is not a *storage.MismatchError", err)
		}
		if me.Actual != d {
			t.Errorf("MismatchError.Actual = %+v, want %+v", me.Actual, d)
		}
		if len(me.WrongDigests) != 1 || me.WrongDigests[0] != claim {
			t.Errorf("MismatchError.WrongDigests = %v, want [%s]", me.WrongDigests, claim)
		}
		requireMissing(t, b, d.Address(digest.BLAKE3), 0)
		requireMissing(t, b, claim, 0)
	}
}

func testWrongSizeClaim(t *testing.T, b storage.Backend) {
	p := pattern("wrong-size", 10_000)
	d := digestsOf(p)
	for _, claim := range []int64{0, int64(len(p)) - 1, int64(len(p)) + 1} {
		_, err := putter().Put(t.Context(), b, bytes.NewReader(p), storage.PutOptions{ExpectSize: claim})
		if !errors.Is(err, storage.ErrSizeMismatch) {
			t.Fatalf("size claim %d: err = %v, want ErrSizeMismatch", claim, err)
		}
		var me *storage.MismatchError
		if !errors.As(err, &me) || me.ClaimedSize != claim || me.Actual.Size != int64(len(p)) {
			t.Fatalf("size claim %d: MismatchError = %+v", claim, me)
		}
		requireMissing(t, b, d.Address(digest.BLAKE3), 0)
	}
}

func testMaxSize(t *testing.T, b storage.Backend) {
	p := pattern("maxsize", 3<<20)
	// Exactly at the limit is fine.
	rc := put(t, b, p[:1000], storage.PutOptions{ExpectSize: storage.NoSizeClaim, MaxSize: 1000})
	checkReceipt(t, b, rc, p[:1000], digest.BLAKE3, false)

	r := &countingReader{r: bytes.NewReader(p)}
	_, err := putter().Put(t.Context(), b, r, storage.PutOptions{ExpectSize: storage.NoSizeClaim, MaxSize: 1001})
	if !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("put of %d bytes with MaxSize 1001: err = %v, want ErrTooLarge", len(p), err)
	}
	if r.n > 1002 {
		t.Errorf("put read %d bytes with MaxSize 1001; it must stop after MaxSize+1", r.n)
	}
	requireMissing(t, b, digestsOf(p).Address(digest.BLAKE3), 1)
}

func testRanges(t *testing.T, b storage.Backend) {
	p := pattern("ranges", 10_000)
	addr := put(t, b, p, noClaims).Address
	n := int64(len(p))
	ok := []struct {
		name string
		rng  storage.Range
		want []byte
	}{
		{"first byte", storage.Range{Start: 0, End: 0}, p[:1]},
		{"last byte", storage.Range{Start: n - 1, End: n - 1}, p[n-1:]},
		{"last byte open", storage.Range{Start: n - 1, End: -1}, p[n-1:]},
		{"middle", storage.Range{Start: 1234, End: 5678}, p[1234:5679]},
		{"whole", storage.Range{Start: 0, End: n - 1}, p},
		{"open end", storage.Range{Start: 9000, End: -1}, p[9000:]},
		{"clamped end", storage.Range{Start: 9990, End: n + 500}, p[9990:]},
	}
	for _, c := range ok {
		rng := c.rng
		if got := readAll(t, b, addr, &rng); !bytes.Equal(got, c.want) {
			t.Errorf("%s %v: got %d bytes, want %d", c.name, c.rng, len(got), len(c.want))
		}
	}
	bad := []storage.Range{
		{Start: -1, End: 10},
		{Start: 10, End: 9},
		{Start: n, End: n + 10},
		{Start: n, End: -1},
		{Start: n + 100, End: -1},
	}
	for _, rng := range bad {
		rc, err := b.Get(t.Context(), addr, &rng)
		if !errors.Is(err, storage.ErrInvalidRange) {
			if rc != nil {
				rc.Close()
			}
			t.Errorf("range %v of %d bytes: err = %v, want ErrInvalidRange", rng, n, err)
		}
	}
}

func testHead(t *testing.T, b storage.Backend) {
	p := pattern("head", 12345)
	rc := put(t, b, p, noClaims)
	info, err := b.Head(t.Context(), rc.Address)
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	if info.Address != rc.Address || info.Size != int64(len(p)) || !info.StoredAt.Equal(rc.StoredAt) {
		t.Fatalf("Head = %+v; want address %s, size %d, stored at %v", info, rc.Address, len(p), rc.StoredAt)
	}
}

func testDelete(t *testing.T, b storage.Backend) {
	p := pattern("delete", 100)
	keep := put(t, b, pattern("keep", 100), noClaims)
	addr := put(t, b, p, noClaims).Address
	existed, err := b.Delete(t.Context(), addr)
	if err != nil || !existed {
		t.Fatalf("first Delete = %v, %v; want true, nil", existed, err)
	}
	existed, err = b.Delete(t.Context(), addr)
	if err != nil || existed {
		t.Fatalf("second Delete = %v, %v; want false, nil", existed, err)
	}
	if _, err := b.Head(t.Context(), addr); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Head after delete: %v, want ErrNotFound", err)
	}
	if _, err := b.Get(t.Context(), addr, nil); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get after delete: %v, want ErrNotFound", err)
	}
	if got := readAll(t, b, keep.Address, nil); len(got) != 100 {
		t.Fatal("deleting one object harmed another")
	}
	// Put again after delete stores it anew.
	if rc := put(t, b, p, noClaims); rc.Deduplicated {
		t.Fatal("put after delete reported Deduplicated")
	}
	requireCount(t, b, 2)
}

func testMissing(t *testing.T, b storage.Backend) {
	for _, alg := range digest.Algorithms {
		addr := digestsOf([]byte("never stored")).Address(alg)
		if _, err := b.Get(t.Context(), addr, nil); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Get(%s): %v, want ErrNotFound", addr, err)
		}
		if _, err := b.Get(t.Context(), addr, &storage.Range{Start: 0, End: 1}); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("ranged Get(%s): %v, want ErrNotFound", addr, err)
		}
		if _, err := b.Head(t.Context(), addr); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("Head(%s): %v, want ErrNotFound", addr, err)
		}
	}
}

func testZeroAddress(t *testing.T, b storage.Backend) {
	var zero digest.Address
	if _, err := b.Get(t.Context(), zero, nil); !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("Get(zero): %v, want digest.ErrInvalid", err)
	}
	if _, err := b.Head(t.Context(), zero); !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("Head(zero): %v, want digest.ErrInvalid", err)
	}
	if _, err := b.Delete(t.Context(), zero); !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("Delete(zero): %v, want digest.ErrInvalid", err)
	}
	if _, err := b.Tree(t.Context(), zero); !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("Tree(zero): %v, want digest.ErrInvalid", err)
	}
	if err := b.PutTree(t.Context(), zero, bytesTree(make([]byte, 8))); !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("PutTree(zero): %v, want digest.ErrInvalid", err)
	}
	_, err := putter().Put(t.Context(), b, bytes.NewReader([]byte("x")), storage.PutOptions{Expect: []digest.Address{zero}, ExpectSize: storage.NoSizeClaim})
	if !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("Put claiming the zero address: %v, want digest.ErrInvalid", err)
	}
	_, err = putter().Put(t.Context(), b, bytes.NewReader([]byte("x")), storage.PutOptions{Primary: 99, ExpectSize: storage.NoSizeClaim})
	if !errors.Is(err, digest.ErrInvalid) {
		t.Errorf("Put with an unknown primary: %v, want digest.ErrInvalid", err)
	}
	requireCount(t, b, 0)
}

func testConcurrentSamePut(t *testing.T, b storage.Backend) {
	p := pattern("concurrent", 200_000)
	const n = 8
	var wg sync.WaitGroup
	receipts := make([]storage.Receipt, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			receipts[i], errs[i] = putter().Put(context.Background(), b, bytes.NewReader(p), noClaims)
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent put %d: %v", i, errs[i])
		}
		if receipts[i].Address != receipts[0].Address {
			t.Fatalf("concurrent puts returned different addresses")
		}
	}
	if got := readAll(t, b, receipts[0].Address, nil); !bytes.Equal(got, p) {
		t.Fatal("object differs after concurrent puts")
	}
	requireCount(t, b, 1)
}

func testContextCanceledBefore(t *testing.T, b storage.Backend) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	p := pattern("canceled-before", 1000)
	_, err := putter().Put(ctx, b, bytes.NewReader(p), noClaims)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a canceled context: %v, want context.Canceled", err)
	}
	requireMissing(t, b, digestsOf(p).Address(digest.BLAKE3), 0)
}

func testContextCanceledDuring(t *testing.T, b storage.Backend) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// An endless stream that cancels the put after its first few MiB.
	r := &cancelingReader{cancelAfter: 3 << 20, cancel: cancel}
	_, err := putter().Put(ctx, b, r, noClaims)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put canceled mid-stream: %v, want context.Canceled", err)
	}
	if r.n > 64<<20 {
		t.Errorf("Put read %d bytes after cancel; it must stop between chunks", r.n)
	}
	requireCount(t, b, 0)
}

func testReaderError(t *testing.T, b storage.Backend) {
	boom := errors.New("producer went away")
	r := io.MultiReader(bytes.NewReader(pattern("reader-error", 100_000)), &errReader{err: boom})
	_, err := putter().Put(t.Context(), b, r, noClaims)
	if !errors.Is(err, boom) {
		t.Fatalf("Put from a failing reader: %v, want the reader's error wrapped", err)
	}
	requireCount(t, b, 0)
}

func testHealth(t *testing.T, b storage.Backend) {
	h := b.Health(t.Context())
	if !h.Healthy {
		t.Fatalf("fresh backend unhealthy: %s", h.Detail)
	}
}

func testWalk(t *testing.T, b storage.Backend) {
	l, ok := b.(storage.Lister)
	if !ok {
		t.Skip("backend does not implement storage.Lister")
	}
	want := map[digest.Address]int64{}
	for i := range 5 {
		p := pattern(fmt.Sprint("walk", i), 100*i)
		opts := noClaims
		if i%2 == 1 {
			opts.Primary = digest.SHA256
		}
		want[put(t, b, p, opts).Address] = int64(len(p))
	}
	got := map[digest.Address]int64{}
	err := l.Walk(t.Context(), func(o storage.ObjectInfo) error {
		if _, dup := got[o.Address]; dup {
			t.Errorf("Walk visited %s twice", o.Address)
		}
		got[o.Address] = o.Size
		return nil
	})
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Walk found %v, want %v", got, want)
	}
	stop := errors.New("stop")
	calls := 0
	if err := l.Walk(t.Context(), func(storage.ObjectInfo) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Walk with fn failing: err %v after %d calls; want stop after 1", err, calls)
	}
}

// treeObject is big enough for a tree with nodes (several chunk groups,
// the last one partial).
const treeObject = 7*blaketree.GroupSize + 1234

// bytesTree is a TreeSource over a byte slice.
type bytesTree []byte

func (b bytesTree) Size() int64 { return int64(len(b)) }

func (b bytesTree) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(b)
	return int64(n), err
}

// readTree returns the whole stored tree of addr.
func readTree(t *testing.T, b storage.Backend, addr digest.Address) []byte {
	t.Helper()
	tr, err := b.Tree(t.Context(), addr)
	if err != nil {
		t.Fatalf("Tree(%s): %v", addr, err)
	}
	defer tr.Close()
	got := make([]byte, tr.Size())
	if n, err := tr.ReadAt(got, 0); n != len(got) {
		t.Fatalf("read tree of %s: %d of %d bytes: %v", addr, n, len(got), err)
	}
	return got
}

// provenRead reads [off, off+n) of the object at addr the way the data
// plane serves it: the groups the range touches from Get, the nodes it
// needs from Tree, each group checked before its bytes are released.
func provenRead(t *testing.T, b storage.Backend, addr digest.Address, root [32]byte, size, off, n int64) ([]byte, error) {
	t.Helper()
	start, end := blaketree.AlignedRange(size, off, n)
	rc, err := b.Get(t.Context(), addr, &storage.Range{Start: start, End: end - 1})
	if err != nil {
		t.Fatalf("Get(%s, %d-%d): %v", addr, start, end-1, err)
	}
	defer rc.Close()
	tr, err := b.Tree(t.Context(), addr)
	if err != nil {
		t.Fatalf("Tree(%s): %v", addr, err)
	}
	defer tr.Close()
	r := blaketree.NewReader(rc, blaketree.Proof(tr, size, off, n), root, size, off, n)
	defer r.Close()
	return io.ReadAll(r)
}

func testTreeStored(t *testing.T, b storage.Backend) {
	p := pattern("tree", treeObject)
	for _, primary := range digest.Algorithms {
		rc := put(t, b, p, storage.PutOptions{Primary: primary, ExpectSize: storage.NoSizeClaim})
		want, _ := bao.EncodeBuf(p, blaketree.Group, true)
		if got := readTree(t, b, rc.Address); !bytes.Equal(got, want) {
			t.Fatalf("%s: stored tree (%d bytes) is not bao's outboard of the object (%d bytes)", primary, len(got), len(want))
		}
	}
	// One chunk group: the tree has no nodes and nothing is stored.
	small := put(t, b, pattern("tree-small", blaketree.GroupSize), noClaims)
	if _, err := b.Tree(t.Context(), small.Address); !errors.Is(err, storage.ErrNoTree) {
		t.Fatalf("Tree of a one-group object: %v, want ErrNoTree", err)
	}
	if _, err := b.Tree(t.Context(), digestsOf([]byte("never stored")).Address(digest.BLAKE3)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Tree of a missing object: %v, want ErrNotFound", err)
	}
	// A tree is not an object.
	requireCount(t, b, 3)
}

func testTreeProvesReads(t *testing.T, b storage.Backend) {
	p := pattern("tree-reads", treeObject)
	rc := put(t, b, p, noClaims)
	size := int64(len(p))
	for _, rg := range [][2]int64{{0, size}, {0, 1}, {size - 1, 1}, {blaketree.GroupSize - 5, 10}, {3*blaketree.GroupSize + 7, 2 * blaketree.GroupSize}} {
		got, err := provenRead(t, b, rc.Address, rc.Digests.BLAKE3, size, rg[0], rg[1])
		if err != nil {
			t.Fatalf("proven read %d+%d: %v", rg[0], rg[1], err)
		}
		if !bytes.Equal(got, p[rg[0]:rg[0]+rg[1]]) {
			t.Fatalf("proven read %d+%d returned other bytes", rg[0], rg[1])
		}
	}
}

func testDamagedTree(t *testing.T, b storage.Backend) {
	p := pattern("tree-damaged", treeObject)
	rc := put(t, b, p, noClaims)
	size := int64(len(p))
	good := readTree(t, b, rc.Address)
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0x10
	if err := b.PutTree(t.Context(), rc.Address, bytesTree(bad)); err != nil {
		t.Fatalf("PutTree: %v", err)
	}
	if got := readTree(t, b, rc.Address); !bytes.Equal(got, bad) {
		t.Fatal("PutTree did not replace the stored tree")
	}
	got, err := provenRead(t, b, rc.Address, rc.Digests.BLAKE3, size, 0, size)
	if !errors.Is(err, blaketree.ErrMismatch) {
		t.Fatalf("read with a damaged tree: err = %v, want blaketree.ErrMismatch", err)
	}
	if !bytes.Equal(got, p[:len(got)]) {
		t.Fatal("read with a damaged tree released bytes that are not the object's")
	}
	if err := b.PutTree(t.Context(), rc.Address, bytesTree(good)); err != nil {
		t.Fatalf("PutTree (repair): %v", err)
	}
	if got, err := provenRead(t, b, rc.Address, rc.Digests.BLAKE3, size, 0, size); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read after the tree was rewritten: %v", err)
	}
}

// testLegacyObject stores an object without its tree, as before trees
// existed: the tree can be added later, and a re-put adds it too.
func testLegacyObject(t *testing.T, b storage.Backend) {
	p := pattern("tree-legacy", treeObject)
	d := digestsOf(p)
	addr := d.Address(digest.BLAKE3)
	commitWithoutTree := func(p []byte, addr digest.Address) {
		w, err := b.Create(t.Context(), storage.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Abort()
		if _, err := w.Write(p); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Commit(t.Context(), addr, nil, storage.CommitKeep); err != nil {
			t.Fatalf("Commit without a tree: %v", err)
		}
	}
	commitWithoutTree(p, addr)
	if _, err := b.Tree(t.Context(), addr); !errors.Is(err, storage.ErrNoTree) {
		t.Fatalf("Tree of a legacy object: %v, want ErrNoTree", err)
	}
	want, _ := bao.EncodeBuf(p, blaketree.Group, true)
	if err := b.PutTree(t.Context(), addr, bytesTree(want)); err != nil {
		t.Fatalf("PutTree of a legacy object: %v", err)
	}
	if got := readTree(t, b, addr); !bytes.Equal(got, want) {
		t.Fatal("the legacy object's new tree differs from what was put")
	}
	if err := b.PutTree(t.Context(), digestsOf([]byte("absent")).Address(digest.BLAKE3), bytesTree(want)); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("PutTree of a missing object: %v, want ErrNotFound", err)
	}

	// A re-put of a legacy object cannot prove the stored copy without
	// a tree, so it replaces it, tree and all (a rename, cheaper than
	// reading the copy back), and says so.
	q := pattern("tree-legacy-2", treeObject)
	qaddr := digestsOf(q).Address(digest.BLAKE3)
	commitWithoutTree(q, qaddr)
	if rc := put(t, b, q, noClaims); rc.Deduplicated || rc.Repaired == nil {
		t.Fatalf("re-put of a legacy object: %+v; want its copy replaced (Repaired)", rc)
	}
	wantQ, _ := bao.EncodeBuf(q, blaketree.Group, true)
	if got := readTree(t, b, qaddr); !bytes.Equal(got, wantQ) {
		t.Fatal("re-put of a legacy object did not add its tree")
	}
	requireCount(t, b, 2)
}

func testDeleteRemovesTree(t *testing.T, b storage.Backend) {
	p := pattern("tree-delete", treeObject)
	rc := put(t, b, p, noClaims)
	if existed, err := b.Delete(t.Context(), rc.Address); err != nil || !existed {
		t.Fatalf("Delete: %v, %v", existed, err)
	}
	if _, err := b.Tree(t.Context(), rc.Address); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Tree after Delete: %v, want ErrNotFound", err)
	}
	// A put after the delete stores bytes and tree anew.
	rc = put(t, b, p, noClaims)
	if rc.Deduplicated {
		t.Fatal("put after delete reported Deduplicated")
	}
	want, _ := bao.EncodeBuf(p, blaketree.Group, true)
	if got := readTree(t, b, rc.Address); !bytes.Equal(got, want) {
		t.Fatal("tree after delete and re-put differs")
	}
}

func testAbort(t *testing.T, b storage.Backend) {
	w, err := b.Create(t.Context(), storage.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pattern("abort", 100_000)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("second Abort: %v", err)
	}
	requireCount(t, b, 0)
	// Abort after Commit leaves the object.
	p := pattern("abort-after-commit", 1000)
	w, err = b.Create(t.Context(), storage.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(p)
	addr := digestsOf(p).Address(digest.BLAKE3)
	if _, err := w.Commit(t.Context(), addr, nil, storage.CommitKeep); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("Abort after Commit: %v", err)
	}
	if got := readAll(t, b, addr, nil); !bytes.Equal(got, p) {
		t.Fatal("Abort after Commit harmed the object")
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type cancelingReader struct {
	n, cancelAfter int64
	cancel         func()
}

func (c *cancelingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c.n + int64(i))
	}
	c.n += int64(len(p))
	if c.n >= c.cancelAfter {
		c.cancel()
	}
	return len(p), nil
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

// commitRaw stores p under addr with tree (nil: none) as it is: the
// backend trusts the caller, so this is how a test plants a damaged copy.
func commitRaw(t *testing.T, b storage.Backend, p []byte, addr digest.Address, tree storage.TreeSource, mode storage.CommitMode) storage.Committed {
	t.Helper()
	w, err := b.Create(t.Context(), storage.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if _, err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	c, err := w.Commit(t.Context(), addr, tree, mode)
	if err != nil {
		t.Fatalf("Commit(%s, mode %d): %v", addr, mode, err)
	}
	return c
}

func treeOf(p []byte) bytesTree {
	enc, _ := bao.EncodeBuf(p, blaketree.Group, true)
	return bytesTree(enc)
}

// requireIntact checks that the backend holds exactly p, with its tree,
// under its blake3 address, and that a proven read of it passes.
func requireIntact(t *testing.T, b storage.Backend, p []byte) {
	t.Helper()
	d := digestsOf(p)
	addr := d.Address(digest.BLAKE3)
	if got := readAll(t, b, addr, nil); !bytes.Equal(got, p) {
		t.Fatalf("the stored copy of %s is not the object's bytes (%d bytes read, %d expected)", addr, len(got), len(p))
	}
	if !blaketree.HasNodes(d.Size) {
		if _, err := b.Tree(t.Context(), addr); !errors.Is(err, storage.ErrNoTree) {
			t.Fatalf("Tree of a one-group object: %v, want ErrNoTree (a stale tree must go)", err)
		}
		return
	}
	if got := readTree(t, b, addr); !bytes.Equal(got, treeOf(p)) {
		t.Fatal("the stored tree is not the object's")
	}
	if got, err := provenRead(t, b, addr, d.BLAKE3, d.Size, 0, d.Size); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("proven read of the whole object: %v", err)
	}
}

func flipped(p []byte, at int) []byte {
	q := bytes.Clone(p)
	q[at] ^= 0x01
	return q
}

// testReplaceCommit: CommitReplace puts new bytes and tree over a stored
// copy, which CommitKeep would have kept.
func testReplaceCommit(t *testing.T, b storage.Backend) {
	p := pattern("replace", treeObject)
	addr := digestsOf(p).Address(digest.BLAKE3)
	bad := flipped(p, 3*blaketree.GroupSize+5)
	commitRaw(t, b, bad, addr, treeOf(bad), storage.CommitKeep)
	if c := commitRaw(t, b, p, addr, treeOf(p), storage.CommitKeep); !c.Deduplicated {
		t.Fatal("CommitKeep over a stored object did not report Deduplicated")
	}
	if got := readAll(t, b, addr, nil); !bytes.Equal(got, bad) {
		t.Fatal("CommitKeep changed the stored object")
	}
	c := commitRaw(t, b, p, addr, treeOf(p), storage.CommitReplace)
	if c.Deduplicated || c.StoredAt.IsZero() {
		t.Fatalf("CommitReplace = %+v; want a new store with its time", c)
	}
	requireIntact(t, b, p)
	requireCount(t, b, 1)

	// A one-group object replaced over a copy that had a (stale) tree.
	small := pattern("replace-small", 3000)
	saddr := digestsOf(small).Address(digest.BLAKE3)
	commitRaw(t, b, flipped(small, 0), saddr, treeOf(pattern("x", treeObject)), storage.CommitKeep)
	commitRaw(t, b, small, saddr, nil, storage.CommitReplace)
	requireIntact(t, b, small)
	requireCount(t, b, 2)
}

// testReplaceAbsent: CommitReplace with nothing stored is a plain store.
func testReplaceAbsent(t *testing.T, b storage.Backend) {
	p := pattern("replace-absent", treeObject)
	c := commitRaw(t, b, p, digestsOf(p).Address(digest.BLAKE3), treeOf(p), storage.CommitReplace)
	if c.Deduplicated {
		t.Fatal("CommitReplace of an absent object reported Deduplicated")
	}
	requireIntact(t, b, p)
	requireCount(t, b, 1)
}

// testRePutRepairs: a put whose content is stored damaged finds the
// damage with its check (size, sampled groups, tree) and replaces the
// copy; an intact copy is deduplicated against and left alone.
func testRePutRepairs(t *testing.T, b storage.Backend) {
	p := pattern("reput", treeObject)
	node := bytesTree(bytes.Clone(treeOf(p)))
	node[blaketree.HeaderSize+3] ^= 0x01
	small := pattern("reput-small", 4096)
	for _, tc := range []struct {
		name string
		p    []byte
		bad  []byte
		tree storage.TreeSource
	}{
		{"byte flipped in the first group", p, flipped(p, 17), treeOf(p)},
		{"byte flipped in the last group", p, flipped(p, len(p)-3), treeOf(p)},
		{"shorter copy", p, p[:len(p)-1], treeOf(p)},
		{"no tree", p, p, nil},
		{"damaged tree", p, p, node},
		{"one-group object with a byte flipped", small, flipped(small, 4000), nil},
	} {
		a := digestsOf(tc.p).Address(digest.BLAKE3)
		if _, err := b.Delete(t.Context(), a); err != nil {
			t.Fatal(err)
		}
		commitRaw(t, b, tc.bad, a, tc.tree, storage.CommitKeep)
		rc := put(t, b, tc.p, noClaims)
		if rc.Repaired == nil || rc.Repaired.Was != storage.DamageCorrupt || rc.Deduplicated {
			t.Fatalf("%s: re-put receipt %+v (repair %+v); want a repair of a corrupt copy", tc.name, rc, rc.Repaired)
		}
		t.Logf("%s: %s", tc.name, rc.Repaired.Detail)
		requireIntact(t, b, tc.p)
	}
	rc := put(t, b, p, noClaims)
	if rc.Repaired != nil || !rc.Deduplicated {
		t.Fatalf("re-put of an intact copy: %+v (repair %+v); want deduplicated, no repair", rc, rc.Repaired)
	}
	requireCount(t, b, 2)
}

// testRePutRecordedDamage: damage the sample does not reach is repaired
// when the caller's records say the copy is corrupt.
func testRePutRecordedDamage(t *testing.T, b storage.Backend) {
	p := pattern("reput-recorded", treeObject)
	addr := digestsOf(p).Address(digest.BLAKE3)
	commitRaw(t, b, flipped(p, 3*blaketree.GroupSize+9), addr, treeOf(p), storage.CommitKeep)
	firstLast := storage.NewPutter(storage.WithSampleGroups(0))
	rc, err := firstLast.Put(t.Context(), b, bytes.NewReader(p), noClaims)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Repaired != nil || !rc.Deduplicated {
		t.Fatalf("a put that samples the first and last groups only found damage in group 3: %+v", rc)
	}
	asked := 0
	opts := noClaims
	opts.Condition = func(_ context.Context, backendID string, a digest.Address) (storage.Condition, error) {
		asked++
		if backendID != b.ID() || a != addr {
			t.Errorf("Condition asked of %s on %q, want %s on %q", a, backendID, addr, b.ID())
		}
		return storage.Condition{Recorded: true, Damage: storage.DamageCorrupt, Detail: "verify found it corrupt"}, nil
	}
	rc, err = firstLast.Put(t.Context(), b, bytes.NewReader(p), opts)
	if err != nil {
		t.Fatal(err)
	}
	if asked != 1 || rc.Repaired == nil || rc.Repaired.Was != storage.DamageCorrupt || rc.Repaired.Detail != "verify found it corrupt" || rc.Deduplicated {
		t.Fatalf("re-put of a copy recorded corrupt (asked %d): %+v (repair %+v)", asked, rc, rc.Repaired)
	}
	requireIntact(t, b, p)

	// A failing lookup fails the put.
	boom := errors.New("records unavailable")
	opts.Condition = func(context.Context, string, digest.Address) (storage.Condition, error) {
		return storage.Condition{}, boom
	}
	if _, err := firstLast.Put(t.Context(), b, bytes.NewReader(p), opts); !errors.Is(err, boom) {
		t.Fatalf("put with a failing Condition: %v, want it wrapped", err)
	}
}

// testRePutLost: content the records say is stored but the backend lost
// is stored again and reported repaired; unrecorded content is a plain
// store.
func testRePutLost(t *testing.T, b storage.Backend) {
	p := pattern("reput-lost", treeObject)
	recorded := noClaims
	recorded.Condition = func(context.Context, string, digest.Address) (storage.Condition, error) {
		return storage.Condition{Recorded: true}, nil
	}
	rc := put(t, b, p, recorded)
	if rc.Repaired == nil || rc.Repaired.Was != storage.DamageMissing || rc.Deduplicated {
		t.Fatalf("put of a recorded but absent object: %+v (repair %+v); want a repair of a missing copy", rc, rc.Repaired)
	}
	requireIntact(t, b, p)
	if rc := put(t, b, p, recorded); rc.Repaired != nil || !rc.Deduplicated {
		t.Fatalf("re-put of the restored copy: %+v (repair %+v); want deduplicated", rc, rc.Repaired)
	}
	q := pattern("reput-new", 1000)
	unrecorded := noClaims
	unrecorded.Condition = func(context.Context, string, digest.Address) (storage.Condition, error) {
		return storage.Condition{}, nil
	}
	if rc := put(t, b, q, unrecorded); rc.Repaired != nil || rc.Deduplicated {
		t.Fatalf("put of new content: %+v (repair %+v); want a plain store", rc, rc.Repaired)
	}
}
