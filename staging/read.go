package staging

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/digest"
)

// stagedBufferBytes bounds what the reader of a staged object buffers: the
// pull consumer asks the server for at most this many bytes at a time.
const stagedBufferBytes = 2 << 20

// stagedChunkTimeout bounds the wait for the next chunk: a staged object
// whose chunks are missing must not hold a handler forever.
const stagedChunkTimeout = 30 * time.Second

// ErrRead marks a failure to read a staged object's chunks from NATS, so
// that a reader's caller can tell a NATS outage from a storage one.
var ErrRead = errors.New("read staged object")

// ErrCorrupt means the staged object's chunks do not add up to its
// recorded size.
var ErrCorrupt = errors.New("staged object's chunks do not match its recorded size")

// stagedReader streams the chunks of one object of the staging bucket with
// a pull-based ordered consumer, so that memory stays bounded by
// stagedBufferBytes whatever the object's size and however slowly the
// bytes are written to disk. (The object store's own Get pushes chunks as
// fast as the server sends them and buffers them without bound in the
// client when the reader is slower.) It does not check the digest: the
// data plane does, against the SHA-256 the store recorded, before the
// object becomes visible.
type stagedReader struct {
	ctx  context.Context
	it   jetstream.MessagesContext
	size int64
	read int64
	cur  []byte
}

// Open opens the staged object of bucket that info describes, through js,
// for reading; the caller closes it.
func Open(ctx context.Context, js jetstream.JetStream, bucket string, info *jetstream.ObjectInfo) (io.ReadCloser, error) {
	if info.Size == 0 {
		return io.NopCloser(eofReader{}), nil
	}
	cons, err := js.OrderedConsumer(ctx, streamName(bucket), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{chunkSubject(bucket, info.NUID)},
	})
	if err != nil {
		return nil, fmt.Errorf("open staged object %q: %w", info.Name, err)
	}
	it, err := cons.Messages(jetstream.PullMaxBytes(stagedBufferBytes))
	if err != nil {
		return nil, fmt.Errorf("open staged object %q: %w", info.Name, err)
	}
	return &stagedReader{ctx: ctx, it: it, size: int64(info.Size)}, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func (r *stagedReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.read == r.size {
			return 0, io.EOF
		}
		ctx, cancel := context.WithTimeout(r.ctx, stagedChunkTimeout)
		msg, err := r.it.Next(jetstream.NextContext(ctx))
		cancel()
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrRead, err)
		}
		r.cur = msg.Data()
		if r.read+int64(len(r.cur)) > r.size {
			return 0, fmt.Errorf("%w: more than %d bytes", ErrCorrupt, r.size)
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.read += int64(n)
	return n, nil
}

func (r *stagedReader) Close() error {
	r.it.Stop()
	return nil
}

// ParseDigest turns the object store's "SHA-256=<base64url>" into an
// address.
func ParseDigest(s string) (digest.Address, error) {
	alg, b64, ok := strings.Cut(s, "=")
	if !ok || !strings.EqualFold(alg, "SHA-256") {
		return digest.Address{}, fmt.Errorf("digest %q is not SHA-256=<base64url>", s)
	}
	raw, err := base64.URLEncoding.DecodeString(b64)
	if err != nil || len(raw) != digest.Size {
		return digest.Address{}, fmt.Errorf("digest %q is not 32 bytes of base64url", s)
	}
	return digest.New(digest.SHA256, [digest.Size]byte(raw)), nil
}
