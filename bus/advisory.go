package bus

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxDeliveriesAdvisorySubject is the subject on which the server
// announces that a message of stream reached its consumer's MaxDeliver
// without being acknowledged: its last delivery timed out.
func MaxDeliveriesAdvisorySubject(stream, consumer string) string {
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + stream + "." + consumer
}

// maxDeliveriesAdvisory is the part of the server's advisory
// (io.nats.jetstream.advisory.v1.max_deliver) the consumer reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// newMessage builds the Message of a command from its parts.
func newMessage(subject string, data []byte, h nats.Header, stream string, seq, delivered uint64, ts time.Time) Message {
	if h == nil {
		h = nats.Header{}
	}
	return Message{
		Subject:        subject,
		Data:           data,
		Headers:        h,
		CommandID:      h.Get(HeaderMsgID),
		ReplyTo:        h.Get(HeaderReplyTo),
		Reask:          h.Get(HeaderReask),
		ContentType:    h.Get(HeaderContentType),
		Stream:         stream,
		StreamSequence: seq,
		NumDelivered:   delivered,
		Timestamp:      ts,
	}
}

// watchAdvisories subscribes, in a queue group shared by every process of
// this durable consumer, to the server's max-deliveries advisories of the
// consumer. The server sends one when a message's last delivery was never
// acknowledged: its worker died or hung on the spare delivery too (see
// [ConsumerOptions.MaxDeliver]), so no consume loop could answer it. The
// watcher fetches the message by its stream sequence, answers it and
// dead-letters it as a failure. The message itself stays in the work-queue
// stream (which refuses deletes) but is never delivered again.
//
// Advisories are core NATS messages: one sent while no process of the
// consumer is connected is lost, and that command stays unanswered.
func (c *Consumer) watchAdvisories() error {
	subject := MaxDeliveriesAdvisorySubject(c.stream, c.durable)
	stream, err := c.js.Stream(c.hardCtx, c.stream)
	if err != nil {
		return fmt.Errorf("bus: stream %s for the max-deliveries advisories: %w", c.stream, err)
	}
	nc := c.js.Conn()
	sub, err := nc.QueueSubscribe(subject, "artifactstore-"+c.durable, func(msg *nats.Msg) {
		c.advisoryWork.Add(1)
		go func() {
			defer c.advisoryWork.Done()
			c.onAdvisory(stream, msg.Data)
		}()
	})
	if err != nil {
		return fmt.Errorf("bus: subscribe to %s: %w", subject, err)
	}
	c.advisories = sub
	return nil
}

func (c *Consumer) onAdvisory(stream jetstream.Stream, data []byte) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(data, &adv); err != nil || adv.StreamSeq == 0 {
		c.log.Warn().Err(err).Bytes("advisory", data).Msg("unreadable max-deliveries advisory")
		return
	}
	log := c.log.With().Uint64("stream_seq", adv.StreamSeq).Uint64("delivery", adv.Deliveries).Logger()
	ctx, cancel := context.WithTimeout(c.hardCtx, c.opts.AckTimeout)
	raw, err := stream.GetMsg(ctx, adv.StreamSeq)
	cancel()
	if err != nil {
		log.Error().Err(err).Msg("max-deliveries advisory: the command cannot be read back; it stays unanswered")
		return
	}
	m := newMessage(raw.Subject, raw.Data, raw.Header, c.stream, raw.Sequence, adv.Deliveries, raw.Time)
	log = log.With().Str("subject", m.Subject).Str("command_id", m.CommandID).Logger()
	reason := fmt.Sprintf("worker unavailable: no delivery of the %d finished within the ack wait of %s (the workers handling it died, were stopped or hung); "+
		"nothing is known to have been done: send the command again (with the same command id to learn an outcome recorded meanwhile), %s after it was queued",
		adv.Deliveries, c.ackWait, time.Since(m.Timestamp).Round(time.Second))
	log.Warn().Msg("the server gave up on a command; answering and dead-lettering")
	c.giveUp(m, CodeUnavailable, reason, log, true)
}
