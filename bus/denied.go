package bus

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	// Grant is the publish grant the user lacks, when it is wider than
	// Subject (e.g. $O.<bucket>.C.* for a staged chunk); "" means Subject.
	Grant string
	// Err is the server's error, wrapping nats.ErrPermissionViolation.
	Err error
}

// Error names the subject and the grant the user lacks.
func (e *PublishDeniedError) Error() string {
	grant := e.Grant
	if grant == "" {
		grant = e.Subject
	}
	return fmt.Sprintf("NATS refused to let this user publish on %s: its user needs a publish grant on %s "+
		"(`artifactstore topology permissions` lists every role's grants): %v", e.Subject, grant, e.Err)
}

// WithGrant returns a copy of e naming grant as the grant to add.
func (e *PublishDeniedError) WithGrant(grant string) *PublishDeniedError {
	c := *e
	c.Grant = grant
	return &c
}

// Unwrap returns the server's error.
func (e *PublishDeniedError) Unwrap() error { return e.Err }

// publishDenied matches the server's refusal of a publish, e.g.
// `nats: permissions violation: Permissions Violation for Publish to "a.b"`.
var publishDenied = regexp.MustCompile(`Permissions Violation for Publish to "([^"]+)"`)

// DeniedWatch cancels the publishes in flight on a subject the server
// refuses: it listens to the connection's asynchronous errors, where a
// permission violation is reported (the server never answers a refused
// publish, so a JetStream publish, which waits for a PubAck, would
// otherwise wait out its timeout and retries). Create one per long-lived
// user of a connection ([WatchDenied]): each adds a handler to the
// connection's chain for the connection's life. Safe for concurrent use.
type DeniedWatch struct {
	mu       sync.Mutex
	inflight map[*inflightPub]struct{}
}

type inflightPub struct {
	subject string
	cancel  context.CancelCauseFunc
}

// WatchDenied chains a handler of nc's asynchronous errors after the one
// set (bus.Connect's logger stays) and returns the watch it feeds.
func WatchDenied(nc *nats.Conn) *DeniedWatch {
	w := &DeniedWatch{inflight: map[*inflightPub]struct{}{}}
	prev := nc.ErrorHandler()
	nc.SetErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
		if prev != nil {
			prev(c, sub, err)
		}
		w.refused(err)
	})
	return w
}

func (w *DeniedWatch) refused(err error) {
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

// Publishing returns a context for publishing on subject that is
// cancelled with a *[PublishDeniedError] when the server refuses a publish
// on it, and a function to call when the publishes are done.
func (w *DeniedWatch) Publishing(ctx context.Context, subject string) (context.Context, func()) {
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

// DeniedCause returns the *[PublishDeniedError] ctx (from
// [DeniedWatch.Publishing]) was cancelled with, or nil.
func DeniedCause(ctx context.Context) *PublishDeniedError {
	var denied *PublishDeniedError
	if errors.As(context.Cause(ctx), &denied) {
		return denied
	}
	return nil
}

// Publisher publishes commands as [PublishCommand] does, and fails at once
// with a *[PublishDeniedError] when the server refuses the publish for want
// of a grant. Create one per connection and keep it (see [DeniedWatch]).
// Safe for concurrent use.
type Publisher struct {
	js     jetstream.JetStream
	denied *DeniedWatch
}

// NewPublisher returns a publisher over js, watching the asynchronous
// errors of js's connection.
func NewPublisher(js jetstream.JetStream) *Publisher {
	return &Publisher{js: js, denied: WatchDenied(js.Conn())}
}

// PublishCommand is [PublishCommand], failing at once with a
// *[PublishDeniedError] (the subject and the grant to add) when the server
// refuses the publish.
func (p *Publisher) PublishCommand(ctx context.Context, subject, commandID string, body []byte, contentType, replyTo string) (*jetstream.PubAck, error) {
	pctx, done := p.denied.Publishing(ctx, subject)
	defer done()
	ack, err := PublishCommand(pctx, p.js, subject, commandID, body, contentType, replyTo)
	if denied := DeniedCause(pctx); denied != nil {
		return nil, fmt.Errorf("bus: publish command %s: %w", commandID, denied)
	}
	return ack, err
}
