package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lukechampine.com/blake3"
	"lukechampine.com/blake3/bao"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
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
	shard := filepath.Dir(filepath.Join(b.Root(), filepath.FromSlash(ObjectPath(ra.Address))))
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
	path := filepath.Join(b.Root(), filepath.FromSlash(ObjectPath(addr)))
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

// syncCall is one fsync a Backend made: its role, the path it synced
// (relative to the root; every temp file is tmpAny) and whether the
// watched object was at its final path at that moment.
type syncCall struct {
	kind   syncKind
	name   string
	linked bool
}

func (c syncCall) String() string {
	state := "object not linked yet"
	if c.linked {
		state = "object linked"
	}
	return fmt.Sprintf("{%s %s, %s}", c.kind, c.name, state)
}

// tmpAny stands for the random name of a put's temp file.
const tmpAny = tmpDir + "/" + tmpPrefix + "*"

// syncRecorder replaces a Backend's fsync: it records every call and
// fails the one named by fail (kind and name; the zero value fails
// none). Naming the fsync, rather than counting calls, means that a
// removed fsync cannot shift the failure onto another one.
type syncRecorder struct {
	root    string
	watch   string // object path (relative to root) whose presence is recorded
	mu      sync.Mutex
	calls   []syncCall
	fail    syncCall
	matched int // calls that matched fail (and failed)
}

func recordSyncs(b *Backend, watch digest.Address) *syncRecorder {
	r := &syncRecorder{root: b.Root(), watch: ObjectPath(watch)}
	b.fsync = r.fsync
	return r
}

func (r *syncRecorder) fsync(kind syncKind, name string, f *os.File) error {
	if (kind == syncTempFile || kind == syncTreeFile) && strings.HasPrefix(name, tmpDir+"/"+tmpPrefix) {
		name = tmpAny
	}
	_, err := os.Lstat(filepath.Join(r.root, filepath.FromSlash(r.watch)))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, syncCall{kind: kind, name: name, linked: err == nil})
	if r.fail.kind == kind && r.fail.name == name {
		r.matched++
		return errInjected
	}
	return f.Sync()
}

// reset forgets the calls so far and makes the fsync named by fail's
// kind and name fail.
func (r *syncRecorder) reset(fail syncCall) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls, r.fail, r.matched = nil, syncCall{kind: fail.kind, name: fail.name}, 0
}

func (r *syncRecorder) seen() []syncCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]syncCall(nil), r.calls...)
}

// checkSyncs fails t unless got is exactly want, in order, and names the
// fsyncs that are missing.
func checkSyncs(t *testing.T, what string, got, want []syncCall) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	var missing []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			missing = append(missing, w.String())
		}
	}
	t.Fatalf("%s: fsyncs out of protocol; missing %v\n got  %v\n want %v (in this order)", what, missing, got, want)
}

func blake3Addr(p []byte) digest.Address {
	return digest.Digests{BLAKE3: blake3.Sum256(p)}.Address(digest.BLAKE3)
}

// putCase is a store state in which one more put must make a known list
// of fsyncs.
type putCase struct {
	name string
	// setup prepares b and returns the content to put and the objects b
	// holds before that put.
	setup func(t *testing.T, b *Backend) (p []byte, before int)
	// syncs lists the fsyncs of the put of p, in order.
	syncs func(a digest.Address) []syncCall
	// dedup: the object is already stored, so the put deduplicates.
	dedup bool
	// replace: the object is stored but cannot be proven, so the put
	// replaces it (storage.CommitReplace) and reports a repair.
	replace bool
}

// shardDirs returns the leaf directory of a and its ancestors up to the
// root: blake3/ab/cd, blake3/ab, blake3, ".".
func shardDirs(a digest.Address) []string {
	var dirs []string
	for d := path.Dir(ObjectPath(a)); ; d = path.Dir(d) {
		dirs = append(dirs, d)
		if d == "." {
			return dirs
		}
	}
}

var putCases = []putCase{{
	name: "new object in a fresh store",
	setup: func(*testing.T, *Backend) ([]byte, int) {
		return []byte("into a fresh store"), 0
	},
	// The put creates blake3/, blake3/ab/ and blake3/ab/cd/: the leaf gets
	// the entry, and each new directory's parent gets the new directory.
	syncs: func(a digest.Address) []syncCall {
		d := shardDirs(a)
		return []syncCall{
			{syncTempFile, tmpAny, false},
			{syncLeafDir, d[0], true},
			{syncNewDirParent, d[1], true},
			{syncNewDirParent, d[2], true},
			{syncNewDirParent, d[3], true},
		}
	},
}, {
	name: "new object in an existing shard",
	setup: func(t *testing.T, b *Backend) ([]byte, int) {
		a, c := sameShard(t)
		mustPut(t, b, a, noClaims)
		return c, 1
	},
	syncs: func(a digest.Address) []syncCall {
		return []syncCall{{syncTempFile, tmpAny, false}, {syncLeafDir, path.Dir(ObjectPath(a)), true}}
	},
}, {
	name: "object already stored",
	setup: func(t *testing.T, b *Backend) ([]byte, int) {
		p := []byte("stored before")
		mustPut(t, b, p, noClaims)
		return p, 1
	},
	// Whoever linked it may not have synced its directories yet.
	syncs: func(a digest.Address) []syncCall {
		d := shardDirs(a)
		return []syncCall{
			{syncTempFile, tmpAny, true},
			{syncLeafDir, d[0], true},
			{syncAncestorDir, d[1], true},
			{syncAncestorDir, d[2], true},
			{syncAncestorDir, d[3], true},
		}
	},
	dedup: true,
}, {
	name: "new object with a tree in a fresh store",
	setup: func(*testing.T, *Backend) ([]byte, int) {
		return bytes.Repeat([]byte("a tree of several chunk groups "), 3*blaketree.GroupSize/31), 0
	},
	// The tree's temp file is synced before anything is linked; the one
	// sync of the leaf directory covers the tree and the object.
	syncs: func(a digest.Address) []syncCall {
		d := shardDirs(a)
		return []syncCall{
			{syncTempFile, tmpAny, false},
			{syncTreeFile, tmpAny, false},
			{syncLeafDir, d[0], true},
			{syncNewDirParent, d[1], true},
			{syncNewDirParent, d[2], true},
			{syncNewDirParent, d[3], true},
		}
	},
}, {
	name: "object stored before trees",
	setup: func(t *testing.T, b *Backend) ([]byte, int) {
		p := bytes.Repeat([]byte("legacy object without a tree "), 3*blaketree.GroupSize/29)
		w, err := b.Create(t.Context(), storage.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p)
		if _, err := w.Commit(t.Context(), blake3Addr(p), nil, storage.CommitKeep); err != nil {
			t.Fatal(err)
		}
		return p, 1
	},
	// Without a tree the stored copy cannot be proven: the re-put renames
	// its tree and its bytes over it, and one sync of the leaf directory
	// covers both.
	syncs: func(a digest.Address) []syncCall {
		d := shardDirs(a)
		return []syncCall{
			{syncTempFile, tmpAny, true},
			{syncTreeFile, tmpAny, true},
			{syncLeafDir, d[0], true},
		}
	},
	replace: true,
}, {
	name: "damaged object",
	setup: func(t *testing.T, b *Backend) ([]byte, int) {
		p := bytes.Repeat([]byte("a damaged object "), 3*blaketree.GroupSize/17)
		bad := bytes.Clone(p)
		bad[1] ^= 1
		w, err := b.Create(t.Context(), storage.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(bad)
		tree, _ := bao.EncodeBuf(p, blaketree.Group, true)
		if _, err := w.Commit(t.Context(), blake3Addr(p), treeBytes(tree), storage.CommitKeep); err != nil {
			t.Fatal(err)
		}
		return p, 1
	},
	// The check finds the first group bad: as for a legacy object.
	syncs: func(a digest.Address) []syncCall {
		d := shardDirs(a)
		return []syncCall{
			{syncTempFile, tmpAny, true},
			{syncTreeFile, tmpAny, true},
			{syncLeafDir, d[0], true},
		}
	},
	replace: true,
}}

// TestPutFsyncs: a put makes every fsync of the protocol, in order: the
// temp file before it is linked, then the leaf directory, then the parent
// of every shard directory it created (innermost first); a put that finds
// its object synced the leaf and every ancestor.
func TestPutFsyncs(t *testing.T) {
	t.Parallel()
	for _, c := range putCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := openTest(t)
			p, _ := c.setup(t, b)
			a := blake3Addr(p)
			rec := recordSyncs(b, a)
			rc := mustPut(t, b, p, noClaims)
			if rc.Deduplicated != c.dedup || (rc.Repaired != nil) != c.replace {
				t.Fatalf("Deduplicated = %v, repair %+v; want %v, a repair: %v", rc.Deduplicated, rc.Repaired, c.dedup, c.replace)
			}
			checkSyncs(t, "put "+c.name, rec.seen(), c.syncs(a))
		})
	}
}

// TestFsyncFailure makes each fsync of a put fail in turn, by name (the
// kernel's EIO cannot be provoked cheaply without root): the put fails
// with that error and leaves no new object and no temp file, and the next
// put writes the object anew instead of deduplicating against bytes that
// were never synced.
func TestFsyncFailure(t *testing.T) {
	t.Parallel()
	for _, c := range putCases {
		// The names depend on the content, known after setup; the kinds
		// and their order do not.
		for i, sc := range c.syncs(blake3Addr(nil)) {
			t.Run(c.name+"/"+strconv.Itoa(i+1)+" "+string(sc.kind), func(t *testing.T) {
				t.Parallel()
				b := openTest(t)
				p, before := c.setup(t, b)
				a := blake3Addr(p)
				fail := c.syncs(a)[i]
				rec := recordSyncs(b, a)
				rec.reset(fail)
				_, err := b.Put(t.Context(), bytes.NewReader(p), noClaims)
				if rec.matched == 0 {
					t.Fatalf("the put never made the fsync %v (Put returned %v); fsyncs seen: %v", fail, err, rec.seen())
				}
				if !errors.Is(err, errInjected) {
					t.Fatalf("Put with the fsync %v failing returned %v, want that fsync's error", fail, err)
				}
				if !strings.Contains(err.Error(), "fsync") {
					t.Errorf("error %q does not say an fsync failed", err)
				}
				if left := tmpEntries(t, b); len(left) != 0 {
					t.Fatalf("temp dir holds %v after the failed put", left)
				}
				_, herr := b.Head(t.Context(), a)
				if c.replace {
					// The stored copy was not trusted: the retry below
					// must replace it, or store it when the failed put
					// took its unsynced replacement back (then, without
					// records, it is a plain store).
					rec.reset(syncCall{})
					rc := mustPut(t, b, p, noClaims)
					if rc.Deduplicated || (rc.Repaired == nil) != (sc.kind == syncLeafDir) {
						t.Fatalf("put after the failed repair: %+v (repair %+v); want a new copy", rc, rc.Repaired)
					}
					if got := readObject(t, b, a); !bytes.Equal(got, p) {
						t.Fatal("the repaired object is not the put's bytes")
					}
					return
				}
				if c.dedup {
					// Stored and acknowledged by an earlier put: it stays.
					if herr != nil {
						t.Fatalf("Head of the earlier stored object after a failed re-put: %v", herr)
					}
				} else if !errors.Is(herr, storage.ErrNotFound) {
					t.Fatalf("Head after the failed put: %v, want ErrNotFound (nothing visible)", herr)
				}
				if n := countObjects(t, b); n != before {
					t.Fatalf("Walk lists %d objects after the failed put, want the %d stored before", n, before)
				}
				rec.reset(syncCall{})
				if rc := mustPut(t, b, p, noClaims); rc.Deduplicated != c.dedup {
					t.Fatalf("put after the failed put: Deduplicated = %v, want %v", rc.Deduplicated, c.dedup)
				}
			})
		}
	}
}

func countObjects(t *testing.T, b *Backend) int {
	t.Helper()
	n := 0
	if err := b.Walk(t.Context(), func(storage.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDeleteAndQuarantineFsync: Delete fsyncs the directory that lost the
// entry, Quarantine both directories of the move, and a failure of either
// fsync is reported.
func TestDeleteAndQuarantineFsync(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	p, q := []byte("to delete"), []byte("to quarantine")
	a, qa := mustPut(t, b, p, noClaims).Address, mustPut(t, b, q, noClaims).Address
	rec := recordSyncs(b, a)
	// The last object of its shards: both shard levels go, the algorithm
	// directory lost the entry.
	if existed, err := b.Delete(t.Context(), a); err != nil || !existed {
		t.Fatalf("Delete: %v %v", existed, err)
	}
	checkSyncs(t, "delete", rec.seen(), []syncCall{{syncDeletedFromDir, "blake3", false}})

	rec = recordSyncs(b, qa)
	dest, err := b.Quarantine(t.Context(), qa)
	if err != nil {
		t.Fatal(err)
	}
	checkSyncs(t, "quarantine", rec.seen(), []syncCall{
		{syncQuarantineDir, path.Dir(dest), false}, {syncQuarantinedFromDir, path.Dir(ObjectPath(qa)), false},
	})

	// The same fsyncs, failing.
	c := mustPut(t, b, q, noClaims).Address
	rec = recordSyncs(b, c)
	rec.reset(syncCall{kind: syncDeletedFromDir, name: "blake3"})
	if _, err := b.Delete(t.Context(), c); rec.matched == 0 || !errors.Is(err, errInjected) {
		t.Fatalf("Delete with the fsync of blake3 failing: %v (fsyncs seen %v); want that fsync's error", err, rec.seen())
	}
	c = mustPut(t, b, q, noClaims).Address
	rec = recordSyncs(b, c)
	rec.reset(syncCall{kind: syncQuarantineDir, name: path.Join(quarantineDir, path.Dir(ObjectPath(c)))})
	if _, err := b.Quarantine(t.Context(), c); rec.matched == 0 || !errors.Is(err, errInjected) {
		t.Fatalf("Quarantine with the fsync of the quarantine directory failing: %v (fsyncs seen %v); want that fsync's error", err, rec.seen())
	}
}

func TestQuarantine(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	b := openTest(t, WithClock(func() time.Time { return now }))
	rc := mustPut(t, b, []byte("orphan"), noClaims)
	rel := ObjectPath(rc.Address)
	dest, err := b.Quarantine(t.Context(), rc.Address)
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
	// An object's tree goes with it.
	big := mustPut(t, b, bytes.Repeat([]byte("orphan with a tree "), blaketree.GroupSize/9), noClaims)
	if _, err := b.Quarantine(t.Context(), big.Address); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b.Root(), filepath.FromSlash(treeRel(ObjectPath(big.Address))))); !os.IsNotExist(err) {
		t.Fatalf("the quarantined object's tree stayed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b.Root(), ".quarantine", filepath.FromSlash(treeRel(ObjectPath(big.Address)))+".20260304T050607.000000008Z")); err != nil {
		t.Fatalf("the object's tree is not in quarantine: %v", err)
	}
	// A stray file that is not an object can be quarantined too.
	if err := os.WriteFile(filepath.Join(b.Root(), "blake3", "junk"), []byte("j"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := b.quarantine(t.Context(), "blake3/junk"); err != nil {
		t.Fatalf("Quarantine stray file: %v", err)
	}
	for _, bad := range []string{"", ".", "../x", "/etc/passwd", "blake3/../../x", dest, "blake3", "sha256/none"} {
		if _, err := b.quarantine(t.Context(), bad); err == nil {
			t.Errorf("Quarantine(%q) succeeded", bad)
		}
	}
}

// TestPutTreeFsyncs: PutTree syncs the tree's temp file before the rename
// and the directory after it, and a failure of either fails PutTree and
// leaves no temp file.
func TestPutTreeFsyncs(t *testing.T) {
	t.Parallel()
	b := openTest(t)
	p := bytes.Repeat([]byte("tree to rewrite "), 3*blaketree.GroupSize/16)
	a := mustPut(t, b, p, noClaims).Address
	want := []syncCall{{syncTreeFile, tmpAny, true}, {syncTreeDir, path.Dir(ObjectPath(a)), true}}
	rec := recordSyncs(b, a)
	tree, err := b.Tree(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	good := make([]byte, tree.Size())
	tree.ReadAt(good, 0)
	tree.Close()
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	if err := b.PutTree(t.Context(), a, treeBytes(bad)); err != nil {
		t.Fatal(err)
	}
	checkSyncs(t, "PutTree", rec.seen(), want)
	for _, fail := range want {
		rec.reset(fail)
		if err := b.PutTree(t.Context(), a, treeBytes(good)); !errors.Is(err, errInjected) {
			t.Fatalf("PutTree with the fsync %v failing: %v, want that fsync's error", fail, err)
		}
		if left := tmpEntries(t, b); len(left) != 0 {
			t.Fatalf("temp dir holds %v after the failed PutTree", left)
		}
	}
}

type treeBytes []byte

func (b treeBytes) Size() int64 { return int64(len(b)) }

func (b treeBytes) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(b)
	return int64(n), err
}

func readObject(t *testing.T, b *Backend, a digest.Address) []byte {
	t.Helper()
	rc, err := b.Get(t.Context(), a, nil)
	if err != nil {
		t.Fatalf("Get(%s): %v", a, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return got
}
