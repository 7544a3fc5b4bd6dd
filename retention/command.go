package retention

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
)

// Version is the schema version of [Command] and [Reply].
const Version = 1

// Actions a [Command] asks for.
const (
	// ActionHold sets a legal hold: the package does not expire until the
	// hold is released, whatever its retain-until.
	ActionHold = "hold"
	// ActionRelease releases the legal hold.
	ActionRelease = "release"
	// ActionRetain changes the retention class (and with it the
	// retain-until) or the retain-until alone.
	ActionRetain = "retain"
)

// Reply statuses.
const (
	// StatusApplied: the change is committed with its event.
	StatusApplied = "applied"
	// StatusUnchanged: the package already was as asked; nothing was
	// appended.
	StatusUnchanged = "unchanged"
	// StatusRejected: the change was refused; Code and Reason say why, and
	// the refusal is recorded as an event.
	StatusRejected = "rejected"
	// StatusFailed: the pipeline could not handle the command (PostgreSQL
	// down for longer than the retry budget, a worker lost); nothing was
	// changed or recorded. Code is commands.CodeUnavailable or
	// commands.CodeInternal, Reason names the cause.
	StatusFailed = "failed"
)

// Rejection codes of retention commands, besides the commands package's
// malformed, unsupported_version, invalid_command_id, invalid_package,
// unknown_retention_class and unknown_package.
const (
	// CodeShortenRefused: the change would shorten the retention of a
	// class whose retain-until may be lengthened, never shortened
	// (release-evidence, permanent-record).
	CodeShortenRefused = "retention_shorten_refused"
	// CodePackageExpired: the package has expired; its retention can no
	// longer be changed (a legal hold is still accepted and keeps the
	// bytes that were not deleted yet).
	CodePackageExpired = "package_expired"
	// CodeMissingActor: the command does not say who asks; every
	// retention change is recorded with its actor.
	CodeMissingActor = "missing_actor"
)

// maxReason caps a hold or release reason.
const maxReason = 1024

// Command asks the retention handler to change a package's retention. It is
// published on the retention subject (bus.CmdRetention below the
// topology's root, "artifacts.cmd.retention") with Nats-Msg-Id =
// CommandID, as deterministic CBOR (events.Codec) or, with Content-Type:
// application/json, as JSON with the same field names. Unknown fields are
// refused.
//
//	field         type                 required              meaning
//	v             int                  yes                   schema version, 1
//	command_id    text (1..128 bytes)  yes                   idempotency key
//	action        text                 yes                   "hold", "release" or "retain"
//	package       text                 yes                   package name
//	actor         text                 yes                   who asks; recorded as the events' actor
//	reason        text (<= 1024 B)     hold: yes; else no    why (recorded in the event)
//	class         text                 retain: one of        the new retention class
//	retain_until  RFC 3339 time        retain: one of        the new retain-until
//
// For retain, class alone moves the package to that class with the
// retain-until the class gives from the package's creation; retain_until
// alone (or with class) sets that date. A class whose retain-until may
// not be shortened (release-evidence, permanent-record) refuses any change
// that ends earlier than its current retain-until, and a change away from
// permanent-record always ends earlier than "never".
//
// JSON example:
//
//	{"v":1,"command_id":"3f1c…","action":"hold","package":"ci/run-42",
//	 "actor":"alice","reason":"case 2024-17"}
type Command struct {
	V           int        `cbor:"v" json:"v"`
	CommandID   string     `cbor:"command_id" json:"command_id"`
	Action      string     `cbor:"action" json:"action"`
	Package     string     `cbor:"package" json:"package"`
	Actor       string     `cbor:"actor" json:"actor"`
	Reason      string     `cbor:"reason,omitempty" json:"reason,omitempty"`
	Class       string     `cbor:"class,omitempty" json:"class,omitempty"`
	RetainUntil *time.Time `cbor:"retain_until,omitempty" json:"retain_until,omitempty"`
}

// Validate checks every field and returns a *commands.Error.
func (c Command) Validate() error {
	if c.V != Version {
		return commands.Rejectf(commands.CodeUnsupportedVersion,
			"retention command schema version %d is not supported; this handler reads version %d (field \"v\")", c.V, Version)
	}
	if err := commands.ValidateCommandID(c.CommandID); err != nil {
		return err
	}
	if err := commands.ValidatePackage(c.Package); err != nil {
		return err
	}
	if c.Actor == "" {
		return commands.Rejectf(CodeMissingActor, "field \"actor\" is empty; say who asks for the change (a person or a system), it is recorded with the event")
	}
	if err := commands.ValidateText(commands.CodeMalformed, "actor", c.Actor, commands.MaxShortText, commands.Line); err != nil {
		return err
	}
	if len(c.Reason) > maxReason {
		return commands.Rejectf(commands.CodeMalformed, "reason of %d bytes is longer than %d; shorten it and keep the details elsewhere", len(c.Reason), maxReason)
	}
	if err := commands.ValidateText(commands.CodeMalformed, "reason", c.Reason, 0, commands.Lines); err != nil {
		return err
	}
	if err := commands.ValidateText(commands.CodeMalformed, "class", c.Class, commands.MaxShortText, commands.Line); err != nil {
		return err
	}
	switch c.Action {
	case ActionHold:
		if c.Reason == "" {
			return commands.Rejectf(commands.CodeMalformed, "a legal hold needs a reason (field \"reason\"), so that it can be reviewed and released on purpose")
		}
		if c.Class != "" || c.RetainUntil != nil {
			return commands.Rejectf(commands.CodeMalformed, "hold takes no class or retain_until; change those with action \"retain\"")
		}
	case ActionRelease:
		if c.Class != "" || c.RetainUntil != nil {
			return commands.Rejectf(commands.CodeMalformed, "release takes no class or retain_until; change those with action \"retain\"")
		}
	case ActionRetain:
		if c.Class == "" && c.RetainUntil == nil {
			return commands.Rejectf(commands.CodeMalformed, "retain needs a class or a retain_until (or both)")
		}
		if t := c.RetainUntil; t != nil && (t.IsZero() || t.UTC().Year() < 1 || t.UTC().Year() > 9999) {
			return commands.Rejectf(commands.CodeMalformed, "retain_until %v is not a time within years 1-9999", *t)
		}
	default:
		return commands.Rejectf(commands.CodeMalformed, "action %q is unknown; use %q, %q or %q", c.Action, ActionHold, ActionRelease, ActionRetain)
	}
	return nil
}

// Reply is the handler's answer to one command, sent after the outcome
// (the change and its event, or the refusal and its event) is committed.
type Reply struct {
	V         int    `cbor:"v" json:"v"`
	CommandID string `cbor:"command_id" json:"command_id"`
	Action    string `cbor:"action,omitempty" json:"action,omitempty"`
	Package   string `cbor:"package,omitempty" json:"package,omitempty"`
	// Status is StatusApplied, StatusUnchanged, StatusRejected or
	// StatusFailed.
	Status string `cbor:"status" json:"status"`
	// Code and Reason are set when Status is StatusRejected or
	// StatusFailed.
	Code   string `cbor:"code,omitempty" json:"code,omitempty"`
	Reason string `cbor:"reason,omitempty" json:"reason,omitempty"`
	// Class, RetainUntil (nil: never expires) and LegalHold describe the
	// package after the command; unset for a rejection.
	Class       string     `cbor:"class,omitempty" json:"class,omitempty"`
	RetainUntil *time.Time `cbor:"retain_until,omitempty" json:"retain_until,omitempty"`
	LegalHold   bool       `cbor:"legal_hold,omitempty" json:"legal_hold,omitempty"`
	// Note is extra information for the operator, e.g. that a held package
	// had already expired.
	Note string `cbor:"note,omitempty" json:"note,omitempty"`
	// Sequence is the sequence of the last event appended (the change or
	// the refusal); 0 when unchanged. Wait for the projector to reach it
	// (projector.WaitFor) to read the outcome back from the projections.
	Sequence int64 `cbor:"sequence,omitempty" json:"sequence,omitempty"`
	// Duplicate is true when the command id had been handled before: the
	// reply describes the first outcome.
	Duplicate bool `cbor:"duplicate,omitempty" json:"duplicate,omitempty"`
}

// Err returns the refusal or failure as a *commands.Error, or nil.
func (r Reply) Err() error {
	switch r.Status {
	case StatusRejected:
		return &commands.Error{Code: r.Code, Reason: r.Reason}
	case StatusFailed:
		return &commands.Error{Code: r.Code, Reason: r.Reason, Failed: true}
	}
	return nil
}

// EncodeCommand validates c and encodes it as deterministic CBOR, or JSON
// when asJSON.
func EncodeCommand(codec *events.Codec, c Command, asJSON bool) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("retention command: %w", err)
	}
	return commands.Encode(codec, c, asJSON)
}

// DecodeCommand decodes and validates a command (JSON when isJSON). Every
// failure is a *commands.Error; the command decoded so far is returned with
// it, so that a rejection can name its command id and package.
func DecodeCommand(codec *events.Codec, data []byte, isJSON bool) (Command, error) {
	var c Command
	if len(data) > commands.MaxCommandBytes {
		return c, commands.Rejectf(commands.CodeMalformed, "command of %d bytes is larger than the limit of %d", len(data), commands.MaxCommandBytes)
	}
	if isJSON {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, commands.Rejectf(commands.CodeMalformed, "the JSON retention command does not decode: %v; see the Command schema in package retention", err)
		}
		if _, err := dec.Token(); err != io.EOF {
			return c, commands.Rejectf(commands.CodeMalformed, "the JSON retention command has data after its object; send exactly one JSON object")
		}
	} else if err := codec.Unmarshal(data, &c); err != nil {
		return c, commands.Rejectf(commands.CodeMalformed, "the CBOR retention command does not decode: %v; send deterministic CBOR with the documented fields, or JSON with Content-Type: application/json", err)
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	return c, nil
}

// EncodeReply encodes r as CBOR, or JSON when asJSON.
func EncodeReply(codec *events.Codec, r Reply, asJSON bool) ([]byte, error) {
	return commands.Encode(codec, r, asJSON)
}

// DecodeReply decodes a reply (JSON when isJSON). Unknown fields are
// tolerated in JSON, so an older client reads a newer handler's replies.
func DecodeReply(codec *events.Codec, data []byte, isJSON bool) (Reply, error) {
	var r Reply
	if isJSON {
		if err := json.Unmarshal(data, &r); err != nil {
			return Reply{}, fmt.Errorf("decode JSON retention reply: %w", err)
		}
		return r, nil
	}
	if err := codec.Unmarshal(data, &r); err != nil {
		return Reply{}, fmt.Errorf("decode CBOR retention reply: %w", err)
	}
	return r, nil
}
