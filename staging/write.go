package staging

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
)

const (
	// stageWindow is how many chunks may wait for their acknowledgement,
	// at first; every 429 halves it (down to stageMinWindow).
	stageWindow    = 64
	stageMinWindow = 4
	// stageAttempts bounds the restarts of one upload.
	stageAttempts = 8
	// stageAckTimeout bounds the wait for one chunk's acknowledgement; a
	// chunk published just before a connection reset is never answered.
	stageAckTimeout = 30 * time.Second
)

// ErrReaderDone is the cause to cancel a StageUpload with when its
// reader needs no more of the upload (it answered already): the upload
// stops without an abort marker.
var ErrReaderDone = errors.New("the reader of the upload is done with it")

// ErrNotRewindable reports a body that cannot be read again for a retry.
var ErrNotRewindable = errors.New("the body cannot be read again (not an io.Seeker)")

// Writer uploads blobs into a staging bucket, in the object store's
// format (see the package documentation), with flow control and retries.
type Writer struct {
	js     jetstream.JetStream // with an async publish timeout
	bucket string
	// denied cancels the publishes the server refuses for want of a
	// grant: their acknowledgements never come.
	denied *bus.DeniedWatch
	// onRetry hears about every restarted upload.
	onRetry func(name string, attempt int, err error, wait time.Duration)
	// inject, in tests, fails the publish of chunk i of an attempt when
	// it returns an error.
	inject func(attempt, chunk int) error
	// publish publishes one chunk asynchronously: publishChunk, or a
	// test's wrapper of it.
	publish func(m *nats.Msg) (jetstream.PubAckFuture, error)
}

// errChunkOrder reports chunks stored in another order than sent: the
// object would read back scrambled, so the attempt starts again.
var errChunkOrder = errors.New("chunks stored out of order")

// publishChunk publishes a chunk without the client's own repeat of a
// publish answered "no responders" (a stream leader being elected): a
// chunk repeated after its successors were stored would land after them.
// A chunk that fails fails its attempt, which starts again under a fresh
// chunk subject.
func (s *Writer) publishChunk(m *nats.Msg) (jetstream.PubAckFuture, error) {
	return s.js.PublishMsgAsync(m, jetstream.WithRetryAttempts(0))
}

// NewWriter returns a writer into bucket over nc; onRetry, when not nil,
// hears about every restarted upload.
func NewWriter(nc *nats.Conn, bucket string, onRetry func(name string, attempt int, err error, wait time.Duration)) (*Writer, error) {
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncTimeout(stageAckTimeout),
		jetstream.WithPublishAsyncMaxPending(2*stageWindow))
	if err != nil {
		return nil, fmt.Errorf("staging: JetStream context: %w", err)
	}
	w := &Writer{js: js, bucket: bucket, onRetry: onRetry, denied: bus.WatchDenied(nc)}
	w.publish = w.publishChunk
	return w, nil
}

// Stage uploads body under name. prefix holds bytes already read from body
// (they come first). A failed attempt restarts from the beginning when
// body is an io.Seeker (rewound to where it stood at the call); progress,
// when not nil, hears the bytes acknowledged so far in the current attempt.
func (s *Writer) Stage(ctx context.Context, name, description string, prefix []byte, body io.Reader, progress func(int64)) (*jetstream.ObjectInfo, error) {
	return s.stage(ctx, name, description, "", prefix, body, progress)
}

// StageUpload uploads body under name as Stage does, on the chunk subject
// of upload (an id from NewUpload, named in the ingest command sent before
// the upload starts), for a reader that consumes the chunks while they
// arrive (OpenUpload): every attempt writes to that one subject, after
// purging the chunks of the failed one; every chunk names its attempt and
// index, and the last one carries the size, the chunk count and the
// SHA-256. The object's info is written last, as by Stage. An upload that
// fails for good (or whose ctx ends) leaves an abort marker on the
// subject, so that its reader stops waiting.
func (s *Writer) StageUpload(ctx context.Context, name, description, upload string, prefix []byte, body io.Reader, progress func(int64)) (*jetstream.ObjectInfo, error) {
	if !ValidUpload(upload) {
		return nil, fmt.Errorf("staging: %q is not an upload id (use NewUpload)", upload)
	}
	info, err := s.stage(ctx, name, description, upload, prefix, body, progress)
	if err != nil && !errors.Is(context.Cause(ctx), ErrReaderDone) && !errors.As(err, new(*bus.PublishDeniedError)) {
		// (A marker on a subject the server refuses would be refused too.)
		s.abort(upload, err)
	}
	return info, err
}

func (s *Writer) stage(ctx context.Context, name, description, upload string, prefix []byte, body io.Reader, progress func(int64)) (*jetstream.ObjectInfo, error) {
	var start int64
	seeker, rewindable := body.(io.Seeker)
	if rewindable {
		pos, err := seeker.Seek(0, io.SeekCurrent)
		if err != nil {
			rewindable = false
		}
		start = pos
	}
	window := stageWindow
	for attempt := 1; ; attempt++ {
		info, err := s.attempt(ctx, attempt, name, description, upload, io.MultiReader(bytes.NewReader(prefix), body), window, progress)
		if err == nil {
			return info, nil
		}
		if (!bus.Transient(err) && !errors.Is(err, errChunkOrder)) || ctx.Err() != nil || attempt == stageAttempts {
			return nil, fmt.Errorf("staging: stage %s in %s (attempt %d of %d): %w", name, s.bucket, attempt, stageAttempts, err)
		}
		if !rewindable {
			return nil, fmt.Errorf("staging: stage %s in %s: %w, and %w", name, s.bucket, err, ErrNotRewindable)
		}
		if _, serr := seeker.Seek(start, io.SeekStart); serr != nil {
			return nil, fmt.Errorf("staging: stage %s in %s: %w; rewind for a retry: %w", name, s.bucket, err, serr)
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code == 429 {
			window = max(window/2, stageMinWindow)
		}
		wait := bus.DefaultBackoff(uint64(attempt))
		if s.onRetry != nil {
			s.onRetry(name, attempt, err, wait)
		}
		if progress != nil {
			progress(0)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("staging: stage %s in %s: %w", name, s.bucket, context.Cause(ctx))
		}
	}
}

// attempt uploads r once, with at most window chunks unacknowledged, on
// the chunk subject of upload (a fresh one when upload is ""; with
// upload, each chunk carries the upload headers). On failure it purges
// the chunks it published.
func (s *Writer) attempt(ctx context.Context, attempt int, name, description, upload string, r io.Reader, window int, progress func(int64)) (_ *jetstream.ObjectInfo, err error) {
	streamed := upload != ""
	id := upload
	if !streamed {
		id = NewUpload()
	}
	chunkSubj := chunkSubject(s.bucket, id)
	// A chunk the server refuses is never acknowledged: the refusal
	// (an asynchronous error) ends the attempt at once, and the upload
	// with it (it is no passing failure).
	ctx, done := s.denied.Publishing(ctx, chunkSubj)
	defer done()
	type sent struct {
		f   jetstream.PubAckFuture
		n   int
		idx int
	}
	// Buffers are reused once their chunk is acknowledged: the future
	// keeps the message until then. One more buffer than the window holds
	// the chunk read ahead, which tells whether the current one is the
	// last.
	nbuf := window + 1
	bufs := make([][]byte, nbuf)
	var inflight []sent
	var acked int64
	var lastSeq uint64
	published := false
	defer func() {
		if denied := bus.DeniedCause(ctx); denied != nil {
			// Nothing was stored on the subject: no chunk to wait for
			// or purge.
			err = denied.WithGrant(chunkSubject(s.bucket, "*"))
			return
		}
		if err != nil && published {
			// Chunks still in flight would land after the purge.
			for _, f := range inflight {
				settle(f.f)
			}
			s.purge(chunkSubj)
		}
	}()
	waitOldest := func() error {
		head := inflight[0]
		inflight = inflight[1:]
		t := time.NewTimer(stageAckTimeout + time.Second) // the future times out first
		defer t.Stop()
		select {
		case ack := <-head.f.Ok():
			// The stream must hold the chunks in the order they were
			// sent, which is the order a reader reads them in.
			if ack.Sequence <= lastSeq {
				return fmt.Errorf("%w: a chunk at sequence %d after one at %d", errChunkOrder, ack.Sequence, lastSeq)
			}
			lastSeq = ack.Sequence
			acked += int64(head.n)
			if progress != nil {
				progress(acked)
			}
			return nil
		case err := <-head.f.Err():
			return err
		case <-t.C:
			return jetstream.ErrAsyncPublishTimeout
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	// read reads chunk i into its buffer, once the chunk that used the
	// buffer before is acknowledged.
	read := func(i int) ([]byte, bool, error) {
		for len(inflight) > 0 && inflight[0].idx <= i-nbuf {
			if err := waitOldest(); err != nil {
				return nil, false, err
			}
		}
		if bufs[i%nbuf] == nil {
			bufs[i%nbuf] = make([]byte, ChunkSize)
		}
		n, rerr := io.ReadFull(r, bufs[i%nbuf])
		switch rerr {
		case nil:
			return bufs[i%nbuf][:n], false, nil
		case io.EOF, io.ErrUnexpectedEOF:
			return bufs[i%nbuf][:n], true, nil
		default:
			return nil, false, fmt.Errorf("read the blob: %w", rerr)
		}
	}
	h := sha256.New()
	var size uint64
	var chunks uint32
	cur, eof, err := read(0)
	if err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		var next []byte
		nextEOF := true
		if !eof {
			if next, nextEOF, err = read(i + 1); err != nil {
				return nil, err
			}
		}
		last := eof || len(next) == 0
		if len(inflight) == window {
			if err := waitOldest(); err != nil {
				return nil, err
			}
		}
		// An empty blob is one empty chunk for a streaming reader, none
		// for the object store's.
		if len(cur) > 0 || (streamed && i == 0) {
			h.Write(cur)
			size += uint64(len(cur))
			if s.inject != nil {
				if err := s.inject(attempt, i); err != nil {
					return nil, err
				}
			}
			m := nats.NewMsg(chunkSubj)
			m.Data = cur
			if streamed {
				m.Header.Set(HeaderAttempt, strconv.Itoa(attempt))
				m.Header.Set(HeaderChunk, strconv.Itoa(i))
				if last {
					m.Header.Set(HeaderSize, strconv.FormatUint(size, 10))
					m.Header.Set(HeaderChunks, strconv.Itoa(i+1))
					m.Header.Set(HeaderDigest, sha256Digest(h.Sum(nil)))
				}
			}
			f, err := s.publish(m)
			if err != nil {
				return nil, err
			}
			published = true
			inflight = append(inflight, sent{f, len(cur), i})
			chunks++
		}
		if last {
			break
		}
		cur, eof = next, nextEOF
	}
	for len(inflight) > 0 {
		if err := waitOldest(); err != nil {
			return nil, err
		}
	}
	info := &jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: name, Description: description,
			Opts: &jetstream.ObjectMetaOptions{ChunkSize: ChunkSize}},
		Bucket: s.bucket, NUID: id, Size: size, Chunks: chunks,
		Digest: sha256Digest(h.Sum(nil)),
	}
	data, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("encode the object info: %w", err)
	}
	meta := nats.NewMsg(metaSubject(s.bucket, name))
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	meta.Data = data
	mctx, cancel := context.WithTimeout(ctx, bus.AttemptTimeout)
	defer cancel()
	mctx, mdone := s.denied.Publishing(mctx, meta.Subject)
	defer mdone()
	if _, err := s.js.PublishMsg(mctx, meta); err != nil && !streamed {
		if denied := bus.DeniedCause(mctx); denied != nil {
			return nil, denied.WithGrant(fmt.Sprintf("$O.%s.M.*", s.bucket))
		}
		// A streaming reader needs no info: its chunks are complete, and
		// it may have stored them already. Chunks without an info are the
		// staging janitor's.
		return nil, err
	}
	info.ModTime = time.Now().UTC()
	return info, nil
}

func sha256Digest(sum []byte) string { return "SHA-256=" + base64.URLEncoding.EncodeToString(sum) }

// abort leaves the abort marker of a failed upload on its chunk subject
// (after the failed attempt's chunks were purged), so that a reader
// waiting for the next chunk gives up at once. Best effort: a reader
// that misses it gives up by its progress rule.
func (s *Writer) abort(upload string, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), bus.AttemptTimeout)
	defer cancel()
	m := nats.NewMsg(chunkSubject(s.bucket, upload))
	reason := cause.Error()
	if len(reason) > 512 {
		reason = reason[:512]
	}
	m.Header.Set(HeaderAbort, strings.ToValidUTF8(strings.ReplaceAll(reason, "\n", " "), "?"))
	_, _ = s.js.PublishMsg(ctx, m)
}

// settle waits until a chunk's publish is acknowledged or failed.
func settle(f jetstream.PubAckFuture) {
	t := time.NewTimer(stageAckTimeout + time.Second)
	defer t.Stop()
	select {
	case <-f.Ok():
	case <-f.Err():
	case <-t.C:
	}
}

// purge removes the chunks of a failed attempt, so that they do not wait
// for the bucket's TTL (the staging janitor would remove them too).
func (s *Writer) purge(chunkSubj string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = bus.RetryTransient(ctx, 30*time.Second, func(ctx context.Context) error {
		st, err := s.js.Stream(ctx, streamName(s.bucket))
		if err != nil {
			return err
		}
		return st.Purge(ctx, jetstream.WithPurgeSubject(chunkSubj))
	}, nil)
}
