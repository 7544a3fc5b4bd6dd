package verifier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

// ErrLimiterClosed is returned by a rate-limited read after
// [ByteLimiter.Close].
var ErrLimiterClosed = errors.New("verifier: byte limiter closed")

// ByteLimiter caps the bytes per second that every verification of one
// worker process reads together, so that scrubbing does not starve ingest.
// A nil *ByteLimiter, or one with a rate of 0, does not limit.
//
// It starts with an empty bucket, so the rate holds from the first byte
// (no initial burst), and its burst is 50 ms worth of bytes (at least
// 4 KiB, at most 1 MiB), the largest read it lets through at once.
// Safe for concurrent use.
type ByteLimiter struct {
	lim    *rate.Limiter
	burst  int
	ctx    context.Context
	cancel context.CancelFunc
}

// NewByteLimiter returns a limiter of bytesPerSecond; 0 means unlimited.
// Close it when the worker stops, to end reads still waiting.
func NewByteLimiter(bytesPerSecond int64) *ByteLimiter {
	ctx, cancel := context.WithCancel(context.Background())
	b := &ByteLimiter{ctx: ctx, cancel: cancel}
	if bytesPerSecond <= 0 {
		return b
	}
	b.burst = int(min(max(bytesPerSecond/20, 4<<10), 1<<20))
	b.lim = rate.NewLimiter(rate.Limit(bytesPerSecond), b.burst)
	b.lim.AllowN(time.Now(), b.burst) // empty the bucket: no initial burst
	return b
}

// Limit returns the rate in bytes per second; 0 means unlimited.
func (b *ByteLimiter) Limit() int64 {
	if b == nil || b.lim == nil {
		return 0
	}
	return int64(b.lim.Limit())
}

// Reader wraps r so that reading from it draws from the limiter. It has the
// signature of dataplane.WithVerifyReader. With no limit it returns r.
func (b *ByteLimiter) Reader(r io.Reader) io.Reader {
	if b == nil || b.lim == nil {
		return r
	}
	return &limitedReader{r: r, b: b}
}

// Close ends every read waiting for the limiter with ErrLimiterClosed.
// Safe to call twice.
func (b *ByteLimiter) Close() {
	if b != nil {
		b.cancel()
	}
}

type limitedReader struct {
	r io.Reader
	b *ByteLimiter
}

// Read reads at most one burst, then waits until the limiter allows the
// bytes read (pay after reading: the rate holds over any longer window).
func (l *limitedReader) Read(p []byte) (int, error) {
	if len(p) > l.b.burst {
		p = p[:l.b.burst]
	}
	n, err := l.r.Read(p)
	if n > 0 {
		if werr := l.b.lim.WaitN(l.b.ctx, n); werr != nil {
			if l.b.ctx.Err() != nil {
				return n, ErrLimiterClosed
			}
			return n, fmt.Errorf("verifier: rate limit: %w", werr)
		}
	}
	return n, err
}

// ParseBytes parses a byte count or rate such as "0", "1048576", "512KiB",
// "50MiB", "1.5GiB", "10MB" or "100k". Binary suffixes (KiB, MiB, GiB, TiB,
// or K, M, G, T alone) are powers of 1024, decimal ones (kB, MB, GB, TB)
// powers of 1000; a trailing "/s" and "B" are accepted.
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(t, "/s")
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("%q is not a byte count; write e.g. 0 (unlimited), 1048576, 512KiB, 50MiB or 1GiB", s)
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40,
		"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("%q has the unknown unit %q; use B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB)", s, unit)
	}
	out := v * mult
	if out > 1<<62 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(out), nil
}
