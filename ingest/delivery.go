package ingest

import (
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
)

// delivery is one command message on its way through the ingester, from
// the consume loop to the reply: the message, its format (JSON or CBOR,
// read once from its Content-Type) and, once decoded, what its rejection
// event and its reply name: the command id (or the fallback id), the
// package, the path and the staged object.
type delivery struct {
	msg  bus.Message
	json bool
	// id is the command id; the fallback id when the command has no
	// usable one.
	id     string
	pkg    string
	path   string
	staged string // the staged object's name; "" for an inline blob or a seal
	upload string // the staged upload in progress; "" when none
}

func newDelivery(m bus.Message) *delivery {
	return &delivery{msg: m, json: commands.IsJSON(m.ContentType)}
}

// contentType is the Content-Type of the reply: the command's format.
func (d *delivery) contentType() string {
	if d.json {
		return commands.ContentTypeJSON
	}
	return ""
}

// names is what a command says of itself, for its delivery.
type names struct{ id, pkg, path, staged, upload string }

func ingestNames(c commands.Ingest) names {
	return names{c.CommandID, c.Package, c.Path, c.Staged, c.Upload}
}
func sealNames(c commands.Seal) names { return names{id: c.CommandID, pkg: c.Package} }

// decode is the prologue every command shares: decode and validate the
// body with fn, record on d what the command names, and settle its id
// (the body's, which must agree with the Nats-Msg-Id header; the fallback
// id when it is unusable). A refused command comes back as rej; err is a
// failure that is not a refusal of the command (the consume loop
// dead-letters the message).
func decode[C any](d *delivery, fn func(data []byte, isJSON bool) (C, error), named func(C) names) (c C, rej *commands.Error, err error) {
	c, err = fn(d.msg.Data, d.json)
	n := named(c)
	d.id, d.pkg, d.path, d.staged, d.upload = n.id, n.pkg, n.path, n.staged, n.upload
	switch {
	case errors.As(err, &rej):
		if commands.ValidateCommandID(d.id) != nil || d.disagrees() {
			d.id = fallbackID(d.msg)
		}
		return c, rej, nil
	case err != nil:
		d.id = fallbackID(d.msg)
		return c, nil, bus.Reject(err, commands.CodeMalformed)
	case d.disagrees():
		rej = commands.Rejectf(commands.CodeInvalidCommandID,
			"header Nats-Msg-Id %q differs from command_id %q; send the command id in both or only in the body", d.msg.CommandID, d.id)
		d.id = fallbackID(d.msg)
		return c, rej, nil
	}
	return c, nil, nil
}

// disagrees reports whether the Nats-Msg-Id header names another command
// id than the body.
func (d *delivery) disagrees() bool { return d.msg.CommandID != "" && d.msg.CommandID != d.id }

// fallbackID names a command that carries no usable id of its own.
func fallbackID(m bus.Message) string {
	if commands.ValidateCommandID(m.CommandID) == nil {
		return m.CommandID
	}
	return fmt.Sprintf("nats-%s-%d", m.Stream, m.StreamSequence)
}
