package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

// ServeAny serves the object at addr like Serve, from the first of
// backendIDs (its copies, best first) whose bytes prove good: a copy
// that fails its check, at the start or in the middle of the read, or
// that the backend lost, is left for the next one, which continues the
// read at the first byte not yet released. The caller sees one proven
// stream and never the failure, which is recorded as Serve records it
// (the copy is remembered corrupt and the CorruptionReporter told).
// Only when no copy serves does it fail, with the last copy's error.
func (d *DataPlane) ServeAny(ctx context.Context, backendIDs []string, addr digest.Address, rng *storage.Range, exp Expected) (Object, error) {
	if len(backendIDs) == 0 {
		return nil, fmt.Errorf("dataplane: serve %s: no copy to serve it from", addr)
	}
	f := &failover{d: d, ctx: ctx, ids: backendIDs, addr: addr, exp: exp}
	var err error
	for i := range backendIDs {
		f.cur, err = d.Serve(ctx, backendIDs[i], addr, rng, exp)
		if err == nil {
			f.next = i + 1
			f.first, f.length, f.size = f.cur.Offset(), f.cur.Length(), f.cur.Size()
			f.off, f.end = f.first, f.first+f.length
			return f, nil
		}
		if !canFailOver(err) {
			return nil, err
		}
	}
	return nil, err
}

// canFailOver tells the errors of one copy that another copy may not
// have: damaged or lost bytes.
func canFailOver(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, storage.ErrNotFound)
}

// failover is the Object of ServeAny: the current copy's proven stream,
// replaced by the next copy's from the first unreleased byte when it
// fails.
type failover struct {
	d    *DataPlane
	ctx  context.Context
	ids  []string
	next int
	addr digest.Address
	exp  Expected
	cur  Object
	// first and length are the range served; off is the next byte to
	// release, end one past the last.
	first, length, off, end, size int64
	closed                        bool
}

func (f *failover) Size() int64   { return f.size }
func (f *failover) Offset() int64 { return f.first }
func (f *failover) Length() int64 { return f.length }

func (f *failover) Read(p []byte) (int, error) {
	for {
		n, err := f.cur.Read(p)
		f.off += int64(n)
		if err == nil || errors.Is(err, io.EOF) || !canFailOver(err) {
			return n, err
		}
		if serr := f.switchOver(err); serr != nil || n > 0 {
			return n, serr
		}
	}
}

// switchOver opens the next copy at f.off, or returns cause when no copy
// is left.
func (f *failover) switchOver(cause error) error {
	f.cur.Close()
	if f.off >= f.end {
		f.cur = failed{io.EOF}
		return nil
	}
	for f.next < len(f.ids) {
		id := f.ids[f.next]
		f.next++
		o, err := f.d.Serve(f.ctx, id, f.addr, &storage.Range{Start: f.off, End: f.end - 1}, f.exp)
		if err == nil {
			f.cur = o
			return nil
		}
		if !canFailOver(err) {
			cause = err
			break
		}
		cause = err
	}
	f.cur = failed{cause}
	return cause
}

// WriteTo writes the proven bytes to w, failing over like Read.
func (f *failover) WriteTo(w io.Writer) (int64, error) {
	return io.CopyBuffer(w, struct{ io.Reader }{f}, make([]byte, 256<<10))
}

// Close closes the current copy's stream.
func (f *failover) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	return f.cur.Close()
}

// failed is what remains when no copy is left (or nothing is).
type failed struct{ err error }

func (e failed) Read([]byte) (int, error)         { return 0, e.err }
func (e failed) WriteTo(io.Writer) (int64, error) { return 0, e.err }
func (e failed) Close() error                     { return nil }
func (e failed) Size() int64                      { return 0 }
func (e failed) Offset() int64                    { return 0 }
func (e failed) Length() int64                    { return 0 }
