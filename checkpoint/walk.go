package checkpoint

import (
	"fmt"

	"github.com/artifactstore/artifactstore/events"
)

// Walk checks a copy of the log held outside PostgreSQL (the events
// stream, an export) against checkpoints: it recomputes each event's chain
// link from its columns and compares the chain with every checkpoint it
// passes. Feed it events in sequence order with Add.
//
// A copy that does not start at sequence 1 (the events stream keeps 30
// days) is checked from the first event whose predecessor's chain digest
// is known: sequence 1, the event after a checkpoint, or else the event
// after the first one (whose own columns are then not checked).
type Walk struct {
	cps     map[int64]Checkpoint
	prev    [32]byte
	last    int64
	started bool
	// Report is what the walk has established so far.
	Report WalkReport
}

// WalkReport says what a Walk established.
type WalkReport struct {
	// First and Last are the first event whose link was checked and the
	// last event seen (0 when none).
	First, Last int64
	// Matched is how many checkpoints the copy agrees with; Newest is the
	// highest sequence among them (events after it link correctly but no
	// checkpoint vouches for them yet).
	Matched int
	Newest  int64
}

// NewWalk returns a walk over the given valid checkpoints.
func NewWalk(cps []Checkpoint) *Walk {
	w := &Walk{cps: map[int64]Checkpoint{}}
	for _, c := range cps {
		w.cps[c.Sequence] = c
	}
	return w
}

// Add checks the next event. An error wraps events.ErrChainBroken and
// names the event's sequence.
func (w *Walk) Add(e events.Event) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w at sequence %d: %s", events.ErrChainBroken, e.Sequence, fmt.Sprintf(format, args...))
	}
	check := true
	switch {
	case !w.started:
		w.started = true
		if cp, ok := w.cps[e.Sequence-1]; ok {
			w.prev = cp.Chain
		} else if e.Sequence != 1 {
			check = false // nothing vouches for its predecessor
		}
	case e.Sequence != w.last+1:
		return bad("the copy jumps from %d to %d", w.last, e.Sequence)
	}
	if check {
		link, err := events.ChainLink(w.prev, e)
		if err != nil {
			return bad("%v", err)
		}
		if link != e.ChainDigest {
			return bad("the chain digest is not the link of the event's columns to its predecessor: altered")
		}
		if w.Report.First == 0 {
			w.Report.First = e.Sequence
		}
	}
	if cp, ok := w.cps[e.Sequence]; ok {
		if cp.Chain != e.ChainDigest {
			return bad("the chain digest differs from %s", cp.Anchor().Source)
		}
		w.Report.Matched++
		w.Report.Newest = e.Sequence
		if w.Report.First == 0 {
			w.Report.First = e.Sequence + 1
		}
	}
	w.prev, w.last, w.Report.Last = e.ChainDigest, e.Sequence, e.Sequence
	return nil
}
