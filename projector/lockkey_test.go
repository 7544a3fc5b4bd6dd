package projector_test

import (
	"testing"

	"github.com/artifactstore/artifactstore/internal/leader"
	"github.com/artifactstore/artifactstore/projector"
)

// TestLockKey: the projector of the live tables elects itself under the
// leader package's key, which status reads; other names get other keys.
func TestLockKey(t *testing.T) {
	t.Parallel()
	if got := projector.LockKey(projector.DefaultName); got != leader.KeyProjector {
		t.Fatalf("LockKey(%q) = %#x, want leader.KeyProjector %#x", projector.DefaultName, got, leader.KeyProjector)
	}
	seen := map[int64]string{}
	for _, n := range []string{projector.DefaultName, "rebuild-test", "other"} {
		k := projector.LockKey(n)
		if prev, ok := seen[k]; ok {
			t.Fatalf("LockKey(%q) = LockKey(%q)", n, prev)
		}
		seen[k] = n
	}
}
