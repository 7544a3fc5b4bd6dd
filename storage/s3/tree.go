package s3

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
)

const (
	// firstWindow is how much of a tree Tree fetches: all of the tree of
	// an object up to 256 MiB, so that proving a range of it costs one
	// request.
	firstWindow = 256 << 10
	// minWindow and maxWindow bound the later fetches; a reader that reads
	// on where the last fetch ended (a whole-tree comparison) gets
	// windows that double up to maxWindow.
	minWindow = 64 << 10
	maxWindow = 4 << 20
)

// treeReader reads a stored tree at offsets through ranged GETs. It keeps
// the last window it fetched, so that the nearby nodes a proof asks for,
// one small ReadAt after another, cost one request.
type treeReader struct {
	ctx  context.Context
	b    *Backend
	key  string
	size int64

	mu     sync.Mutex
	win    []byte
	winOff int64
	next   int64 // size of the next fetch
}

// openTree fetches the first window of the tree at key, which also tells
// its size (from Content-Range).
func openTree(ctx context.Context, b *Backend, key string) (*treeReader, error) {
	t := &treeReader{ctx: ctx, b: b, key: key, winOff: -1}
	out, err := b.client.GetObject(ctx, &s3sdk.GetObjectInput{
		Bucket: &b.cfg.Bucket, Key: &key, Range: aws.String(fmt.Sprintf("bytes=0-%d", firstWindow-1)),
	})
	if hasStatus(err, http.StatusRequestedRangeNotSatisfiable) {
		return t, nil // an empty object: no tree to read
	}
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	t.size = aws.ToInt64(out.ContentLength)
	if cr := aws.ToString(out.ContentRange); cr != "" {
		_, total, ok := strings.Cut(cr, "/")
		if t.size, err = strconv.ParseInt(total, 10, 64); !ok || err != nil {
			return nil, fmt.Errorf("the store answered with Content-Range %q; want bytes first-last/size", cr)
		}
	}
	n := min(t.size, firstWindow)
	t.win = make([]byte, n)
	if _, err := io.ReadFull(out.Body, t.win); err != nil {
		return nil, fmt.Errorf("read the tree %s: %w", key, err)
	}
	t.winOff, t.next = 0, minWindow
	return t, nil
}

// Size returns the stored tree's length.
func (t *treeReader) Size() int64 { return t.size }

// Close releases the window.
func (t *treeReader) Close() error {
	t.mu.Lock()
	t.win = nil
	t.mu.Unlock()
	return nil
}

// ReadAt implements io.ReaderAt.
func (t *treeReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("s3: read the tree %s at offset %d", t.key, off)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= t.size {
			return n, io.EOF
		}
		if t.winOff < 0 || pos < t.winOff || pos >= t.winOff+int64(len(t.win)) {
			if err := t.fetch(pos, int64(len(p)-n)); err != nil {
				return n, err
			}
		}
		n += copy(p[n:], t.win[pos-t.winOff:])
	}
	return n, nil
}

// fetch replaces the window with the bytes from pos: at least want of
// them, at most to the end of the tree.
func (t *treeReader) fetch(pos, want int64) error {
	if t.winOff >= 0 && pos == t.winOff+int64(len(t.win)) {
		t.next = min(max(t.next, minWindow)*2, maxWindow)
	} else if t.winOff >= 0 {
		t.next = minWindow
	}
	end := min(pos+max(want, t.next), t.size)
	out, err := t.b.client.GetObject(t.ctx, &s3sdk.GetObjectInput{
		Bucket: &t.b.cfg.Bucket, Key: &t.key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", pos, end-1)),
	})
	if err != nil {
		return fmt.Errorf("s3: read the tree %s at %d: %w", t.key, pos, err)
	}
	defer out.Body.Close()
	if int64(cap(t.win)) < end-pos {
		t.win = make([]byte, end-pos)
	}
	t.win = t.win[:end-pos]
	m, err := io.ReadFull(out.Body, t.win)
	t.win = t.win[:m]
	t.winOff = pos
	if err != nil {
		return fmt.Errorf("s3: read the tree %s at %d: %w", t.key, pos, err)
	}
	return nil
}
