package staging

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
)

// TestStagingFailsAtOnceWhenDenied stages blobs as a user without the
// publish grant on the bucket's chunks, then on its metadata: the server
// refuses with an asynchronous error only and never acknowledges, and the
// upload must fail on it at once, in its first attempt, naming the grant
// to add, instead of waiting out the acknowledgement timeout of every
// attempt (the context's deadline is only a hang guard).
func TestStagingFailsAtOnceWhenDenied(t *testing.T) {
	t.Parallel()
	top := bus.DefaultTopology().WithPrefix(natstest.Prefix(t))
	chunks, meta := chunkSubject(top.StagingBucket, "*"), "$O."+top.StagingBucket+".M.*"
	for _, tc := range []struct {
		name, deny string
		upload     bool
	}{
		{"chunks", chunks, false},
		{"chunks of a streamed upload", chunks, true},
		{"metadata", meta, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns := natstest.StartDenying(t, tc.deny)
			ajs, err := jetstream.New(ns.Connect(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := bus.EnsureTopology(t.Context(), ajs, top); err != nil {
				t.Fatal(err)
			}
			retries := 0
			w, err := NewWriter(ns.ConnectAs(t, natstest.UserDenied), top.StagingBucket, func(string, int, error, time.Duration) { retries++ })
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute) // hang guard only
			defer cancel()
			blob := bytes.NewReader(make([]byte, 1<<20))
			if tc.upload {
				_, err = w.StageUpload(ctx, "big", "p:big", NewUpload(), nil, blob, nil)
			} else {
				_, err = w.Stage(ctx, "big", "p:big", nil, blob, nil)
			}
			if ctx.Err() != nil {
				t.Fatalf("the publish waited out its hang guard (%v) instead of failing on the refusal", err)
			}
			var denied *bus.PublishDeniedError
			if !errors.As(err, &denied) || !errors.Is(err, nats.ErrPermissionViolation) || retries != 0 ||
				!strings.Contains(err.Error(), "publish grant on "+tc.deny) || !strings.Contains(err.Error(), "artifactstore topology permissions") {
				t.Fatalf("stage without the grant on %s: %v (after %d retries)", tc.deny, err, retries)
			}
		})
	}
}
