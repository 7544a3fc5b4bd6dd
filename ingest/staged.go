package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// stagedBufferBytes bounds what the reader of a staged object buffers: the
// pull consumer asks the server for at most this many bytes at a time.
const stagedBufferBytes = 2 << 20

// stagedChunkTimeout bounds the wait for the next chunk: a staged object
// whose chunks are missing must not hold a handler forever.
const stagedChunkTimeout = 30 * time.Second

// errStagedRead marks a failure to read a staged object's chunks from
// NATS, so that it is retried as a NATS outage rather than a storage one.
var errStagedRead = errors.New("read staged object")

// errStagedCorrupt means the staged object's chunks do not add up to its
// recorded size.
var errStagedCorrupt = errors.New("staged object's chunks do not match its recorded size")

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

// openStaged opens the staged object name of bucket through js.
func openStaged(ctx context.Context, js jetstream.JetStream, bucket string, info *jetstream.ObjectInfo) (io.ReadCloser, error) {
	if info.Size == 0 {
		return io.NopCloser(eofReader{}), nil
	}
	cons, err := js.OrderedConsumer(ctx, "OBJ_"+bucket, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{fmt.Sprintf("$O.%s.C.%s", bucket, info.NUID)},
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
			return 0, fmt.Errorf("%w: %w", errStagedRead, err)
		}
		r.cur = msg.Data()
		if r.read+int64(len(r.cur)) > r.size {
			return 0, fmt.Errorf("%w: more than %d bytes", errStagedCorrupt, r.size)
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
