package commands

import (
	"fmt"
	"time"

	"github.com/artifactstore/artifactstore/events"
)

// Actions a [Retention] command asks for.
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

// Rejection codes of retention commands, besides the common malformed,
// unsupported_version, invalid_command_id, invalid_package,
// unknown_retention_class, unknown_package and package_expired (the
// package has expired: its retention can no longer be changed; a legal
// hold is still accepted and keeps the bytes not deleted yet).
const (
	// CodeShortenRefused: the change would shorten the retention of a
	// class whose retain-until may be lengthened, never shortened
	// (release-evidence, permanent-record).
	CodeShortenRefused = "retention_shorten_refused"
	// CodeMissingActor: the command does not say who asks; every
	// retention change is recorded with its actor.
	CodeMissingActor = "missing_actor"
)

// maxReason caps a hold or release reason.
const maxReason = 1024

// Retention asks the retention handler to change a package's retention.
// It is published on the retention subject (bus.CmdRetention below the
// topology's root, "artifacts.cmd.retention") with Nats-Msg-Id =
// CommandID, as deterministic CBOR (events.Codec) or, with Content-Type:
// application/json, as JSON with the same field names. Unknown fields are
// refused. The handler answers with a [Reply] (StatusApplied,
// StatusUnchanged, StatusRejected or StatusFailed).
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
type Retention struct {
	V           int        `cbor:"v" json:"v"`
	CommandID   string     `cbor:"command_id" json:"command_id"`
	Action      string     `cbor:"action" json:"action"`
	Package     string     `cbor:"package" json:"package"`
	Actor       string     `cbor:"actor" json:"actor"`
	Reason      string     `cbor:"reason,omitempty" json:"reason,omitempty"`
	Class       string     `cbor:"class,omitempty" json:"class,omitempty"`
	RetainUntil *time.Time `cbor:"retain_until,omitempty" json:"retain_until,omitempty"`
}

// Validate checks every field and returns an *Error.
func (c Retention) Validate() error {
	if c.V != Version {
		return Rejectf(CodeUnsupportedVersion,
			"retention command schema version %d is not supported; this handler reads version %d (field \"v\")", c.V, Version)
	}
	if err := ValidateCommandID(c.CommandID); err != nil {
		return err
	}
	if err := ValidatePackage(c.Package); err != nil {
		return err
	}
	if c.Actor == "" {
		return Rejectf(CodeMissingActor, "field \"actor\" is empty; say who asks for the change (a person or a system), it is recorded with the event")
	}
	if err := ValidateText(CodeMalformed, "actor", c.Actor, MaxShortText, Line); err != nil {
		return err
	}
	if len(c.Reason) > maxReason {
		return Rejectf(CodeMalformed, "reason of %d bytes is longer than %d; shorten it and keep the details elsewhere", len(c.Reason), maxReason)
	}
	if err := ValidateText(CodeMalformed, "reason", c.Reason, 0, Lines); err != nil {
		return err
	}
	if err := ValidateText(CodeMalformed, "class", c.Class, MaxShortText, Line); err != nil {
		return err
	}
	switch c.Action {
	case ActionHold:
		if c.Reason == "" {
			return Rejectf(CodeMalformed, "a legal hold needs a reason (field \"reason\"), so that it can be reviewed and released on purpose")
		}
		if c.Class != "" || c.RetainUntil != nil {
			return Rejectf(CodeMalformed, "hold takes no class or retain_until; change those with action \"retain\"")
		}
	case ActionRelease:
		if c.Class != "" || c.RetainUntil != nil {
			return Rejectf(CodeMalformed, "release takes no class or retain_until; change those with action \"retain\"")
		}
	case ActionRetain:
		if c.Class == "" && c.RetainUntil == nil {
			return Rejectf(CodeMalformed, "retain needs a class or a retain_until (or both)")
		}
		if t := c.RetainUntil; t != nil && (t.IsZero() || t.UTC().Year() < 1 || t.UTC().Year() > 9999) {
			return Rejectf(CodeMalformed, "retain_until %v is not a time within years 1-9999", *t)
		}
	default:
		return Rejectf(CodeMalformed, "action %q is unknown; use %q, %q or %q", c.Action, ActionHold, ActionRelease, ActionRetain)
	}
	return nil
}

// DecodeRetention decodes and validates a retention command. Every
// failure is an *Error; the command decoded so far is returned with it,
// so that a rejection can name its command id and package (the handler
// records only what is text; see retention's rejection event).
func (d *Decoder) DecodeRetention(data []byte, isJSON bool) (Retention, error) {
	var c Retention
	if err := d.decode(data, isJSON, &c); err != nil {
		return c, err
	}
	return c, c.Validate()
}

// EncodeRetention validates c and encodes it as deterministic CBOR, or
// JSON when asJSON.
func EncodeRetention(codec *events.Codec, c Retention, asJSON bool) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("retention command: %w", err)
	}
	return Encode(codec, c, asJSON)
}
