// Package relay publishes every committed event of the log to the JetStream
// events stream, on <root>.events.<type> with Nats-Msg-Id = its sequence,
// so that other systems can follow the log with any NATS client without
// touching PostgreSQL.
//
// Exactly once for subscribers: the relay resumes after the larger of its
// checkpoint (PostgreSQL) and the last sequence found in the stream, so an
// event published just before a crash is not published again even when the
// stream's duplicate window has passed; inside the window a republish is
// dropped by JetStream anyway.
//
// In order and without gaps: resuming after the stream's last event is
// right only if nothing before it is missing. Publishes are pipelined, so
// each carries the stream sequence it must follow (Nats-Expected-Last-
// Sequence): when JetStream refuses event N, it refuses every later event
// of the round too, and the next round starts again at N.
package relay

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/events"
)

// Header names on every published event.
const (
	HeaderSequence = "Artifactstore-Sequence"
	HeaderType     = "Artifactstore-Event-Type"
)

// EventReader is the part of the event log the relay reads.
type EventReader interface {
	Read(ctx context.Context, after int64, limit int) ([]events.Event, error)
}

// Config configures a Relay. Zero fields take the defaults of
// [Config.withDefaults].
type Config struct {
	// Name keys the relay's checkpoint row. Default "events".
	Name string
	// Stream is the JetStream events stream. Required.
	Stream string
	// Subject maps an event type to its subject. Required.
	Subject func(events.Type) string
	// BatchSize is how many events are read and published per round.
	// Default 256.
	BatchSize int
	// PollInterval is how often the relay looks for new events when no
	// notification arrives. Default 500 ms.
	PollInterval time.Duration
	// Logger receives the relay's log lines.
	Logger zerolog.Logger
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = "events"
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 256
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	return c
}

// Relay copies the log to the events stream.
type Relay struct {
	pool  *pgxpool.Pool
	log   EventReader
	codec *events.Codec
	js    jetstream.JetStream
	cfg   Config
}

// New returns a relay. It publishes nothing until Run.
func New(pool *pgxpool.Pool, log EventReader, codec *events.Codec, js jetstream.JetStream, cfg Config) (*Relay, error) {
	if cfg.Stream == "" || cfg.Subject == nil {
		return nil, errors.New("relay: Config.Stream and Config.Subject are required")
	}
	cfg = cfg.withDefaults()
	cfg.Logger = cfg.Logger.With().Str("service", "relay").Logger()
	return &Relay{pool: pool, log: log, codec: codec, js: js, cfg: cfg}, nil
}

// Message is the JSON body of a published event. Payload is the decoded
// payload as JSON; PayloadCBOR holds the exact bytes the digests cover.
type Message struct {
	Sequence      int64           `json:"sequence"`
	EventID       string          `json:"event_id"`
	OccurredAt    time.Time       `json:"occurred_at"`
	Type          events.Type     `json:"type"`
	Version       int             `json:"payload_version"`
	SubjectKind   string          `json:"subject_kind"`
	SubjectID     string          `json:"subject_id"`
	Actor         string          `json:"actor"`
	CommandID     string          `json:"command_id,omitempty"`
	Payload       json.RawMessage `json:"payload"`
	PayloadCBOR   []byte          `json:"payload_cbor"`
	PayloadDigest string          `json:"payload_digest"`
	ChainDigest   string          `json:"chain_digest"`
	// ChainVersion is the rule ChainDigest follows (events.ChainV2 for
	// every event since chain v2): with it, every column of the event is
	// in the message, so a subscriber can recompute the chain from a
	// signed checkpoint onwards without touching PostgreSQL.
	ChainVersion int `json:"chain_version"`
}

// Event rebuilds the event the message was made from, every column
// included, so that a subscriber can check its chain digest
// (events.ChainLink) against the previous one without PostgreSQL.
func (m Message) Event() (events.Event, error) {
	e := events.Event{
		Sequence: m.Sequence, OccurredAt: m.OccurredAt.UTC(), Type: m.Type, PayloadVersion: m.Version,
		SubjectKind: m.SubjectKind, SubjectID: m.SubjectID, Actor: m.Actor, CommandID: m.CommandID,
		Payload: m.PayloadCBOR, ChainVersion: m.ChainVersion,
	}
	var err error
	if e.EventID, err = uuid.Parse(m.EventID); err != nil {
		return e, fmt.Errorf("event %d: event_id: %w", m.Sequence, err)
	}
	for _, d := range []struct {
		dst *[32]byte
		hex string
	}{{&e.PayloadDigest, m.PayloadDigest}, {&e.ChainDigest, m.ChainDigest}} {
		b, err := hex.DecodeString(d.hex)
		if err != nil || len(b) != 32 {
			return e, fmt.Errorf("event %d: a digest is not 64 hex digits", m.Sequence)
		}
		copy(d.dst[:], b)
	}
	return e, nil
}

// Run publishes until ctx ends. It returns ctx's error on a normal stop.
func (r *Relay) Run(ctx context.Context) error {
	for {
		n, err := r.RunOnce(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.cfg.Logger.Error().Err(err).Msg("relay round failed; retrying")
		}
		if n == r.cfg.BatchSize && err == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.cfg.PollInterval):
		}
	}
}

// RunOnce publishes at most one batch and returns how many events it
// published.
func (r *Relay) RunOnce(ctx context.Context) (int, error) {
	after, cp, streamSeq, err := r.resumePoint(ctx)
	if err != nil {
		return 0, err
	}
	if after > cp {
		// A relay published these and stopped before its checkpoint.
		if err := r.saveCheckpoint(ctx, after); err != nil {
			return 0, err
		}
	}
	evs, err := r.log.Read(ctx, after, r.cfg.BatchSize)
	if err != nil {
		return 0, fmt.Errorf("read the log after %d: %w", after, err)
	}
	if len(evs) == 0 {
		return 0, nil
	}
	futures := make([]jetstream.PubAckFuture, 0, len(evs))
	for i, e := range evs {
		msg, err := r.message(e)
		if err != nil {
			return 0, err
		}
		// Event i may only land right after event i-1: should JetStream
		// refuse one event, the ones after it, already on their way, must
		// not be stored, or the next round would resume past the refused
		// one.
		f, err := r.js.PublishMsgAsync(msg, jetstream.WithMsgID(strconv.FormatInt(e.Sequence, 10)), jetstream.WithExpectStream(r.cfg.Stream),
			jetstream.WithExpectLastSequence(streamSeq+uint64(i)))
		if err != nil {
			return 0, fmt.Errorf("publish event %d: %w", e.Sequence, err)
		}
		futures = append(futures, f)
	}
	published := after
	for i, f := range futures {
		select {
		case <-f.Ok():
			published = evs[i].Sequence
		case err := <-f.Err():
			if cerr := r.saveCheckpoint(ctx, published); cerr != nil {
				r.cfg.Logger.Error().Err(cerr).Msg("save checkpoint")
			}
			return i, fmt.Errorf("publish event %d: %w", evs[i].Sequence, err)
		case <-ctx.Done():
			return i, ctx.Err()
		}
	}
	if err := r.saveCheckpoint(ctx, published); err != nil {
		return len(evs), err
	}
	return len(evs), nil
}

func (r *Relay) message(e events.Event) (*nats.Msg, error) {
	p, err := r.codec.DecodeEvent(e)
	if err != nil {
		return nil, fmt.Errorf("event %d: %w", e.Sequence, err)
	}
	pj, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("event %d: payload to JSON: %w", e.Sequence, err)
	}
	body, err := json.Marshal(Message{
		Sequence: e.Sequence, EventID: e.EventID.String(), OccurredAt: e.OccurredAt,
		Type: e.Type, Version: e.PayloadVersion, SubjectKind: e.SubjectKind, SubjectID: e.SubjectID,
		Actor: e.Actor, CommandID: e.CommandID, Payload: pj, PayloadCBOR: e.Payload,
		PayloadDigest: hex.EncodeToString(e.PayloadDigest[:]), ChainDigest: hex.EncodeToString(e.ChainDigest[:]),
		ChainVersion: e.ChainVersion,
	})
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(r.cfg.Subject(e.Type))
	m.Data = body
	m.Header.Set("Content-Type", "application/json")
	m.Header.Set(HeaderSequence, strconv.FormatInt(e.Sequence, 10))
	m.Header.Set(HeaderType, string(e.Type))
	return m, nil
}

// resumePoint returns the larger of the checkpoint and the newest event
// sequence in the stream, the checkpoint, and the stream's last message
// sequence (which the next publish must follow).
func (r *Relay) resumePoint(ctx context.Context) (after, checkpoint int64, streamSeq uint64, err error) {
	cp, err := r.Checkpoint(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("events stream %s: %w", r.cfg.Stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("events stream %s: %w", r.cfg.Stream, err)
	}
	if info.State.Msgs == 0 {
		return cp, cp, info.State.LastSeq, nil
	}
	last, err := s.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("read the last message of %s: %w", r.cfg.Stream, err)
	}
	seq, err := strconv.ParseInt(last.Header.Get(HeaderSequence), 10, 64)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("last message of %s has no valid %s header: %w", r.cfg.Stream, HeaderSequence, err)
	}
	return max(cp, seq), cp, info.State.LastSeq, nil
}

// Checkpoint returns the last sequence the relay recorded as published.
func (r *Relay) Checkpoint(ctx context.Context) (int64, error) {
	var seq int64
	err := r.pool.QueryRow(ctx, `SELECT sequence FROM relay_checkpoints WHERE relay = $1`, r.cfg.Name).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read relay checkpoint: %w", err)
	}
	return seq, nil
}

func (r *Relay) saveCheckpoint(ctx context.Context, seq int64) error {
	_, err := r.pool.Exec(ctx, `
		INSERT INTO relay_checkpoints (relay, sequence, updated_at) VALUES ($1, $2, now())
		ON CONFLICT (relay) DO UPDATE SET sequence = GREATEST(relay_checkpoints.sequence, EXCLUDED.sequence), updated_at = now()`,
		r.cfg.Name, seq)
	if err != nil {
		return fmt.Errorf("save relay checkpoint: %w", err)
	}
	return nil
}
