package pkgstate_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/pkgstate"
)

// TestLockKeyIsNotALeaderKey: the package-state lock shares the
// database's advisory key space with the leader locks; taking one must
// never wait for the other.
func TestLockKeyIsNotALeaderKey(t *testing.T) {
	t.Parallel()
	for _, k := range []int64{leader.KeyProjector, leader.KeyScrubScheduler, leader.KeyReaper, leader.KeyRelay, leader.KeyStagingJanitor, leader.KeyCheckpointer} {
		if k == pkgstate.KeyPackageState {
			t.Errorf("leader key %#x is the package-state lock key", k)
		}
	}
}

// TestRetainUntil: months, days and microseconds of the class's interval
// are added in that order (AddDate normalises a day past the month end),
// in UTC, truncated to the
// microsecond; a class that never expires, or has no duration, gives nil.
func TestRetainUntil(t *testing.T) {
	t.Parallel()
	from := time.Date(2024, 1, 31, 23, 0, 0, 1500, time.FixedZone("x", 3600))
	c := pkgstate.Class{Name: "c", Duration: pgtype.Interval{Months: 1, Days: 1, Microseconds: int64(time.Hour / time.Microsecond), Valid: true}}
	got := c.RetainUntil(from)
	// 2024-01-31T22:00Z + 1 month = 2024-03-02 (Go normalises Feb 31), + 1 day, + 1 h.
	want := time.Date(2024, 3, 3, 23, 0, 0, 1000, time.UTC)
	if got == nil || !got.Equal(want) || got.Location() != time.UTC {
		t.Fatalf("RetainUntil = %v, want %v in UTC", got, want)
	}
	if got := (pkgstate.Class{Duration: c.Duration, NeverExpires: true}).RetainUntil(from); got != nil {
		t.Fatalf("a class that never expires gave %v", got)
	}
	if got := (pkgstate.Class{}).RetainUntil(from); got != nil {
		t.Fatalf("a class without a duration gave %v", got)
	}
}
