// Package staging is the staging bucket: where a blob too large to ride
// inline in an ingest command waits for the ingester. It holds the one
// definition of the bucket's format, which both sides share: the writer
// (Writer, used by the producer), the reader (Open, used by the
// ingester), and the listing and purge of uploads (Uploads, Abandoned,
// Purge, used by the staging janitor and the status report).
//
// A staged blob is stored in the JetStream object store's own format
// (chunks on $O.<bucket>.C.<nuid>, then the object's info on
// $O.<bucket>.M.<name>, in the stream OBJ_<bucket>), so that any object
// store client reads it as a stored object. The writer writes the format
// itself rather than calling ObjectStore.Put for two reasons:
//
//   - flow control: Put publishes every chunk asynchronously with up to
//     4,000 unacknowledged, and a 1 GiB upload on a busy server overruns
//     the stream's ingest queue, which answers 429 too many requests; here
//     at most stageWindow chunks wait for their acknowledgement;
//   - retries: a chunk refused for a passing reason (429, a timeout, a
//     connection reset) restarts the upload after a backoff, with a fresh
//     chunk subject, after purging the partial one; Put gives up at once.
//
// The reader pulls the chunks with an ordered consumer, so that memory
// stays bounded whatever the object's size (the object store's own Get
// buffers without bound when the reader is slower than the server).
package staging

import (
	"encoding/base64"
	"fmt"
)

// ChunkSize is the size of one chunk (the object store's default); it
// also sizes an unfinished upload from its chunk count.
const ChunkSize = 128 << 10

// streamName is the stream of the object store bucket.
func streamName(bucket string) string { return "OBJ_" + bucket }

// chunkSubject is the subject of the chunks of the upload nuid.
func chunkSubject(bucket, nuid string) string { return fmt.Sprintf("$O.%s.C.%s", bucket, nuid) }

// metaSubject is the subject of the info of the object name.
func metaSubject(bucket, name string) string {
	return fmt.Sprintf("$O.%s.M.%s", bucket, base64.URLEncoding.EncodeToString([]byte(name)))
}
