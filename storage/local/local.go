// Package local is the storage backend on a local filesystem.
//
// Layout under the root:
//
//	<root>/<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>       stored objects (read-only files)
//	<root>/<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>.bao   their BLAKE3 trees (Bao outboard)
//	<root>/.tmp/                                         files being written
//	<root>/.quarantine/                                  files no row knows, kept for a reaper
//
// Every path is opened through an os.Root at the root, so no file name, and
// no symbolic link planted under the root, reaches a file outside it; and
// only a parsed digest.Address becomes an object path.
//
// A put (storage.Putter over Create) writes a temp file in .tmp (same
// filesystem) while the putter hashes it; Commit fsyncs the file, writes
// and fsyncs the tree's temp file (objects of one chunk group have no
// tree file), renames the tree next to the object's place, links the
// object under its content address, and fsyncs the shard directory and
// the parent of every shard directory it created. The tree is in place
// before the object, and Delete removes the object before its tree, so an
// object is never visible without its tree (objects stored before trees
// existed have none until the data plane adds one). A failed fsync fails
// that put; it is never retried.
// Linking (rather than renaming) makes "store unless present" atomic: a
// concurrent or repeated put of the same content finds the existing file
// and leaves it untouched. A repair (storage.CommitReplace) renames the
// tree and then the object over the stored ones instead.
//
// Each writer holds an flock on its temp file, so Open can remove the temp
// files of crashed writers without touching those of a live process that
// shares the root.
package local

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

const (
	// DefaultID is the backend id unless WithID says otherwise.
	DefaultID = "local"

	tmpDir        = ".tmp"
	quarantineDir = ".quarantine"
	tmpPrefix     = "put-"

	treeSuffix = ".bao"
	dirPerm    = 0o750
	filePerm   = 0o440 // objects are immutable
	linkTries  = 8     // attempts when a concurrent delete removes the shard directory
)

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
)

// Option configures Open.
type Option func(*Backend)

// WithID sets the backend id (default "local").
func WithID(id string) Option { return func(b *Backend) { b.id = id } }

// WithClock sets the clock used to stamp quarantined files (default
// time.Now).
func WithClock(now func() time.Time) Option { return func(b *Backend) { b.now = now } }

// Backend stores objects under a root directory. It is safe for concurrent
// use, also by several processes sharing one root.
type Backend struct {
	id   string
	path string
	root *os.Root
	now  func() time.Time

	cleaned int
	putter  *storage.Putter

	// fsync fsyncs f, the file or directory name (relative to the root)
	// in the role kind. Tests replace it to see which fsyncs happen and to
	// make one named fsync fail.
	fsync func(kind syncKind, name string, f *os.File) error
	// dirSyncs shares the fsyncs of a directory between concurrent puts.
	dirSyncs *dirSyncer
}

// syncKind names the role of one fsync call site, so that a test can make
// exactly that fsync fail (and see that it happens) whatever the others do.
type syncKind string

const (
	// syncTempFile: a put's temp file, after its last byte and before it
	// is linked under its address.
	syncTempFile syncKind = "temp file"
	// syncLeafDir: the shard directory that got (or, for a deduplicated
	// put, holds) the object's entry.
	syncLeafDir syncKind = "leaf directory"
	// syncNewDirParent: the parent of a shard directory the put created.
	syncNewDirParent syncKind = "parent of a new directory"
	// syncAncestorDir: an ancestor of the leaf directory, up to the root,
	// when a put found its object already in place.
	syncAncestorDir syncKind = "ancestor of an existing leaf"
	// syncDeletedFromDir: the directory that lost an entry in Delete.
	syncDeletedFromDir syncKind = "directory of a deleted entry"
	// syncQuarantineDir: the quarantine directory that got a file.
	syncQuarantineDir syncKind = "quarantine directory"
	// syncQuarantinedFromDir: the directory a quarantined file left.
	syncQuarantinedFromDir syncKind = "directory of a quarantined file"
	// syncTreeFile: the temp file of an object's tree, after its last
	// byte and before it is renamed next to the object.
	syncTreeFile syncKind = "tree temp file"
	// syncTreeDir: the shard directory whose tree PutTree replaced.
	syncTreeDir syncKind = "directory of a rewritten tree"
)

// syncOS is the fsync of a Backend outside tests.
func syncOS(_ syncKind, _ string, f *os.File) error { return f.Sync() }

// Open opens (creating when needed) the store rooted at root and removes
// temp files left by crashed writers; CleanedTemp says how many.
func Open(root string, opts ...Option) (*Backend, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("local: resolve root %q: %w", root, err)
	}
	if err := os.MkdirAll(abs, dirPerm); err != nil {
		return nil, fmt.Errorf("local: create root %s: %w; check the data directory setting and its permissions", abs, err)
	}
	r, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("local: open root %s: %w", abs, err)
	}
	b := &Backend{
		id:       DefaultID,
		path:     abs,
		root:     r,
		now:      time.Now,
		fsync:    syncOS,
		dirSyncs: newDirSyncer(),
		putter:   storage.NewPutter(),
	}
	for _, o := range opts {
		o(b)
	}
	if b.id == "" {
		r.Close()
		return nil, errors.New("local: empty backend id; pass a non-empty id to WithID")
	}
	if err := r.Mkdir(tmpDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		r.Close()
		return nil, fmt.Errorf("local: create %s: %w", filepath.Join(abs, tmpDir), err)
	}
	if b.cleaned, err = b.cleanTemp(); err != nil {
		r.Close()
		return nil, err
	}
	return b, nil
}

// ID returns the backend id.
func (b *Backend) ID() string { return b.id }

// Root returns the absolute path of the root directory.
func (b *Backend) Root() string { return b.path }

// CleanedTemp returns how many leftover temp files Open removed.
func (b *Backend) CleanedTemp() int { return b.cleaned }

// Close releases the root directory handle. The Backend is unusable after.
func (b *Backend) Close() error { return b.root.Close() }

// cleanTemp removes every regular file in .tmp that no live writer holds
// locked.
func (b *Backend) cleanTemp() (int, error) {
	d, err := b.root.Open(tmpDir)
	if err != nil {
		return 0, fmt.Errorf("local: open temp dir: %w", err)
	}
	defer d.Close()
	n := 0
	for {
		ents, err := d.ReadDir(256)
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			name := path.Join(tmpDir, e.Name())
			removed, rerr := b.removeIfUnlocked(name)
			if rerr != nil {
				return n, rerr
			}
			if removed {
				n++
			}
		}
		if errors.Is(err, io.EOF) || len(ents) == 0 {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("local: list temp dir: %w", err)
		}
	}
}

func (b *Backend) removeIfUnlocked(name string) (bool, error) {
	f, err := b.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("local: open leftover temp file %s: %w", name, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil // a live writer's
		}
		return false, fmt.Errorf("local: lock leftover temp file %s: %w", name, err)
	}
	if err := b.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("local: remove leftover temp file %s: %w", name, err)
	}
	return true, nil
}

// createTemp creates and locks a new temp file.
func (b *Backend) createTemp() (*os.File, string, error) {
	name := path.Join(tmpDir, tmpPrefix+rand.Text())
	f, err := b.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return nil, "", fmt.Errorf("local: create temp file in %s: %w", filepath.Join(b.path, tmpDir), err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		b.root.Remove(name)
		return nil, "", fmt.Errorf("local: lock temp file %s: %w", name, err)
	}
	return f, name, nil
}

// Put stores the stream r through a storage.Putter (see there): a
// convenience for tools and tests that hold this backend.
func (b *Backend) Put(ctx context.Context, r io.Reader, opts storage.PutOptions) (storage.Receipt, error) {
	return b.putter.Put(ctx, b, r, opts)
}

// Create implements storage.Backend: the object's bytes go to a locked
// temp file in .tmp. The hints are not needed: a rename puts the file in
// place at no cost once its address is known.
func (b *Backend) Create(ctx context.Context, _ storage.CreateOptions) (storage.ObjectWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, name, err := b.createTemp()
	if err != nil {
		return nil, err
	}
	return &objectWriter{b: b, f: f, tmpName: name}, nil
}

// objectWriter writes one object into a temp file; Commit fsyncs it and
// links it under its content address, next to its tree.
type objectWriter struct {
	b       *Backend
	f       *os.File
	tmpName string
	n       int64
	started int64 // bytes handed to writeback so far
	done    bool
}

// Write appends p to the temp file, handing every writebackChunk bytes to
// the kernel's writeback so that the final fsync has little left to do.
func (w *objectWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errors.New("local: write after Commit or Abort")
	}
	if w.n-w.started >= writebackChunk {
		startWriteback(w.f, w.started, w.n-w.started)
		w.started = w.n
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("local: write temp file: %w", err)
	}
	return n, nil
}

// Abort removes the temp file. The temp name goes in every case: after a
// successful link the object keeps the inode under its final name.
func (w *objectWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.f.Close()
	if err := w.b.root.Remove(w.tmpName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local: remove temp file %s: %w", w.tmpName, err)
	}
	return nil
}

// Commit implements storage.ObjectWriter: fsync the object's temp file,
// write and fsync its tree's, then put the tree in place before linking
// the object, and fsync the shard directory (and the parent of every
// directory created) once for both. With storage.CommitReplace the tree
// and then the object are renamed over whatever is stored (see replace).
func (w *objectWriter) Commit(ctx context.Context, addr digest.Address, tree storage.TreeSource, mode storage.CommitMode) (storage.Committed, error) {
	if w.done {
		return storage.Committed{}, errors.New("local: Commit after Commit or Abort")
	}
	defer w.Abort()
	b := w.b
	if err := storage.ValidateAddress(addr); err != nil {
		return storage.Committed{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.Committed{}, err
	}
	if err := b.fsync(syncTempFile, w.tmpName, w.f); err != nil {
		return storage.Committed{}, fmt.Errorf("local: fsync temp file: %w; the object was not stored, check the disk", err)
	}
	fi, err := w.f.Stat()
	if err != nil {
		return storage.Committed{}, fmt.Errorf("local: stat temp file: %w", err)
	}
	rel := ObjectPath(addr)
	if mode == storage.CommitReplace {
		if err := b.replace(w.tmpName, rel, tree); err != nil {
			return storage.Committed{}, fmt.Errorf("local: replace %s: %w", addr, err)
		}
		return storage.Committed{StoredAt: fi.ModTime()}, nil
	}
	// Content already stored: leave it, and give it the tree it lacks.
	if ofi, err := b.root.Stat(rel); err == nil && ofi.Mode().IsRegular() {
		if err := b.addMissingTree(rel, tree); err != nil {
			return storage.Committed{}, fmt.Errorf("local: store %s: %w", addr, err)
		}
		if err := b.syncExisting(path.Dir(rel)); err != nil {
			return storage.Committed{}, fmt.Errorf("local: store %s: %w", addr, err)
		}
		return storage.Committed{StoredAt: ofi.ModTime(), Deduplicated: true}, nil
	}
	tmpTree := ""
	if tree != nil {
		if tmpTree, err = b.writeTreeTemp(tree); err != nil {
			return storage.Committed{}, fmt.Errorf("local: store %s: %w", addr, err)
		}
		defer b.root.Remove(tmpTree)
	}
	storedAt, dedup, err := b.place(w.tmpName, rel, tmpTree, fi.ModTime())
	if err != nil {
		return storage.Committed{}, fmt.Errorf("local: store %s: %w", addr, err)
	}
	return storage.Committed{StoredAt: storedAt, Deduplicated: dedup}, nil
}

// ObjectPath is the slash-separated path of the object at addr below the
// root: "<alg>/<hex[0:2]>/<hex[2:4]>/<hex>". It is this backend's layout
// (two shard levels keep directories small), not the address's: an
// Address can only be built from a known algorithm and 32 raw bytes, so
// the path never holds "..", a separator inside a component, or anything
// but lowercase hex. It panics on the zero Address.
func ObjectPath(addr digest.Address) string {
	if addr.IsZero() {
		panic("local: ObjectPath of the zero Address")
	}
	h := addr.Hex()
	return path.Join(addr.Algorithm().String(), h[0:2], h[2:4], h)
}

// treeRel is where the tree of the object at rel lives: next to it, under
// a name that is not an address (so Walk skips it).
func treeRel(rel string) string { return rel + treeSuffix }

// writeTreeTemp writes tree to a new temp file and fsyncs it.
func (b *Backend) writeTreeTemp(tree storage.TreeSource) (string, error) {
	f, name, err := b.createTemp()
	if err != nil {
		return "", err
	}
	defer f.Close()
	n, err := tree.WriteTo(f)
	if err == nil && n != tree.Size() {
		err = fmt.Errorf("the tree wrote %d bytes, not the %d it announced", n, tree.Size())
	}
	if err == nil {
		if err = b.fsync(syncTreeFile, name, f); err != nil {
			err = fmt.Errorf("fsync the tree's temp file: %w; check the disk", err)
		}
	}
	if err != nil {
		b.root.Remove(name)
		return "", fmt.Errorf("write the tree: %w", err)
	}
	return name, nil
}

// addMissingTree stores tree next to the existing object at rel unless a
// tree is there already. The caller fsyncs the directory.
func (b *Backend) addMissingTree(rel string, tree storage.TreeSource) error {
	if tree == nil {
		return nil
	}
	if _, err := b.root.Lstat(treeRel(rel)); err == nil {
		return nil
	}
	tmpTree, err := b.writeTreeTemp(tree)
	if err != nil {
		return err
	}
	if err := b.root.Rename(tmpTree, treeRel(rel)); err != nil {
		b.root.Remove(tmpTree)
		return fmt.Errorf("put the tree in place: %w", err)
	}
	return nil
}

// replace puts the fsynced temp file tmpName at rel, over whatever is
// there, with tree (written to its own fsynced temp file first) renamed
// over the stored tree before it; an object without tree nodes loses any
// stale tree file. Each rename is atomic, so a reader that opens the
// object gets the old file or the new one whole (a reader holding the old
// file keeps reading it). One fsync of the shard directory makes both
// renames durable; shard directories are created as needed (the parent
// of each created one fsynced too), and a concurrent delete that removes
// a shard directory meanwhile makes it try again.
func (b *Backend) replace(tmpName, rel string, tree storage.TreeSource) error {
	tmpTree := ""
	if tree != nil {
		var err error
		if tmpTree, err = b.writeTreeTemp(tree); err != nil {
			return err
		}
		defer b.root.Remove(tmpTree)
	}
	if fi, err := b.root.Lstat(rel); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s exists but is not a regular file (%v); quarantine it", rel, fi.Mode().Type())
	}
	dir := path.Dir(rel)
	var created []string
	for attempt := 1; ; attempt++ {
		var err error
		if tmpTree != "" {
			err = b.root.Rename(tmpTree, treeRel(rel))
			if err == nil {
				tmpTree = ""
			}
		} else if tree == nil {
			if rerr := b.root.Remove(treeRel(rel)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = fmt.Errorf("remove the stale tree: %w", rerr)
			}
		}
		if err == nil {
			err = b.root.Rename(tmpName, rel)
		}
		switch {
		case err == nil:
			if err := b.syncNew(dir, created); err != nil {
				// Not durable: take the new copy back, so that a retry
				// stores it again rather than trusting an entry that
				// may not survive a crash.
				b.root.Remove(rel)
				return err
			}
			return nil
		case errors.Is(err, fs.ErrNotExist):
			if _, serr := b.root.Lstat(tmpName); serr != nil {
				return fmt.Errorf("temp file %s vanished (did another process open this root and clean it?): %w", tmpName, serr)
			}
			c, merr := b.mkdirs(dir)
			created = append(created, c...)
			if merr != nil && !errors.Is(merr, fs.ErrNotExist) {
				return merr
			}
		default:
			return err
		}
		if attempt >= linkTries {
			return fmt.Errorf("gave up after %d attempts racing with deletes in %s: %w", attempt, dir, err)
		}
	}
}

// writebackChunk is how many written bytes of a large object are handed to
// the kernel's writeback at a time, so that the disk writes while the rest
// of the stream arrives and the final fsync has little left to do.
const writebackChunk = 8 << 20

// startWriteback asks the kernel to start writing off..off+n of f to disk
// without waiting (sync_file_range with SYNC_FILE_RANGE_WRITE). It is only
// a head start: durability still comes from the fsync after the last
// byte, which also reports any write error, so a failure here is ignored.
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}

// place links the fsynced temp file under rel unless a file is already
// there, creating shard directories as needed, and makes the new entry
// durable. The fsynced tree temp file tmpTree, when not empty, is renamed
// next to it first (replacing a tree a crashed delete left behind), so
// the object is never visible without its tree; one fsync of the shard
// directory makes both entries durable. It returns the stored time of the
// object it left at rel and whether that object was already there.
func (b *Backend) place(tmpName, rel, tmpTree string, mtime time.Time) (time.Time, bool, error) {
	dir := path.Dir(rel)
	var created []string
	for attempt := 1; ; attempt++ {
		var err error
		if tmpTree != "" {
			// A directory holding the tree is not empty, so no delete
			// removes it before the link below.
			if err = b.root.Rename(tmpTree, treeRel(rel)); err == nil {
				tmpTree = ""
			}
		}
		if err == nil {
			err = b.root.Link(tmpName, rel)
		}
		switch {
		case err == nil:
			if err := b.syncNew(dir, created); err != nil {
				// Not durable: take the object back so that a retry writes
				// and syncs it again instead of deduplicating against it.
				b.root.Remove(rel)
				return time.Time{}, false, err
			}
			return mtime, false, nil
		case errors.Is(err, fs.ErrExist):
			fi, serr := b.root.Stat(rel)
			if serr == nil {
				if !fi.Mode().IsRegular() {
					return time.Time{}, false, fmt.Errorf("%s exists but is not a regular file; quarantine it", rel)
				}
				// The put that linked it may not have synced its directories
				// yet; this receipt must not promise more than the disk has.
				if err := b.syncExisting(dir); err != nil {
					return time.Time{}, false, err
				}
				return fi.ModTime(), true, nil
			}
			if !errors.Is(serr, fs.ErrNotExist) {
				return time.Time{}, false, serr
			}
			// Deleted between link and stat: try again.
		case errors.Is(err, fs.ErrNotExist):
			if _, serr := b.root.Lstat(tmpName); serr != nil {
				return time.Time{}, false, fmt.Errorf("temp file %s vanished (did another process open this root and clean it?): %w", tmpName, serr)
			}
			if tmpTree != "" {
				if _, serr := b.root.Lstat(tmpTree); serr != nil {
					return time.Time{}, false, fmt.Errorf("temp file %s vanished (did another process open this root and clean it?): %w", tmpTree, serr)
				}
			}
			c, merr := b.mkdirs(dir)
			created = append(created, c...)
			if merr != nil && !errors.Is(merr, fs.ErrNotExist) {
				return time.Time{}, false, merr
			}
			// ErrNotExist: a concurrent delete removed a parent; go again.
		case isLinkUnsupported(err):
			return b.placeByRename(tmpName, rel, tmpTree, mtime)
		default:
			return time.Time{}, false, err
		}
		if attempt >= linkTries {
			return time.Time{}, false, fmt.Errorf("gave up after %d attempts racing with deletes in %s: %w", attempt, dir, err)
		}
	}
}

func isLinkUnsupported(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP)
}

// placeByRename is place for filesystems without hard links. Its check for
// an existing object and the rename are not one atomic step, so two
// concurrent puts of the same content may both report a new object; the
// bytes are the same either way.
func (b *Backend) placeByRename(tmpName, rel, tmpTree string, mtime time.Time) (time.Time, bool, error) {
	dir := path.Dir(rel)
	if fi, err := b.root.Stat(rel); err == nil && fi.Mode().IsRegular() {
		if err := b.syncExisting(dir); err != nil {
			return time.Time{}, false, err
		}
		return fi.ModTime(), true, nil
	}
	created, err := b.mkdirs(dir)
	if err != nil {
		return time.Time{}, false, err
	}
	if tmpTree != "" {
		if err := b.root.Rename(tmpTree, treeRel(rel)); err != nil {
			return time.Time{}, false, err
		}
	}
	if err := b.root.Rename(tmpName, rel); err != nil {
		return time.Time{}, false, err
	}
	if err := b.syncNew(dir, created); err != nil {
		b.root.Remove(rel)
		return time.Time{}, false, err
	}
	return mtime, false, nil
}

// syncNew fsyncs the shard directory dir that just got an entry, then the
// parent of every directory in created, innermost first.
func (b *Backend) syncNew(dir string, created []string) error {
	if err := b.syncDir(syncLeafDir, dir); err != nil {
		return err
	}
	for i := len(created) - 1; i >= 0; i-- {
		if err := b.syncDir(syncNewDirParent, path.Dir(created[i])); err != nil {
			return err
		}
	}
	return nil
}

// syncExisting fsyncs the shard directory dir and its ancestors up to the
// root, so that an object found in place is durable whoever linked it.
func (b *Backend) syncExisting(dir string) error {
	for kind := syncLeafDir; ; kind = syncAncestorDir {
		if err := b.syncDir(kind, dir); err != nil {
			return err
		}
		if dir == "." {
			return nil
		}
		dir = path.Dir(dir)
	}
}

// mkdirs creates dir and its missing parents one level at a time and
// returns the ones it created, outermost first.
func (b *Backend) mkdirs(dir string) ([]string, error) {
	var created []string
	for i := 0; i <= len(dir); i++ {
		if i < len(dir) && dir[i] != '/' {
			continue
		}
		p := dir[:i]
		err := b.root.Mkdir(p, dirPerm)
		switch {
		case err == nil:
			created = append(created, p)
		case errors.Is(err, fs.ErrExist):
		default:
			return created, fmt.Errorf("create directory %s: %w", p, err)
		}
	}
	return created, nil
}

// syncDir fsyncs the directory dir under the root, in the role kind, or
// shares an fsync of it that starts after this call with concurrent
// callers (see dirSyncer).
func (b *Backend) syncDir(kind syncKind, dir string) error {
	return b.dirSyncs.sync(dirKey{kind, dir}, func() error {
		d, err := b.root.Open(dir)
		if err != nil {
			return fmt.Errorf("open directory %s for fsync: %w", dir, err)
		}
		defer d.Close()
		if err := b.fsync(kind, dir, d); err != nil {
			return fmt.Errorf("fsync directory %s: %w; the write is not durable, check the disk", dir, err)
		}
		return nil
	})
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, addr digest.Address, rng *storage.Range) (io.ReadCloser, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, fi, err := b.openObject(addr)
	if err != nil {
		return nil, err
	}
	if rng == nil {
		return f, nil
	}
	off, n, err := rng.Resolve(fi.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("local: get %s: %w", addr, err)
	}
	return &sectionCloser{SectionReader: io.NewSectionReader(f, off, n), f: f}, nil
}

type sectionCloser struct {
	*io.SectionReader
	f *os.File
}

func (s *sectionCloser) Close() error { return s.f.Close() }

func (b *Backend) openObject(addr digest.Address) (*os.File, fs.FileInfo, error) {
	f, err := b.root.Open(ObjectPath(addr))
	if err != nil {
		return nil, nil, b.objectErr("open", addr, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, b.objectErr("stat", addr, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("local: %s is not a regular file (%v); quarantine it", addr, fi.Mode().Type())
	}
	return f, fi, nil
}

func (b *Backend) objectErr(op string, addr digest.Address, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local: %s: %w", addr, storage.ErrNotFound)
	}
	return fmt.Errorf("local: %s %s: %w", op, addr, err)
}

// Tree implements storage.Backend.
func (b *Backend) Tree(ctx context.Context, addr digest.Address) (storage.TreeReader, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rel := ObjectPath(addr)
	f, err := b.root.Open(treeRel(rel))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := b.root.Stat(rel); serr != nil {
			return nil, b.objectErr("stat", addr, serr)
		}
		return nil, fmt.Errorf("local: %s: %w", addr, storage.ErrNoTree)
	}
	if err != nil {
		return nil, fmt.Errorf("local: open the tree of %s: %w", addr, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("local: stat the tree of %s: %w", addr, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("local: the tree of %s is not a regular file (%v); quarantine it", addr, fi.Mode().Type())
	}
	return &treeFile{File: f, size: fi.Size()}, nil
}

type treeFile struct {
	*os.File
	size int64
}

func (t *treeFile) Size() int64 { return t.size }

// PutTree implements storage.Backend: the tree is written to a temp file,
// fsynced, renamed over the stored one, and the directory fsynced.
func (b *Backend) PutTree(ctx context.Context, addr digest.Address, tree storage.TreeSource) error {
	if err := storage.ValidateAddress(addr); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rel := ObjectPath(addr)
	if fi, err := b.root.Stat(rel); err != nil {
		return b.objectErr("stat", addr, err)
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("local: %s is not a regular file (%v); quarantine it", addr, fi.Mode().Type())
	}
	tmpTree, err := b.writeTreeTemp(tree)
	if err != nil {
		return fmt.Errorf("local: tree of %s: %w", addr, err)
	}
	if err := b.root.Rename(tmpTree, treeRel(rel)); err != nil {
		b.root.Remove(tmpTree)
		return fmt.Errorf("local: put the tree of %s in place: %w", addr, err)
	}
	if err := b.syncDir(syncTreeDir, path.Dir(rel)); err != nil {
		return fmt.Errorf("local: tree of %s: %w", addr, err)
	}
	return nil
}

// Head implements storage.Backend.
func (b *Backend) Head(ctx context.Context, addr digest.Address) (storage.ObjectInfo, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return storage.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, err
	}
	fi, err := b.root.Stat(ObjectPath(addr))
	if err != nil {
		return storage.ObjectInfo{}, b.objectErr("stat", addr, err)
	}
	if !fi.Mode().IsRegular() {
		return storage.ObjectInfo{}, fmt.Errorf("local: %s is not a regular file (%v); quarantine it", addr, fi.Mode().Type())
	}
	return storage.ObjectInfo{Address: addr, Size: fi.Size(), StoredAt: fi.ModTime()}, nil
}

// Delete implements storage.Backend. It removes shard directories the
// delete left empty and fsyncs the directory that lost the entry.
func (b *Backend) Delete(ctx context.Context, addr digest.Address) (bool, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	rel := ObjectPath(addr)
	if err := b.root.Remove(rel); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			// A crash between the two removes may have left the tree.
			b.root.Remove(treeRel(rel))
			return false, nil
		}
		return false, fmt.Errorf("local: delete %s: %w", addr, err)
	}
	if err := b.root.Remove(treeRel(rel)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("local: delete the tree of %s: %w", addr, err)
	}
	// Remove emptied shard directories, never the algorithm directory. A
	// directory that is not empty (or is being filled by a concurrent put,
	// which retries) stays.
	dir := path.Dir(rel)
	for range 2 {
		if err := b.root.Remove(dir); err != nil {
			break
		}
		dir = path.Dir(dir)
	}
	if err := b.syncDir(syncDeletedFromDir, dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("local: delete %s: %w", addr, err)
	}
	return true, nil
}

// Health implements storage.Backend. The backend is unhealthy when the root
// directory is gone or was replaced, or when its temp directory is missing.
func (b *Backend) Health(ctx context.Context) storage.Health {
	fi, err := os.Stat(b.path)
	if err != nil {
		return storage.Health{Detail: fmt.Sprintf("root %s is gone: %v; restore the data directory and restart", b.path, err)}
	}
	rfi, err := b.root.Stat(".")
	if err != nil || !os.SameFile(fi, rfi) {
		return storage.Health{Detail: fmt.Sprintf("root %s was removed or replaced since it was opened; restart to use the new directory", b.path)}
	}
	if _, err := b.root.Stat(tmpDir); err != nil {
		return storage.Health{Detail: fmt.Sprintf("temp directory %s is missing: %v; restart to recreate it", filepath.Join(b.path, tmpDir), err)}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(b.path, &st); err != nil {
		return storage.Health{Detail: fmt.Sprintf("statfs %s: %v", b.path, err)}
	}
	bs := uint64(st.Bsize)
	free := uint64(st.Bavail) * bs
	used := (uint64(st.Blocks) - uint64(st.Bfree)) * bs
	return storage.Health{Healthy: true, Detail: "ok", FreeBytes: free, UsedBytes: used}
}
