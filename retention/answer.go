package retention

import (
	"context"
	"fmt"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
)

// Answer is the consume loop's answer to a retention command the pipeline
// gives up on (bus.ConsumerOptions.Answer): the recorded outcome when the
// command turns out to be in the log (its worker died after the commit),
// else a StatusFailed reply with code and reason.
func (h *Handler) Answer(ctx context.Context, m bus.Message, code, reason string) error {
	isJSON := commands.IsJSON(m.ContentType)
	c, _ := h.dec.DecodeRetention(m.Data, isJSON)
	if commands.ValidateCommandID(c.CommandID) != nil || (m.CommandID != "" && m.CommandID != c.CommandID) {
		c.CommandID = fallbackID(m)
	}
	rep := commands.Reply{V: commands.Version, CommandID: c.CommandID, Action: c.Action, Package: c.Package,
		Status: commands.StatusFailed, Code: code, Reason: reason}
	if recorded, err := h.recorded(ctx, c); err == nil {
		rep = recorded
	}
	h.log.Warn().Str("command_id", c.CommandID).Str("status", rep.Status).Str("code", code).Str("reason", reason).
		Msg("answering a command the pipeline gave up on")
	if h.cfg.NATS == nil || m.ReplyTo == "" {
		return nil
	}
	body, err := commands.Encode(h.cfg.Codec, rep, isJSON)
	if err != nil {
		return fmt.Errorf("retention: encode the answer to %s: %w", c.CommandID, err)
	}
	ct := ""
	if isJSON {
		ct = commands.ContentTypeJSON
	}
	return bus.Reply(h.cfg.NATS, m.ReplyTo, body, ct)
}
