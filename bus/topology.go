// Package bus owns everything about NATS JetStream: the topology (streams,
// durable consumers, the staging object store), publishing commands with
// their command id as Nats-Msg-Id, waiting for replies, the consume loop
// that maps a handler's outcome to ack / nak-with-delay / dead-letter+term,
// the client connection and the embedded server of zero-setup mode.
//
// JetStream is the transport of work, never the durable copy of a fact:
// a command is acknowledged (DoubleAck) only after its handler returned nil,
// that is after the effects were made durable elsewhere.
package bus

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Command subjects below [Topology.SubjectRoot] ("artifacts" by default).
const (
	// CmdIngest stores a blob (inline or staged) as a file of a package.
	CmdIngest = "cmd.ingest.file"
	// CmdSeal seals a package: no more files. It shares the ingest
	// consumer (filter <root>.cmd.ingest.>) with CmdIngest, because a
	// consumer has one filter subject on NATS servers before 2.10.
	CmdSeal = "cmd.ingest.seal"
	// CmdIngestBatch stores several small inline files, each with its own
	// command id, in one message (commands.IngestBatch). It shares the
	// ingest consumer like CmdSeal.
	CmdIngestBatch = "cmd.ingest.batch"
	// CmdRetention holds, releases or changes the retention of a package.
	CmdRetention = "cmd.retention"
	// CmdVerify asks for an object to be re-read and re-digested.
	CmdVerify = "cmd.verify"
)

// Topology is the JetStream configuration of artifactstore: every stream,
// durable consumer and bucket ([Topology.Items]), created or updated by
// [ApplyTopology] and checked by [CheckTopology]; [Topology.Roles] lists
// what each process may publish and subscribe to.
// Start from [DefaultTopology]; the zero value is not usable.
//
// Retention of the commands stream is WorkQueue: a command is removed once
// acknowledged or terminated. JetStream is the transport of work, not its
// record (the facts live in PostgreSQL), so acked commands, which may carry
// inline blobs, free their space at once, while unconsumed commands wait for
// workers however long these are down (no MaxAge). A work-queue stream also
// makes the server refuse two consumers with overlapping filters, which
// catches a mis-wired consumer family. Terminated or dead-lettered commands
// are copied to the dead-letter stream first.
type Topology struct {
	// SubjectRoot is the first subject token of every subject: commands on
	// <root>.cmd.>, dead letters on <root>.deadletter.>, events on
	// <root>.events.>. Default "artifacts".
	SubjectRoot string

	// Replicas is the replica count of every stream, consumer and bucket
	// (1 on a single server, 3 in a cluster). Default 1.
	Replicas int

	// CommandsStream is the name of the commands stream. Default
	// "ARTIFACTS_COMMANDS". File storage, WorkQueue retention, DenyDelete
	// and DenyPurge (nobody removes pending work by hand).
	CommandsStream string
	// CommandsDuplicateWindow is how long JetStream remembers a command id
	// (Nats-Msg-Id) to drop a duplicate publish. Default 2 minutes.
	// Duplicates outside the window are still harmless: every effect is
	// idempotent by command id.
	CommandsDuplicateWindow time.Duration
	// CommandsMaxBytes caps the stream's size; publishes beyond it are
	// refused (DiscardNew), never is pending work dropped. Default -1
	// (unlimited).
	CommandsMaxBytes int64
	// MaxMsgSize is the largest command the stream accepts, headers
	// included. Default 8 MiB. The server's max_payload must be at least as
	// large for such a command to arrive (nats-server's default max_payload
	// is 1 MiB; the embedded server uses 8 MiB + 64 KiB).
	MaxMsgSize int32
	// InlineBlobMax is the largest blob a producer sends inline in an ingest
	// command; larger ones go through the staging bucket. Default 1 MiB.
	// See [InlineLimit] for the limit on a given connection.
	InlineBlobMax int

	// DeadLetterStream is the name of the dead-letter stream, on
	// <root>.deadletter.>. Default "ARTIFACTS_DEADLETTER". Limits
	// retention, file storage; inspect with
	// `nats stream view ARTIFACTS_DEADLETTER`.
	DeadLetterStream string
	// DeadLetterMaxAge is how long dead letters are kept. Default 30 days.
	DeadLetterMaxAge time.Duration

	// EventsStream is the name of the events stream, on <root>.events.>,
	// where committed events are published (Nats-Msg-Id = sequence) for
	// fan-out. Default "ARTIFACTS_EVENTS". Limits retention, file storage.
	EventsStream string
	// EventsDuplicateWindow is how long a republished event sequence is
	// recognised as a duplicate. Default 10 minutes, long enough to cover a
	// publisher restart.
	EventsDuplicateWindow time.Duration
	// EventsMaxAge is how long events stay in the stream; a subscriber that
	// falls further behind reads PostgreSQL. Default 30 days.
	EventsMaxAge time.Duration

	// CheckpointsStream is the name of the stream of signed checkpoints of
	// the event log's chain head, on <root>.checkpoints (package
	// checkpoint). Default "ARTIFACTS_CHECKPOINTS". Kept forever (no
	// MaxAge), DenyDelete and DenyPurge: it is the copy of the chain head
	// outside the database.
	CheckpointsStream string

	// StagingBucket is the object-store bucket where producers stage blobs
	// too large to ride inline. Default "ARTIFACTS_STAGING".
	StagingBucket string
	// StagingTTL is how long a staged object lives: abandoned uploads go
	// away after it. Default 24 hours.
	StagingTTL time.Duration
	// StagingMaxBytes caps the bucket's size. Default -1 (unlimited).
	StagingMaxBytes int64

	// IngestConsumer is the durable consumer of ingest and seal commands.
	// Default "ingest".
	IngestConsumer string
	// RetentionConsumer is the durable consumer of retention commands.
	// Default "retention".
	RetentionConsumer string
	// VerifyConsumer is the durable consumer of verify commands. Default
	// "verify".
	VerifyConsumer string
	// ReplicateConsumer is the durable consumer of the events stream that
	// the replicators share (<root>.events.>): from object and retention
	// events they place further copies and repair damaged ones. Default
	// "replicate".
	ReplicateConsumer string
	// AckWait is how long the server waits for an ack before redelivering;
	// the consume loop sends in-progress acks every AckWait/3 while a
	// handler runs. Default 30 seconds.
	AckWait time.Duration
	// MaxDeliver is how many times a command is handled before the
	// consume loop gives up on it: a command that still fails on its last
	// delivery is answered (unavailable or internal), dead-lettered and
	// terminated. With the consume loop's backoff ([DefaultBackoff]) it
	// sizes the retry budget, [RetryBudget]: 113-151 s for the default
	// 10, so that a dependency down for a minute costs only time. The
	// server's consumer is configured with one delivery more, the spare:
	// it reaches a consume loop only when the last attempt never settled
	// (its worker died), which then answers the command without handling
	// it. Default 10.
	MaxDeliver int
	// MaxAckPending bounds the commands delivered and not yet acked across
	// all processes of a consumer. Default 256.
	MaxAckPending int
}

// DefaultTopology returns the topology with every default filled in.
func DefaultTopology() Topology {
	return Topology{
		SubjectRoot: "artifacts",
		Replicas:    1,

		CommandsStream:          "ARTIFACTS_COMMANDS",
		CommandsDuplicateWindow: 2 * time.Minute,
		CommandsMaxBytes:        -1,
		MaxMsgSize:              8 << 20,
		InlineBlobMax:           1 << 20,

		DeadLetterStream: "ARTIFACTS_DEADLETTER",
		DeadLetterMaxAge: 30 * 24 * time.Hour,

		EventsStream:          "ARTIFACTS_EVENTS",
		EventsDuplicateWindow: 10 * time.Minute,
		EventsMaxAge:          30 * 24 * time.Hour,

		CheckpointsStream: "ARTIFACTS_CHECKPOINTS",

		StagingBucket:   "ARTIFACTS_STAGING",
		StagingTTL:      24 * time.Hour,
		StagingMaxBytes: -1,

		IngestConsumer:    "ingest",
		RetentionConsumer: "retention",
		VerifyConsumer:    "verify",
		ReplicateConsumer: "replicate",
		AckWait:           30 * time.Second,
		MaxDeliver:        10,
		MaxAckPending:     256,
	}
}

// WithPrefix returns a copy of t whose stream and bucket names start with
// prefix+"_" and whose subjects live below prefix+"."+SubjectRoot, so that
// several topologies share one server without overlapping. prefix must be
// a valid subject token and name (letters, digits, '-', '_').
func (t Topology) WithPrefix(prefix string) Topology {
	t.SubjectRoot = prefix + "." + t.SubjectRoot
	t.CommandsStream = prefix + "_" + t.CommandsStream
	t.DeadLetterStream = prefix + "_" + t.DeadLetterStream
	t.EventsStream = prefix + "_" + t.EventsStream
	t.CheckpointsStream = prefix + "_" + t.CheckpointsStream
	t.StagingBucket = prefix + "_" + t.StagingBucket
	return t
}

// Subject returns the full subject of a command (one of CmdIngest, CmdSeal,
// CmdRetention, CmdVerify) below the root.
func (t Topology) Subject(cmd string) string { return t.SubjectRoot + "." + cmd }

// DeadLetterSubjectPrefix is the subject prefix dead letters are published
// below: <root>.deadletter.
func (t Topology) DeadLetterSubjectPrefix() string { return t.SubjectRoot + ".deadletter" }

// EventsSubject returns the subject of an event of the given type below
// <root>.events.
func (t Topology) EventsSubject(eventType string) string {
	return t.SubjectRoot + ".events." + eventType
}

// CheckpointsSubject is the subject of signed checkpoints:
// <root>.checkpoints.
func (t Topology) CheckpointsSubject() string { return t.SubjectRoot + ".checkpoints" }

// ConsumerFamily is one durable consumer of the commands stream.
type ConsumerFamily struct {
	// Durable is the durable consumer name.
	Durable string
	// Filter is the one subject filter of the consumer (a single filter
	// works on every JetStream server; several filters need nats-server
	// 2.10 or later).
	Filter string
}

// Consumers lists the durable consumers of the commands stream, one per
// worker role: ingest (ingest and seal commands), retention, and verify.
// Handlers run concurrently, so no order between commands is promised; a
// seal that arrives before its package's last ingest must be retried by
// its handler.
func (t Topology) Consumers() []ConsumerFamily {
	return []ConsumerFamily{
		{Durable: t.IngestConsumer, Filter: t.Subject("cmd.ingest.>")},
		{Durable: t.RetentionConsumer, Filter: t.Subject(CmdRetention)},
		{Durable: t.VerifyConsumer, Filter: t.Subject(CmdVerify)},
	}
}

// EventConsumers lists the durable consumers of the events stream: the
// replicators' (every event; they act on object and retention events). Unlike the commands stream's, the
// events stream keeps what a consumer acked, so a new durable starts
// from the stream's first object event: a replicator started on an
// existing store places the copies its policy asks for of every object
// the stream still holds.
func (t Topology) EventConsumers() []ConsumerFamily {
	return []ConsumerFamily{{Durable: t.ReplicateConsumer, Filter: t.SubjectRoot + ".events.>"}}
}

// StreamConfigs returns the configuration of the commands, dead-letter,
// events and checkpoints streams, in that order.
func (t Topology) StreamConfigs() []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        t.CommandsStream,
			Description: "artifactstore commands (work queue)",
			Subjects:    []string{t.SubjectRoot + ".cmd.>"},
			Retention:   jetstream.WorkQueuePolicy,
			MaxMsgs:     -1,
			MaxBytes:    t.CommandsMaxBytes,
			Discard:     jetstream.DiscardNew,
			MaxMsgSize:  t.MaxMsgSize,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			Duplicates:  t.CommandsDuplicateWindow,
			DenyDelete:  true,
			DenyPurge:   true,
		},
		{
			Name:        t.DeadLetterStream,
			Description: "artifactstore commands that were rejected or failed on every delivery",
			Subjects:    []string{t.DeadLetterSubjectPrefix() + ".>"},
			Retention:   jetstream.LimitsPolicy,
			MaxMsgs:     -1,
			MaxBytes:    -1,
			MaxAge:      t.DeadLetterMaxAge,
			Discard:     jetstream.DiscardOld,
			// Dead letters carry a whole command plus diagnostic headers.
			MaxMsgSize: t.MaxMsgSize + 64<<10,
			Storage:    jetstream.FileStorage,
			Replicas:   t.Replicas,
			Duplicates: t.CommandsDuplicateWindow,
		},
		{
			Name:        t.EventsStream,
			Description: "artifactstore committed events, for fan-out",
			Subjects:    []string{t.SubjectRoot + ".events.>"},
			Retention:   jetstream.LimitsPolicy,
			MaxMsgs:     -1,
			MaxBytes:    -1,
			MaxAge:      t.EventsMaxAge,
			Discard:     jetstream.DiscardOld,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			Duplicates:  t.EventsDuplicateWindow,
		},
		{
			Name:        t.CheckpointsStream,
			Description: "artifactstore signed checkpoints of the event log's chain head",
			Subjects:    []string{t.CheckpointsSubject()},
			Retention:   jetstream.LimitsPolicy,
			MaxMsgs:     -1,
			MaxBytes:    -1,
			Discard:     jetstream.DiscardNew,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			Duplicates:  t.EventsDuplicateWindow,
			DenyDelete:  true,
			DenyPurge:   true,
		},
	}
}

// ConsumerConfig returns the configuration of one durable consumer family.
func (t Topology) ConsumerConfig(f ConsumerFamily) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       f.Durable,
		Description:   "artifactstore " + f.Durable + " workers",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       t.AckWait,
		MaxDeliver:    t.MaxDeliver + 1, // the spare delivery, see MaxDeliver

		MaxAckPending: t.MaxAckPending,
		FilterSubject: f.Filter,
		Replicas:      t.Replicas,
	}
}

// StagingConfig returns the configuration of the staging object store.
func (t Topology) StagingConfig() jetstream.ObjectStoreConfig {
	return jetstream.ObjectStoreConfig{
		Bucket:      t.StagingBucket,
		Description: "artifactstore staging of large blobs before ingest",
		TTL:         t.StagingTTL,
		MaxBytes:    t.StagingMaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
	}
}

// Validate reports the first field that makes t unusable.
func (t Topology) Validate() error {
	var errs []error
	for name, v := range map[string]string{
		"SubjectRoot": t.SubjectRoot, "CommandsStream": t.CommandsStream,
		"DeadLetterStream": t.DeadLetterStream, "EventsStream": t.EventsStream, "CheckpointsStream": t.CheckpointsStream,
		"StagingBucket": t.StagingBucket, "IngestConsumer": t.IngestConsumer,
		"RetentionConsumer": t.RetentionConsumer, "VerifyConsumer": t.VerifyConsumer,
		"ReplicateConsumer": t.ReplicateConsumer,
	} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is empty", name))
		}
	}
	if t.Replicas < 1 || t.Replicas > 5 {
		errs = append(errs, fmt.Errorf("replica count (Replicas) %d must be between 1 and 5: 1 on a single server, 3 in a three-node cluster", t.Replicas))
	}
	if t.AckWait <= 0 {
		errs = append(errs, fmt.Errorf("AckWait %s must be positive", t.AckWait))
	}
	if t.MaxDeliver < 1 {
		errs = append(errs, fmt.Errorf("MaxDeliver %d must be at least 1", t.MaxDeliver))
	}
	if t.MaxAckPending < 1 {
		errs = append(errs, fmt.Errorf("MaxAckPending %d must be at least 1", t.MaxAckPending))
	}
	if t.InlineBlobMax < 0 || int64(t.InlineBlobMax) >= int64(t.MaxMsgSize) {
		errs = append(errs, fmt.Errorf("InlineBlobMax %d must be below MaxMsgSize %d", t.InlineBlobMax, t.MaxMsgSize))
	}
	if t.StagingTTL <= 0 {
		errs = append(errs, fmt.Errorf("StagingTTL %s must be positive, or abandoned uploads never go away", t.StagingTTL))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bus: invalid topology (start from DefaultTopology()): %w", err)
	}
	return nil
}

// commandOverhead is what a command's envelope (headers, CBOR fields other
// than the blob) may take beside the inline blob.
const commandOverhead = 64 << 10

// CommandLimit returns the largest command body a producer should send on
// a connection whose server allows maxPayload bytes per message, under
// the stream's MaxMsgSize, leaving room for the headers.
func CommandLimit(t Topology, maxPayload int64) int {
	return int(max(min(maxPayload, int64(t.MaxMsgSize))-commandOverhead, 0))
}

// InlineLimit returns the largest blob that may ride inline in an ingest
// command on a connection whose server allows maxPayload bytes per message
// (nats.Conn.MaxPayload): the smaller of t.InlineBlobMax and what fits with
// the command's envelope.
func InlineLimit(t Topology, maxPayload int64) int {
	limit := int64(t.InlineBlobMax)
	if room := min(maxPayload, int64(t.MaxMsgSize)) - commandOverhead; room < limit {
		limit = max(room, 0)
	}
	return int(limit)
}
