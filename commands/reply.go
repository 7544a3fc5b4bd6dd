package commands

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/events"
)

// Reply statuses. Every family's reply has one; Code and Reason come with
// StatusRejected and StatusFailed.
const (
	// StatusApplied: a retention change is committed with its event.
	StatusApplied = "applied"
	// StatusUnchanged: the package already was as a retention command
	// asked; nothing was appended.
	StatusUnchanged = "unchanged"
	// StatusStored: the blob is durable and the events are committed.
	StatusStored = "stored"
	// StatusRepaired: as StatusStored, and the backend's copy of the
	// content was corrupt or missing, so the blob's verified bytes
	// replaced it (Repaired says what was wrong; an object.repaired event
	// records it). A success, like stored.
	StatusRepaired = "repaired"
	// StatusSealed: the package is sealed (now or before).
	StatusSealed = "sealed"
	// StatusRejected: the command was refused by a decision (malformed,
	// a wrong claim, a rule); nothing was stored; Code and Reason say why,
	// and the refusal is recorded as an event. Sending the same command
	// again gets the same answer.
	StatusRejected = "rejected"
	// StatusFailed: the pipeline could not handle the command (a
	// dependency down for longer than the retry budget, the storage out of
	// space); nothing was stored and nothing recorded. Code is one of
	// CodeUnavailable, CodeInsufficientStorage, CodeInternal; Reason names
	// the cause. Sending the command again later may succeed.
	StatusFailed = "failed"
	// StatusBatch: the answer to an ingest batch (IngestBatch); Files
	// holds one reply per file of the batch, in the batch's order, each
	// with its own status. A batch refused whole (it does not decode) is
	// answered StatusRejected with no Files instead.
	StatusBatch = "batch"
)

// Codes of a failed command (StatusFailed), shared by every command family
// (ingest and seal, retention, verify). The consume loop's own codes
// (bus.CodeUnavailable, bus.CodeInternal) have the same values.
const (
	// CodeUnavailable: a dependency (postgres, nats, storage, or the
	// worker itself) failed on every delivery, for longer than the retry
	// budget; the reason names it and how long it was retried.
	CodeUnavailable = "unavailable"
	// CodeInsufficientStorage: the storage backend has no room for the
	// blob (its free space minus the ingester's reserve); the reason gives
	// the bytes needed and free. Refused before any byte was written.
	CodeInsufficientStorage = "insufficient_storage"
	// CodeInternal: the handler failed on every delivery for a reason
	// that is neither the command's fault nor a known dependency: a bug.
	CodeInternal = "internal"
)

// Reply is the answer to an ingest, seal or retention command, sent only
// after the outcome is durable (or, StatusFailed, when the pipeline gave
// up on it). Digests are lowercase hex. The fields of one family are
// empty in the replies of the others. (A verify request has its own
// reply, VerifyReply, which says what was read.)
type Reply struct {
	V         int    `cbor:"v" json:"v"`
	CommandID string `cbor:"command_id" json:"command_id"`
	Status    string `cbor:"status" json:"status"`
	// Code and Reason are set when Status is StatusRejected or
	// StatusFailed.
	Code   string `cbor:"code,omitempty" json:"code,omitempty"`
	Reason string `cbor:"reason,omitempty" json:"reason,omitempty"`

	// Action is the retention command's action.
	Action  string `cbor:"action,omitempty" json:"action,omitempty"`
	Package string `cbor:"package,omitempty" json:"package,omitempty"`
	Path    string `cbor:"path,omitempty" json:"path,omitempty"`
	// Address is the content address under the primary algorithm.
	Address string `cbor:"address,omitempty" json:"address,omitempty"`
	BLAKE3  string `cbor:"blake3,omitempty" json:"blake3,omitempty"`
	SHA256  string `cbor:"sha256,omitempty" json:"sha256,omitempty"`
	Size    int64  `cbor:"size" json:"size"`
	// Deduplicated is true when the backend already held the bytes.
	Deduplicated bool `cbor:"deduplicated,omitempty" json:"deduplicated,omitempty"`
	// Repaired is set with StatusRepaired: what was wrong with the stored
	// copy ("corrupt" or "missing").
	Repaired string `cbor:"repaired,omitempty" json:"repaired,omitempty"`
	// Class, RetainUntil (nil: never expires) and LegalHold describe the
	// package after a retention command; unset for a rejection.
	Class       string     `cbor:"class,omitempty" json:"class,omitempty"`
	RetainUntil *time.Time `cbor:"retain_until,omitempty" json:"retain_until,omitempty"`
	LegalHold   bool       `cbor:"legal_hold,omitempty" json:"legal_hold,omitempty"`
	// Note is extra information for the operator, e.g. that a held package
	// had already expired.
	Note string `cbor:"note,omitempty" json:"note,omitempty"`
	// Duplicate is true when the command id had been handled before: the
	// reply describes the first outcome and nothing new happened.
	Duplicate bool `cbor:"duplicate,omitempty" json:"duplicate,omitempty"`
	// Sequence is the sequence of the last event the command appended (or
	// of its rejection event); wait for a projection to reach it to read
	// the outcome back.
	Sequence int64 `cbor:"sequence,omitempty" json:"sequence,omitempty"`
	// Files is set with StatusBatch: the reply of each file of the batch,
	// in order.
	Files []Reply `cbor:"files,omitempty" json:"files,omitempty"`
}

// Err returns the rejection or failure as an *Error, or nil when the
// command succeeded. A batch reply (StatusBatch) has no error of its own:
// each of its Files has its Err.
func (r Reply) Err() error {
	switch r.Status {
	case StatusRejected:
		return &Error{Code: r.Code, Reason: r.Reason}
	case StatusFailed:
		return &Error{Code: r.Code, Reason: r.Reason, Failed: true}
	}
	return nil
}

// DecodeReply decodes a reply, as JSON when isJSON. Unknown fields are
// tolerated so that an older producer reads a newer ingester's replies.
func DecodeReply(codec *events.Codec, data []byte, isJSON bool) (Reply, error) {
	var r Reply
	if isJSON {
		if err := json.NewDecoder(bytes.NewReader(data)).Decode(&r); err != nil {
			return Reply{}, fmt.Errorf("decode JSON reply: %w", err)
		}
		return r, nil
	}
	var loose replyLoose
	if err := codec.Unmarshal(data, &loose); err != nil {
		return Reply{}, fmt.Errorf("decode CBOR reply: %w", err)
	}
	if err := codec.Unmarshal(data, &r); err != nil {
		// A newer ingester added a field: keep what this version knows.
		return replyFromLoose(loose)
	}
	return r, nil
}

// replyLoose accepts any map so that unknown reply fields do not fail a
// decode under the strict codec.
type replyLoose map[string]any

func replyFromLoose(m replyLoose) (Reply, error) {
	b, err := json.Marshal(map[string]any(m))
	if err != nil {
		return Reply{}, fmt.Errorf("decode CBOR reply: %w", err)
	}
	var r Reply
	if err := json.Unmarshal(b, &r); err != nil {
		return Reply{}, fmt.Errorf("decode CBOR reply: %w", err)
	}
	return r, nil
}
