package staging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
)

// Headers of the chunks of an upload written for a reader that consumes
// them while they arrive (Writer.StageUpload, OpenUpload). Every chunk
// names its attempt and its index; the last one also carries the blob's
// size, chunk count and SHA-256, so that the reader knows the end and the
// claims without the object's info. The object store's own readers ignore
// headers: the chunks stay a valid object store object.
const (
	// HeaderAttempt is the writer's attempt (1, 2, …): a retried upload
	// writes its chunks again under the next attempt.
	HeaderAttempt = "Artifactstore-Upload-Attempt"
	// HeaderChunk is the chunk's index in its attempt, from 0.
	HeaderChunk = "Artifactstore-Upload-Chunk"
	// HeaderSize marks the last chunk: the blob's size in bytes.
	HeaderSize = "Artifactstore-Upload-Size"
	// HeaderChunks is the chunk count, on the last chunk.
	HeaderChunks = "Artifactstore-Upload-Chunks"
	// HeaderDigest is the blob's SHA-256 ("SHA-256=<base64url>", as in the
	// object's info), on the last chunk.
	HeaderDigest = "Artifactstore-Upload-Digest"
	// HeaderAbort marks a message that ends an upload the writer gave up
	// on; its value is the reason.
	HeaderAbort = "Artifactstore-Upload-Abort"
)

// ErrRestarted means the writer started the upload again (a retry after
// a passing failure): the bytes read so far are void. The reader is
// positioned at the new attempt's first chunk; read it again from there
// into a fresh destination.
var ErrRestarted = errors.New("the staged upload restarted")

// ErrAbandoned means the upload will not finish: its writer gave up (an
// abort marker) or it stopped growing (see UploadOptions.Idle).
var ErrAbandoned = errors.New("the staged upload was abandoned")

// NewUpload returns a fresh upload id: the token of the chunk subject
// $O.<bucket>.C.<id> that Writer.StageUpload writes and OpenUpload reads.
func NewUpload() string { return strings.ReplaceAll(uuid.NewString(), "-", "") }

// ValidUpload reports whether id can be an upload id (a subject token);
// the rule is the ingest command's, commands.ValidUpload.
func ValidUpload(id string) bool { return commands.ValidUpload(id) }

// UploadOptions tune an UploadReader.
type UploadOptions struct {
	// Idle ticks the progress rule: an upload during which the reader
	// waited for its next chunk at two consecutive ticks without
	// receiving one is abandoned (Read fails with ErrAbandoned). With a
	// ticker of period d, an upload that stops growing is given up after
	// between d and 2d. Nil waits for ever (the caller's context bounds
	// the wait).
	Idle <-chan time.Time
}

// UploadReader streams the chunks of an upload while its writer is
// still writing them, with a pull-based ordered consumer (memory bounded
// by stagedBufferBytes). It returns io.EOF only after the last chunk,
// once the bytes add up to the size and chunk count that chunk states;
// Digest then returns the SHA-256 the writer computed, to be checked
// against the bytes by the caller (the reader does not hash). Not safe
// for concurrent use; Close it.
type UploadReader struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	js     jetstream.JetStream
	stream string
	filter string
	it     jetstream.MessagesContext // nil after a lost connection, until reopened
	// lastSeq is the stream sequence of the last chunk read: a consumer
	// reopened after a lost connection starts after it.
	lastSeq uint64
	stop    chan struct{}

	attempt  int   // the attempt being read; 0 before the first chunk
	next     int   // the next chunk index expected
	read     int64 // bytes returned in this attempt
	skipping bool  // this attempt broke: wait for the next one
	held     *nats.Msg
	cur      []byte
	done     bool
	size     int64
	digest   digest.Address
	received atomic.Int64
	waiting  atomic.Bool
}

// errStalled is the cause of the reader's context when the progress
// rule gives the upload up.
var errStalled = errors.New("no chunk arrived between two idle ticks")

// OpenUpload opens the upload id of bucket, through js, for reading while
// it is written; the caller closes it.
func OpenUpload(ctx context.Context, js jetstream.JetStream, bucket, id string, o UploadOptions) (*UploadReader, error) {
	if !ValidUpload(id) {
		return nil, fmt.Errorf("staging: %q is not an upload id", id)
	}
	rctx, cancel := context.WithCancelCause(ctx)
	r := &UploadReader{ctx: rctx, cancel: cancel, js: js, stream: streamName(bucket),
		filter: chunkSubject(bucket, id), stop: make(chan struct{})}
	if err := r.open(rctx); err != nil {
		cancel(nil)
		return nil, fmt.Errorf("%w: open upload %s: %w", ErrRead, id, err)
	}
	if o.Idle != nil {
		go r.watch(o.Idle)
	}
	return r, nil
}

// open starts an ordered consumer of the upload's chunks after the last
// one read (from the first when none was).
func (r *UploadReader) open(ctx context.Context) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{r.filter}}
	if r.lastSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.lastSeq+1
	}
	cons, err := r.js.OrderedConsumer(ctx, r.stream, cfg)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxBytes(stagedBufferBytes))
	if err != nil {
		return err
	}
	r.it = it
	return nil
}

// watch applies the progress rule.
func (r *UploadReader) watch(ticks <-chan time.Time) {
	lastN, lastWaiting := int64(-1), false
	for {
		select {
		case <-r.stop:
			return
		case <-ticks:
		}
		n, w := r.received.Load(), r.waiting.Load()
		if w && lastWaiting && n == lastN {
			r.cancel(errStalled)
			return
		}
		lastN, lastWaiting = n, w
	}
}

// Digest returns the SHA-256 the writer recorded, once Read returned
// io.EOF.
func (r *UploadReader) Digest() (digest.Address, bool) { return r.digest, r.done }

// Size returns the size the last chunk stated, once Read returned io.EOF.
func (r *UploadReader) Size() int64 { return r.size }

// Close stops the consumer and the progress rule.
func (r *UploadReader) Close() error {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	if r.it != nil {
		r.it.Stop()
	}
	r.cancel(nil)
	return nil
}

func (r *UploadReader) nextMsg() (*nats.Msg, error) {
	if m := r.held; m != nil {
		r.held = nil
		return m, nil
	}
	r.waiting.Store(true)
	// The ordered consumer lives on the server the connection is on: a
	// connection lost (a server restarted) ends it, and it is opened
	// again after the last chunk read once the connection is back.
	var msg jetstream.Msg
	err := bus.RetryAcrossReconnects(r.ctx, r.js.Conn(), func(ctx context.Context) error {
		if r.it == nil {
			if err := r.open(ctx); err != nil {
				return err
			}
		}
		m, err := r.it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if errors.Is(context.Cause(ctx), bus.ErrConnectionLost) {
				r.it.Stop()
				r.it = nil
			}
			return err
		}
		msg = m
		return nil
	})
	r.waiting.Store(false)
	if err != nil {
		if errors.Is(context.Cause(r.ctx), errStalled) {
			return nil, fmt.Errorf("%w: %w", ErrAbandoned, errStalled)
		}
		if r.ctx.Err() != nil {
			return nil, context.Cause(r.ctx)
		}
		return nil, fmt.Errorf("%w: %w", ErrRead, err)
	}
	r.received.Add(1)
	if md, err := msg.Metadata(); err == nil {
		r.lastSeq = md.Sequence.Stream
	}
	return &nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()}, nil
}

// restart starts reading attempt at m (its chunk 0).
func (r *UploadReader) restart(attempt int, m *nats.Msg) error {
	dirty := r.next > 0 || r.read > 0
	r.attempt, r.next, r.read, r.skipping, r.cur = attempt, 0, 0, false, nil
	r.held = m
	if dirty {
		return ErrRestarted
	}
	return nil
}

func (r *UploadReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.done {
			return 0, io.EOF
		}
		m, err := r.nextMsg()
		if err != nil {
			return 0, err
		}
		if reason := m.Header.Get(HeaderAbort); reason != "" {
			return 0, fmt.Errorf("%w: the producer gave up: %s", ErrAbandoned, reason)
		}
		attempt, err1 := strconv.Atoi(m.Header.Get(HeaderAttempt))
		idx, err2 := strconv.Atoi(m.Header.Get(HeaderChunk))
		if err1 != nil || err2 != nil || attempt < 1 || idx < 0 {
			return 0, fmt.Errorf("%w: chunk without a valid %s and %s header", ErrCorrupt, HeaderAttempt, HeaderChunk)
		}
		switch {
		case attempt < r.attempt:
			continue // a chunk of an attempt given up on
		case attempt > r.attempt && idx == 0:
			if err := r.restart(attempt, m); err != nil {
				return 0, err
			}
			r.held = nil
		case attempt > r.attempt, r.skipping:
			// The start of this attempt is gone, or the attempt broke:
			// wait for the writer's next one.
			dirty := r.next > 0 || r.read > 0
			r.attempt, r.next, r.read, r.skipping = attempt, 0, 0, true
			if dirty {
				return 0, ErrRestarted
			}
			continue
		case idx != r.next:
			// A chunk lost in this attempt (refused while a later one was
			// stored): the writer saw the failure and starts again.
			r.next, r.read, r.skipping = 0, 0, true
			return 0, ErrRestarted
		}
		r.next++
		r.cur = m.Data
		if s := m.Header.Get(HeaderSize); s != "" {
			if err := r.last(m, int64(len(m.Data))); err != nil {
				return 0, err
			}
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.read += int64(n)
	return n, nil
}

// last checks the last chunk's claims against what was read.
func (r *UploadReader) last(m *nats.Msg, n int64) error {
	size, err1 := strconv.ParseInt(m.Header.Get(HeaderSize), 10, 64)
	chunks, err2 := strconv.Atoi(m.Header.Get(HeaderChunks))
	addr, err3 := ParseDigest(m.Header.Get(HeaderDigest))
	if err := errors.Join(err1, err2, err3); err != nil {
		return fmt.Errorf("%w: last chunk's claims: %w", ErrCorrupt, err)
	}
	if got := r.read + n; got != size || r.next != chunks {
		return fmt.Errorf("%w: the last chunk says %d bytes in %d chunks, the upload holds %d bytes in %d chunks", ErrCorrupt, size, chunks, got, r.next)
	}
	r.done, r.size, r.digest = true, size, addr
	return nil
}

// PurgeUpload removes the upload id of object name: its chunks and the
// object's info, whether or not the writer finished. A writer still
// writing leaves what it writes later to the staging janitor.
func PurgeUpload(ctx context.Context, js jetstream.JetStream, bucket, name, id string) error {
	st, err := js.Stream(ctx, streamName(bucket))
	if err != nil {
		return fmt.Errorf("staging: staging stream: %w", err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(chunkSubject(bucket, id))); err != nil {
		return fmt.Errorf("staging: purge upload %s: %w", id, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(metaSubject(bucket, name))); err != nil {
		return fmt.Errorf("staging: purge staged object %s: %w", name, err)
	}
	return nil
}
