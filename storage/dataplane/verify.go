package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
)

// TreeState is what Verify found of an object's stored tree.
type TreeState string

// Tree states of a VerifyResult.
const (
	// TreeOK: the stored tree is the tree of the verified bytes.
	TreeOK TreeState = "ok"
	// TreeNone: the object is one chunk group; its tree has no nodes and
	// none is stored.
	TreeNone TreeState = "none"
	// TreeBuilt: the object had no stored tree (stored before trees
	// existed); the tree of the verified bytes was stored.
	TreeBuilt TreeState = "built"
	// TreeRebuilt: the stored tree was damaged (TreeDetail says how); the
	// tree of the verified bytes replaced it.
	TreeRebuilt TreeState = "rebuilt"
	// TreeUnchecked: the bytes failed, so their tree proves nothing.
	TreeUnchecked TreeState = "unchecked"
)

// VerifyResult is the verdict on one object.
type VerifyResult struct {
	Address   digest.Address
	BackendID string
	// Verified is true when every known digest and the size match.
	Verified bool
	// Missing is true when the backend does not hold the object.
	Missing bool
	// Reason says what differed (or that the object is missing); empty
	// when verified.
	Reason string
	// Actual holds the digests and size of the bytes read; zero when
	// missing.
	Actual digest.Digests
	// Tree is what became of the stored tree; TreeDetail says what was
	// wrong with it when it was rebuilt.
	Tree       TreeState
	TreeDetail string
}

// Verify re-reads the object at addr on backend backendID ("" = default),
// recomputes both digests, the size and the BLAKE3 tree in one streaming
// pass (memory does not grow with the object), compares them with the
// address's own digest and with everything exp knows, and checks the
// stored tree against the computed one.
//
// The bytes decide the verdict: when they match, a missing tree (an object
// stored before trees) is stored and a damaged one rewritten (Tree says
// which), and the object is no longer remembered as corrupt; a tree is
// derived from the bytes, so a damaged tree alone never condemns proven
// bytes. A corrupt or missing object is a verdict (nil error, Verified
// false); an error means no verdict could be reached (unknown backend,
// read failure, ctx done).
func (d *DataPlane) Verify(ctx context.Context, backendID string, addr digest.Address, exp Expected) (VerifyResult, error) {
	b, err := d.backend(backendID)
	if err != nil {
		return VerifyResult{}, err
	}
	res := VerifyResult{Address: addr, BackendID: b.ID(), Tree: TreeUnchecked}
	if err := storage.ValidateAddress(addr); err != nil {
		return res, fmt.Errorf("dataplane: verify: %w", err)
	}
	rc, err := b.Get(ctx, addr, nil)
	if errors.Is(err, storage.ErrNotFound) {
		res.Missing = true
		res.Reason = fmt.Sprintf("backend %q does not hold %s", b.ID(), addr)
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("dataplane: verify %s on %q: %w", addr, b.ID(), err)
	}
	defer rc.Close()
	h := digest.NewDualHasher()
	defer h.Close()
	if err := d.digestStream(ctx, rc, h); err != nil {
		return res, fmt.Errorf("dataplane: verify %s on %q: %w", addr, b.ID(), err)
	}
	actual := h.Sum()
	res.Actual = actual

	var reasons []string
	if got := actual.Address(addr.Algorithm()); got != addr {
		reasons = append(reasons, fmt.Sprintf("content hashes to %s", got))
	}
	if exp.BLAKE3 != nil && *exp.BLAKE3 != actual.BLAKE3 {
		reasons = append(reasons, fmt.Sprintf("blake3 is %s, recorded %s",
			actual.Address(digest.BLAKE3), digest.New(digest.BLAKE3, *exp.BLAKE3)))
	}
	if exp.SHA256 != nil && *exp.SHA256 != actual.SHA256 {
		reasons = append(reasons, fmt.Sprintf("sha256 is %s, recorded %s",
			actual.Address(digest.SHA256), digest.New(digest.SHA256, *exp.SHA256)))
	}
	if exp.Size >= 0 && exp.Size != actual.Size {
		what := "truncated"
		if actual.Size > exp.Size {
			what = "grown"
		}
		reasons = append(reasons, fmt.Sprintf("%s: %d bytes, recorded %d", what, actual.Size, exp.Size))
	}
	res.Verified = len(reasons) == 0
	res.Reason = strings.Join(reasons, "; ")
	if !res.Verified {
		return res, nil
	}
	if res.Tree, res.TreeDetail, err = d.checkTree(ctx, b, addr, h.Tree()); err != nil {
		return res, fmt.Errorf("dataplane: verify %s on %q: %w", addr, b.ID(), err)
	}
	d.marks.remove(b.ID(), addr)
	return res, nil
}

// checkTree compares the stored tree of addr with want, the tree of the
// verified bytes, and stores want when the stored one is missing or
// differs.
func (d *DataPlane) checkTree(ctx context.Context, b storage.Backend, addr digest.Address, want blaketree.Outboard) (TreeState, string, error) {
	if want.Size() <= blaketree.HeaderSize {
		return TreeNone, "", nil
	}
	tr, err := b.Tree(ctx, addr)
	state, detail := TreeOK, ""
	switch {
	case errors.Is(err, storage.ErrNoTree):
		state = TreeBuilt
	case err != nil:
		return TreeUnchecked, "", fmt.Errorf("open the stored tree: %w", err)
	default:
		detail, err = compareTree(tr, want)
		tr.Close()
		if err != nil {
			return TreeUnchecked, "", fmt.Errorf("read the stored tree: %w", err)
		}
		if detail != "" {
			state = TreeRebuilt
		}
	}
	if state == TreeOK {
		return state, "", nil
	}
	if err := b.PutTree(ctx, addr, want); err != nil {
		return TreeUnchecked, detail, fmt.Errorf("store the tree: %w", err)
	}
	return state, detail, nil
}

// compareTree streams want against the stored tree and says where they
// first differ ("" when equal).
func compareTree(stored storage.TreeReader, want blaketree.Outboard) (string, error) {
	if stored.Size() != want.Size() {
		return fmt.Sprintf("the stored tree has %d bytes, the bytes' tree %d", stored.Size(), want.Size()), nil
	}
	c := &treeComparer{r: io.NewSectionReader(stored, 0, stored.Size()), buf: make([]byte, 64<<10), diff: -1}
	if _, err := want.WriteTo(c); err != nil && !errors.Is(err, errTreeDiffers) {
		return "", err
	}
	if c.readErr != nil {
		return "", c.readErr
	}
	if c.diff >= 0 {
		return fmt.Sprintf("the stored tree differs from the bytes' tree at byte %d", c.diff), nil
	}
	return "", nil
}

var errTreeDiffers = errors.New("tree differs")

// treeComparer is an io.Writer that compares what is written with r.
type treeComparer struct {
	r       io.Reader
	buf     []byte
	off     int64
	diff    int64
	readErr error
}

func (c *treeComparer) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := min(len(p)-n, len(c.buf))
		if _, err := io.ReadFull(c.r, c.buf[:k]); err != nil {
			c.readErr = err
			return n, err
		}
		if !bytes.Equal(c.buf[:k], p[n:n+k]) {
			for i := range k {
				if c.buf[i] != p[n+i] {
					c.diff = c.off + int64(i)
					break
				}
			}
			return n, errTreeDiffers
		}
		n += k
		c.off += int64(k)
	}
	return n, nil
}

func (d *DataPlane) digestStream(ctx context.Context, r io.Reader, h *digest.DualHasher) error {
	if d.wrapVerify != nil {
		r = d.wrapVerify(r)
	}
	bufp := d.bufs.Get().(*[]byte)
	defer d.bufs.Put(bufp)
	buf := *bufp
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(r, buf)
		if _, werr := h.Write(buf[:n]); werr != nil {
			return werr
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return nil
		default:
			return fmt.Errorf("read: %w", err)
		}
	}
}
