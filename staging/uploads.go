package staging

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
)

// Upload is one upload in the staging bucket: a complete object
// (Name set) or the chunks of an upload that never finished (Name empty:
// its producer died or gave up before writing the object's info).
type Upload struct {
	// Name is the object's name (the command id, for artifactstore's
	// producers); empty for chunks without an object.
	Name string
	// NUID names the upload's chunk subject $O.<bucket>.C.<nuid>.
	NUID string
	// Bytes is the object's size, or what its chunks hold.
	Bytes int64
	// Chunks is the number of chunk messages.
	Chunks uint64
	// At is when the object was completed, or when its last chunk arrived.
	At time.Time
}

// Complete reports whether the upload finished (its object exists).
func (u Upload) Complete() bool { return u.Name != "" }

// AbandonedQuery says which staged uploads count as abandoned.
type AbandonedQuery struct {
	// MaxAge is how old an upload must be to be abandoned: a producer
	// sends its command right after staging (within ClientRetryBudget), so
	// an upload older than this whose command no worker waits to handle
	// is left over.
	MaxAge time.Duration
	// Handled, when set, reports which of the given object names are
	// commands already handled (in the event log): their uploads are left
	// over whatever the queue holds (the ingester's delete failed).
	Handled func(ctx context.Context, names []string) (map[string]bool, error)
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Abandoned lists the uploads of t's staging bucket that nothing
// will consume:
//
//   - chunks without an object whose last chunk is older than MaxAge (a
//     put killed while uploading);
//   - objects older than MaxAge whose command was handled (Handled), or
//     for which no ingest command waits that could name them: none waits
//     at all, or the oldest waiting one was published more than MaxAge
//     after the object was completed.
//
// While ingest commands older than an upload wait (workers down, a
// backlog), its object is kept: its command may be among them.
func Abandoned(ctx context.Context, js jetstream.JetStream, t bus.Topology, q AbandonedQuery) ([]Upload, error) {
	now := time.Now
	if q.Now != nil {
		now = q.Now
	}
	uploads, err := Uploads(ctx, js, t)
	if err != nil {
		return nil, err
	}
	cutoff := now().Add(-q.MaxAge)
	var old []Upload
	var names []string
	for _, u := range uploads {
		if u.At.Before(cutoff) {
			old = append(old, u)
			if u.Complete() {
				names = append(names, u.Name)
			}
		}
	}
	if len(old) == 0 {
		return nil, nil
	}
	handled := map[string]bool{}
	if q.Handled != nil && len(names) > 0 {
		if handled, err = q.Handled(ctx, names); err != nil {
			return nil, err
		}
	}
	oldestWaiting, anyWaiting, err := oldestWaitingIngest(ctx, js, t)
	if err != nil {
		return nil, err
	}
	var out []Upload
	for _, u := range old {
		switch {
		case !u.Complete(), handled[u.Name], !anyWaiting, oldestWaiting.After(u.At.Add(q.MaxAge)):
			out = append(out, u)
		}
	}
	return out, nil
}

// oldestWaitingIngest returns when the oldest ingest command still waiting
// for a worker (or being handled) was published.
func oldestWaitingIngest(ctx context.Context, js jetstream.JetStream, t bus.Topology) (time.Time, bool, error) {
	cons, err := js.Consumer(ctx, t.CommandsStream, t.IngestConsumer)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("staging: ingest consumer: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("staging: ingest consumer info: %w", err)
	}
	if info.NumPending == 0 && info.NumAckPending == 0 {
		return time.Time{}, false, nil
	}
	st, err := js.Stream(ctx, t.CommandsStream)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("staging: commands stream: %w", err)
	}
	// Everything up to the ack floor is settled (acked, terminated, or
	// given up by the server), whatever still sits in the stream.
	m, err := st.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(t.Subject(bus.CmdIngest)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("staging: oldest waiting ingest command: %w", err)
	}
	return m.Time, true, nil
}

// Uploads lists every upload of t's staging bucket, complete or not,
// oldest first. It reads the bucket's subjects (one stream info) and the
// last message of each, so that it needs no consumer: an object's info on
// $O.<bucket>.M.<name>, an unfinished upload's last chunk on
// $O.<bucket>.C.<nuid> (its size is estimated from its chunk count).
func Uploads(ctx context.Context, js jetstream.JetStream, t bus.Topology) ([]Upload, error) {
	st, err := js.Stream(ctx, streamName(t.StagingBucket))
	if err != nil {
		return nil, fmt.Errorf("staging: staging bucket %s: %w", t.StagingBucket, err)
	}
	root := "$O." + t.StagingBucket + "."
	sinfo, err := st.Info(ctx, jetstream.WithSubjectFilter(root+">"))
	if err != nil {
		return nil, fmt.Errorf("staging: staging bucket %s: %w", t.StagingBucket, err)
	}
	var out []Upload
	live := map[string]bool{}
	chunks := map[string]uint64{}
	for subj, n := range sinfo.State.Subjects {
		if id, ok := strings.CutPrefix(subj, root+"C."); ok {
			chunks[id] = n
			continue
		}
		if !strings.HasPrefix(subj, root+"M.") {
			continue
		}
		m, err := st.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // purged meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("staging: staged object info %s: %w", subj, err)
		}
		var info jetstream.ObjectInfo
		if err := json.Unmarshal(m.Data, &info); err != nil || info.Deleted || info.NUID == "" {
			continue
		}
		live[info.NUID] = true
		out = append(out, Upload{Name: info.Name, NUID: info.NUID, Bytes: int64(info.Size), Chunks: uint64(info.Chunks), At: m.Time})
	}
	for id, n := range chunks {
		if live[id] {
			continue
		}
		last, err := st.GetLastMsgForSubject(ctx, root+"C."+id)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("staging: last chunk of upload %s: %w", id, err)
		}
		out = append(out, Upload{NUID: id, Chunks: n, At: last.Time, Bytes: int64(n-1)*ChunkSize + int64(len(last.Data))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out, nil
}

// Purge removes uploads: an object's info and chunks, or the chunks
// of an unfinished upload. It returns how many it removed.
func Purge(ctx context.Context, js jetstream.JetStream, t bus.Topology, uploads []Upload) (int, error) {
	obs, err := js.ObjectStore(ctx, t.StagingBucket)
	if err != nil {
		return 0, fmt.Errorf("staging: staging bucket %s: %w", t.StagingBucket, err)
	}
	st, err := js.Stream(ctx, streamName(t.StagingBucket))
	if err != nil {
		return 0, fmt.Errorf("staging: staging stream: %w", err)
	}
	n := 0
	for _, u := range uploads {
		if u.Complete() {
			err = obs.Delete(ctx, u.Name)
			if errors.Is(err, jetstream.ErrObjectNotFound) {
				err = nil
			}
		} else {
			err = st.Purge(ctx, jetstream.WithPurgeSubject(chunkSubject(t.StagingBucket, u.NUID)))
		}
		if err != nil {
			return n, fmt.Errorf("staging: purge staged upload %s%s: %w", u.Name, u.NUID, err)
		}
		n++
	}
	return n, nil
}
