package bus

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"

	"github.com/nats-io/nats.go"
)

// PublishDeniedError reports a publish the NATS server refused because the
// connection's user holds no publish grant on the subject. The server
// answers such a publish with an asynchronous error only, never on the
// publish's own reply, so without it a JetStream publish would wait for a
// PubAck that never comes. errors.Is(err, nats.ErrPermissionViolation)
// holds for it.
type PublishDeniedError struct {
	// Subject is the subject the user may not publish to.
	Subject string
	// Err is the server's error, wrapping nats.ErrPermissionViolation.
	Err error
}

// Error names the subject and the grant the user lacks.
func (e *PublishDeniedError) Error() string {
	return fmt.Sprintf("NATS refused to let this user publish on %s: its user needs a publish grant on %s "+
		"(`artifactstore topology permissions` lists every role's grants): %v", e.Subject, e.Subject, e.Err)
}

// Unwrap returns the server's error.
func (e *PublishDeniedError) Unwrap() error { return e.Err }

// publishDenied matches the server's refusal of a publish, e.g.
// `nats: permissions violation: Permissions Violation for Publish to "a.b"`.
var publishDenied = regexp.MustCompile(`Permissions Violation for Publish to "([^"]+)"`)

// deniedWatch cancels the publishes in flight on a subject the server
// refuses: it listens to the connection's asynchronous errors, where a
// permission violation is reported.
type deniedWatch struct {
	mu       sync.Mutex
	inflight map[*inflightPub]struct{}
}

type inflightPub struct {
	subject string
	cancel  context.CancelCauseFunc
}

// watchDenied chains a handler of nc's asynchronous errors in front of the
// one set (bus.Connect's logger stays).
func watchDenied(nc *nats.Conn) *deniedWatch {
	w := &deniedWatch{inflight: map[*inflightPub]struct{}{}}
	prev := nc.ErrorHandler()
	nc.SetErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
		if prev != nil {
			prev(c, sub, err)
		}
		w.refused(err)
	})
	return w
}

func (w *deniedWatch) refused(err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	m := publishDenied.FindStringSubmatch(err.Error())
	if m == nil {
		return
	}
	denied := &PublishDeniedError{Subject: m[1], Err: err}
	w.mu.Lock()
	defer w.mu.Unlock()
	for p := range w.inflight {
		if p.subject == denied.Subject {
			p.cancel(denied)
		}
	}
}

// publishing returns a context for publishing on subject that is cancelled
// with a *PublishDeniedError when the server refuses a publish on it, and
// a function to call when the publish is done.
func (w *deniedWatch) publishing(ctx context.Context, subject string) (context.Context, func()) {
	pctx, cancel := context.WithCancelCause(ctx)
	p := &inflightPub{subject: subject, cancel: cancel}
	w.mu.Lock()
	w.inflight[p] = struct{}{}
	w.mu.Unlock()
	return pctx, func() {
		w.mu.Lock()
		delete(w.inflight, p)
		w.mu.Unlock()
		cancel(nil)
	}
}

// deniedCause returns the *PublishDeniedError ctx was cancelled with, or
// nil.
func deniedCause(ctx context.Context) error {
	var denied *PublishDeniedError
	if errors.As(context.Cause(ctx), &denied) {
		return denied
	}
	return nil
}
