package projector

import (
	"fmt"
	"hash/maphash"
	"testing"
)

// TestKeyFilter checks the filter's contract: no false negatives, and
// false positives near the design rate at capacity.
func TestKeyFilter(t *testing.T) {
	t.Parallel()
	const n = 100_000
	f := newKeyFilter(maphash.MakeSeed(), n)
	for i := range n {
		f.add(fmt.Sprintf("blake3:%064x", i), "local")
	}
	if f.full() {
		t.Errorf("full at capacity")
	}
	for i := range n {
		if !f.mayHave(fmt.Sprintf("blake3:%064x", i), "local") {
			t.Fatalf("key %d added but not held", i)
		}
	}
	fp := 0
	for i := range n {
		if f.mayHave(fmt.Sprintf("blake3:%064x", i), "s3") || f.mayHave(fmt.Sprintf("blake3:%064x", n+i), "local") {
			fp++
		}
	}
	if rate := float64(fp) / (2 * n); rate > 0.02 {
		t.Errorf("false positive rate %.4f, want about 0.01", rate)
	}
	f.add("x", "y")
	if !f.full() {
		t.Errorf("not full past capacity")
	}
}
