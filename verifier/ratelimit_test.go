package verifier_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/verifier"
)

// TestByteLimiterRate reads 1 s worth of bytes through a limiter and checks
// that it never ran faster than the limit (10% over it fails). A busy
// machine can only make the copy slower, so that bound holds everywhere;
// how much slower it may be depends on the machine (timer wake-ups under
// load), so the other bound only catches a limiter that is grossly slow:
// ten times the nominal second. `make bench` measures the accuracy
// (BenchmarkRateLimit, a 30 s window).
func TestByteLimiterRate(t *testing.T) {
	t.Parallel()
	const rate = 4 << 20
	lim := verifier.NewByteLimiter(rate)
	defer lim.Close()
	start := time.Now()
	n, err := io.Copy(io.Discard, lim.Reader(bytes.NewReader(make([]byte, rate))))
	elapsed := time.Since(start)
	if err != nil || n != rate {
		t.Fatalf("copied %d bytes: %v", n, err)
	}
	achieved := float64(n) / elapsed.Seconds()
	if achieved > rate*1.1 {
		t.Fatalf("achieved %.0f B/s with a limit of %d B/s: more than 10%% over it", achieved, rate)
	}
	if achieved < rate/10 {
		t.Fatalf("achieved %.0f B/s with a limit of %d B/s: the limiter is ten times too slow", achieved, rate)
	}
	t.Logf("achieved %.3f of the limit", achieved/rate)
}

func TestByteLimiterUnlimitedAndClose(t *testing.T) {
	t.Parallel()
	r := bytes.NewReader(nil)
	if got := verifier.NewByteLimiter(0).Reader(r); got != io.Reader(r) {
		t.Fatal("an unlimited limiter wrapped the reader")
	}
	lim := verifier.NewByteLimiter(1) // one byte per second
	lim.Close()
	_, err := io.Copy(io.Discard, lim.Reader(bytes.NewReader(make([]byte, 10_000))))
	if !errors.Is(err, verifier.ErrLimiterClosed) {
		t.Fatalf("read after Close = %v, want ErrLimiterClosed", err)
	}
}

func TestParseBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"0": 0, "1048576": 1 << 20, "512KiB": 512 << 10, "50MiB": 50 << 20, "50MiB/s": 50 << 20,
		"1.5GiB": 3 << 29, "10MB": 10_000_000, "100k": 100 << 10, "2 GiB": 2 << 30, "7B": 7,
	} {
		got, err := verifier.ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "5 parsecs", "1e400GiB"} {
		if _, err := verifier.ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) succeeded", in)
		}
	}
}
