package retention

import (
	"context"
	"fmt"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
)

// Request publishes c on subject (the topology's bus.CmdRetention subject)
// through req and waits for the handler's reply until ctx is done. A
// refusal is a reply with commands.StatusRejected (see Reply.Err), not an error; an
// error means no reply could be had.
func Request(ctx context.Context, req *bus.Requester, codec *events.Codec, subject string, c commands.Retention) (commands.Reply, error) {
	body, err := commands.EncodeRetention(codec, c, false)
	if err != nil {
		return commands.Reply{}, err
	}
	msg, err := req.Request(ctx, subject, c.CommandID, body, "")
	if err != nil {
		return commands.Reply{}, fmt.Errorf("retention: %s %q: %w", c.Action, c.Package, err)
	}
	return commands.DecodeReply(codec, msg.Data, commands.IsJSON(msg.Header.Get(bus.HeaderContentType)))
}
