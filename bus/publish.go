package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

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
	// HeaderReask marks a command a [Requester] sends again because its
	// reply did not come (after a reconnect, or after a quiet interval);
	// it carries the command id. Such a copy has no Nats-Msg-Id, so that
	// JetStream stores it; a worker already handling the command id with
	// the same reply subject may drop it (the handling in flight answers),
	// and one that finds the command id handled answers with the recorded
	// outcome.
	HeaderReask = "Artifactstore-Reask"
)

// Default schedule of a [Requester]'s re-asks of a command whose reply
// does not come: after DefaultReaskAfter without a reply, then after
// intervals doubling up to DefaultReaskMax.
const (
	DefaultReaskAfter = time.Minute
	DefaultReaskMax   = 10 * time.Minute
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
// replyTo with a core NATS publish. It cannot see a publish the server
// refuses for want of a grant (the server answers it with an asynchronous
// error only, and the publish waits out ctx): a program publishes through
// a [Publisher] or a [Requester], which fail at once.
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
// connection is being re-established is lost, and so, on a JetStream
// cluster, is one lost between the worker's node and the requester's
// (the worker's node dies right after the worker published it) while the
// requester's own connection stays up. So the requester sends a command
// still waiting for its reply once more after every reconnect, and after
// a quiet interval without a reply (DefaultReaskAfter, doubling up to
// DefaultReaskMax; see [ReaskAfter] and [Pending.Progressing]). A re-ask
// carries no Nats-Msg-Id (JetStream would drop it as a duplicate) and
// names the command in [HeaderReask]: the worker finds the command id
// already handled and answers with the recorded outcome, drops the copy
// when it is handling that command id for the same reply subject (that
// handling answers), or handles it if it never was (every effect is
// idempotent by command id).
type Requester struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	sub    *nats.Subscription
	prefix string
	denied *DeniedWatch
	opts   requesterOptions
	// wake tells the re-ask loop that a deadline moved; stop ends it.
	wake chan struct{}
	stop chan struct{}

	mu      sync.Mutex
	closed  bool
	pending map[string]*pendingCmd
	// reasked counts the commands sent again.
	reasked int
}

// pendingCmd is a sent command that waits for its reply.
type pendingCmd struct {
	ch          chan *nats.Msg
	subject     string
	body        []byte
	contentType string
	// sent is set once the first publish succeeded; due is when the
	// command is asked again without a reply, interval the quiet time
	// before the next re-ask after that.
	sent     bool
	due      time.Time
	interval time.Duration
}

type requesterOptions struct {
	reaskAfter, reaskMax time.Duration
}

// RequesterOption tunes a [Requester].
type RequesterOption func(*requesterOptions)

// ReaskAfter sets the schedule of the re-asks of a command whose reply
// does not come: first after first without a reply, then after intervals
// doubling up to limit (defaults DefaultReaskAfter and DefaultReaskMax).
// first <= 0 turns the periodic re-ask off (the re-ask after a reconnect
// stays).
func ReaskAfter(first, limit time.Duration) RequesterOption {
	return func(o *requesterOptions) { o.reaskAfter, o.reaskMax = first, limit }
}

// NewRequester subscribes to a fresh inbox prefix on nc; js must publish
// through the same connection's server. Close it when done.
func NewRequester(nc *nats.Conn, js jetstream.JetStream, opts ...RequesterOption) (*Requester, error) {
	o := requesterOptions{reaskAfter: DefaultReaskAfter, reaskMax: DefaultReaskMax}
	for _, opt := range opts {
		opt(&o)
	}
	if o.reaskMax < o.reaskAfter {
		o.reaskMax = o.reaskAfter
	}
	r := &Requester{js: js, nc: nc, prefix: nc.NewInbox(), pending: make(map[string]*pendingCmd), opts: o,
		wake: make(chan struct{}, 1), stop: make(chan struct{})}
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
	r.denied = WatchDenied(nc)
	prev := nc.ReconnectHandler()
	nc.SetReconnectHandler(func(c *nats.Conn) {
		if prev != nil {
			prev(c)
		}
		go r.reask()
	})
	if o.reaskAfter > 0 {
		go r.reaskLoop()
	}
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
// [Requester]), after a reconnect.
func (r *Requester) reask() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	now := time.Now()
	ids := make([]string, 0, len(r.pending))
	cmds := make([]*pendingCmd, 0, len(r.pending))
	for id, p := range r.pending {
		ids = append(ids, id)
		cmds = append(cmds, p)
		if p.sent {
			p.due = now.Add(p.interval)
		}
	}
	r.mu.Unlock()
	r.resend(ids, cmds)
}

// reaskLoop sends again every command that has had no reply for its
// quiet interval, and doubles the interval (see [ReaskAfter]).
func (r *Requester) reaskLoop() {
	t := time.NewTimer(r.opts.reaskAfter)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-r.wake:
		case <-t.C:
		}
		now := time.Now()
		ids, cmds, next := r.takeDue(now)
		if len(ids) > 0 {
			go r.resend(ids, cmds)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(next.Sub(now))
	}
}

// takeDue returns the commands whose re-ask is due at now, with their
// ids, doubling their intervals (up to the limit), and when the next
// re-ask is due.
func (r *Requester) takeDue(now time.Time) (ids []string, cmds []*pendingCmd, next time.Time) {
	next = now.Add(r.opts.reaskMax)
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, p := range r.pending {
		if !p.sent {
			continue
		}
		if !now.Before(p.due) {
			ids = append(ids, id)
			cmds = append(cmds, p)
			p.interval = min(2*p.interval, r.opts.reaskMax)
			p.due = now.Add(p.interval)
		}
		if p.due.Before(next) {
			next = p.due
		}
	}
	return ids, cmds, next
}

// resend publishes each of cmds (command ids ids) once more as a re-ask.
func (r *Requester) resend(ids []string, cmds []*pendingCmd) {
	ctx, cancel := context.WithTimeout(context.Background(), ClientRetryBudget)
	defer cancel()
	for i, p := range cmds {
		msg := nats.NewMsg(p.subject)
		msg.Data = p.body
		if p.contentType != "" {
			msg.Header.Set(HeaderContentType, p.contentType)
		}
		msg.Header.Set(HeaderReplyTo, r.ReplySubject(ids[i]))
		msg.Header.Set(HeaderReask, ids[i])
		err := RetryTransient(ctx, ClientRetryBudget, func(ctx context.Context) error {
			_, err := r.js.PublishMsg(ctx, msg)
			return err
		}, nil)
		if err != nil {
			return // the next re-ask, or the wait, reports the missing reply
		}
		r.mu.Lock()
		r.reasked++
		r.mu.Unlock()
	}
}

// poke wakes the re-ask loop to look at the deadlines again.
func (r *Requester) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Reasked is how many commands were sent again (after reconnects and
// quiet intervals).
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
	pctx, done := r.denied.Publishing(ctx, subject)
	err := RetryTransient(pctx, ClientRetryBudget, func(ctx context.Context) error {
		var err error
		ack, err = PublishCommand(ctx, r.js, subject, commandID, body, contentType, r.ReplySubject(commandID))
		if denied := DeniedCause(pctx); denied != nil {
			return fmt.Errorf("bus: publish command %s: %w", commandID, denied)
		}
		return err
	}, nil)
	if denied := DeniedCause(pctx); denied != nil && err != nil && !errors.As(err, new(*PublishDeniedError)) {
		err = fmt.Errorf("bus: publish command %s: %w", commandID, denied)
	}
	done()
	if err != nil {
		r.forget(commandID, pc)
		return nil, err
	}
	r.mu.Lock()
	pc.sent, pc.interval = true, r.opts.reaskAfter
	pc.due = time.Now().Add(pc.interval)
	r.mu.Unlock()
	r.poke()
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

// Progressing tells the requester that the command is making progress
// (e.g. its staged upload is being acknowledged chunk after chunk), so
// that no reply is expected yet: its next re-ask waits a whole quiet
// interval from now.
func (p *Pending) Progressing() { p.progressAt(time.Now()) }

func (p *Pending) progressAt(now time.Time) {
	r := p.r
	r.mu.Lock()
	if r.pending[p.CommandID] == p.p && p.p.sent {
		p.p.due = now.Add(p.p.interval)
	}
	r.mu.Unlock()
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
	close(r.stop)
	r.mu.Unlock()
	for _, p := range pending {
		close(p.ch)
	}
	if err := r.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
		return fmt.Errorf("bus: unsubscribe reply inbox: %w", err)
	}
	return nil
}
