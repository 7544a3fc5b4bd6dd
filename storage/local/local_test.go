package local

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lukechampine.com/blake3"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/storagetest"
)

var noClaims = storage.PutOptions{ExpectSize: storage.NoSizeClaim}

func openTest(t *testing.T, opts ...Option) *Backend {
	t.Helper()
	b, err := Open(filepath.Join(t.TempDir(), "store"), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storagetest.Run(t, func(t *testing.T) storage.Backend { return openTest(t) })
}

func mustPut(t *testing.T, b *Backend, p []byte, opts storage.PutOptions) storage.Receipt {
	t.Helper()
	rc, err := b.Put(t.Context(), bytes.NewReader(p), opts)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return rc
}

// tmpEntries lists what is left in the temp directory.
func tmpEntries(t *testing.T, b *Backend) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(b.Root(), tmpDir))
	if err != nil {
		t.Fatalf("read temp dir: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestLayoutOnDisk(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	p := []byte("layout")
	for _, alg := range digest.Algorithms {
		rc := mustPut(t, b, p, storage.PutOptions{Primary: alg, ExpectSize: storage.NoSizeClaim})
		h := rc.Address.Hex()
		want := filepath.Join(b.Root(), alg.String(), h[0:2], h[2:4], h)
		got, err := os.ReadFile(want)
		if err != nil {
			t.Fatalf("object not at %s: %v", want, err)
		}
		if !bytes.Equal(got, p) {
			t.Fatalf("%s holds %q, want %q", want, got, p)
		}
		fi, _ := os.Stat(want)
		if fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s is writable (%v); objects are immutable", want, fi.Mode())
		}
	}
	if b.ID() != "local" || !filepath.IsAbs(b.Root()) {
		t.Fatalf("ID %q Root %q; want local and an absolute path", b.ID(), b.Root())
	}
	if got := openTest(t, WithID("disk2")).ID(); got != "disk2" {
		t.Fatalf("WithID: ID() = %q", got)
	}
	if _, err := Open(t.TempDir(), WithID("")); err == nil {
		t.Fatal("Open with an empty id succeeded")
	}
}

func TestTempDirEmptyAfterSuccessAndFailure(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	p := bytes.Repeat([]byte("t"), 3<<20)
	mustPut(t, b, p, noClaims)
	mustPut(t, b, p, noClaims) // dedup
	wrong := digest.MustParse("blake3:" + strings.Repeat("0", 64))
	if _, err := b.Put(t.Context(), bytes.NewReader(p), storage.PutOptions{Expect: []digest.Address{wrong}, ExpectSize: storage.NoSizeClaim}); !errors.Is(err, storage.ErrDigestMismatch) {
		t.Fatalf("wrong claim: %v", err)
	}
	if _, err := b.Put(t.Context(), bytes.NewReader(p), storage.PutOptions{ExpectSize: storage.NoSizeClaim, MaxSize: 10}); !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := b.Put(ctx, bytes.NewReader(p), noClaims); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
	if left := tmpEntries(t, b); len(left) != 0 {
		t.Fatalf("temp dir holds %v after puts", left)
	}
}

func TestOpenCleansLeftoverTempFiles(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "store")
	b, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if b.CleanedTemp() != 0 {
		t.Fatalf("fresh root: CleanedTemp = %d", b.CleanedTemp())
	}
	b.Close()
	tmp := filepath.Join(root, tmpDir)
	for _, name := range []string{"put-crashed1", "put-crashed2", "stray"} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A live writer of another process holds its temp file locked.
	live, err := os.OpenFile(filepath.Join(tmp, "put-live"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := syscall.Flock(int(live.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	b, err = Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.CleanedTemp() != 3 {
		t.Errorf("CleanedTemp = %d, want 3", b.CleanedTemp())
	}
	if left := tmpEntries(t, b); len(left) != 1 || left[0] != "put-live" {
		t.Fatalf("temp dir holds %v, want only the live writer's file", left)
	}
}

func TestHealthUnhealthyWhenRootGone(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	h := b.Health(t.Context())
	if !h.Healthy || h.FreeBytes == 0 || h.UsedBytes == 0 {
		t.Fatalf("fresh backend health = %+v; want healthy with free and used bytes", h)
	}
	if err := os.RemoveAll(b.Root()); err != nil {
		t.Fatal(err)
	}
	h = b.Health(t.Context())
	if h.Healthy || !strings.Contains(h.Detail, b.Root()) {
		t.Fatalf("health after removing the root = %+v; want unhealthy naming the root", h)
	}
	if _, err := b.Put(t.Context(), strings.NewReader("x"), noClaims); err == nil {
		t.Fatal("Put succeeded into a removed root")
	}
	// A new directory at the same path is not the one the backend holds.
	if err := os.MkdirAll(filepath.Join(b.Root(), tmpDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if h := b.Health(t.Context()); h.Healthy {
		t.Fatalf("health after replacing the root = %+v; want unhealthy", h)
	}
}

// sameShard returns two contents whose blake3 addresses share a shard
// directory.
func sameShard(t *testing.T) (a, c []byte) {
	t.Helper()
	seen := map[[2]byte][]byte{}
	for i := 0; ; i++ {
		p := []byte("shard-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + itoa(i))
		s := blake3.Sum256(p)
		k := [2]byte{s[0], s[1]}
		if q, ok := seen[k]; ok {
			return q, p
		}
		seen[k] = p
	}
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

func TestDeleteRemovesEmptiedShardDirectories(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	a, c := sameShard(t)
	ra := mustPut(t, b, a, noClaims)
	rc := mustPut(t, b, c, noClaims)
	shard := filepath.Dir(filepath.Join(b.Root(), filepath.FromSlash(ra.Address.RelPath())))
	if existed, err := b.Delete(t.Context(), ra.Address); err != nil || !existed {
		t.Fatalf("Delete a: %v %v", existed, err)
	}
	if _, err := os.Stat(shard); err != nil {
		t.Fatalf("shard %s removed while it still holds an object: %v", shard, err)
	}
	if existed, err := b.Delete(t.Context(), rc.Address); err != nil || !existed {
		t.Fatalf("Delete c: %v %v", existed, err)
	}
	if _, err := os.Stat(shard); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("emptied shard %s still there: %v", shard, err)
	}
	if _, err := os.Stat(filepath.Dir(shard)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("emptied shard %s still there: %v", filepath.Dir(shard), err)
	}
	if _, err := os.Stat(filepath.Join(b.Root(), "blake3")); err != nil {
		t.Fatalf("algorithm directory removed: %v", err)
	}
}

// TestPutRacesDeleteInSameShard puts and deletes two objects of one shard
// directory from two goroutines: a put whose shard directory is removed
// under it must retry and succeed.
func TestPutRacesDeleteInSameShard(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	a, c := sameShard(t)
	var wg sync.WaitGroup
	for _, p := range [][]byte{a, c} {
		wg.Go(func() {
			for i := range 150 {
				rc, err := b.Put(context.Background(), bytes.NewReader(p), noClaims)
				if err != nil {
					t.Errorf("put %d: %v", i, err)
					return
				}
				if _, err := b.Head(context.Background(), rc.Address); err != nil {
					t.Errorf("head after put %d: %v", i, err)
					return
				}
				if existed, err := b.Delete(context.Background(), rc.Address); err != nil || !existed {
					t.Errorf("delete %d: %v %v", i, existed, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestConcurrentPutsStoreOnce(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	p := bytes.Repeat([]byte("c"), 100_000)
	const n = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	for range n {
		wg.Go(func() {
			rc, err := b.Put(context.Background(), bytes.NewReader(p), noClaims)
			if err != nil {
				t.Error(err)
				return
			}
			if !rc.Deduplicated {
				mu.Lock()
				fresh++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if fresh != 1 {
		t.Fatalf("%d of %d concurrent puts stored the object, want exactly 1", fresh, n)
	}
	if left := tmpEntries(t, b); len(left) != 0 {
		t.Fatalf("temp dir holds %v", left)
	}
}

func TestNoReadOutsideRoot(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("outside the root"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := digest.Digests{BLAKE3: blake3.Sum256([]byte("planted"))}.Address(digest.BLAKE3)
	path := filepath.Join(b.Root(), filepath.FromSlash(addr.RelPath()))
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(filepath.Dir(path), secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{secret, rel} {
		os.Remove(path)
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
		if rc, err := b.Get(t.Context(), addr, nil); err == nil {
			got, _ := io.ReadAll(rc)
			rc.Close()
			t.Fatalf("Get followed a symlink to %s and read %q", target, got)
		}
		if info, err := b.Head(t.Context(), addr); err == nil {
			t.Fatalf("Head followed a symlink to %s: %+v", target, info)
		}
		if err := b.Walk(t.Context(), func(o storage.ObjectInfo) error {
			t.Errorf("Walk listed the planted symlink %s", o.Address)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// A symlinked shard directory pointing outside is refused as well.
	outsideDir := t.TempDir()
	if err := os.Rename(secret, filepath.Join(outsideDir, addr.Hex())); err != nil {
		t.Fatal(err)
	}
	shard := filepath.Dir(path)
	if err := os.RemoveAll(shard); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outsideDir, shard); err != nil {
		t.Fatal(err)
	}
	if rc, err := b.Get(t.Context(), addr, nil); err == nil {
		rc.Close()
		t.Fatal("Get followed a symlinked shard directory outside the root")
	}
	if _, err := b.Put(t.Context(), strings.NewReader("planted"), noClaims); err == nil {
		t.Fatal("Put wrote through a symlinked shard directory outside the root")
	}
	if _, err := os.Stat(filepath.Join(outsideDir, addr.Hex())); err != nil {
		t.Fatalf("outside file harmed: %v", err)
	}
}

var errInjected = errors.New("injected fsync failure")

// failingSync fails the n-th fsync (1-based) and lets the others through.
func failingSync(n int) func(*os.File) error {
	var mu sync.Mutex
	calls := 0
	return func(f *os.File) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == n {
			return errInjected
		}
		return f.Sync()
	}
}

// TestFsyncFailure injects a failing fsync: the kernel's EIO cannot be
// provoked cheaply without root, so the fsync call is replaced.
func TestFsyncFailure(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		n    int
	}{{"temp file", 1}, {"shard directory", 2}, {"parent of new shard directory", 3}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := openTest(t)
			b.syncFile = failingSync(c.n)
			p := []byte("fsync " + c.name)
			_, err := b.Put(t.Context(), bytes.NewReader(p), noClaims)
			if !errors.Is(err, errInjected) {
				t.Fatalf("Put with fsync #%d failing: %v, want the fsync error", c.n, err)
			}
			addr := digest.Digests{BLAKE3: blake3.Sum256(p)}.Address(digest.BLAKE3)
			if _, err := b.Head(t.Context(), addr); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Head after failed fsync: %v, want ErrNotFound", err)
			}
			if left := tmpEntries(t, b); len(left) != 0 {
				t.Fatalf("temp dir holds %v", left)
			}
			// The next put is not fooled into deduplicating: it writes anew.
			b.syncFile = (*os.File).Sync
			if rc := mustPut(t, b, p, noClaims); rc.Deduplicated {
				t.Fatal("put after a failed fsync deduplicated against the unsynced object")
			}
		})
	}
	t.Run("dedup", func(t *testing.T) {
		t.Parallel()
		b := openTest(t)
		p := []byte("fsync dedup")
		mustPut(t, b, p, noClaims)
		b.syncFile = failingSync(2) // the first directory sync of the re-put
		if _, err := b.Put(t.Context(), bytes.NewReader(p), noClaims); !errors.Is(err, errInjected) {
			t.Fatalf("re-put with a failing directory fsync: %v, want the fsync error", err)
		}
	})
}

func TestQuarantine(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	b := openTest(t, WithClock(func() time.Time { return now }))
	rc := mustPut(t, b, []byte("orphan"), noClaims)
	rel := rc.Address.RelPath()
	dest, err := b.Quarantine(t.Context(), rel)
	if err != nil {
		t.Fatalf("Quarantine: %v", err)
	}
	want := ".quarantine/" + rel + ".20260304T050607.000000008Z"
	if dest != want {
		t.Fatalf("Quarantine returned %q, want %q", dest, want)
	}
	if got, err := os.ReadFile(filepath.Join(b.Root(), filepath.FromSlash(dest))); err != nil || string(got) != "orphan" {
		t.Fatalf("quarantined file: %q %v", got, err)
	}
	if _, err := b.Head(t.Context(), rc.Address); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Head after quarantine: %v", err)
	}
	if err := b.Walk(t.Context(), func(o storage.ObjectInfo) error {
		t.Errorf("Walk listed %s from quarantine", o.Address)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A stray file that is not an object can be quarantined too.
	if err := os.WriteFile(filepath.Join(b.Root(), "blake3", "junk"), []byte("j"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Quarantine(t.Context(), "blake3/junk"); err != nil {
		t.Fatalf("Quarantine stray file: %v", err)
	}
	for _, bad := range []string{"", ".", "../x", "/etc/passwd", "blake3/../../x", dest, "blake3", "sha256/none"} {
		if _, err := b.Quarantine(t.Context(), bad); err == nil {
			t.Errorf("Quarantine(%q) succeeded", bad)
		}
	}
}
