package commands

import (
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

// maxVerifyBytes caps an encoded verify request; a real one is a few
// hundred bytes.
const maxVerifyBytes = 4 << 10

// Rejection codes of verify requests (VerifyReply.Code with OutcomeError),
// besides malformed, and unavailable and internal when the pipeline gave
// up on the request.
const (
	// CodeUnknownLocation: the catalog has no location of the address on
	// that backend (never stored there, or not projected yet).
	CodeUnknownLocation = "unknown_location"
	// CodeDeleted: the reaper deleted the object; there is nothing to
	// verify.
	CodeDeleted = "deleted"
	// CodeUnknownBackend: no backend has the id the request names.
	CodeUnknownBackend = "unknown_backend"
)

// Origins of a request, for logs and replies.
const (
	OriginScrub    = "scrub"
	OriginOnDemand = "on-demand"
	// OriginRead: a served read found bytes that did not match their
	// tree (see ReadReporter).
	OriginRead = "read"
)

// Verify asks a verifier to re-read one stored object from one backend,
// recompute BLAKE3, SHA-256 and the size, and append the outcome to the
// event log (object.verified, object.corrupt or object.missing).
//
// It is published on the verify command subject (bus.CmdVerify below the
// topology's root, "artifacts.cmd.verify") with Nats-Msg-Id = RequestID, as
// deterministic CBOR (events.Codec) or, with Content-Type:
// application/json, as JSON with the same field names, e.g.
//
//	{"v":1,"request_id":"0b9f…","address":"blake3:…","backend_id":"local"}
//
// The expected digests and size are not part of the request: the verifier
// takes them from storage_locations, so a request cannot make bad bytes
// look good.
//
// RequestID is also the command id of the appended event, so a redelivered
// or republished request appends nothing a second time and is answered
// with the outcome recorded the first time.
type Verify struct {
	// V is Version.
	V int `cbor:"v" json:"v"`
	// RequestID identifies the request: 1-128 printable ASCII bytes without
	// whitespace, '.', '*' or '>' (a UUID is fine). Empty means the
	// Nats-Msg-Id header's value.
	RequestID string `cbor:"request_id" json:"request_id"`
	// Address is the content address of the object.
	Address digest.Address `cbor:"address" json:"address"`
	// BackendID names the backend whose copy is verified, e.g. "local".
	BackendID string `cbor:"backend_id" json:"backend_id"`
	// ReplyTo is the subject the reply is published on when the message
	// has no Artifactstore-Reply-To header (which wins when present). Empty
	// with no header: no reply.
	ReplyTo string `cbor:"reply_to,omitempty" json:"reply_to,omitempty"`
	// Origin says who asked: OriginScrub or OriginOnDemand (free text,
	// for logs only).
	Origin string `cbor:"origin,omitempty" json:"origin,omitempty"`
}

// Validate checks every field.
func (r Verify) Validate() error {
	if r.V != Version {
		return fmt.Errorf("verify request schema version %d is not supported; this verifier reads version %d (field \"v\")", r.V, Version)
	}
	if err := ValidateCommandID(r.RequestID); err != nil {
		return fmt.Errorf("request_id: %w", err)
	}
	if r.Address.IsZero() {
		return errors.New("address is empty; give the content address as <blake3|sha256>:<64 lowercase hex digits>")
	}
	if r.BackendID == "" || len(r.BackendID) > 128 {
		return fmt.Errorf("backend_id %q must be 1-128 bytes; name the backend that holds the copy, e.g. \"local\"", r.BackendID)
	}
	if len(r.ReplyTo) > 256 || len(r.Origin) > 64 {
		return errors.New("reply_to (at most 256 bytes) or origin (at most 64 bytes) is too long")
	}
	return nil
}

// Outcomes of a verification, as in [VerifyReply.Outcome] and the CLI's table.
const (
	// OutcomeVerified: both digests and the size matched.
	OutcomeVerified = "verified"
	// OutcomeCorrupt: a digest or the size differed.
	OutcomeCorrupt = "corrupt"
	// OutcomeMissing: the backend holds no bytes at the address.
	OutcomeMissing = "missing"
	// OutcomeError: nothing was verified and no event appended (unknown
	// object, deleted object, malformed request); Reason says why.
	OutcomeError = "error"
)

// VerifyReply answers a [Verify] request whose message named a reply subject. It is
// encoded like the request (CBOR, or JSON for a JSON request).
type VerifyReply struct {
	// V is Version.
	V int `cbor:"v" json:"v"`
	// RequestID is the request's id.
	RequestID string `cbor:"request_id" json:"request_id"`
	// Address and BackendID repeat the request's.
	Address   string `cbor:"address" json:"address"`
	BackendID string `cbor:"backend_id" json:"backend_id"`
	// Outcome is one of the Outcome* constants.
	Outcome string `cbor:"outcome" json:"outcome"`
	// ExpectedSize is the size recorded at ingest.
	ExpectedSize int64 `cbor:"expected_size" json:"expected_size"`
	// ActualSize, ActualBLAKE3 and ActualSHA256 (lowercase hex) are what
	// was read; set for verified and corrupt outcomes.
	ActualSize   int64  `cbor:"actual_size" json:"actual_size"`
	ActualBLAKE3 string `cbor:"actual_blake3,omitempty" json:"actual_blake3,omitempty"`
	ActualSHA256 string `cbor:"actual_sha256,omitempty" json:"actual_sha256,omitempty"`
	// Sequence is the sequence of the appended event; 0 for OutcomeError.
	Sequence int64 `cbor:"sequence" json:"sequence"`
	// Duplicate is true when the request id had been handled before: the
	// reply is the recorded outcome, nothing was read or appended.
	Duplicate bool `cbor:"duplicate,omitempty" json:"duplicate,omitempty"`
	// Reason explains an error or a corrupt outcome in words, and a
	// verified outcome whose stored tree had to be rebuilt.
	Reason string `cbor:"reason,omitempty" json:"reason,omitempty"`
	// Tree says what became of the object's stored BLAKE3 tree when its
	// bytes were verified: ok, none (one chunk group, no tree stored),
	// built (stored before trees existed) or rebuilt (it was damaged).
	// Empty for other outcomes and duplicates.
	Tree string `cbor:"tree,omitempty" json:"tree,omitempty"`
	// Code is set for OutcomeError: CodeMalformed, CodeUnknownLocation,
	// CodeDeleted or CodeUnknownBackend when the request was refused, or
	// CodeUnavailable / CodeInternal when the pipeline gave up on it (a
	// dependency down for longer than the retry budget, a worker lost).
	Code string `cbor:"code,omitempty" json:"code,omitempty"`
}

// Failed reports whether the reply is anything but verified.
func (r VerifyReply) Failed() bool { return r.Outcome != OutcomeVerified }

// EncodeVerify encodes r as deterministic CBOR, or JSON when asJSON.
func EncodeVerify(codec *events.Codec, r Verify, asJSON bool) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("verify request: %w", err)
	}
	return Encode(codec, r, asJSON)
}

// DecodeVerify decodes and validates a verify request. headerID (the
// Nats-Msg-Id) fills an empty RequestID.
func DecodeVerify(codec *events.Codec, data []byte, asJSON bool, headerID string) (Verify, error) {
	var r Verify
	if err := decodeCapped(codec, data, asJSON, &r); err != nil {
		return Verify{}, fmt.Errorf("verify request does not decode: %w; send the fields of commands.Verify as deterministic CBOR, or JSON with Content-Type: application/json", err)
	}
	if r.RequestID == "" {
		r.RequestID = headerID
	}
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("invalid verify request: %w", err)
	}
	return r, nil
}

// DecodeVerifyReply decodes a verify reply (CBOR, or JSON when asJSON).
func DecodeVerifyReply(codec *events.Codec, data []byte, asJSON bool) (VerifyReply, error) {
	var r VerifyReply
	if err := decodeCapped(codec, data, asJSON, &r); err != nil {
		return VerifyReply{}, fmt.Errorf("verify reply does not decode: %w", err)
	}
	return r, nil
}

// decodeCapped decodes v strictly (unknown fields refused), refusing more
// than maxVerifyBytes.
func decodeCapped(codec *events.Codec, data []byte, asJSON bool, v any) error {
	if len(data) > maxVerifyBytes {
		return fmt.Errorf("%d bytes, more than the limit of %d", len(data), maxVerifyBytes)
	}
	if !asJSON {
		return codec.Unmarshal(data, v)
	}
	return decodeJSON(data, v)
}
