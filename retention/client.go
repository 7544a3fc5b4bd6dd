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
// refusal is a reply with StatusRejected (see Reply.Err), not an error; an
// error means no reply could be had.
func Request(ctx context.Context, req *bus.Requester, codec *events.Codec, subject string, c Command) (Reply, error) {
	body, err := EncodeCommand(codec, c, false)
	if err != nil {
		return Reply{}, err
	}
	msg, err := req.Request(ctx, subject, c.CommandID, body, "")
	if err != nil {
		return Reply{}, fmt.Errorf("retention: %s %q: %w", c.Action, c.Package, err)
	}
	return DecodeReply(codec, msg.Data, commands.IsJSON(msg.Header.Get(bus.HeaderContentType)))
}
