// Package fetch is the verifying client of the read API: it downloads an
// object, whole or a byte range, and proves every byte against the
// object's content address before handing it on, so that neither a
// damaged store nor anything between it and the client can slip in bytes
// unnoticed.
//
// A whole object is streamed with its BLAKE3 tree (GET
// /v1/objects/{address}/tree) and each 64 KiB chunk group is checked
// against the tree before it is written; at the end both digests and the
// size are compared with the address and with what the catalog recorded.
// A range fetches only the chunk groups it touches and the tree nodes that
// prove them (GET /v1/objects/{address}/tree?range=A-B). An object known
// only by a sha256 address has no BLAKE3 root to check a tree against: it
// is downloaded whole into a temp file and handed on once its SHA-256 is
// the address.
package fetch

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
)

// ErrTampered is wrapped by every error that means the bytes received do
// not prove to be the object's.
var ErrTampered = errors.New("the bytes received are not the object's")

// APIError is an error answer of the read API.
type APIError struct {
	Status  int
	Code    string
	Message string
}

// Error returns the API's code and message.
func (e *APIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("the API answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("the API answered %d %s: %s", e.Status, e.Code, e.Message)
}

// Client fetches from one read API.
type Client struct {
	// BaseURL is the API's root, e.g. http://127.0.0.1:8080.
	BaseURL string
	// Token, when set, is sent as a bearer token.
	Token string
	// HTTP is the HTTP client; nil means http.DefaultClient.
	HTTP *http.Client
}

// Target is an object to fetch and what is known of it.
type Target struct {
	Address digest.Address
	// BLAKE3 and SHA256 are the digests the catalog recorded (nil:
	// unknown). For a blake3 address the address is its BLAKE3.
	BLAKE3, SHA256 *[32]byte
	// Size is the recorded size; < 0 asks the API (its answer is proven
	// with the bytes).
	Size int64
	// What names the object in messages.
	What string
}

// Range is an inclusive byte range; End < 0 means to the last byte, and
// Suffix > 0 the last Suffix bytes.
type Range struct {
	Start, End, Suffix int64
}

// ParseRange parses FIRST-LAST, FIRST- or -SUFFIX (decimal, inclusive).
func ParseRange(s string) (Range, error) {
	bad := fmt.Errorf("range %q is not FIRST-LAST, FIRST- or -SUFFIX with decimal byte positions, e.g. 0-1023", s)
	first, last, ok := strings.Cut(s, "-")
	if !ok {
		return Range{}, bad
	}
	if first == "" {
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n <= 0 {
			return Range{}, bad
		}
		return Range{Suffix: n}, nil
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 {
		return Range{}, bad
	}
	end := int64(-1)
	if last != "" {
		if end, err = strconv.ParseInt(last, 10, 64); err != nil || end < start {
			return Range{}, bad
		}
	}
	return Range{Start: start, End: end}, nil
}

// resolve returns the offset and length of r in an object of size bytes.
func (r Range) resolve(size int64) (int64, int64, error) {
	if r.Suffix > 0 {
		n := min(r.Suffix, size)
		if n == 0 {
			return 0, 0, fmt.Errorf("the object is empty; it has no range")
		}
		return size - n, n, nil
	}
	if r.Start >= size {
		return 0, 0, fmt.Errorf("the range starts at byte %d but the object has %d bytes", r.Start, size)
	}
	end := size - 1
	if r.End >= 0 {
		end = min(r.End, size-1)
	}
	return r.Start, end - r.Start + 1, nil
}

// Result describes a proven download.
type Result struct {
	// Offset and Length are the bytes written (the whole object: 0 and
	// its size).
	Offset, Length int64
	// Size is the object's size.
	Size int64
	// Digests are both digests, for a whole object.
	Digests *digest.Digests
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Client) get(ctx context.Context, method, path string, hdr ...string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, nil)
	if err != nil {
		return nil, fmt.Errorf("the API URL %q: %w", c.BaseURL, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the read API at %s (is 'artifactstore run' or 'serve' running there? set --api-url): %w", c.BaseURL, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		ae := &APIError{Status: resp.StatusCode}
		var body struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body) == nil {
			ae.Code, ae.Message = body.Error.Code, body.Error.Message
		}
		return nil, ae
	}
	return resp, nil
}

// ResolveFile finds the object of file path in package pkg, with the
// digests and size the catalog recorded for it.
func (c *Client) ResolveFile(ctx context.Context, pkg, path string) (Target, error) {
	resp, err := c.get(ctx, http.MethodGet, "/v1/packages/"+url.PathEscape(pkg)+"?format=json")
	if err != nil {
		return Target{}, fmt.Errorf("package %q: %w", pkg, err)
	}
	defer resp.Body.Close()
	var p struct {
		Files []struct {
			Path, Address, BLAKE3, SHA256 string
			Size                          int64
		} `json:"files"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&p); err != nil {
		return Target{}, fmt.Errorf("package %q: the API's answer does not decode: %w", pkg, err)
	}
	for _, f := range p.Files {
		if f.Path != path {
			continue
		}
		addr, err := digest.Parse(f.Address)
		if err != nil {
			return Target{}, fmt.Errorf("package %q file %q: %w", pkg, path, err)
		}
		t := Target{Address: addr, Size: f.Size, What: fmt.Sprintf("file %q of package %q (%s)", path, pkg, addr)}
		var b3, s256 [32]byte
		if err := decodeHex(f.BLAKE3, &b3); err != nil {
			return Target{}, fmt.Errorf("package %q file %q: blake3: %w", pkg, path, err)
		}
		if err := decodeHex(f.SHA256, &s256); err != nil {
			return Target{}, fmt.Errorf("package %q file %q: sha256: %w", pkg, path, err)
		}
		t.BLAKE3, t.SHA256 = &b3, &s256
		d := digest.Digests{BLAKE3: b3, SHA256: s256}
		if !d.Matches(addr) {
			return Target{}, fmt.Errorf("%w: package %q lists file %q at %s but with digests that are not that address's", ErrTampered, pkg, path, addr)
		}
		return t, nil
	}
	return Target{}, fmt.Errorf("package %q has no file %q; list its files with GET /v1/packages/%s", pkg, path, url.PathEscape(pkg))
}

func decodeHex(s string, out *[32]byte) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(out) {
		return fmt.Errorf("%q is not %d bytes of hex", s, len(out))
	}
	copy(out[:], b)
	return nil
}

// root returns the BLAKE3 root of t, if it is known.
func (t Target) root() ([32]byte, bool, error) {
	if t.Address.Algorithm() == digest.BLAKE3 {
		if t.BLAKE3 != nil && *t.BLAKE3 != t.Address.Sum() {
			return [32]byte{}, false, fmt.Errorf("%w: the recorded BLAKE3 of %s is not its address", ErrTampered, t.Address)
		}
		return t.Address.Sum(), true, nil
	}
	if t.BLAKE3 != nil {
		return *t.BLAKE3, true, nil
	}
	return [32]byte{}, false, nil
}

// Get downloads the object t, whole when rng is nil, and writes to w only
// bytes proven to be the object's. A failed proof is an error wrapping
// ErrTampered, returned before the first unproven byte reaches w (after
// the bytes proven before it).
func (c *Client) Get(ctx context.Context, t Target, rng *Range, w io.Writer) (Result, error) {
	if t.What == "" {
		t.What = "object " + t.Address.String()
	}
	root, haveRoot, err := t.root()
	if err != nil {
		return Result{}, err
	}
	size := t.Size
	if size < 0 {
		if size, err = c.size(ctx, t); err != nil {
			return Result{}, err
		}
	}
	if !haveRoot {
		if rng != nil {
			return Result{}, fmt.Errorf("%s: a range of an object known only by its sha256 address cannot be proven (the tree is BLAKE3); fetch it by --package and --path, which give its BLAKE3, or fetch it whole", t.What)
		}
		return c.getSpooled(ctx, t, size, w)
	}
	off, n := int64(0), size
	whole := rng == nil
	if rng != nil {
		if off, n, err = rng.resolve(size); err != nil {
			return Result{}, fmt.Errorf("%s: %w", t.What, err)
		}
		whole = off == 0 && n == size
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	objPath := "/v1/objects/" + t.Address.String()
	var hdr []string
	start, end := blaketree.AlignedRange(size, off, n)
	if size > 0 && !(start == 0 && end == size) {
		hdr = []string{"Range", fmt.Sprintf("bytes=%d-%d", start, end-1)}
	}
	data, err := c.get(ctx, http.MethodGet, objPath, hdr...)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", t.What, err)
	}
	defer data.Body.Close()
	treePath := objPath + "/tree"
	if !whole {
		treePath += fmt.Sprintf("?range=%d-%d", off, off+n-1)
	}
	proof, err := c.get(ctx, http.MethodGet, treePath)
	if err != nil {
		return Result{}, fmt.Errorf("%s: its tree: %w", t.What, err)
	}
	defer proof.Body.Close()

	r := blaketree.NewReader(data.Body, proof.Body, root, size, off, n)
	// Cancelling first unblocks a read in flight, which Close waits for.
	defer func() { cancel(); r.Close() }()
	var h *digest.DualHasher
	dst := w
	if whole {
		h = digest.NewDualHasher(digest.WithoutTree())
		defer h.Close()
		dst = io.MultiWriter(w, h)
	}
	written, err := io.Copy(dst, r)
	if err != nil {
		var me *blaketree.MismatchError
		if errors.As(err, &me) {
			return Result{}, fmt.Errorf("%w: %s: bytes %d-%d fail their check against the address (%s); %d proven bytes were written before them",
				ErrTampered, t.What, me.Offset, me.Offset+me.Length-1, me.Detail, written)
		}
		return Result{}, fmt.Errorf("%s: %w", t.What, err)
	}
	res := Result{Offset: off, Length: written, Size: size}
	if !whole {
		return res, nil
	}
	d := h.Sum()
	if err := t.check(d); err != nil {
		return res, err
	}
	res.Digests = &d
	return res, nil
}

// check compares the digests of a whole download with the address and the
// recorded digests.
func (t Target) check(d digest.Digests) error {
	var bad []string
	if !d.Matches(t.Address) {
		bad = append(bad, fmt.Sprintf("they hash to %s", d.Address(t.Address.Algorithm())))
	}
	if t.BLAKE3 != nil && *t.BLAKE3 != d.BLAKE3 {
		bad = append(bad, fmt.Sprintf("blake3 %s, recorded %s", d.Address(digest.BLAKE3), digest.New(digest.BLAKE3, *t.BLAKE3)))
	}
	if t.SHA256 != nil && *t.SHA256 != d.SHA256 {
		bad = append(bad, fmt.Sprintf("sha256 %s, recorded %s", d.Address(digest.SHA256), digest.New(digest.SHA256, *t.SHA256)))
	}
	if t.Size >= 0 && t.Size != d.Size {
		bad = append(bad, fmt.Sprintf("%d bytes, recorded %d", d.Size, t.Size))
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s: %s", ErrTampered, t.What, strings.Join(bad, "; "))
	}
	return nil
}

// size asks the API for the object's size (HEAD).
func (c *Client) size(ctx context.Context, t Target) (int64, error) {
	resp, err := c.get(ctx, http.MethodHead, "/v1/objects/"+t.Address.String())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", t.What, err)
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("%s: the API sent no Content-Length", t.What)
	}
	return resp.ContentLength, nil
}

// getSpooled downloads a whole object whose BLAKE3 is unknown into a temp
// file and copies it to w once its digests prove it.
func (c *Client) getSpooled(ctx context.Context, t Target, size int64, w io.Writer) (Result, error) {
	resp, err := c.get(ctx, http.MethodGet, "/v1/objects/"+t.Address.String())
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", t.What, err)
	}
	defer resp.Body.Close()
	spool, err := os.CreateTemp("", "artifactstore-get-*")
	if err != nil {
		return Result{}, fmt.Errorf("create a temp file to hold %s until it is proven: %w", t.What, err)
	}
	os.Remove(spool.Name())
	defer spool.Close()
	h := digest.NewDualHasher(digest.WithoutTree())
	defer h.Close()
	if _, err := io.Copy(io.MultiWriter(spool, h), resp.Body); err != nil {
		return Result{}, fmt.Errorf("%s: %w", t.What, err)
	}
	d := h.Sum()
	t.Size = size
	if err := t.check(d); err != nil {
		return Result{}, err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return Result{}, err
	}
	n, err := io.Copy(w, spool)
	if err != nil {
		return Result{}, err
	}
	return Result{Length: n, Size: d.Size, Digests: &d}, nil
}
