package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
)

// Table is the event_checkpoints table: the copy of the checkpoints inside
// the database, append-only. It is convenient, not evidence on its own: a
// database superuser can delete its rows, never forge a signature.
type Table struct {
	pool *pgxpool.Pool
}

// NewTable returns the checkpoints table of pool's database.
func NewTable(pool *pgxpool.Pool) *Table { return &Table{pool: pool} }

// Put stores c; storing it again is a no-op.
func (t *Table) Put(ctx context.Context, c Checkpoint) error {
	_, err := t.pool.Exec(ctx, `INSERT INTO event_checkpoints (sequence, signer, chain_digest, signed_at, note)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, c.Sequence, c.Signer, c.Chain[:], c.Time, string(c.Note))
	if err != nil {
		return fmt.Errorf("store checkpoint %d: %w", c.Sequence, err)
	}
	return nil
}

// Notes calls f with every stored note, oldest sequence first.
func (t *Table) Notes(ctx context.Context, f func(msg []byte) error) error {
	rows, err := t.pool.Query(ctx, `SELECT note FROM event_checkpoints ORDER BY sequence, signer`)
	if err != nil {
		return fmt.Errorf("read the checkpoints table: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return fmt.Errorf("read the checkpoints table: %w", err)
		}
		if err := f([]byte(n)); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read the checkpoints table: %w", err)
	}
	return nil
}

// LatestOf returns the source of the newest checkpoint signed by signer.
func (t *Table) LatestOf(signer string) LatestSource {
	return func(ctx context.Context) ([]byte, error) { return t.Latest(ctx, signer) }
}

// Latest returns the note of the newest checkpoint signed by signer, nil
// when there is none.
func (t *Table) Latest(ctx context.Context, signer string) ([]byte, error) {
	var n string
	err := t.pool.QueryRow(ctx, `SELECT note FROM event_checkpoints WHERE signer = $1 ORDER BY sequence DESC LIMIT 1`, signer).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the newest checkpoint: %w", err)
	}
	return []byte(n), nil
}

// Stream is the JetStream stream of checkpoints: the copy outside the
// database. Each checkpoint is one message whose body is the signed note,
// with Nats-Msg-Id "<signer>/<sequence>".
type Stream struct {
	js      jetstream.JetStream
	name    string
	subject string
}

// NewStream returns the checkpoints stream name, on subject.
func NewStream(js jetstream.JetStream, name, subject string) *Stream {
	return &Stream{js: js, name: name, subject: subject}
}

// HeaderSequence carries a checkpoint's sequence on its message.
const HeaderSequence = "Artifactstore-Checkpoint-Sequence"

// Put publishes c and waits for the stream's acknowledgement.
func (s *Stream) Put(ctx context.Context, c Checkpoint) error {
	m := nats.NewMsg(s.subject)
	m.Data = c.Note
	m.Header.Set("Content-Type", "text/plain; charset=utf-8")
	m.Header.Set(HeaderSequence, strconv.FormatInt(c.Sequence, 10))
	if _, err := s.js.PublishMsg(ctx, m, jetstream.WithMsgID(c.Signer+"/"+strconv.FormatInt(c.Sequence, 10)), jetstream.WithExpectStream(s.name)); err != nil {
		return fmt.Errorf("publish checkpoint %d on %s: %w", c.Sequence, s.subject, err)
	}
	return nil
}

// Latest returns the body of the last message of the stream, nil when it
// is empty.
func (s *Stream) Latest(ctx context.Context) ([]byte, error) {
	st, err := s.js.Stream(ctx, s.name)
	if err != nil {
		return nil, fmt.Errorf("checkpoints stream %s: %w", s.name, err)
	}
	m, err := st.GetLastMsgForSubject(ctx, s.subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the last checkpoint of %s: %w", s.name, err)
	}
	return m.Data, nil
}

// Notes calls f with the body of every message of the stream, oldest
// first.
func (s *Stream) Notes(ctx context.Context, f func(msg []byte) error) error {
	err := bus.ReadStream(ctx, s.js, s.name, s.subject, func(m jetstream.Msg) error { return f(m.Data()) })
	if err != nil {
		return fmt.Errorf("checkpoints stream %s: %w", s.name, err)
	}
	return nil
}
