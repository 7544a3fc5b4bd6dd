// Package events owns the event log: the envelope of an immutable fact, the
// versioned payload type of every event type, the deterministic CBOR codec
// of payloads, and the PostgreSQL log that appends and reads them in one
// gap-free total order.
package events

import (
	"time"

	"github.com/google/uuid"
)

// Type names an event type, e.g. "object.stored".
type Type string

// Subject kinds: what an event is about.
const (
	SubjectPackage = "package"
	SubjectObject  = "object"
	SubjectCommand = "command"
)

// Event is one committed fact of the log. Everything in it is immutable once
// appended.
type Event struct {
	// Sequence is the event's position in the total order of the log,
	// starting at 1, without gaps.
	Sequence int64
	// EventID is unique per event.
	EventID uuid.UUID
	// OccurredAt is when the appending transaction built the event.
	OccurredAt time.Time
	// Type is the event type; it selects the payload struct.
	Type Type
	// PayloadVersion is the version of the payload struct of Type that
	// encoded Payload.
	PayloadVersion int
	// SubjectKind and SubjectID name what the event is about: a package
	// name, a content address, a command id.
	SubjectKind string
	SubjectID   string
	// Actor is who caused the event (a producer, a worker role, a person).
	Actor string
	// CommandID is the id of the command that appended the event; empty for
	// events of no command (scrub, reap).
	CommandID string
	// Payload is the deterministic CBOR encoding of the payload struct.
	Payload []byte
	// PayloadDigest is BLAKE3-256 of Payload.
	PayloadDigest [32]byte
	// ChainDigest links the event to its predecessor: BLAKE3-256 over the
	// previous event's chain digest (zeros before the first) and every
	// other field of the event (see ChainDigestV2), so that altering any
	// column of any event breaks every later chain digest. Events written
	// before chain v2 carry a v1 link (ChainDigestV1).
	ChainDigest [32]byte
	// ChainVersion is the rule ChainDigest was computed with: ChainV2 for
	// every event appended by this release, ChainV1 for older ones.
	ChainVersion int
}

// Draft is an event not yet appended: the log assigns its sequence, id,
// time and digests.
type Draft struct {
	SubjectKind string
	SubjectID   string
	Actor       string
	Payload     Payload
}
