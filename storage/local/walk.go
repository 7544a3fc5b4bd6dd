package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

// Walk implements storage.Lister. It visits the regular files whose path is
// a valid content address under the algorithm directories; .tmp,
// .quarantine and anything that is not shaped like an object are skipped.
// Directories are read in batches, so memory does not grow with the store.
func (b *Backend) Walk(ctx context.Context, fn func(storage.ObjectInfo) error) error {
	for _, alg := range digest.Algorithms {
		err := b.walkDir(ctx, alg.String(), 0, func(rel string, e fs.DirEntry) error {
			name := path.Base(rel)
			addr, err := digest.Parse(alg.String() + ":" + name)
			if err != nil || ObjectPath(addr) != rel {
				return nil
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil // deleted while walking
			}
			if err != nil {
				return fmt.Errorf("local: walk: stat %s: %w", rel, err)
			}
			return fn(storage.ObjectInfo{Address: addr, Size: fi.Size(), StoredAt: fi.ModTime()})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// walkDir calls fn for every regular file three levels below the algorithm
// directory dir.
func (b *Backend) walkDir(ctx context.Context, dir string, depth int, fn func(string, fs.DirEntry) error) error {
	d, err := b.root.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("local: walk: open %s: %w", dir, err)
	}
	defer d.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, rerr := d.ReadDir(256)
		for _, e := range ents {
			rel := path.Join(dir, e.Name())
			switch {
			case depth < 2 && e.IsDir() && isShard(e.Name()):
				if err := b.walkDir(ctx, rel, depth+1, fn); err != nil {
					return err
				}
			case depth == 2 && e.Type().IsRegular():
				if err := fn(rel, e); err != nil {
					return err
				}
			}
		}
		if errors.Is(rerr, io.EOF) || len(ents) == 0 {
			return nil
		}
		if rerr != nil {
			return fmt.Errorf("local: walk: list %s: %w", dir, rerr)
		}
	}
}

func isShard(name string) bool {
	if len(name) != 2 {
		return false
	}
	for i := range len(name) {
		c := name[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Quarantine moves the object at addr (and its tree) to
// .quarantine/<its path>.<UTC time>, where an operator can inspect it,
// and returns the new path relative to the root. It is meant for objects
// no record knows (the reaper's orphans).
func (b *Backend) Quarantine(ctx context.Context, addr digest.Address) (string, error) {
	return b.quarantine(ctx, ObjectPath(addr))
}

// quarantine moves the file at relPath (slash-separated, relative to the
// root) to .quarantine/<relPath>.<UTC time> and returns the new path; it
// refuses directories and paths under .quarantine. An object's tree
// (relPath.bao) goes with it.
func (b *Backend) quarantine(ctx context.Context, relPath string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if !fs.ValidPath(relPath) || relPath == "." {
		return "", fmt.Errorf("local: quarantine %q: not a slash-separated path inside the root (no leading /, no ..)", relPath)
	}
	if relPath == quarantineDir || strings.HasPrefix(relPath, quarantineDir+"/") {
		return "", fmt.Errorf("local: quarantine %q: already quarantined", relPath)
	}
	fi, err := b.root.Lstat(relPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("local: quarantine %q: %w", relPath, storage.ErrNotFound)
		}
		return "", fmt.Errorf("local: quarantine %q: %w", relPath, err)
	}
	if fi.IsDir() {
		return "", fmt.Errorf("local: quarantine %q: is a directory; quarantine the files in it", relPath)
	}
	stamp := "." + b.now().UTC().Format("20060102T150405.000000000Z")
	dest := path.Join(quarantineDir, relPath+stamp)
	if err := b.root.MkdirAll(path.Dir(dest), dirPerm); err != nil {
		return "", fmt.Errorf("local: quarantine %q: create %s: %w", relPath, path.Dir(dest), err)
	}
	if err := b.root.Rename(relPath, dest); err != nil {
		return "", fmt.Errorf("local: quarantine %q: %w", relPath, err)
	}
	if tree := treeRel(relPath); !strings.HasSuffix(relPath, treeSuffix) {
		if err := b.root.Rename(tree, path.Join(quarantineDir, tree+stamp)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return dest, fmt.Errorf("local: quarantine the tree of %q: %w", relPath, err)
		}
	}
	for _, d := range []struct {
		kind syncKind
		dir  string
	}{{syncQuarantineDir, path.Dir(dest)}, {syncQuarantinedFromDir, path.Dir(relPath)}} {
		if err := b.syncDir(d.kind, d.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return dest, fmt.Errorf("local: quarantine %q: %w", relPath, err)
		}
	}
	return dest, nil
}
