package bus

import (
	"testing"
	"time"
)

// TestReaskScheduleDoublesUpToItsLimit checks the bookkeeping of the
// periodic re-ask on a synthetic clock: a command without a reply is
// asked again after 1 min, then 2, 4, 8 and every 10 min; progress
// postpones the next re-ask by a whole interval, and a command whose first
// publish is still under way is never re-asked.
func TestReaskScheduleDoublesUpToItsLimit(t *testing.T) {
	t.Parallel()
	r := &Requester{opts: requesterOptions{reaskAfter: DefaultReaskAfter, reaskMax: DefaultReaskMax}, pending: map[string]*pendingCmd{}}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	p := &pendingCmd{sent: true, interval: DefaultReaskAfter, due: t0.Add(DefaultReaskAfter)}
	r.pending["c"] = p
	r.pending["publishing"] = &pendingCmd{}
	now := t0
	var gaps []time.Duration
	last := t0
	for range 7 {
		ids, _, next := r.takeDue(now)
		if len(ids) != 0 {
			t.Fatalf("re-asked %v at %s, before its due time", ids, now.Sub(t0))
		}
		now = next
		ids, _, _ = r.takeDue(now)
		if len(ids) != 1 || ids[0] != "c" {
			t.Fatalf("at %s re-asked %v, want [c]", now.Sub(t0), ids)
		}
		gaps = append(gaps, now.Sub(last))
		last = now
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute}
	for i := range want {
		if gaps[i] != want[i] {
			t.Fatalf("re-ask intervals %v, want %v", gaps, want)
		}
	}
	// Progress postpones the next re-ask by a whole interval.
	pend := &Pending{CommandID: "c", r: r, p: p}
	before := p.due
	pend.progressAt(before.Add(-time.Minute))
	if p.due != before.Add(-time.Minute+DefaultReaskMax) || p.interval != DefaultReaskMax {
		t.Fatalf("after progress: due %s (was %s), interval %s", p.due, before, p.interval)
	}
	if ids, _, _ := r.takeDue(before); len(ids) != 0 {
		t.Fatalf("re-asked %v despite the progress", ids)
	}
}
