package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

const (
	// readBatch is how many messages one pull of ReadStream asks for.
	readBatch = 512
	// readWait bounds one pull; it only stops a hung read.
	readWait = 30 * time.Second
	// readIdle is how long the server keeps a reader's consumer once
	// nobody pulls from it: the reader cannot delete it (see ReadStream).
	readIdle = 2 * time.Minute
)

// ReadStream calls f with every message of stream on subject (wildcards
// allowed), oldest first: those the stream holds when the call starts;
// later ones are not read. An error of f stops the read and is returned
// as is.
//
// It reads through an ephemeral pull consumer without acks, so that a
// reader needs only $JS.API.CONSUMER.CREATE.<stream>.*.<subject> and
// $JS.API.CONSUMER.MSG.NEXT.<stream>.*: no stream info, and no consumer
// delete, a grant that would let a reader delete other systems' durable
// consumers. (An ordered consumer deletes and recreates its consumer at
// every Fetch.) The server removes the consumer after readIdle.
func ReadStream(ctx context.Context, js jetstream.JetStream, stream, subject string, f func(jetstream.Msg) error) error {
	cons, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		FilterSubject:     subject,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		MemoryStorage:     true,
		InactiveThreshold: readIdle,
	})
	if err != nil {
		return fmt.Errorf("read stream %s: %w", stream, err)
	}
	left := cons.CachedInfo().NumPending
	for left > 0 {
		n, ferr, err := pull(ctx, cons, int(min(left, readBatch)), f)
		if ferr != nil {
			return ferr
		}
		if err != nil {
			return fmt.Errorf("read stream %s: %w", stream, err)
		}
		if n == 0 {
			return fmt.Errorf("read stream %s: no message within %s while %d were still to read (removed meanwhile, by age or a purge?)", stream, readWait, left)
		}
		left -= uint64(n)
	}
	return nil
}

// pull fetches up to n messages and calls f with each; it returns how
// many it read, f's error, and the fetch's.
func pull(ctx context.Context, cons jetstream.Consumer, n int, f func(jetstream.Msg) error) (read int, ferr, err error) {
	fctx, cancel := context.WithTimeout(ctx, readWait)
	defer cancel()
	batch, err := cons.Fetch(n, jetstream.FetchContext(fctx))
	if err != nil {
		return 0, nil, err
	}
	for m := range batch.Messages() {
		read++
		if err := f(m); err != nil {
			return read, err, nil
		}
	}
	return read, nil, batch.Error()
}
