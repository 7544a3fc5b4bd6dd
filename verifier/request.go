package verifier

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

// RequestVersion is the schema version of [Request] and [Reply].
const RequestVersion = 1

// ContentTypeJSON selects JSON for a request (Content-Type header) and is
// the Content-Type of the reply to a JSON request.
const ContentTypeJSON = "application/json"

// maxRequestBytes caps an encoded request; a real one is a few hundred
// bytes.
const maxRequestBytes = 4 << 10

// Origins of a request, for logs and replies.
const (
	OriginScrub    = "scrub"
	OriginOnDemand = "on-demand"
	// OriginRead: a served read found bytes that did not match their
	// tree (see ReadReporter).
	OriginRead = "read"
)

// Request asks a verifier to re-read one stored object from one backend,
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
type Request struct {
	// V is RequestVersion.
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
func (r Request) Validate() error {
	if r.V != RequestVersion {
		return fmt.Errorf("verify request schema version %d is not supported; this verifier reads version %d (field \"v\")", r.V, RequestVersion)
	}
	if err := bus.ValidateCommandID(r.RequestID); err != nil {
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

// Outcomes of a verification, as in [Reply.Outcome] and the CLI's table.
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

// Reply answers a [Request] whose message named a reply subject. It is
// encoded like the request (CBOR, or JSON for a JSON request).
type Reply struct {
	// V is RequestVersion.
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
	// Code is set for OutcomeError: "malformed", "unknown_location",
	// "deleted", "unknown_backend" when the request was refused, or
	// "unavailable" / "internal" when the pipeline gave up on it (a
	// dependency down for longer than the retry budget, a worker lost).
	Code string `cbor:"code,omitempty" json:"code,omitempty"`
}

// Failed reports whether the reply is anything but verified.
func (r Reply) Failed() bool { return r.Outcome != OutcomeVerified }

// isJSON reports whether a Content-Type header value selects JSON.
func isJSON(contentType string) bool {
	ct, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(ct), ContentTypeJSON)
}

// EncodeRequest encodes r as deterministic CBOR, or JSON when asJSON.
func EncodeRequest(codec *events.Codec, r Request, asJSON bool) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("verify request: %w", err)
	}
	return encode(codec, r, asJSON)
}

// DecodeRequest decodes and validates a request. headerID (the Nats-Msg-Id)
// fills an empty RequestID.
func DecodeRequest(codec *events.Codec, data []byte, asJSON bool, headerID string) (Request, error) {
	var r Request
	if err := decode(codec, data, asJSON, &r); err != nil {
		return Request{}, fmt.Errorf("verify request does not decode: %w; send the fields of verifier.Request as deterministic CBOR, or JSON with Content-Type: application/json", err)
	}
	if r.RequestID == "" {
		r.RequestID = headerID
	}
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("invalid verify request: %w", err)
	}
	return r, nil
}

// EncodeReply encodes a reply like EncodeRequest.
func EncodeReply(codec *events.Codec, r Reply, asJSON bool) ([]byte, error) {
	return encode(codec, r, asJSON)
}

// DecodeReply decodes a reply (CBOR, or JSON when asJSON).
func DecodeReply(codec *events.Codec, data []byte, asJSON bool) (Reply, error) {
	var r Reply
	if err := decode(codec, data, asJSON, &r); err != nil {
		return Reply{}, fmt.Errorf("verify reply does not decode: %w", err)
	}
	return r, nil
}

func encode(codec *events.Codec, v any, asJSON bool) ([]byte, error) {
	if asJSON {
		return json.Marshal(v)
	}
	return codec.Marshal(v)
}

func decode(codec *events.Codec, data []byte, asJSON bool, v any) error {
	if len(data) > maxRequestBytes {
		return fmt.Errorf("%d bytes, more than the limit of %d", len(data), maxRequestBytes)
	}
	if !asJSON {
		return codec.Unmarshal(data, v)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

func hexOf(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return hex.EncodeToString(b)
}
