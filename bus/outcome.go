package bus

import (
	"errors"
	"fmt"
	"time"
)

// RetryError is a handler outcome that asks for the message to be
// redelivered after Delay (nak with delay): the failure is transient, such
// as a database that is down. On the message's last delivery it is
// dead-lettered instead, so that nothing vanishes silently.
type RetryError struct {
	Err   error
	Delay time.Duration
}

// Retry returns an error asking the consume loop to redeliver the message
// after delay.
func Retry(err error, delay time.Duration) error {
	return &RetryError{Err: err, Delay: delay}
}

// Error returns the wrapped error's message with the delay.
func (e *RetryError) Error() string {
	return fmt.Sprintf("retry in %s: %v", e.Delay, e.Err)
}

// Unwrap returns the handler's error.
func (e *RetryError) Unwrap() error { return e.Err }

// RejectError is a handler outcome that says the message must never be
// retried: it is malformed, undecodable (poison) or refused by a rule. The
// consume loop publishes it to the dead-letter stream with Code and the
// error text as the reason, then terminates it. The handler is responsible
// for any reply to the producer and any rejection event.
type RejectError struct {
	Err  error
	Code string
}

// Reject returns an error asking the consume loop to dead-letter and
// terminate the message. code is a short machine-readable reason, e.g.
// "undecodable", "digest-mismatch".
func Reject(err error, code string) error {
	return &RejectError{Err: err, Code: code}
}

// Error returns the rejection code and the wrapped error's message.
func (e *RejectError) Error() string {
	return fmt.Sprintf("rejected (%s): %v", e.Code, e.Err)
}

// Unwrap returns the handler's error.
func (e *RejectError) Unwrap() error { return e.Err }

// PanicError is the error a recovered handler panic becomes; it is treated
// like a plain error (nak with backoff, dead-lettered on the last delivery).
type PanicError struct {
	Value any
	Stack []byte
}

// Error says that the handler panicked and with what.
func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// ErrStopDeadline reports a Stop whose deadline passed before every
// in-flight handler finished; those handlers were cancelled and their
// messages nak'd for redelivery.
var ErrStopDeadline = errors.New("bus: stop deadline passed; in-flight handlers were cancelled and their messages nak'd")
