package staging

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestLeaderInfo reads a staged object's info from the stream's leader:
// the same info as the object store's direct get, and not found for an
// object never put or deleted.
func TestLeaderInfo(t *testing.T) {
	t.Parallel()
	w, js, top := newTestWriter(t)
	nc := js.Conn()
	ctx := t.Context()
	staged, err := w.Stage(ctx, "a", "a blob", nil, bytes.NewReader(bytes.Repeat([]byte("x"), ChunkSize+7)), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LeaderInfo(ctx, nc, top.StagingBucket, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "a" || got.Size != staged.Size || got.Digest != staged.Digest || got.NUID != staged.NUID || got.Chunks != staged.Chunks || got.ModTime.IsZero() {
		t.Fatalf("leader info %+v, staged %+v", got, staged)
	}
	if _, err := LeaderInfo(ctx, nc, top.StagingBucket, "never"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("info of an object never put: %v", err)
	}
	obs, err := js.ObjectStore(ctx, top.StagingBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := LeaderInfo(ctx, nc, top.StagingBucket, "a"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("info of a deleted object: %v", err)
	}
	if _, err := LeaderInfo(ctx, nc, "nosuchbucket", "a"); err == nil || errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("info from a bucket that does not exist: %v", err)
	}
}
