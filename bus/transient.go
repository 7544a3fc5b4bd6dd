package bus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Transient reports whether a publish or a JetStream API call failed for a
// reason that passes: the server shed load (429 too many requests, 503
// temporarily unavailable), no answer came in time, the connection was
// being reset or re-established, or the stream was not loaded yet after a
// server restart (no responders). Such a call is worth repeating with
// backoff, and a repeat is safe wherever a Nats-Msg-Id makes it a
// duplicate.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == 429 || apiErr.Code == 503 || apiErr.Code == 408
	}
	return errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrTooManyStalledMsgs) ||
		errors.Is(err, jetstream.ErrAsyncPublishTimeout) ||
		errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrStaleConnection) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF)
}

// ClientRetryBudget bounds how long a client (a producer) repeats a
// transient failure before it reports it: as long as the workers' retry
// budget, so that the same outages cost a producer only time.
const ClientRetryBudget = 2 * time.Minute

// AttemptTimeout bounds one call of [RetryTransient]: a request whose
// answer was lost (its server restarted) must fail and be repeated, not
// wait for the caller's whole deadline.
const AttemptTimeout = 10 * time.Second

// RetryTransient calls f until it succeeds, fails with an error that is
// not [Transient], ctx is done, or budget has passed since the first call;
// each call gets at most [AttemptTimeout], and between calls it waits
// [DefaultBackoff]. onRetry, when not nil, hears about every retried error
// (for a log line or a progress note). The last error is returned, with
// how long it was retried.
func RetryTransient(ctx context.Context, budget time.Duration, f func(ctx context.Context) error, onRetry func(attempt int, err error, wait time.Duration)) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, AttemptTimeout)
		err := f(actx)
		cancel()
		if err == nil || !Transient(err) || ctx.Err() != nil {
			return err
		}
		wait := DefaultBackoff(uint64(attempt))
		if time.Since(start)+wait > budget {
			return fmt.Errorf("still failing after %d attempts over %s: %w", attempt, time.Since(start).Round(time.Second), err)
		}
		if onRetry != nil {
			onRetry(attempt, err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}
