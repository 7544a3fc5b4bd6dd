package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a command message.
const (
	// HeaderMsgID is JetStream's de-duplication header; it carries the
	// command id.
	HeaderMsgID = jetstream.MsgIDHeader
	// HeaderReplyTo carries the subject the worker replies on. JetStream
	// consumers never see the publisher's reply subject (the publish reply
	// is the PubAck), so the reply subject travels as a header.
	HeaderReplyTo = "Artifactstore-Reply-To"
	// HeaderContentType is the body's media type: application/cbor
	// (default when absent) or application/json.
	HeaderContentType = "Content-Type"
)

// Headers a dead letter carries besides the original command's headers.
const (
	HeaderDeadSubject    = "Artifactstore-Dead-Subject"
	HeaderDeadStream     = "Artifactstore-Dead-Stream"
	HeaderDeadSequence   = "Artifactstore-Dead-Sequence"
	HeaderDeadConsumer   = "Artifactstore-Dead-Consumer"
	HeaderDeadDeliveries = "Artifactstore-Dead-Deliveries"
	HeaderDeadReason     = "Artifactstore-Dead-Reason"
	HeaderDeadCode       = "Artifactstore-Dead-Code"
	// HeaderDeadKind is DeadLetterRefused or DeadLetterFailed, as the
	// last token of the dead letter's subject.
	HeaderDeadKind = "Artifactstore-Dead-Kind"
)

// ErrInvalidCommandID reports a command id that cannot be used as a
// Nats-Msg-Id and a reply subject token.
var ErrInvalidCommandID = errors.New("bus: invalid command id")

// ErrDuplicatePending reports a second outstanding request with the same
// command id on one [Requester].
var ErrDuplicatePending = errors.New("bus: a request with this command id is already waiting for its reply")

// ErrRequesterClosed reports a request on, or a wait interrupted by, a
// closed [Requester].
var ErrRequesterClosed = errors.New("bus: requester closed")

// ValidateCommandID checks that id can be a Nats-Msg-Id and one subject
// token: non-empty, at most 128 bytes, no whitespace, '.', '*' or '>'.
// A UUID always passes.
func ValidateCommandID(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, ".*> \t\r\n") {
		return fmt.Errorf("%w %q: use a UUID (1-128 characters, no whitespace, '.', '*' or '>')", ErrInvalidCommandID, id)
	}
	for _, r := range id {
		if r < 0x21 || r == 0x7f {
			return fmt.Errorf("%w %q: control character; use a UUID", ErrInvalidCommandID, id)
		}
	}
	return nil
}

// PublishCommand publishes a command to JetStream with Nats-Msg-Id set to
// commandID, so that the server drops a second publish of the same command
// inside the stream's duplicate window (the PubAck then says Duplicate).
// contentType and replyTo are optional headers; the worker answers on
// replyTo with a core NATS publish.
func PublishCommand(ctx context.Context, js jetstream.JetStream, subject, commandID string, body []byte, contentType, replyTo string) (*jetstream.PubAck, error) {
	if err := ValidateCommandID(commandID); err != nil {
		return nil, err
	}
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(HeaderMsgID, commandID)
	if contentType != "" {
		msg.Header.Set(HeaderContentType, contentType)
	}
	if replyTo != "" {
		msg.Header.Set(HeaderReplyTo, replyTo)
	}
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) {
			return nil, fmt.Errorf("bus: publish command %s on %s: no stream answered (is the topology created? `artifactstore topology apply` creates it): %w", commandID, subject, err)
		}
		return nil, fmt.Errorf("bus: publish command %s on %s: %w", commandID, subject, err)
	}
	return ack, nil
}

// replyFlushTimeout bounds the wait for the server to confirm it has a
// reply; it only stops a hung connection (a reply whose flush fails is
// sent again by the command's redelivery).
const replyFlushTimeout = AttemptTimeout

// Reply answers a command on its reply subject with a core NATS publish,
// and returns once the server has it (a flush): a reply still in the
// client's buffers, or on its way to a server that dies, is lost with the
// connection, and the command's ack, sent again on the next connection,
// would then remove a command whose producer never heard of it. So a
// handler that returns Reply's error leaves its command to be redelivered
// and answered again. It does nothing when the command asked for no reply
// (replyTo is empty).
func Reply(nc *nats.Conn, replyTo string, body []byte, contentType string) error {
	if replyTo == "" {
		return nil
	}
	msg := nats.NewMsg(replyTo)
	msg.Data = body
	if contentType != "" {
		msg.Header.Set(HeaderContentType, contentType)
	}
	if err := nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("bus: reply on %s: %w", replyTo, err)
	}
	if err := nc.FlushTimeout(replyFlushTimeout); err != nil {
		return fmt.Errorf("bus: reply on %s not confirmed by the server (the command is answered again on its redelivery): %w", replyTo, err)
	}
	return nil
}

// Requester publishes commands and waits for their replies. It holds one
// wildcard subscription on a unique inbox prefix, and routes each reply by
// its last subject token, the command id, to the waiting caller, so that
// one connection carries any number of outstanding commands. Safe for
// concurrent use.
//
// Replies are core NATS messages: one sent while the requester's
// connection is being re-established is lost. So after every reconnect
// the requester sends each command still waiting for its reply once more,
// without Nats-Msg-Id (JetStream would drop it as a duplicate): the worker
// finds the command id already handled and answers with the recorded
// outcome, or handles it if it never was (every effect is idempotent by
// command id).
type Requester struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	sub    *nats.Subscription
	prefix string
	denied *deniedWatch

	mu      sync.Mutex
	closed  bool
	pending map[string]*pendingCmd
	// reasked counts the commands sent again after reconnects.
	reasked int
}

// pendingCmd is a sent command that waits for its reply.
type pendingCmd struct {
	ch          chan *nats.Msg
	subject     string
	body        []byte
	contentType string
}

// NewRequester subscribes to a fresh inbox prefix on nc; js must publish
// through the same connection's server. Close it when done.
func NewRequester(nc *nats.Conn, js jetstream.JetStream) (*Requester, error) {
	r := &Requester{js: js, nc: nc, prefix: nc.NewInbox(), pending: make(map[string]*pendingCmd)}
	sub, err := nc.Subscribe(r.prefix+".*", r.route)
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe to reply inbox: %w", err)
	}
	// Replies must never be dropped because a slow consumer limit was hit
	// while hundreds of commands finish at once.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("bus: reply inbox limits: %w", err)
	}
	// Make the subscription known to the server before any command that
	// names it can be handled.
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("bus: flush reply subscription: %w", err)
	}
	r.sub = sub
	r.denied = watchDenied(nc)
	prev := nc.ReconnectHandler()
	nc.SetReconnectHandler(func(c *nats.Conn) {
		if prev != nil {
			prev(c)
		}
		go r.reask()
	})
	return r, nil
}

func (r *Requester) route(m *nats.Msg) {
	id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	r.mu.Lock()
	p, ok := r.pending[id]
	if ok {
		delete(r.pending, id)
	}
	r.mu.Unlock()
	if ok {
		p.ch <- m // buffered, one reply per command
	}
}

// reask sends every command still waiting for its reply once more (see
// [Requester]).
func (r *Requester) reask() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	ids := make([]string, 0, len(r.pending))
	cmds := make([]*pendingCmd, 0, len(r.pending))
	for id, p := range r.pending {
		ids = append(ids, id)
		cmds = append(cmds, p)
	}
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), ClientRetryBudget)
	defer cancel()
	for i, p := range cmds {
		msg := nats.NewMsg(p.subject)
		msg.Data = p.body
		if p.contentType != "" {
			msg.Header.Set(HeaderContentType, p.contentType)
		}
		msg.Header.Set(HeaderReplyTo, r.ReplySubject(ids[i]))
		err := RetryTransient(ctx, ClientRetryBudget, func(ctx context.Context) error {
			_, err := r.js.PublishMsg(ctx, msg)
			return err
		}, nil)
		if err != nil {
			return // the wait reports the missing reply
		}
		r.mu.Lock()
		r.reasked++
		r.mu.Unlock()
	}
}

// Reasked is how many commands were sent again after reconnects.
func (r *Requester) Reasked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reasked
}

// ReplySubject is the reply subject of a command sent by this Requester.
func (r *Requester) ReplySubject(commandID string) string { return r.prefix + "." + commandID }

// Pending is a command that was published and waits for its reply.
type Pending struct {
	// CommandID is the command's id.
	CommandID string
	// PubAck is JetStream's acknowledgement of the publish. When
	// PubAck.Duplicate is true, the command had already been published
	// inside the duplicate window, possibly with another reply subject: the
	// reply may never come here, and the outcome should be looked up by
	// command id instead.
	PubAck *jetstream.PubAck

	r  *Requester
	p  *pendingCmd
	ch chan *nats.Msg
}

// Send registers commandID, publishes the command with this Requester's
// reply subject and returns without waiting for the reply. A publish that
// fails for a passing reason ([Transient]: the server shedding load, a
// connection being reset) is repeated with backoff for up to
// [ClientRetryBudget]; the command id makes a repeat a duplicate. A
// publish the server refuses for want of a grant on subject fails at once
// with a *[PublishDeniedError].
func (r *Requester) Send(ctx context.Context, subject, commandID string, body []byte, contentType string) (*Pending, error) {
	if err := ValidateCommandID(commandID); err != nil {
		return nil, err
	}
	ch := make(chan *nats.Msg, 1)
	pc := &pendingCmd{ch: ch, subject: subject, body: body, contentType: contentType}
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return nil, ErrRequesterClosed
	case r.pending[commandID] != nil:
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrDuplicatePending, commandID)
	}
	r.pending[commandID] = pc
	r.mu.Unlock()

	var ack *jetstream.PubAck
	pctx, done := r.denied.publishing(ctx, subject)
	err := RetryTransient(pctx, ClientRetryBudget, func(ctx context.Context) error {
		var err error
		ack, err = PublishCommand(ctx, r.js, subject, commandID, body, contentType, r.ReplySubject(commandID))
		if denied := deniedCause(pctx); denied != nil {
			return fmt.Errorf("bus: publish command %s: %w", commandID, denied)
		}
		return err
	}, nil)
	if denied := deniedCause(pctx); denied != nil && err != nil && !errors.As(err, new(*PublishDeniedError)) {
		err = fmt.Errorf("bus: publish command %s: %w", commandID, denied)
	}
	done()
	if err != nil {
		r.forget(commandID, pc)
		return nil, err
	}
	return &Pending{CommandID: commandID, PubAck: ack, r: r, p: pc, ch: ch}, nil
}

// Wait blocks until the reply arrives or ctx is done. After ctx is done the
// command stays registered, and Wait may be called again.
func (p *Pending) Wait(ctx context.Context) (*nats.Msg, error) {
	select {
	case m, ok := <-p.ch:
		if !ok {
			return nil, fmt.Errorf("bus: waiting for the reply to command %s: %w", p.CommandID, ErrRequesterClosed)
		}
		return m, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("bus: no reply to command %s yet (is a worker running for it?): %w", p.CommandID, context.Cause(ctx))
	}
}

// Cancel stops waiting for the reply; a reply arriving later is dropped.
func (p *Pending) Cancel() { p.r.forget(p.CommandID, p.p) }

// Request sends a command and waits for its reply until ctx is done.
func (r *Requester) Request(ctx context.Context, subject, commandID string, body []byte, contentType string) (*nats.Msg, error) {
	p, err := r.Send(ctx, subject, commandID, body, contentType)
	if err != nil {
		return nil, err
	}
	defer p.Cancel()
	return p.Wait(ctx)
}

func (r *Requester) forget(id string, p *pendingCmd) {
	r.mu.Lock()
	if r.pending[id] == p {
		delete(r.pending, id)
	}
	r.mu.Unlock()
}

// Close unsubscribes the inbox and fails every outstanding Wait with
// ErrRequesterClosed. Safe to call twice.
func (r *Requester) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	pending := r.pending
	r.pending = nil
	r.mu.Unlock()
	for _, p := range pending {
		close(p.ch)
	}
	if err := r.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("bus: unsubscribe reply inbox: %w", err)
	}
	return nil
}
