package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/mod/sumdb/note"

	"github.com/artifactstore/artifactstore/events"
)

// Log is the part of the event log the signer reads. *events.Log
// implements it.
type Log interface {
	// Head returns the sequence of the last committed event.
	Head(ctx context.Context) (int64, error)
	// VerifyExtension checks that the log still holds from and links
	// correctly up to to, and returns the chain digest at to.
	VerifyExtension(ctx context.Context, from events.Anchor, to int64) ([32]byte, error)
}

var _ Log = (*events.Log)(nil)

// Store keeps checkpoints. *Table and *Stream implement it.
type Store interface {
	// Put stores a checkpoint; storing it twice is a no-op.
	Put(ctx context.Context, c Checkpoint) error
}

// LatestSource gives the newest stored checkpoint note, nil when none:
// (*Stream).Latest, or (*Table).LatestOf(signer).
type LatestSource func(ctx context.Context) ([]byte, error)

// KeyID is the id of a key as checkpoints name their signer,
// "<name>+<key hash hex>".
func KeyID(k interface {
	Name() string
	KeyHash() uint32
}) string {
	return signerID(k.Name(), k.KeyHash())
}

// SignerConfig configures a Signer. Zero durations and counts take the
// defaults.
type SignerConfig struct {
	// Every is how many events the head must have moved since the last
	// checkpoint for a new one to be signed at once. Default 1000.
	Every int64
	// Interval is the longest time between two checkpoints while events
	// are appended: once it has passed since the last checkpoint, the
	// head is signed however little it moved. Default 10 minutes.
	Interval time.Duration
	// Poll is how often the signer looks at the head. Default 1 second.
	Poll time.Duration
	// Logger receives the signer's log lines.
	Logger zerolog.Logger
	// Metrics, if not nil, is updated after each round.
	Metrics *Metrics
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c *SignerConfig) fill() {
	if c.Every <= 0 {
		c.Every = 1000
	}
	if c.Interval <= 0 {
		c.Interval = 10 * time.Minute
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Signer signs the head of the log every Every events or Interval, after
// checking that the log extends the last checkpoint it knows (so it never
// signs a rewritten history), and puts each checkpoint into every store:
// the stream outside the database first, then the table.
//
// One signer of a key runs at a time (leader election is the caller's).
type Signer struct {
	log     Log
	key     note.Signer
	ver     note.Verifier
	stores  []Store
	latest  []LatestSource
	cfg     SignerConfig
	lg      zerolog.Logger
	last    *Checkpoint // the newest checkpoint known to be in every store
	pending *Checkpoint // signed, not yet in every store
	broken  string      // why the log does not extend last; "" when it does
}

// NewSigner returns a signer that signs with key and verifier (its public
// half), puts checkpoints into stores, and learns the last checkpoint from
// latest (tried in order; the first that has one of this key wins).
func NewSigner(log Log, key note.Signer, verifier note.Verifier, stores []Store, latest []LatestSource, cfg SignerConfig) *Signer {
	cfg.fill()
	return &Signer{
		log: log, key: key, ver: verifier, stores: stores, latest: latest, cfg: cfg,
		lg: cfg.Logger.With().Str("service", "checkpoint-signer").Str("key", signerID(key.Name(), key.KeyHash())).Logger(),
	}
}

// ErrLogNotExtended means the log no longer extends the last signed
// checkpoint: the signer refuses to sign until a person looks (run
// `artifactstore audit --checkpoints`).
var ErrLogNotExtended = errors.New("the event log does not extend the last signed checkpoint")

// Run signs until ctx ends; it returns nil then. A round that fails is
// logged and retried at the next poll; a log that does not extend the last
// checkpoint raises the alarm (log line, artifactstore_checkpoint_log_broken)
// and nothing more is signed while it lasts.
func (s *Signer) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Poll)
	defer t.Stop()
	for {
		wasBroken := s.broken
		if _, err := s.Round(ctx); err != nil && ctx.Err() == nil {
			if errors.Is(err, ErrLogNotExtended) {
				if wasBroken != s.broken {
					s.lg.Error().Err(err).Msg("refusing to sign: run 'artifactstore audit --checkpoints'")
				}
			} else {
				s.lg.Warn().Err(err).Msg("checkpoint round failed; retrying")
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Round signs the head if a checkpoint is due and returns it (nil when
// none was due).
func (s *Signer) Round(ctx context.Context) (*Checkpoint, error) {
	if s.last == nil {
		if err := s.load(ctx); err != nil {
			return nil, err
		}
	}
	if s.pending != nil {
		if err := s.put(ctx, *s.pending); err != nil {
			return nil, err
		}
	}
	head, err := s.log.Head(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the log head: %w", err)
	}
	if err := s.checkBehind(head); err != nil {
		return nil, err
	}
	due := head > s.last.Sequence &&
		(head-s.last.Sequence >= s.cfg.Every || s.cfg.Now().Sub(s.last.Time) >= s.cfg.Interval)
	if !due {
		return nil, nil
	}
	return s.sign(ctx, head)
}

// SignNow signs the head now if it moved since the last checkpoint, due
// or not, and returns the checkpoint (nil when the head did not move).
func (s *Signer) SignNow(ctx context.Context) (*Checkpoint, error) {
	if s.last == nil {
		if err := s.load(ctx); err != nil {
			return nil, err
		}
	}
	head, err := s.log.Head(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the log head: %w", err)
	}
	if err := s.checkBehind(head); err != nil {
		return nil, err
	}
	if head <= s.last.Sequence {
		if s.pending != nil {
			return s.pending, s.put(ctx, *s.pending)
		}
		return nil, nil
	}
	return s.sign(ctx, head)
}

// checkBehind raises the alarm when the head is behind the last
// checkpoint: signed events were removed and the head moved back.
func (s *Signer) checkBehind(head int64) error {
	if head >= s.last.Sequence {
		return nil
	}
	err := fmt.Errorf("%w: the log head is at %d, behind the last checkpoint (%s): signed events were removed", ErrLogNotExtended, head, s.last)
	s.broken = err.Error()
	s.cfg.Metrics.observe(s)
	return err
}

func (s *Signer) sign(ctx context.Context, head int64) (*Checkpoint, error) {
	chain, err := s.log.VerifyExtension(ctx, events.Anchor{Sequence: s.last.Sequence, Chain: s.last.Chain}, head)
	if errors.Is(err, events.ErrChainBroken) || errors.Is(err, events.ErrBeyondHead) {
		err = fmt.Errorf("%w (last checkpoint: %s): %w", ErrLogNotExtended, s.last, err)
		s.broken = err.Error()
		s.cfg.Metrics.observe(s)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	s.broken = ""
	c, err := Sign(s.key, head, chain, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	s.pending = &c
	if err := s.put(ctx, c); err != nil {
		return nil, err
	}
	s.lg.Info().Int64("sequence", c.Sequence).Str("chain", fmt.Sprintf("%x", c.Chain)).Msg("checkpoint signed")
	return &c, nil
}

// put stores c in every store, and makes it the last checkpoint once all
// have it.
func (s *Signer) put(ctx context.Context, c Checkpoint) error {
	for _, st := range s.stores {
		if err := st.Put(ctx, c); err != nil {
			return err
		}
	}
	s.last, s.pending = &c, nil
	s.cfg.Metrics.observe(s)
	return nil
}

// load finds the newest checkpoint of this key in the sources; without
// one, the signer starts from the empty log and verifies the whole log
// before its first signature.
func (s *Signer) load(ctx context.Context) error {
	best := Checkpoint{}
	for _, src := range s.latest {
		msg, err := src(ctx)
		if err != nil {
			return err
		}
		if msg == nil {
			continue
		}
		c, err := Open(msg, s.ver)
		if errors.Is(err, ErrOtherKey) {
			continue
		}
		if err != nil {
			// Whoever may publish on the subject can put anything last;
			// it must not stop the signer. The audit reports forgeries.
			s.lg.Warn().Err(err).Msg("ignoring a newest stored checkpoint that does not verify with this key")
			continue
		}
		if c.Sequence > best.Sequence {
			best = c
		}
	}
	s.last = &best
	if best.Sequence > 0 {
		s.lg.Info().Int64("sequence", best.Sequence).Msg("resuming after the newest checkpoint")
	}
	return nil
}

// Metrics exports the signer's state.
type Metrics struct {
	lastSeq, lastTime, broken prometheus.Gauge
}

// NewMetrics registers artifactstore_checkpoint_last_sequence,
// artifactstore_checkpoint_last_timestamp_seconds and
// artifactstore_checkpoint_log_broken (1 while the log does not extend the
// last checkpoint) on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "artifactstore_checkpoint_" + name, Help: help})
	}
	m := &Metrics{
		lastSeq:  g("last_sequence", "Sequence covered by the newest signed checkpoint."),
		lastTime: g("last_timestamp_seconds", "When the newest checkpoint was signed (Unix seconds)."),
		broken:   g("log_broken", "1 while the event log does not extend the last signed checkpoint: the signer refuses to sign; run 'artifactstore audit --checkpoints'."),
	}
	reg.MustRegister(m.lastSeq, m.lastTime, m.broken)
	return m
}

func (m *Metrics) observe(s *Signer) {
	if m == nil {
		return
	}
	if s.last != nil && s.last.Sequence > 0 {
		m.lastSeq.Set(float64(s.last.Sequence))
		m.lastTime.Set(float64(s.last.Time.Unix()))
	}
	b := 0.0
	if s.broken != "" {
		b = 1
	}
	m.broken.Set(b)
}
