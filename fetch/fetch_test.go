package fetch

import "testing"

func TestParseRange(t *testing.T) {
	t.Parallel()
	const size = 100
	for _, c := range []struct {
		in     string
		off, n int64
	}{
		{"0-9", 0, 10}, {"90-", 90, 10}, {"-5", 95, 5}, {"-500", 0, 100}, {"50-1000", 50, 50}, {"99-99", 99, 1},
	} {
		r, err := ParseRange(c.in)
		if err != nil {
			t.Fatalf("ParseRange(%q): %v", c.in, err)
		}
		off, n, err := r.resolve(size)
		if err != nil || off != c.off || n != c.n {
			t.Fatalf("%q of %d bytes = %d+%d (%v), want %d+%d", c.in, size, off, n, err, c.off, c.n)
		}
	}
	for _, bad := range []string{"", "5", "a-b", "9-3", "-0", "--5", "-1-2"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("ParseRange(%q) accepted", bad)
		}
	}
	if r, _ := ParseRange("100-"); true {
		if _, _, err := r.resolve(size); err == nil {
			t.Error("a range starting at the size was accepted")
		}
	}
}
