package staging

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// msgGetNotFound is JetStream's error code for "no message found".
const msgGetNotFound = 10037

// LeaderInfo reads the info of the staged object name of bucket from the
// leader of the bucket's stream (a JetStream API message get), not
// through a direct get as ObjectStore.GetInfo does. On a cluster any
// replica answers a direct get, the one on the client's own server first,
// and a replica may not have applied an upload its leader has already
// acknowledged (a follower a moment behind, or a node catching up after a
// restart, which serves direct gets from 90 % synchronized): only the
// leader can say that an object is missing. It returns
// jetstream.ErrObjectNotFound for an object that is not there or was
// deleted.
func LeaderInfo(ctx context.Context, nc *nats.Conn, bucket, name string) (*jetstream.ObjectInfo, error) {
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{metaSubject(bucket, name)})
	if err != nil {
		return nil, err
	}
	m, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+streamName(bucket), req)
	if err != nil {
		return nil, fmt.Errorf("staged object %q from the leader of %s: %w", name, streamName(bucket), err)
	}
	var resp struct {
		Message *struct {
			Data []byte    `json:"data"`
			Time time.Time `json:"time"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, fmt.Errorf("staged object %q from the leader of %s: %w", name, streamName(bucket), err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == msgGetNotFound:
		return nil, jetstream.ErrObjectNotFound
	case resp.Error != nil:
		return nil, fmt.Errorf("staged object %q from the leader of %s: %w", name, streamName(bucket), resp.Error)
	case resp.Message == nil:
		return nil, fmt.Errorf("staged object %q from the leader of %s: an answer without a message", name, streamName(bucket))
	}
	var info jetstream.ObjectInfo
	if err := json.Unmarshal(resp.Message.Data, &info); err != nil {
		return nil, fmt.Errorf("staged object %q: %w", name, jetstream.ErrBadObjectMeta)
	}
	if info.Deleted {
		return nil, jetstream.ErrObjectNotFound
	}
	info.ModTime = resp.Message.Time
	return &info, nil
}
