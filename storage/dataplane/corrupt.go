package dataplane

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
)

// ErrCorrupt is wrapped by every *CorruptError.
var ErrCorrupt = errors.New("stored object is corrupt")

// CorruptError says that stored bytes failed their check on the way out:
// the bytes [Offset, Offset+Length) of the object at Address on backend
// BackendID could not be proven against its address. Nothing of them was
// released.
type CorruptError struct {
	Address   digest.Address
	BackendID string
	// Offset and Length delimit what failed: a chunk group, a subtree
	// whose tree node failed, or the whole object.
	Offset, Length int64
	// Tree is true when a node of the stored tree failed its check: the
	// tree or the bytes below it are damaged (Verify tells which).
	Tree bool
	// Detail says what differed.
	Detail string
}

// Error says what failed and what happens next.
func (e *CorruptError) Error() string {
	what := "bytes"
	if e.Tree {
		what = "tree node of bytes"
	}
	return fmt.Sprintf("%v: %s on backend %q: %s %d-%d do not match its address (%s); it is not served until it is verified good again",
		ErrCorrupt, e.Address, e.BackendID, what, e.Offset, e.Offset+e.Length-1, e.Detail)
}

// Unwrap returns ErrCorrupt.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// CorruptionReporter is told, once per detection, that a served read
// found corrupt bytes, so that the object is recorded corrupt at once
// (e.g. by a verification that appends object.corrupt to the event log).
// ReportCorruption is called on the reading goroutine: it must not block
// (hand the work to another goroutine) and must not keep c's caller
// waiting on I/O.
type CorruptionReporter interface {
	ReportCorruption(c *CorruptError)
}

func (d *DataPlane) corrupt(backendID string, addr digest.Address, me *blaketree.MismatchError) *CorruptError {
	ce := &CorruptError{Address: addr, BackendID: backendID, Offset: me.Offset, Length: me.Length, Tree: me.Node, Detail: me.Detail}
	d.reportCorrupt(ce)
	return ce
}

func (d *DataPlane) reportCorrupt(ce *CorruptError) {
	if d.marks.add(ce, d.storedAt(ce.BackendID, ce.Address)) && d.reporter != nil {
		d.reporter.ReportCorruption(ce)
	}
}

// markHeadTimeout bounds the look at a corrupt copy's store time when it
// is remembered (see storedAt).
const markHeadTimeout = 10 * time.Second

// storedAt returns when the backend stored the copy of addr that was just
// found corrupt, or the zero time when it cannot tell. A mark remembers
// it so that a copy replaced since (a repair by an ingester in another
// process, whose data plane this one does not hear from) is served again
// instead of being refused on the old copy's account (see stillCorrupt).
func (d *DataPlane) storedAt(backendID string, addr digest.Address) time.Time {
	b, err := d.backend(backendID)
	if err != nil {
		return time.Time{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), markHeadTimeout)
	defer cancel()
	info, err := b.Head(ctx, addr)
	if err != nil {
		return time.Time{}
	}
	return info.StoredAt
}

// stillCorrupt returns the remembered *CorruptError of addr on b, or nil
// when there is none or the copy it was about has been replaced since:
// then the mark is dropped and the new copy is proven like any other.
func (d *DataPlane) stillCorrupt(ctx context.Context, b storage.Backend, addr digest.Address) *CorruptError {
	m, ok := d.marks.lookup(b.ID(), addr)
	if !ok {
		return nil
	}
	if m.storedAt.IsZero() {
		return m.ce
	}
	info, err := b.Head(ctx, addr)
	if err != nil || info.StoredAt.Equal(m.storedAt) {
		return m.ce
	}
	d.marks.remove(b.ID(), addr)
	return nil
}

// Corrupt returns the remembered *CorruptError of the object at addr on
// backend backendID ("" = default), or nil: the objects a served read
// found corrupt and no Verify has proven good since.
func (d *DataPlane) Corrupt(backendID string, addr digest.Address) *CorruptError {
	if backendID == "" {
		backendID = d.def
	}
	return d.marks.get(backendID, addr)
}

type markKey struct {
	backend string
	addr    digest.Address
}

// mark is one remembered corrupt copy: the error and when the backend
// had stored that copy (zero: unknown).
type mark struct {
	ce       *CorruptError
	storedAt time.Time
}

// marks remembers corrupt objects, oldest forgotten first past max (by
// then the event log's projection says it).
type marks struct {
	mu    sync.Mutex
	max   int
	m     map[markKey]mark
	order []markKey
}

// add remembers ce, found in the copy stored at storedAt, and reports
// whether it was new.
func (m *marks) add(ce *CorruptError, storedAt time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := markKey{ce.BackendID, ce.Address}
	if m.m == nil {
		m.m = make(map[markKey]mark)
	}
	if _, ok := m.m[k]; ok {
		return false
	}
	for len(m.m) >= max(m.max, 1) && len(m.order) > 0 {
		delete(m.m, m.order[0])
		m.order = m.order[1:]
	}
	m.m[k] = mark{ce: ce, storedAt: storedAt}
	m.order = append(m.order, k)
	return true
}

func (m *marks) get(backend string, addr digest.Address) *CorruptError {
	mk, _ := m.lookup(backend, addr)
	return mk.ce
}

func (m *marks) lookup(backend string, addr digest.Address) (mark, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mk, ok := m.m[markKey{backend, addr}]
	return mk, ok
}

func (m *marks) remove(backend string, addr digest.Address) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := markKey{backend, addr}
	if _, ok := m.m[k]; !ok {
		return
	}
	delete(m.m, k)
	for i, o := range m.order {
		if o == k {
			m.order = append(m.order[:i], m.order[i+1:]...)
			break
		}
	}
}
