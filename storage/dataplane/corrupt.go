package dataplane

import (
	"errors"
	"fmt"
	"sync"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
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
	if d.marks.add(ce) && d.reporter != nil {
		d.reporter.ReportCorruption(ce)
	}
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

// marks remembers corrupt objects, oldest forgotten first past max (by
// then the event log's projection says it).
type marks struct {
	mu    sync.Mutex
	max   int
	m     map[markKey]*CorruptError
	order []markKey
}

// add remembers ce and reports whether it was new.
func (m *marks) add(ce *CorruptError) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := markKey{ce.BackendID, ce.Address}
	if m.m == nil {
		m.m = make(map[markKey]*CorruptError)
	}
	if _, ok := m.m[k]; ok {
		return false
	}
	for len(m.m) >= max(m.max, 1) && len(m.order) > 0 {
		delete(m.m, m.order[0])
		m.order = m.order[1:]
	}
	m.m[k] = ce
	m.order = append(m.order, k)
	return true
}

func (m *marks) get(backend string, addr digest.Address) *CorruptError {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.m[markKey{backend, addr}]
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
