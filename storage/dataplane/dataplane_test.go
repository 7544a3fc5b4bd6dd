package dataplane_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"lukechampine.com/blake3"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
)

type fixture struct {
	dp    *dataplane.DataPlane
	local *local.Backend
}

func newFixture(t testing.TB, opts ...dataplane.Option) fixture {
	t.Helper()
	b, err := local.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	reg := storage.NewRegistry()
	if err := reg.Register(b); err != nil {
		t.Fatal(err)
	}
	dp, err := dataplane.New(reg, "local", opts...)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{dp: dp, local: b}
}

// path returns where the local backend keeps addr.
func (f fixture) path(addr digest.Address) string {
	return filepath.Join(f.local.Root(), filepath.FromSlash(local.ObjectPath(addr)))
}

func (f fixture) ingest(t *testing.T, p []byte, h dataplane.IngestHints) dataplane.IngestResult {
	t.Helper()
	res, err := f.dp.Ingest(t.Context(), bytes.NewReader(p), h)
	if err != nil {
		t.Fatalf("Ingest: %v", err)
	}
	return res
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	rand.Read(p)
	return p
}

var noClaims = dataplane.IngestHints{ExpectSize: storage.NoSizeClaim}

func TestNewRequiresRegisteredDefault(t *testing.T) {
	t.Parallel()
	if _, err := dataplane.New(storage.NewRegistry(), "local"); !errors.Is(err, storage.ErrUnknownBackend) {
		t.Fatalf("New with an unregistered default: %v, want ErrUnknownBackend", err)
	}
	if _, err := dataplane.New(nil, "local"); err == nil {
		t.Fatal("New with a nil registry succeeded")
	}
}

func TestIngestDualDigests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, n := range []int{0, 1, 4096, 1<<20 - 1, 1 << 20, 3<<20 + 5} {
		p := randomBytes(t, n)
		res := f.ingest(t, p, noClaims)
		wantB3, wantS := blake3.Sum256(p), sha256.Sum256(p)
		if res.Digests.BLAKE3 != wantB3 || res.Digests.SHA256 != wantS || res.Digests.Size != int64(n) {
			t.Fatalf("%d bytes: digests %+v, want blake3 %x sha256 %x", n, res.Digests, wantB3, wantS)
		}
		if res.Address != digest.New(digest.BLAKE3, wantB3) || res.Receipt.Address != res.Address {
			t.Fatalf("%d bytes: address %s, want blake3:%x", n, res.Address, wantB3)
		}
		if res.Receipt.BackendID != "local" || res.Receipt.Deduplicated {
			t.Fatalf("%d bytes: receipt %+v", n, res.Receipt)
		}
		if got, err := os.ReadFile(f.path(res.Address)); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("%d bytes: file on disk differs (%v)", n, err)
		}
	}
}

func TestIngestEmpty(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	res := f.ingest(t, nil, dataplane.IngestHints{ExpectSize: 0})
	if res.Digests.Size != 0 || res.Address.Hex() != "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" {
		t.Fatalf("empty ingest: %+v", res)
	}
	if res.Digests.SHA256 != sha256.Sum256(nil) {
		t.Fatal("empty ingest: wrong sha256")
	}
}

func TestIngestSHA256Primary(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	p := randomBytes(t, 10_000)
	res := f.ingest(t, p, dataplane.IngestHints{Primary: digest.SHA256, ExpectSize: int64(len(p))})
	if res.Address != digest.New(digest.SHA256, sha256.Sum256(p)) {
		t.Fatalf("address %s, want sha256", res.Address)
	}
	if _, err := f.dp.Serve(t.Context(), "", res.Address, nil, dataplane.Expected{Size: -1}); err == nil {
		t.Fatal("Serve of a sha256 address without its recorded BLAKE3 succeeded; it cannot be proven")
	}
	b3 := res.Digests.BLAKE3
	rc, err := f.dp.Serve(t.Context(), "", res.Address, nil, dataplane.Expected{BLAKE3: &b3, Size: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, _ := io.ReadAll(rc); !bytes.Equal(got, p) {
		t.Fatal("serve under the sha256 address differs")
	}
}

func TestIngestUnknownBackend(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, err := f.dp.Ingest(t.Context(), strings.NewReader("x"), dataplane.IngestHints{BackendID: "s3", ExpectSize: storage.NoSizeClaim})
	if !errors.Is(err, storage.ErrUnknownBackend) {
		t.Fatalf("ingest into an unknown backend: %v", err)
	}
}

func TestIngestWrongClaimRejectsAndLeavesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	p := randomBytes(t, 50_000)
	right := digest.New(digest.SHA256, sha256.Sum256(p))
	wrongSum := sha256.Sum256([]byte("other"))
	wrong := digest.New(digest.SHA256, wrongSum)
	_, err := f.dp.Ingest(t.Context(), bytes.NewReader(p), dataplane.IngestHints{Expect: []digest.Address{wrong}, ExpectSize: storage.NoSizeClaim})
	var me *storage.MismatchError
	if !errors.Is(err, storage.ErrDigestMismatch) || !errors.As(err, &me) {
		t.Fatalf("wrong claim: %v, want a MismatchError wrapping ErrDigestMismatch", err)
	}
	if me.Actual.Address(digest.SHA256) != right || !strings.Contains(err.Error(), right.String()) {
		t.Fatalf("MismatchError lacks the actual digest: %v", err)
	}
	for _, addr := range []digest.Address{right, wrong, digest.New(digest.BLAKE3, blake3.Sum256(p))} {
		if _, err := f.dp.Serve(t.Context(), "", addr, nil, dataplane.Expected{Size: -1}); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Serve(%s) after a rejected ingest: %v, want ErrNotFound", addr, err)
		}
	}
	_, err = f.dp.Ingest(t.Context(), bytes.NewReader(p), dataplane.IngestHints{ExpectSize: int64(len(p) + 1)})
	if !errors.Is(err, storage.ErrSizeMismatch) {
		t.Fatalf("wrong size: %v", err)
	}
	_, err = f.dp.Ingest(t.Context(), bytes.NewReader(p), dataplane.IngestHints{ExpectSize: storage.NoSizeClaim, MaxSize: 100})
	if !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	n := 0
	if err := f.local.Walk(t.Context(), func(storage.ObjectInfo) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("backend holds %d objects after rejected ingests (%v)", n, err)
	}
}

func TestServeRoundTripAndRange(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	p := randomBytes(t, 100_000)
	res := f.ingest(t, p, noClaims)
	read := func(rng *storage.Range) []byte {
		t.Helper()
		rc, err := f.dp.Serve(t.Context(), "local", res.Address, rng, dataplane.Expected{Size: -1})
		if err != nil {
			t.Fatalf("Serve %v: %v", rng, err)
		}
		defer rc.Close()
		got, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if !bytes.Equal(read(nil), p) {
		t.Fatal("whole object differs")
	}
	if !bytes.Equal(read(&storage.Range{Start: 10, End: 19}), p[10:20]) {
		t.Fatal("range 10-19 differs")
	}
	if !bytes.Equal(read(&storage.Range{Start: 99_990, End: -1}), p[99_990:]) {
		t.Fatal("range 99990- differs")
	}
	if _, err := f.dp.Serve(t.Context(), "", res.Address, &storage.Range{Start: 100_000, End: -1}, dataplane.Expected{Size: -1}); !errors.Is(err, storage.ErrInvalidRange) {
		t.Fatalf("range past the end: %v", err)
	}
	missing := digest.New(digest.BLAKE3, blake3.Sum256([]byte("missing")))
	if _, err := f.dp.Serve(t.Context(), "", missing, nil, dataplane.Expected{Size: -1}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if _, err := f.dp.Serve(t.Context(), "nope", res.Address, nil, dataplane.Expected{Size: -1}); !errors.Is(err, storage.ErrUnknownBackend) {
		t.Fatalf("unknown backend: %v", err)
	}
}

// corrupt rewrites the (read-only) object file at path with fn applied.
func corrupt(t *testing.T, path string, fn func([]byte) []byte) {
	t.Helper()
	p, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(p), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		primary digest.Algorithm
		damage  func(t *testing.T, path string)
		reason  string
	}{
		{"intact", digest.BLAKE3, nil, ""},
		{"intact sha256", digest.SHA256, nil, ""},
		{"flipped byte", digest.BLAKE3, func(t *testing.T, path string) {
			corrupt(t, path, func(p []byte) []byte { p[len(p)/2] ^= 0x01; return p })
		}, "content hashes to"},
		{"flipped byte sha256", digest.SHA256, func(t *testing.T, path string) {
			corrupt(t, path, func(p []byte) []byte { p[0] ^= 0x80; return p })
		}, "content hashes to"},
		{"truncated", digest.BLAKE3, func(t *testing.T, path string) {
			corrupt(t, path, func(p []byte) []byte { return p[:len(p)-1] })
		}, "truncated"},
		{"appended byte", digest.BLAKE3, func(t *testing.T, path string) {
			corrupt(t, path, func(p []byte) []byte { return append(p, 0) })
		}, "grown"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			p := randomBytes(t, 2<<20+3)
			res := f.ingest(t, p, dataplane.IngestHints{Primary: c.primary, ExpectSize: storage.NoSizeClaim})
			if c.damage != nil {
				c.damage(t, f.path(res.Address))
			}
			b3, s := res.Digests.BLAKE3, res.Digests.SHA256
			v, err := f.dp.Verify(t.Context(), "", res.Address, dataplane.Expected{BLAKE3: &b3, SHA256: &s, Size: res.Digests.Size})
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if v.Address != res.Address || v.BackendID != "local" || v.Missing {
				t.Fatalf("VerifyResult %+v", v)
			}
			onDisk, err := os.ReadFile(f.path(res.Address))
			if err != nil {
				t.Fatal(err)
			}
			if v.Actual.BLAKE3 != blake3.Sum256(onDisk) || v.Actual.SHA256 != sha256.Sum256(onDisk) || v.Actual.Size != int64(len(onDisk)) {
				t.Fatalf("Actual %+v is not the digest of the bytes on disk", v.Actual)
			}
			if c.damage == nil {
				if !v.Verified || v.Reason != "" {
					t.Fatalf("intact object not verified: %+v", v)
				}
				return
			}
			if v.Verified || !strings.Contains(v.Reason, c.reason) {
				t.Fatalf("damaged object: Verified %v, Reason %q; want unverified with %q", v.Verified, v.Reason, c.reason)
			}
			// Both recorded digests are reported as differing.
			if !strings.Contains(v.Reason, "blake3 is") || !strings.Contains(v.Reason, "sha256 is") {
				t.Errorf("Reason %q does not name both digests", v.Reason)
			}
		})
	}
}

func TestVerifyChecksEveryKnownDigest(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	p := randomBytes(t, 1000)
	res := f.ingest(t, p, noClaims)
	// The address (blake3) matches, but the recorded sha256 does not: the
	// record or the file is wrong, either way not verified.
	wrong := sha256.Sum256([]byte("not it"))
	v, err := f.dp.Verify(t.Context(), "", res.Address, dataplane.Expected{SHA256: &wrong, Size: -1})
	if err != nil {
		t.Fatal(err)
	}
	if v.Verified || !strings.Contains(v.Reason, "sha256 is") {
		t.Fatalf("wrong recorded sha256: %+v", v)
	}
	v, err = f.dp.Verify(t.Context(), "", res.Address, dataplane.Expected{Size: 999})
	if err != nil || v.Verified {
		t.Fatalf("wrong recorded size: %+v, %v", v, err)
	}
	v, err = f.dp.Verify(t.Context(), "", res.Address, dataplane.Expected{Size: -1})
	if err != nil || !v.Verified {
		t.Fatalf("nothing recorded beyond the address: %+v, %v", v, err)
	}
}

func TestVerifyMissing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	res := f.ingest(t, []byte("to be deleted"), noClaims)
	if err := os.Remove(f.path(res.Address)); err != nil {
		t.Fatal(err)
	}
	v, err := f.dp.Verify(t.Context(), "", res.Address, dataplane.Expected{Size: -1})
	if err != nil {
		t.Fatalf("Verify of a deleted file: %v", err)
	}
	if !v.Missing || v.Verified || v.Reason == "" {
		t.Fatalf("deleted file: %+v; want Missing with a reason", v)
	}
	if _, err := f.dp.Verify(t.Context(), "", digest.Address{}, dataplane.Expected{Size: -1}); !errors.Is(err, digest.ErrInvalid) {
		t.Fatalf("Verify of the zero address: %v", err)
	}
}

func TestVerifyReaderWrapper(t *testing.T) {
	t.Parallel()
	var seen int64
	f := newFixture(t, dataplane.WithVerifyReader(func(r io.Reader) io.Reader {
		return &countingReader{r: r, n: &seen}
	}))
	p := randomBytes(t, 3<<20)
	res := f.ingest(t, p, noClaims)
	v, err := f.dp.Verify(t.Context(), "", res.Address, dataplane.Expected{Size: int64(len(p))})
	if err != nil || !v.Verified {
		t.Fatalf("Verify: %+v, %v", v, err)
	}
	if seen != int64(len(p)) {
		t.Fatalf("wrapper saw %d bytes, want %d", seen, len(p))
	}
}

func TestDeletePassesThrough(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	res := f.ingest(t, []byte("delete me"), noClaims)
	if existed, err := f.dp.Delete(t.Context(), "", res.Address); err != nil || !existed {
		t.Fatalf("first delete: %v, %v", existed, err)
	}
	if existed, err := f.dp.Delete(t.Context(), "local", res.Address); err != nil || existed {
		t.Fatalf("second delete: %v, %v", existed, err)
	}
	if _, err := os.Stat(f.path(res.Address)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file still there: %v", err)
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	h := f.dp.Health(t.Context())
	if len(h) != 1 || !h["local"].Healthy {
		t.Fatalf("Health = %+v", h)
	}
	if err := os.RemoveAll(f.local.Root()); err != nil {
		t.Fatal(err)
	}
	if h := f.dp.Health(t.Context()); h["local"].Healthy {
		t.Fatalf("Health after removing the root = %+v", h)
	}
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

type countingReader struct {
	r io.Reader
	n *int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// patternReader yields n bytes of a repeating block without holding more
// than the block. When onMiB is set, it is called before each MiB read.
type patternReader struct {
	block []byte
	off   int64
	n     int64
	onMiB func()
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if r.onMiB != nil && r.off>>20 != (r.off+int64(len(p)))>>20 {
		r.onMiB()
	}
	if rest := r.n - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	w := 0
	for w < len(p) {
		c := copy(p[w:], r.block[(r.off+int64(w))%int64(len(r.block)):])
		w += c
	}
	r.off += int64(w)
	return w, nil
}

// heapPeak keeps the largest HeapAlloc of its samples.
type heapPeak struct {
	mu  sync.Mutex
	m   runtime.MemStats
	max uint64
}

func (p *heapPeak) sample() {
	p.mu.Lock()
	defer p.mu.Unlock()
	runtime.ReadMemStats(&p.m)
	p.max = maxU(p.max, p.m.HeapAlloc)
}

// sampleWriter samples the heap before each MiB written to it.
type sampleWriter struct {
	n    int64
	peak *heapPeak
}

func (w *sampleWriter) Write(p []byte) (int, error) {
	if w.n>>20 != (w.n+int64(len(p)))>>20 {
		w.peak.sample()
	}
	w.n += int64(len(p))
	return len(p), nil
}

// TestBoundedMemory ingests, serves and verifies 256 MiB and checks that
// the peak heap meanwhile stays within a few MiB of where it started. It
// does not run in parallel so that other tests' allocations do not count.
//
// The peak is sampled rather than taken from TotalAlloc: the BLAKE3 library
// allocates short-lived garbage (~50 KiB per MiB hashed) that the GC
// reclaims, so total allocation grows with the object while the heap does
// not. Samples are taken at progress points (each MiB the ingest reads or
// the serve writes) and, between them and for the verify, on a timer. A
// slow machine takes fewer timer samples, which can only lower the measured
// peak, never fail the test; the progress samples keep the check as strict
// there as on a fast machine.
func TestBoundedMemory(t *testing.T) {
	const size = 256 << 20
	const limit = 8 << 20
	f := newFixture(t)
	block := randomBytes(t, 64<<10+7)

	measure := func(name string, fn func(peak *heapPeak)) {
		t.Helper()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var peak heapPeak
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for {
				peak.sample()
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
		fn(&peak)
		close(stop)
		<-sampled
		runtime.ReadMemStats(&after)
		top := maxU(peak.max, after.HeapAlloc)
		growth := int64(top) - int64(before.HeapAlloc)
		t.Logf("%s of %d MiB: peak heap %d KiB above start (%d KiB allocated in total)",
			name, size>>20, growth>>10, (after.TotalAlloc-before.TotalAlloc)>>10)
		if growth > limit {
			t.Errorf("%s of %d MiB grew the heap by %d MiB; memory must not grow with the object (limit %d MiB)", name, size>>20, growth>>20, limit>>20)
		}
	}

	var res dataplane.IngestResult
	measure("ingest", func(peak *heapPeak) {
		var err error
		res, err = f.dp.Ingest(t.Context(), &patternReader{block: block, n: size, onMiB: peak.sample}, noClaims)
		if err != nil {
			t.Fatal(err)
		}
	})
	if res.Digests.Size != size {
		t.Fatalf("ingested %d bytes", res.Digests.Size)
	}
	measure("serve", func(peak *heapPeak) {
		rc, err := f.dp.Serve(t.Context(), "", res.Address, nil, dataplane.Expected{Size: -1})
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if n, err := io.Copy(&sampleWriter{peak: peak}, rc); err != nil || n != size {
			t.Fatalf("served %d bytes: %v", n, err)
		}
	})
	measure("verify", func(*heapPeak) {
		v, err := f.dp.Verify(t.Context(), "", res.Address, dataplane.Expected{Size: size})
		if err != nil || !v.Verified {
			t.Fatalf("verify: %+v, %v", v, err)
		}
	})
}
