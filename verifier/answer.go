package verifier

import (
	"context"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
)

// Answer is the consume loop's answer to a verify request the pipeline
// gives up on (bus.ConsumerOptions.Answer): the recorded outcome when the
// request turns out to be in the log (its worker died after appending it),
// else OutcomeError with code and reason.
func (w *Worker) Answer(ctx context.Context, m bus.Message, code, reason string) error {
	asJSON := commands.IsJSON(m.ContentType)
	req, _ := commands.DecodeVerify(w.codec, m.Data, asJSON, m.CommandID)
	replyTo := m.ReplyTo
	if replyTo == "" {
		replyTo = req.ReplyTo
	}
	rep := commands.VerifyReply{V: commands.Version, RequestID: req.RequestID, BackendID: req.BackendID,
		Outcome: commands.OutcomeError, Code: code, Reason: reason}
	if !req.Address.IsZero() {
		rep.Address = req.Address.String()
	}
	if req.RequestID != "" {
		if prior, err := w.log.ByCommand(ctx, req.RequestID); err == nil && len(prior) > 0 {
			if recorded, err := w.replyFromEvent(req, prior[0]); err == nil {
				recorded.Duplicate = true
				rep = recorded
			}
		}
	}
	w.logger.Warn().Str("request_id", req.RequestID).Str("outcome", rep.Outcome).Str("code", code).Str("reason", reason).
		Msg("answering a request the pipeline gave up on")
	w.reply(replyTo, rep, asJSON)
	return nil
}
