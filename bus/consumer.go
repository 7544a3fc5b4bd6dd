package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Message is one delivery of a command to a handler.
type Message struct {
	// Subject is the subject the command was published on.
	Subject string
	// Data is the command body.
	Data []byte
	// Headers are the command's headers.
	Headers nats.Header
	// CommandID is the Nats-Msg-Id header; empty when the publisher set
	// none (the handler decides whether that is acceptable).
	CommandID string
	// ReplyTo is the Artifactstore-Reply-To header; empty when the
	// producer waits for no reply.
	ReplyTo string
	// Reask is the Artifactstore-Reask header: the command id of a
	// command its Requester sent again because no reply came (see
	// HeaderReask); empty on the first publish.
	Reask string
	// ContentType is the Content-Type header; empty means CBOR.
	ContentType string
	// Stream and StreamSequence locate the command in JetStream.
	Stream         string
	StreamSequence uint64
	// NumDelivered counts deliveries of this command, this one included
	// (1 on the first).
	NumDelivered uint64
	// Timestamp is when the command was stored in the stream.
	Timestamp time.Time

	msg jetstream.Msg
}

// InProgress tells the server the command is still being worked on,
// resetting its redelivery timer. The consume loop already sends it every
// InProgressInterval while the handler runs; call it for finer control.
func (m Message) InProgress() error {
	if err := m.msg.InProgress(); err != nil {
		return fmt.Errorf("bus: in-progress ack of %s #%d: %w", m.Stream, m.StreamSequence, err)
	}
	return nil
}

// Handler handles one command. Its error decides what happens to the
// message:
//   - nil: DoubleAck (the ack is confirmed by the server);
//   - [Retry] / [Unavailable]: nak with the given delay or the backoff;
//   - [Reject] (any error with a [RejectError] in its chain): dead-letter
//     as a refusal, then term; never redelivered (the handler answered);
//   - [Fail]: answer (ConsumerOptions.Answer), dead-letter as a failure,
//     then term;
//   - any other error, or a panic: nak with backoff.
//
// On the last delivery (NumDelivered >= MaxDeliver) a handler that still
// fails is not retried: the command is answered with [CodeUnavailable]
// (naming the dependency) or [CodeInternal], dead-lettered as a failure and
// terminated. So every command ends in an answer.
//
// ctx is cancelled when a Stop's deadline passes; a handler must then
// return promptly, and its message is nak'd unless it returned nil. A
// handler must be idempotent by command id: a late ack may let a second
// worker receive the same command.
type Handler func(ctx context.Context, m Message) error

// ConsumerOptions tunes a [Consumer]. Zero values take the documented
// defaults.
type ConsumerOptions struct {
	// Concurrency is how many handlers run at once, and the most messages
	// the consumer holds unsettled: it fetches only as many as it has free
	// handler slots, so a stop naks or finishes exactly what it holds.
	// Default 4.
	Concurrency int
	// Logger receives the consumer's log lines. The zero value logs
	// nothing.
	Logger zerolog.Logger
	// DeadLetterSubjectPrefix is the subject below which dead letters are
	// published, as <prefix>.<durable>. Default
	// DefaultTopology().DeadLetterSubjectPrefix(), "artifacts.deadletter".
	DeadLetterSubjectPrefix string
	// MaxDeliver is the delivery count at which a failing message is
	// answered and dead-lettered instead of nak'd. Default: the consumer's
	// MaxDeliver as configured on the server minus one, the spare delivery
	// (see [Topology.MaxDeliver]); never, if that is unlimited. A delivery
	// beyond MaxDeliver means the last attempt never settled (its worker
	// died, was stopped or hung): it is answered and dead-lettered at once,
	// without running the handler.
	MaxDeliver int
	// Answer sends the reply of a command the pipeline stops handling
	// without the handler having answered it: a [Fail] outcome, a failure
	// on the last delivery, a delivery beyond the last, and a command the
	// server gave up on (its max-deliveries advisory). code is
	// [CodeUnavailable], [CodeInternal] or the [FailError]'s code; reason
	// says why in words. It should answer with the command's recorded
	// outcome instead when the command turns out to be done (a worker that
	// died after committing). nil answers nothing (dead letters only).
	Answer func(ctx context.Context, m Message, code, reason string) error
	// InProgressInterval is how often an in-progress ack is sent while a
	// handler runs. Default: the consumer's AckWait / 3.
	InProgressInterval time.Duration
	// StopTimeout bounds a Stop whose context has no deadline. Default 30 s.
	StopTimeout time.Duration
	// FetchWait is how long one pull request waits for messages. A soft
	// stop lets the pull in flight expire (so that every message it
	// delivers is nak'd rather than left to time out), so it also bounds
	// how long an idle consumer takes to stop. Default 2 s.
	FetchWait time.Duration
	// AckTimeout bounds one attempt of a DoubleAck (a lost or refused ack
	// is sent again for up to the AckWait) and a dead-letter publish.
	// Default 5 s.
	AckTimeout time.Duration
	// Backoff gives the redelivery delay after a failure on the given
	// delivery (1 for the first), for plain errors and for [RetryError]s
	// without a delay of their own. Default [DefaultBackoff].
	Backoff func(numDelivered uint64) time.Duration
	// NoAdvisories turns off the subscription to the server's
	// max-deliveries advisories of this consumer (see [Consumer.Start]).
	NoAdvisories bool
	// OnReaskDropped, when set, hears about every re-ask (see
	// [HeaderReask]) acknowledged without running the handler because this
	// consumer is handling its command for the same reply subject.
	OnReaskDropped func(m Message)
}

func (o ConsumerOptions) withDefaults() ConsumerOptions {
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.DeadLetterSubjectPrefix == "" {
		o.DeadLetterSubjectPrefix = DefaultTopology().DeadLetterSubjectPrefix()
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 30 * time.Second
	}
	if o.FetchWait <= 0 {
		o.FetchWait = 2 * time.Second
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 5 * time.Second
	}
	if o.Backoff == nil {
		o.Backoff = DefaultBackoff
	}
	return o
}

// Backoff bounds of [DefaultBackoff].
const (
	backoffBase = time.Second
	backoffMax  = 30 * time.Second
)

// DefaultBackoff is the redelivery delay after a failure on delivery n:
// 1 s doubling with every delivery up to 30 s ([BackoffCeiling]), each
// drawn at random between 75 % and 100 % of that (jitter, so that the
// commands one outage failed together do not all come back at the same
// instant). [RetryBudget] adds the delays up.
func DefaultBackoff(n uint64) time.Duration {
	d := BackoffCeiling(n)
	return d - time.Duration(rand.Int64N(int64(d)/4+1))
}

// BackoffCeiling is the delay of [DefaultBackoff] before jitter.
func BackoffCeiling(n uint64) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > 6 {
		return backoffMax
	}
	return min(backoffBase<<(n-1), backoffMax)
}

// RetryBudget is how long a command that fails on every delivery is
// retried with [DefaultBackoff] before it is answered as unavailable: the
// sum of the delays between its maxDeliver deliveries, at least (all
// jitter at 75 %) and at most (no jitter). Handling time comes on top.
// With DefaultTopology's MaxDeliver of 10: 113 s to 151 s, so that an
// outage of PostgreSQL, NATS or the storage of up to a minute costs only
// time.
func RetryBudget(maxDeliver int) (least, most time.Duration) {
	for n := 1; n < maxDeliver; n++ {
		d := BackoffCeiling(uint64(n))
		most += d
		least += d - d/4
	}
	return least, most
}

// ErrConsumerStarted reports a second Start, or a Start after Stop.
var ErrConsumerStarted = errors.New("bus: consumer already started or stopped")

// Consumer runs a handler over a durable pull consumer with bounded
// concurrency. Its lifecycle: [Consumer.Start] returns once running;
// [Consumer.Stop] stops fetching, lets in-flight handlers finish until its
// deadline, then cancels them; Stop is safe twice and before Start.
type Consumer struct {
	js      jetstream.JetStream
	stream  string
	durable string
	handler Handler
	opts    ConsumerOptions
	log     zerolog.Logger

	mu       sync.Mutex
	started  bool
	stopping bool

	cons       jetstream.Consumer
	maxDeliver uint64
	ackWait    time.Duration
	advisories *nats.Subscription
	inProgress time.Duration
	slots      chan struct{}
	soft       chan struct{} // closed by Stop: fetch no more
	hardCtx    context.Context
	hardCancel context.CancelFunc
	handlers   sync.WaitGroup
	// flights counts the commands being handled, by command id and reply
	// subject.
	flights flights
	// advisoryWork counts advisories being handled.
	advisoryWork sync.WaitGroup
	done         chan struct{} // closed when the fetch loop and every handler ended
}

// NewConsumer prepares a consumer of the durable consumer durable on
// stream; [Consumer.Start] binds to it, so it must exist by then
// ([EnsureTopology] creates it).
func NewConsumer(js jetstream.JetStream, stream, durable string, h Handler, opts ConsumerOptions) (*Consumer, error) {
	if js == nil || h == nil || stream == "" || durable == "" {
		return nil, errors.New("bus: NewConsumer needs a JetStream context, a stream, a durable name and a handler")
	}
	opts = opts.withDefaults()
	return &Consumer{
		js:      js,
		stream:  stream,
		durable: durable,
		handler: h,
		opts:    opts,
		log:     opts.Logger.With().Str("service", "bus.consumer").Str("stream", stream).Str("consumer", durable).Logger(),
		soft:    make(chan struct{}),
		done:    make(chan struct{}),
	}, nil
}

// Start binds to the durable consumer and starts fetching; it returns once
// the loop runs. ctx bounds the binding only: the loop runs until Stop
// (handlers receive ctx's values, not its cancellation).
func (c *Consumer) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started || c.stopping {
		return ErrConsumerStarted
	}
	cons, err := c.js.Consumer(ctx, c.stream, c.durable)
	if err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("bus: consumer %s on stream %s does not exist; create the topology first (`artifactstore topology apply`, bus.ApplyTopology or bus.EnsureTopology): %w", c.durable, c.stream, err)
		}
		return fmt.Errorf("bus: bind consumer %s on stream %s: %w", c.durable, c.stream, err)
	}
	cfg := cons.CachedInfo().Config
	c.cons = cons
	c.maxDeliver = 0
	switch {
	case c.opts.MaxDeliver > 0:
		c.maxDeliver = uint64(c.opts.MaxDeliver)
	case cfg.MaxDeliver > 1:
		c.maxDeliver = uint64(cfg.MaxDeliver - 1) // the last one is the spare
	case cfg.MaxDeliver == 1:
		c.maxDeliver = 1
	}
	c.ackWait = cfg.AckWait
	if c.ackWait <= 0 {
		c.ackWait = 30 * time.Second
	}
	c.inProgress = c.opts.InProgressInterval
	if c.inProgress <= 0 {
		c.inProgress = c.ackWait / 3
	}
	c.slots = make(chan struct{}, c.opts.Concurrency)
	c.hardCtx, c.hardCancel = context.WithCancel(context.WithoutCancel(ctx))
	if !c.opts.NoAdvisories && cfg.MaxDeliver > 0 {
		if err := c.watchAdvisories(); err != nil {
			c.hardCancel()
			return err
		}
	}
	c.started = true

	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		c.fetchLoop()
	}()
	go func() {
		<-loopDone
		c.handlers.Wait()
		if c.advisories != nil {
			_ = c.advisories.Unsubscribe()
		}
		c.advisoryWork.Wait()
		c.hardCancel()
		close(c.done)
	}()
	c.log.Info().Int("concurrency", c.opts.Concurrency).Uint64("max_deliver", c.maxDeliver).
		Dur("in_progress_interval", c.inProgress).Msg("consumer started")
	return nil
}

// Stop stops fetching and waits for in-flight handlers until ctx is done
// (or StopTimeout, when ctx has no deadline). Then it cancels the handlers'
// contexts, waits for them to return, naks their messages, and returns
// ErrStopDeadline. Messages that arrive from the last pull after Stop began
// are nak'd at once, unhandled. Safe to call twice, concurrently, and
// before Start (then Start will refuse to run).
func (c *Consumer) Stop(ctx context.Context) error {
	c.mu.Lock()
	if !c.started {
		if !c.stopping {
			c.stopping = true
			close(c.done)
		}
		c.mu.Unlock()
		return nil
	}
	if !c.stopping {
		c.stopping = true
		close(c.soft)
		c.log.Info().Msg("consumer stopping")
	}
	c.mu.Unlock()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.opts.StopTimeout)
		defer cancel()
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
	}
	c.log.Warn().Msg("stop deadline passed; cancelling in-flight handlers")
	c.hardCancel()
	<-c.done
	return fmt.Errorf("consumer %s on %s: %w", c.durable, c.stream, ErrStopDeadline)
}

// Done is closed once the consumer has stopped (or was stopped before it
// started): no fetch in flight, no handler running.
func (c *Consumer) Done() <-chan struct{} { return c.done }

func (c *Consumer) stopRequested() bool {
	select {
	case <-c.soft:
		return true
	case <-c.hardCtx.Done():
		return true
	default:
		return false
	}
}

func (c *Consumer) release(n int) {
	for range n {
		<-c.slots
	}
}

func (c *Consumer) fetchLoop() {
	errDelay := time.Duration(0)
	for {
		// Fetch only when a handler slot is free, and at most as many
		// messages as there are free slots: nothing waits in a buffer
		// where a stop could neither finish nor nak it.
		select {
		case c.slots <- struct{}{}:
		case <-c.soft:
			return
		case <-c.hardCtx.Done():
			return
		}
		n := 1
	fill:
		for n < c.opts.Concurrency {
			select {
			case c.slots <- struct{}{}:
				n++
			default:
				break fill
			}
		}
		if c.stopRequested() {
			c.release(n)
			return
		}
		err := c.fetchBatch(n)
		if err == nil {
			errDelay = 0
			continue
		}
		errDelay = min(max(2*errDelay, 100*time.Millisecond), 5*time.Second)
		c.log.Warn().Err(err).Dur("retry_in", errDelay).Msg("fetch failed")
		t := time.NewTimer(errDelay)
		select {
		case <-t.C:
		case <-c.soft:
			t.Stop()
			return
		case <-c.hardCtx.Done():
			t.Stop()
			return
		}
	}
}

// fetchBatch pulls up to n messages, holding n slots, and starts a handler
// for each message (or naks it when a stop began meanwhile). It returns
// the slots it did not use.
func (c *Consumer) fetchBatch(n int) error {
	fctx, cancel := context.WithTimeout(c.hardCtx, c.opts.FetchWait)
	defer cancel()
	batch, err := c.cons.Fetch(n, jetstream.FetchContext(fctx))
	if err != nil {
		c.release(n)
		return fmt.Errorf("bus: fetch from %s/%s: %w", c.stream, c.durable, err)
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		if c.stopRequested() {
			if err := msg.Nak(); err != nil {
				c.log.Warn().Err(err).Msg("nak of a message fetched during stop failed; it is redelivered after AckWait")
			}
			c.release(1)
			continue
		}
		c.handlers.Add(1)
		go c.handle(msg)
	}
	c.release(n - got)
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("bus: fetch from %s/%s: %w", c.stream, c.durable, err)
	}
	return nil
}

func (c *Consumer) handle(msg jetstream.Msg) {
	defer c.handlers.Done()
	defer c.release(1)

	meta, err := msg.Metadata()
	if err != nil {
		c.log.Error().Err(err).Str("subject", msg.Subject()).Msg("message without JetStream metadata; nak")
		_ = msg.Nak()
		return
	}
	m := newMessage(msg.Subject(), msg.Data(), msg.Headers(), meta.Stream, meta.Sequence.Stream, meta.NumDelivered, meta.Timestamp)
	m.msg = msg
	log := c.log.With().Str("subject", m.Subject).Uint64("stream_seq", m.StreamSequence).
		Uint64("delivery", m.NumDelivered).Str("command_id", m.CommandID).Logger()

	if c.maxDeliver > 0 && m.NumDelivered > c.maxDeliver {
		// The spare delivery: the last attempt never settled.
		reason := fmt.Sprintf("the last of %d attempts did not finish within the ack wait of %s (the worker handling it died, was stopped or hung); "+
			"nothing is known to have been done: send the command again (with the same command id to learn an outcome recorded meanwhile), %s after it was queued",
			c.maxDeliver, c.ackWait, time.Since(m.Timestamp).Round(time.Second))
		log.Warn().Str("code", CodeUnavailable).Msg("delivery beyond the last attempt; answering and dead-lettering")
		c.giveUp(m, CodeUnavailable, "worker unavailable: "+reason, log, true)
		return
	}

	// A re-ask of a command being handled here for the same reply subject
	// needs no work: the handling in flight answers it (or, when it
	// fails, its redelivery or the consume loop's answer does; both reply
	// on the same subject). Acknowledging the copy keeps a long handling,
	// a 1 GiB staged ingest or a verify, from being done a second time
	// while the first still runs.
	id := m.CommandID
	if m.Reask != "" {
		id = m.Reask
		if c.flights.has(id, m.ReplyTo) {
			log.Debug().Str("reask", id).Msg("re-ask of a command being handled here; its handling answers it")
			if c.opts.OnReaskDropped != nil {
				c.opts.OnReaskDropped(m)
			}
			c.settle(m, nil, log)
			return
		}
	}
	if id != "" {
		defer c.flights.add(id, m.ReplyTo)()
	}

	hctx, cancel := context.WithCancel(c.hardCtx)
	stopProgress := c.keepInProgress(msg, log)
	err = c.call(hctx, m)
	stopProgress()
	cancel()
	c.settle(m, err, log)
}

// call runs the handler, turning a panic into a *PanicError.
func (c *Consumer) call(ctx context.Context, m Message) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return c.handler(ctx, m)
}

// keepInProgress sends an in-progress ack every InProgressInterval until the
// returned function is called; that function returns after the last one.
func (c *Consumer) keepInProgress(msg jetstream.Msg, log zerolog.Logger) func() {
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(c.inProgress)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if err := msg.InProgress(); err != nil {
					log.Warn().Err(err).Msg("in-progress ack failed; the message may be redelivered")
				}
			}
		}
	}()
	return func() {
		close(stop)
		<-stopped
	}
}

func (c *Consumer) settle(m Message, err error, log zerolog.Logger) {
	var (
		rej   *RejectError
		fail  *FailError
		retry *RetryError
		pnc   *PanicError
	)
	switch {
	case err == nil:
		if err := c.ack(m); err != nil {
			log.Error().Err(err).Msg("ack not confirmed; the command may be redelivered (handlers are idempotent)")
			return
		}
		log.Debug().Msg("handled")
	case errors.As(err, &rej):
		log.Warn().Err(err).Str("code", rej.Code).Msg("rejected; dead-lettering")
		c.deadLetter(m, kindRefused, rej.Code, err.Error(), log, false)
	case errors.As(err, &fail):
		log.Warn().Err(err).Str("code", fail.Code).Msg("failed for good; answering and dead-lettering")
		c.giveUp(m, fail.Code, fail.Err.Error(), log, false)
	case c.hardCtx.Err() != nil:
		// Cancelled by a stop: not the message's fault, redeliver at once.
		log.Info().Err(err).Msg("handler cancelled by stop; nak")
		if err := m.msg.Nak(); err != nil {
			log.Warn().Err(err).Msg("nak failed; the message is redelivered after AckWait")
		}
	default:
		delay := c.opts.Backoff(m.NumDelivered)
		if errors.As(err, &retry) && retry.Delay > 0 {
			delay = retry.Delay
		}
		ev := log.Warn()
		if errors.As(err, &pnc) {
			ev = log.Error().Bytes("stack", pnc.Stack)
		}
		if c.maxDeliver > 0 && m.NumDelivered >= c.maxDeliver {
			code, reason := exhausted(m, err, c.maxDeliver)
			ev.Err(err).Str("code", code).Msg("failed on the last delivery; answering and dead-lettering")
			c.giveUp(m, code, reason, log, false)
			return
		}
		ev.Err(err).Dur("retry_in", delay).Msg("failed; nak with delay")
		if err := m.msg.NakWithDelay(delay); err != nil {
			log.Warn().Err(err).Msg("nak failed; the message is redelivered after AckWait")
		}
	}
}

// ack double-acks a handled message. An ack lost with its connection
// (a server restart), or refused while the server is not serving the
// consumer (no responders), is sent again until the server confirms it, for
// as long as the server still holds the delivery: up to one AckWait after
// the handler's last in-progress ack. Repeating an ack is harmless (the
// server confirms an ack of a message it no longer holds), and each ack
// confirmed here spares a redelivery after the AckWait and a second run of
// the handler. A hard stop ends the retries.
func (c *Consumer) ack(m Message) error {
	ctx, cancel := context.WithTimeout(c.hardCtx, c.ackWait)
	defer cancel()
	return RetryTransient(ctx, c.ackWait, func(ctx context.Context) error {
		return RetryAcrossReconnects(ctx, c.js.Conn(), func(ctx context.Context) error {
			actx, cancel := context.WithTimeout(ctx, c.opts.AckTimeout)
			defer cancel()
			return m.msg.DoubleAck(actx)
		})
	}, nil)
}

// exhausted is the answer to a command that failed on its last delivery:
// unavailable when a dependency was named, internal otherwise.
func exhausted(m Message, err error, attempts uint64) (code, reason string) {
	var retry *RetryError
	tail := fmt.Sprintf("gave up after %d attempts, %s after the command was queued; nothing was done: send it again once the cause is fixed (with the same command id to learn an outcome recorded meanwhile)",
		attempts, time.Since(m.Timestamp).Round(time.Second))
	if errors.As(err, &retry) && retry.Dependency != "" {
		return CodeUnavailable, fmt.Sprintf("%s unavailable: %v; %s", retry.Dependency, retry.Err, tail)
	}
	return CodeInternal, fmt.Sprintf("%v; %s", err, tail)
}

// Dead-letter kinds, the last token of a dead letter's subject.
const (
	// DeadLetterRefused: a command refused by a decision of its handler
	// (malformed, digest mismatch, a rule); it was answered and, where the
	// family records refusals, recorded as an event. Not a pipeline
	// problem.
	DeadLetterRefused = "refused"
	// DeadLetterFailed: a command the pipeline gave up on (retries
	// exhausted, out of space, a worker lost on the last attempt); it was
	// answered by the consume loop. A pipeline problem.
	DeadLetterFailed = "failed"
)

const (
	kindRefused = DeadLetterRefused
	kindFailed  = DeadLetterFailed
)

// giveUp answers a command the pipeline stops handling, dead-letters it as
// a failure and terminates it (when it is a delivery: an advisory's message
// has no ack subject).
func (c *Consumer) giveUp(m Message, code, reason string, log zerolog.Logger, last bool) {
	if c.opts.Answer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*c.opts.AckTimeout)
		if err := c.opts.Answer(ctx, m, code, reason); err != nil {
			log.Error().Err(err).Str("code", code).Msg("answer to a command given up on failed; the producer waits until its timeout")
		}
		cancel()
	}
	c.deadLetter(m, kindFailed, code, reason, log, last || (c.maxDeliver > 0 && m.NumDelivered >= c.maxDeliver))
}

// maxReasonLen bounds the reason text of a term and a dead-letter header.
const maxReasonLen = 1024

// deadLetter copies the message to
// <DeadLetterSubjectPrefix>.<durable>.<kind> with the reason, then
// terminates it. When the copy fails the message is nak'd instead, so that
// it is not lost (unless this was its last delivery: then the server keeps
// it in the stream, undelivered). A message fetched for an advisory (no
// ack subject) is only copied.
func (c *Consumer) deadLetter(m Message, kind, code, reason string, log zerolog.Logger, last bool) {
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	reason = strings.ToValidUTF8(strings.ReplaceAll(strings.ReplaceAll(reason, "\r", " "), "\n", " "), "?")

	dl := nats.NewMsg(c.opts.DeadLetterSubjectPrefix + "." + c.durable + "." + kind)
	dl.Data = m.Data
	for k, vs := range m.Headers {
		if strings.HasPrefix(k, "Nats-") {
			continue // JetStream control headers of the original publish
		}
		dl.Header[k] = vs
	}
	dl.Header.Set("Artifactstore-Command-Id", m.CommandID)
	dl.Header.Set(HeaderDeadSubject, m.Subject)
	dl.Header.Set(HeaderDeadStream, m.Stream)
	dl.Header.Set(HeaderDeadSequence, strconv.FormatUint(m.StreamSequence, 10))
	dl.Header.Set(HeaderDeadConsumer, c.durable)
	dl.Header.Set(HeaderDeadDeliveries, strconv.FormatUint(m.NumDelivered, 10))
	dl.Header.Set(HeaderDeadCode, code)
	dl.Header.Set(HeaderDeadKind, kind)
	dl.Header.Set(HeaderDeadReason, reason)

	ctx, cancel := context.WithTimeout(context.Background(), c.opts.AckTimeout)
	defer cancel()
	// The id makes a second copy of the same delivery (after a crash
	// between publish and term) a duplicate.
	id := m.Stream + "-" + strconv.FormatUint(m.StreamSequence, 10)
	if _, err := c.js.PublishMsg(ctx, dl, jetstream.WithMsgID(id)); err != nil {
		if m.msg == nil {
			log.Error().Err(err).Str("dead_letter_subject", dl.Subject).Msg("dead-letter publish of a command the server gave up on failed")
			return
		}
		if last {
			log.Error().Err(err).Str("dead_letter_subject", dl.Subject).
				Msg("dead-letter publish failed on the last delivery; the command stays in its stream undelivered (see `nats stream view`)")
			return
		}
		log.Error().Err(err).Str("dead_letter_subject", dl.Subject).Msg("dead-letter publish failed; nak to retry later")
		_ = m.msg.NakWithDelay(c.opts.Backoff(m.NumDelivered))
		return
	}
	if m.msg == nil {
		return
	}
	if err := m.msg.TermWithReason(code + ": " + reason); err != nil {
		log.Error().Err(err).Msg("term failed after dead-lettering; a redelivery will be dead-lettered again as a duplicate")
	}
}

// flightKey names a command being handled: its id and reply subject.
type flightKey struct{ id, replyTo string }

// flights counts the commands being handled by a consumer, by command id
// and reply subject.
type flights struct {
	mu sync.Mutex
	m  map[flightKey]int
}

// add records a handling of command id for replyTo and returns the
// function that ends it.
func (f *flights) add(id, replyTo string) func() {
	k := flightKey{id, replyTo}
	f.mu.Lock()
	if f.m == nil {
		f.m = map[flightKey]int{}
	}
	f.m[k]++
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		if f.m[k]--; f.m[k] <= 0 {
			delete(f.m, k)
		}
		f.mu.Unlock()
	}
}

// has reports whether command id is being handled for replyTo.
func (f *flights) has(id, replyTo string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[flightKey{id, replyTo}] > 0
}
