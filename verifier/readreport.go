package verifier

import (
	"context"
	"errors"
	"sync"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/internal/service"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// ReadReporterConfig configures a [ReadReporter]. Zero values take the
// defaults.
type ReadReporterConfig struct {
	// Queue is how many reports wait for a verification; more are dropped
	// (logged), which loses nothing: the data plane keeps refusing the
	// object and the scrub finds it. Default 256.
	Queue int
	// Concurrency is how many objects are re-verified at once. Default 2.
	Concurrency int
	// Logger receives one line per report. Default: discard.
	Logger *zerolog.Logger
	// Done, when set, is called after each report was handled, with the
	// verification's reply (or its error); for tests and metrics.
	Done func(*dataplane.CorruptError, commands.VerifyReply, error)
}

// ReadReporter is the data plane's CorruptionReporter in the processes
// that serve reads: each object a served read found corrupt is verified
// at once (origin "read"), which re-reads it whole and appends
// object.corrupt with what the bytes hash to, so the projection marks it
// and every reader answers object_corrupt. When the re-read proves the
// bytes good (only the stored tree was damaged: it is rewritten), it
// appends object.verified and the data plane serves the object again.
//
// A report is queued and handled by its own goroutines, never on the
// reader's. One object is verified once however many reads hit it.
type ReadReporter struct {
	cfg    ReadReporterConfig
	logger zerolog.Logger
	queue  chan *dataplane.CorruptError

	mu       sync.Mutex
	inFlight map[readKey]bool

	state    service.State
	wg       sync.WaitGroup
	cancel   context.CancelFunc
	stopping chan struct{}
	stopOnce sync.Once
}

type readKey struct {
	backend string
	addr    digest.Address
}

var _ dataplane.CorruptionReporter = (*ReadReporter)(nil)

// NewReadReporter returns a reporter that queues reports until its
// service starts ([ReadReporter.Service]).
func NewReadReporter(cfg ReadReporterConfig) *ReadReporter {
	if cfg.Queue <= 0 {
		cfg.Queue = 256
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2
	}
	if cfg.Logger == nil {
		nop := zerolog.Nop()
		cfg.Logger = &nop
	}
	return &ReadReporter{
		cfg: cfg, logger: cfg.Logger.With().Str("service", "read-reporter").Logger(),
		queue: make(chan *dataplane.CorruptError, cfg.Queue), inFlight: map[readKey]bool{},
	}
}

// ReportCorruption implements dataplane.CorruptionReporter; it never
// blocks.
func (r *ReadReporter) ReportCorruption(c *dataplane.CorruptError) {
	k := readKey{c.BackendID, c.Address}
	r.mu.Lock()
	if r.inFlight[k] {
		r.mu.Unlock()
		return
	}
	r.inFlight[k] = true
	r.mu.Unlock()
	select {
	case r.queue <- c:
		r.logger.Warn().Str("address", c.Address.String()).Str("backend_id", c.BackendID).
			Int64("offset", c.Offset).Bool("tree_node", c.Tree).Str("detail", c.Detail).
			Msg("a read found corrupt bytes; verifying the object now")
	default:
		r.done(k)
		r.logger.Error().Str("address", c.Address.String()).Str("backend_id", c.BackendID).
			Msg("a read found corrupt bytes but the verification queue is full; the object stays refused until the scrub verifies it")
	}
}

func (r *ReadReporter) done(k readKey) {
	r.mu.Lock()
	delete(r.inFlight, k)
	r.mu.Unlock()
}

// Service returns the reporter bound to w (whose Verify appends the
// outcome) as a service (the lifecycle of internal/service): Start
// handles the queued reports until Stop and returns at once; Stop is
// [ReadReporter.Stop]. The reporter exists before the worker (the data
// plane the worker reads through reports to it), hence the binding here.
// A reporter runs once, whichever of its services starts it.
func (r *ReadReporter) Service(w *Worker) service.Service { return boundReporter{r, w} }

type boundReporter struct {
	r *ReadReporter
	w *Worker
}

func (b boundReporter) Start(ctx context.Context) error { return b.r.start(ctx, b.w) }
func (b boundReporter) Stop(ctx context.Context) error  { return b.r.Stop(ctx) }

func (r *ReadReporter) start(ctx context.Context, w *Worker) error {
	return r.state.TryStart(func() error {
		ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
		r.stopping = make(chan struct{})
		for range r.cfg.Concurrency {
			r.wg.Go(func() {
				for {
					select {
					case <-r.stopping:
						return
					case c := <-r.queue:
						r.handle(ctx, w, c)
					}
				}
			})
		}
		return nil
	})
}

func (r *ReadReporter) handle(ctx context.Context, w *Worker, c *dataplane.CorruptError) {
	defer r.done(readKey{c.BackendID, c.Address})
	req := commands.Verify{V: commands.Version, RequestID: "read-" + uuid.NewString(), Address: c.Address, BackendID: c.BackendID, Origin: commands.OriginRead}
	rep, err := w.Verify(ctx, req)
	log := r.logger.With().Str("address", c.Address.String()).Str("backend_id", c.BackendID).Str("request_id", req.RequestID).Logger()
	switch {
	case err != nil && !errors.Is(err, context.Canceled):
		log.Error().Err(err).Msg("could not verify an object a read found corrupt; the data plane keeps refusing it, the scrub will verify it")
	case err == nil:
		log.Info().Str("outcome", rep.Outcome).Str("reason", rep.Reason).Int64("sequence", rep.Sequence).Msg("object a read found corrupt was verified")
	}
	if r.cfg.Done != nil {
		r.cfg.Done(c, rep, err)
	}
}

// Stop stops taking reports from the queue: verifications in flight
// finish until ctx is done, then are cancelled, and Stop waits for them.
// Safe before Start and twice.
func (r *ReadReporter) Stop(ctx context.Context) error {
	if !r.state.MarkStopped() {
		return nil
	}
	r.stopOnce.Do(func() { close(r.stopping) })
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		r.cancel()
		<-done
	}
	r.cancel()
	return nil
}
