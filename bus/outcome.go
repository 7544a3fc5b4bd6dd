package bus

import (
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/internal/service"
)

// Dependencies a [RetryError] names: what was down when a command could
// not be handled. They appear in the "unavailable" answer of a command
// whose retries ran out.
const (
	DependencyPostgres = "postgres"
	DependencyNATS     = "nats"
	DependencyStorage  = "storage"
)

// Codes of the answers the consume loop sends itself (see
// [ConsumerOptions.Answer]). They are part of every command family's reply
// codes (package commands documents them all).
const (
	// CodeUnavailable: a dependency (postgres, nats, storage, or the
	// worker itself) failed on every delivery of the command; nothing was
	// done. Send the command again once the dependency is back.
	CodeUnavailable = "unavailable"
	// CodeInternal: the handler failed on every delivery for a reason that
	// is neither the command's fault nor a known dependency (a bug, a
	// panic); nothing was done. Report it with the answer's reason.
	CodeInternal = "internal"
)

// RetryError is a handler outcome that asks for the message to be
// redelivered: the failure is transient, such as a database that is down.
// Delay 0 takes the consumer's exponential backoff (the usual choice: it is
// what sizes the retry budget, see [DefaultBackoff]). On the message's last
// delivery it is dead-lettered and answered with [CodeUnavailable] (naming
// Dependency) instead, so that nothing vanishes silently.
type RetryError struct {
	Err   error
	Delay time.Duration
	// Dependency names what failed (one of the Dependency* constants);
	// empty means unknown, and an exhausted command is answered with
	// [CodeInternal].
	Dependency string
}

// Retry returns an error asking the consume loop to redeliver the message
// after delay (0: the consumer's backoff).
func Retry(err error, delay time.Duration) error {
	return &RetryError{Err: err, Delay: delay}
}

// Unavailable returns an error asking the consume loop to redeliver the
// message with its backoff because dependency (one of the Dependency*
// constants) failed.
func Unavailable(dependency string, err error) error {
	return &RetryError{Err: err, Dependency: dependency}
}

// Error returns the wrapped error's message with the delay.
func (e *RetryError) Error() string {
	if e.Dependency != "" {
		return fmt.Sprintf("%s unavailable: %v", e.Dependency, e.Err)
	}
	if e.Delay > 0 {
		return fmt.Sprintf("retry in %s: %v", e.Delay, e.Err)
	}
	return fmt.Sprintf("retry: %v", e.Err)
}

// Unwrap returns the handler's error.
func (e *RetryError) Unwrap() error { return e.Err }

// RejectError is a handler outcome that says the message must never be
// retried: it is malformed, undecodable (poison) or refused by a rule. The
// consume loop publishes it to the dead-letter stream as a refusal (subject
// <prefix>.<durable>.refused) with Code and the error text as the reason,
// then terminates it. The handler is responsible for any reply to the
// producer and any rejection event: a refusal is a decision, already
// answered, not a failure of the pipeline.
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

// FailError is a handler outcome that says the pipeline cannot handle the
// message now and retrying it soon would not help, e.g. the storage backend
// has no room for it. Unlike a [RejectError] the handler has not answered:
// the consume loop answers through [ConsumerOptions.Answer] with Code and
// the error text, dead-letters it as a failure (subject
// <prefix>.<durable>.failed), and terminates it.
type FailError struct {
	Err  error
	Code string
}

// Fail returns an error asking the consume loop to answer the message with
// code and err's text, dead-letter it as a failure and terminate it.
func Fail(err error, code string) error {
	return &FailError{Err: err, Code: code}
}

// Error returns the code and the wrapped error's message.
func (e *FailError) Error() string { return fmt.Sprintf("%s: %v", e.Code, e.Err) }

// Unwrap returns the handler's error.
func (e *FailError) Unwrap() error { return e.Err }

// PanicError is the error a recovered handler panic becomes; it is treated
// like a plain error (nak with backoff, dead-lettered and answered with
// [CodeInternal] on the last delivery).
type PanicError struct {
	Value any
	Stack []byte
}

// Error says that the handler panicked and with what.
func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// ErrStopDeadline reports a Stop whose deadline passed before every
// in-flight handler finished; those handlers were cancelled and their
// messages nak'd for redelivery. It wraps service.ErrStopDeadline, the
// hard stop of every service.
var ErrStopDeadline = fmt.Errorf("bus: in-flight handlers were cancelled and their messages nak'd: %w", service.ErrStopDeadline)
