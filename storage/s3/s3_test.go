package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"lukechampine.com/blake3"
	"lukechampine.com/blake3/bao"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/internal/s3test"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/storagetest"
)

func TestMain(m *testing.M) { s3test.Main(m) }

// openTest returns a backend on a new bucket of the package's versitygw,
// with its requests recorded.
func openTest(t testing.TB, mod func(*Config)) (*Backend, *recorder) {
	t.Helper()
	srv := s3test.Start(t)
	rec := &recorder{next: http.DefaultTransport}
	cfg := Config{
		Bucket:      srv.Bucket(t),
		Prefix:      "store/objects",
		Endpoint:    srv.Endpoint,
		Region:      s3test.Region,
		PathStyle:   true,
		Credentials: credentials.NewStaticCredentialsProvider(s3test.AccessKey, s3test.SecretKey, ""),
		HTTPClient:  &http.Client{Transport: rec},
		PartSize:    MinPartSize,
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b, rec
}

// TestConformance runs the storage conformance suite with parts of 5 MiB,
// so that its large object is a multipart upload.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		b, _ := openTest(t, nil)
		return b
	})
}

// TestBucketRoot stores objects at the root of the bucket (no prefix)
// with the default part size.
func TestBucketRoot(t *testing.T) {
	t.Parallel()
	b, _ := openTest(t, func(c *Config) { c.Prefix, c.PartSize = "", 0 })
	p := pattern("root", blaketree.GroupSize*3)
	rc, err := storage.NewPutter().Put(t.Context(), b, bytes.NewReader(p), storage.PutOptions{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		t.Fatal(err)
	}
	objs, _ := keys(t, b)
	want := []string{ObjectKey(rc.Address), ObjectKey(rc.Address) + treeSuffix}
	if fmt.Sprint(objs) != fmt.Sprint(want) {
		t.Fatalf("keys %v, want %v", objs, want)
	}
	n := 0
	if err := b.Walk(t.Context(), func(o storage.ObjectInfo) error {
		if o.Address != rc.Address || o.Size != int64(len(p)) {
			t.Errorf("Walk: %+v", o)
		}
		n++
		return nil
	}); err != nil || n != 1 {
		t.Fatalf("Walk: %d objects, %v", n, err)
	}
	if existed, err := b.Delete(t.Context(), rc.Address); err != nil || !existed {
		t.Fatalf("Delete: %v, %v", existed, err)
	}
	requireEmpty(t, b)
}

// recorder is an http.RoundTripper that records the requests the SDK
// sends, and can damage the body of one kind of request.
type recorder struct {
	next http.RoundTripper

	mu       sync.Mutex
	reqs     []recorded
	damage   func(*http.Request) bool
	parts    int // UploadPart requests in flight
	maxParts int // the most there were at once
}

type recorded struct {
	op       string
	key      string
	checksum string // x-amz-checksum-sha256, or the trailer's announcement
}

// operation names the S3 operation of r.
func operation(r *http.Request) string {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPut && q.Has("partNumber") && r.Header.Get("X-Amz-Copy-Source") != "":
		return "UploadPartCopy"
	case r.Method == http.MethodPut && q.Has("partNumber"):
		return "UploadPart"
	case r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "":
		return "CopyObject"
	case r.Method == http.MethodPut:
		return "PutObject"
	case r.Method == http.MethodPost && q.Has("uploads"):
		return "CreateMultipartUpload"
	case r.Method == http.MethodPost && q.Has("uploadId"):
		return "CompleteMultipartUpload"
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		return "AbortMultipartUpload"
	case r.Method == http.MethodGet && q.Has("uploads"):
		return "ListMultipartUploads"
	case r.Method == http.MethodGet && q.Get("list-type") == "2":
		return "ListObjectsV2"
	}
	return r.Method
}

func (rc *recorder) RoundTrip(r *http.Request) (*http.Response, error) {
	op := operation(r)
	sum := r.Header.Get("X-Amz-Checksum-Sha256")
	if sum == "" && strings.Contains(strings.ToLower(r.Header.Get("X-Amz-Trailer")), "x-amz-checksum-sha256") {
		sum = "trailer"
	}
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, recorded{op: op, key: r.URL.Path, checksum: sum})
	damage := rc.damage != nil && rc.damage(r)
	rc.mu.Unlock()
	if damage && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		body[len(body)/2] ^= 1
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	if op == "UploadPart" {
		rc.mu.Lock()
		rc.parts++
		rc.maxParts = max(rc.maxParts, rc.parts)
		rc.mu.Unlock()
		defer func() {
			rc.mu.Lock()
			rc.parts--
			rc.mu.Unlock()
		}()
	}
	return rc.next.RoundTrip(r)
}

func (rc *recorder) count(op string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	n := 0
	for _, r := range rc.reqs {
		if r.op == op {
			n++
		}
	}
	return n
}

func (rc *recorder) ops() []recorded {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]recorded(nil), rc.reqs...)
}

func (rc *recorder) reset() {
	rc.mu.Lock()
	rc.reqs = nil
	rc.mu.Unlock()
}

func pattern(seed string, n int) []byte {
	out := make([]byte, n)
	key := []byte(fmt.Sprintf("%-32.32s", seed))
	if _, err := io.ReadFull(blake3.New(32, key).XOF(), out); err != nil {
		panic(err)
	}
	return out
}

func digestsOf(p []byte) digest.Digests {
	return digest.Digests{BLAKE3: blake3.Sum256(p), SHA256: sha256.Sum256(p), Size: int64(len(p))}
}

// keys lists every key in the bucket, and the multipart uploads in it.
func keys(t *testing.T, b *Backend) (objs []string, uploads []string) {
	t.Helper()
	p := s3sdk.NewListObjectsV2Paginator(b.client, &s3sdk.ListObjectsV2Input{Bucket: &b.cfg.Bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			objs = append(objs, aws.ToString(o.Key))
		}
	}
	out, err := b.client.ListMultipartUploads(t.Context(), &s3sdk.ListMultipartUploadsInput{Bucket: &b.cfg.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range out.Uploads {
		uploads = append(uploads, aws.ToString(u.Key))
	}
	return objs, uploads
}

func requireEmpty(t *testing.T, b *Backend) {
	t.Helper()
	objs, uploads := keys(t, b)
	if len(objs) != 0 || len(uploads) != 0 {
		t.Fatalf("the bucket holds keys %v and multipart uploads %v; want nothing", objs, uploads)
	}
}

// multipartSize is an object of two parts of 5 MiB (the last partial).
const multipartSize = MinPartSize + 1<<20 + 123_457

// TestClaimedPutGoesStraightToItsKey: with a claimed address the parts go
// to the final key and Commit completes them there (no copy); without a
// claim they go to a temp key, Commit copies them and deletes it.
func TestClaimedPutGoesStraightToItsKey(t *testing.T) {
	t.Parallel()
	b, rec := openTest(t, nil)
	p := pattern("claimed", multipartSize)
	d := digestsOf(p)
	rc, err := storage.NewPutter().Put(t.Context(), b, bytes.NewReader(p), storage.PutOptions{
		Expect: []digest.Address{d.Address(digest.BLAKE3)}, ExpectSize: storage.NoSizeClaim,
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := rec.count("CopyObject"); n != 0 {
		t.Errorf("a claimed put made %d copies; want 0", n)
	}
	if n := rec.count("UploadPart"); n != 2 {
		t.Errorf("a claimed put of %d bytes sent %d parts; want 2", len(p), n)
	}
	for _, r := range rec.ops() {
		if r.op == "CreateMultipartUpload" && !strings.HasSuffix(r.key, b.objectKey(rc.Address)) {
			t.Errorf("the multipart upload went to %s, not to the claimed address's key", r.key)
		}
		if (r.op == "UploadPart" || r.op == "PutObject") && r.checksum == "" {
			t.Errorf("%s %s was sent without x-amz-checksum-sha256", r.op, r.key)
		}
	}
	checkStored(t, b, rc.Address, p)

	rec.reset()
	q := pattern("unclaimed", multipartSize)
	rc, err = storage.NewPutter().Put(t.Context(), b, bytes.NewReader(q), storage.PutOptions{ExpectSize: int64(len(q))})
	if err != nil {
		t.Fatal(err)
	}
	if n := rec.count("CopyObject"); n != 1 {
		t.Errorf("an unclaimed put made %d copies; want 1 (temp key to address)", n)
	}
	checkStored(t, b, rc.Address, q)
	objs, uploads := keys(t, b)
	for _, k := range objs {
		if strings.Contains(k, "/"+tmpDir+"/") {
			t.Errorf("temp object %s left behind", k)
		}
	}
	if len(uploads) != 0 {
		t.Errorf("multipart uploads left behind: %v", uploads)
	}
}

// checkStored checks the bytes, their tree and ranges across part
// boundaries.
func checkStored(t *testing.T, b *Backend, addr digest.Address, p []byte) {
	t.Helper()
	rc, err := b.Get(t.Context(), addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, p) {
		t.Fatalf("Get(%s): %d bytes, err %v; want the %d put", addr, len(got), err, len(p))
	}
	n := int64(len(p))
	for _, r := range []storage.Range{
		{Start: MinPartSize - 10, End: MinPartSize + 9},            // across the boundary
		{Start: MinPartSize - 1<<19, End: MinPartSize + 1<<19 - 1}, // 1 MiB across it
		{Start: n - 1, End: -1},
		{Start: 0, End: n + 100},
	} {
		rc, err := b.Get(t.Context(), addr, &r)
		if err != nil {
			t.Fatalf("Get(%s, %v): %v", addr, r, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		off, m, _ := r.Resolve(n)
		if err != nil || !bytes.Equal(got, p[off:off+m]) {
			t.Fatalf("Get(%s, %v): %d bytes, err %v; want %d", addr, r, len(got), err, m)
		}
	}
	want, _ := bao.EncodeBuf(p, blaketree.Group, true)
	tr, err := b.Tree(t.Context(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tree := make([]byte, tr.Size())
	if _, err := tr.ReadAt(tree, 0); err != nil || !bytes.Equal(tree, want) {
		t.Fatalf("tree of %s: %d bytes, err %v; want bao's outboard of %d bytes", addr, len(tree), err, len(want))
	}
	// A proven read of a range in the middle, as the data plane does it.
	off, m := int64(MinPartSize-1000), int64(1<<20)
	start, end := blaketree.AlignedRange(n, off, m)
	data, err := b.Get(t.Context(), addr, &storage.Range{Start: start, End: end - 1})
	if err != nil {
		t.Fatal(err)
	}
	defer data.Close()
	pr := blaketree.NewReader(data, blaketree.Proof(tr, n, off, m), blake3.Sum256(p), n, off, m)
	defer pr.Close()
	if got, err := io.ReadAll(pr); err != nil || !bytes.Equal(got, p[off:off+m]) {
		t.Fatalf("proven read of %d+%d: %d bytes, err %v", off, m, len(got), err)
	}
}

// TestMismatchLeavesNothing: a wrong claim is found after every part was
// sent to the claimed key; the upload is aborted, so neither that key nor
// a multipart upload nor a temp object nor a tree stays.
func TestMismatchLeavesNothing(t *testing.T) {
	t.Parallel()
	b, rec := openTest(t, nil)
	p := pattern("mismatch", multipartSize)
	wrong := digestsOf([]byte("other bytes"))
	for _, opts := range []storage.PutOptions{
		{Expect: []digest.Address{wrong.Address(digest.BLAKE3)}, ExpectSize: storage.NoSizeClaim},
		{Primary: digest.SHA256, Expect: []digest.Address{wrong.Address(digest.SHA256)}, ExpectSize: int64(len(p))},
		{Expect: []digest.Address{digestsOf(p).Address(digest.BLAKE3)}, ExpectSize: int64(len(p)) + 1},
	} {
		rec.reset()
		_, err := storage.NewPutter().Put(t.Context(), b, bytes.NewReader(p), opts)
		var me *storage.MismatchError
		if !errors.As(err, &me) {
			t.Fatalf("put with claims %v: err = %v, want a *storage.MismatchError", opts.Expect, err)
		}
		if rec.count("UploadPart") == 0 || rec.count("AbortMultipartUpload") != 1 {
			t.Fatalf("put with claims %v: %d parts sent, %d aborts; want parts sent before the check, then one abort",
				opts.Expect, rec.count("UploadPart"), rec.count("AbortMultipartUpload"))
		}
		for _, a := range append(opts.Expect, digestsOf(p).Address(digest.BLAKE3)) {
			if _, err := b.Head(t.Context(), a); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Head(%s) after a mismatch: %v, want ErrNotFound", a, err)
			}
		}
		requireEmpty(t, b)
	}

	// A writer that got a claim but is committed under another address
	// (a caller that did not check its claims) stores nothing.
	w, err := b.Create(t.Context(), storage.CreateOptions{Claimed: wrong.Address(digest.BLAKE3)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(t.Context(), digestsOf(p).Address(digest.BLAKE3), nil, storage.CommitKeep); err == nil {
		t.Fatal("Commit under another address than the claimed one succeeded")
	}
	requireEmpty(t, b)
}

// TestCrashMidUploadIsCleaned: a writer that dies after sending parts
// (no Abort) leaves an incomplete multipart upload; a crash after the
// temp object was completed leaves a temp object. CleanAbandoned removes
// both once they are older than its bound, and only then.
func TestCrashMidUploadIsCleaned(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	b, _ := openTest(t, func(c *Config) { c.Now = clock })

	ctx, crash := context.WithCancel(t.Context())
	w, err := b.Create(ctx, storage.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := pattern("crash", MinPartSize+1)
	if _, err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	up := w.(*objectWriter).up
	up.wg.Wait() // the parts sent so far have arrived
	crash()      // the process dies: no Abort, no Commit
	if _, uploads := keys(t, b); len(uploads) != 1 {
		t.Fatalf("after the crash: multipart uploads %v, want 1", uploads)
	}
	tmp := b.prefix + tmpDir + "/leftover"
	if _, err := b.client.PutObject(t.Context(), &s3sdk.PutObjectInput{Bucket: &b.cfg.Bucket, Key: &tmp, Body: strings.NewReader("half a copy")}); err != nil {
		t.Fatal(err)
	}

	c, err := b.CleanAbandoned(t.Context(), time.Hour)
	if err != nil || c != (Cleaned{}) {
		t.Fatalf("CleanAbandoned of young leftovers = %+v, %v; want nothing removed (they may be live)", c, err)
	}
	if _, err := b.CleanAbandoned(t.Context(), 0); err == nil {
		t.Fatal("CleanAbandoned with no age bound was accepted")
	}
	now = now.Add(2 * time.Hour)
	c, err = b.CleanAbandoned(t.Context(), time.Hour)
	if err != nil || c != (Cleaned{Uploads: 1, TempObjects: 1}) {
		t.Fatalf("CleanAbandoned = %+v, %v; want 1 upload and 1 temp object", c, err)
	}
	requireEmpty(t, b)
}

// TestAbortMidUpload: Abort with parts in flight aborts the upload; no
// more parts than Concurrency are ever in flight.
func TestAbortMidUpload(t *testing.T) {
	t.Parallel()
	b, rec := openTest(t, func(c *Config) { c.Concurrency = 1 })
	w, err := b.Create(t.Context(), storage.CreateOptions{Claimed: digestsOf([]byte("x")).Address(digest.BLAKE3)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pattern("abort", 2*MinPartSize+5)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if rec.count("AbortMultipartUpload") != 1 {
		t.Fatalf("Abort sent %d AbortMultipartUpload; want 1", rec.count("AbortMultipartUpload"))
	}
	if rec.count("UploadPart") != 2 || rec.maxParts != 1 {
		t.Fatalf("%d parts sent, at most %d at once; want 2, one at a time (Concurrency 1)", rec.count("UploadPart"), rec.maxParts)
	}
	requireEmpty(t, b)
}

// TestDamagedPartRefused: a part damaged between the client and the
// server (after the SDK computed its checksum) is refused by the server,
// so the put fails and stores nothing.
func TestDamagedPartRefused(t *testing.T) {
	t.Parallel()
	b, rec := openTest(t, nil)
	rec.damage = func(r *http.Request) bool {
		return operation(r) == "UploadPart" && r.URL.Query().Get("partNumber") == "1"
	}
	p := pattern("damaged", multipartSize)
	_, err := storage.NewPutter().Put(t.Context(), b, bytes.NewReader(p), storage.PutOptions{
		Expect: []digest.Address{digestsOf(p).Address(digest.BLAKE3)}, ExpectSize: storage.NoSizeClaim,
	})
	if err == nil {
		t.Fatal("a put whose part was damaged in transit succeeded")
	}
	t.Logf("refused as expected: %v", err)
	requireEmpty(t, b)
}

// TestWalkPages: Walk reads every page of a listing (a page size of 4
// here, so 23 objects and their trees take many pages).
func TestWalkPages(t *testing.T) {
	t.Parallel()
	b, rec := openTest(t, func(c *Config) { c.PageSize = 4 })
	want := map[digest.Address]int64{}
	for i := range 23 {
		size := 10 * i
		if i%5 == 0 {
			size = blaketree.GroupSize + i // with a tree
		}
		p := pattern(fmt.Sprint("walk", i), size)
		opts := storage.PutOptions{ExpectSize: storage.NoSizeClaim}
		if i%3 == 0 {
			opts.Primary = digest.SHA256
		}
		rc, err := storage.NewPutter().Put(t.Context(), b, bytes.NewReader(p), opts)
		if err != nil {
			t.Fatal(err)
		}
		want[rc.Address] = int64(size)
	}
	// Strangers under the prefix are not objects.
	for _, k := range []string{"blake3/zz/not-an-object", "blake3/ab/cd/short", tmpDir + "/x"} {
		key := b.prefix + k
		if _, err := b.client.PutObject(t.Context(), &s3sdk.PutObjectInput{Bucket: &b.cfg.Bucket, Key: &key, Body: strings.NewReader("x")}); err != nil {
			t.Fatal(err)
		}
	}
	rec.reset()
	got := map[digest.Address]int64{}
	err := b.Walk(t.Context(), func(o storage.ObjectInfo) error {
		if o.StoredAt.IsZero() {
			t.Errorf("Walk: %s has no stored time", o.Address)
		}
		got[o.Address] = o.Size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Walk found %v, want %v", got, want)
	}
	if n := rec.count("ListObjectsV2"); n < 23/4 {
		t.Fatalf("Walk sent %d listing requests for 23 objects and 5 trees at 4 keys a page", n)
	}
}

// TestQuarantine moves an object under .quarantine, out of Walk's sight.
func TestQuarantine(t *testing.T) {
	t.Parallel()
	b, _ := openTest(t, func(c *Config) {
		c.Now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC) }
	})
	p := pattern("quarantine", 1000)
	rc, err := storage.NewPutter().Put(t.Context(), b, bytes.NewReader(p), storage.PutOptions{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		t.Fatal(err)
	}
	dest, err := b.Quarantine(t.Context(), rc.Address)
	if err != nil {
		t.Fatal(err)
	}
	if want := quarantineDir + "/" + ObjectKey(rc.Address) + ".20260102T030405.000000006Z"; dest != want {
		t.Fatalf("Quarantine → %s, want %s", dest, want)
	}
	if _, err := b.Head(t.Context(), rc.Address); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Head after quarantine: %v, want ErrNotFound", err)
	}
	out, err := b.client.GetObject(t.Context(), &s3sdk.GetObjectInput{Bucket: &b.cfg.Bucket, Key: aws.String(b.prefix + dest)})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(out.Body)
	out.Body.Close()
	if !bytes.Equal(got, p) {
		t.Fatal("the quarantined copy differs")
	}
	// An object that is not there (any more) cannot be quarantined.
	if _, err := b.Quarantine(t.Context(), rc.Address); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Quarantine of an object no longer there: %v, want ErrNotFound", err)
	}
}

// TestMissingBucket: a bucket that is not there is an outage, not a
// store of missing objects.
func TestMissingBucket(t *testing.T) {
	t.Parallel()
	b, _ := openTest(t, func(c *Config) { c.Bucket = "no-such-bucket-here" })
	addr := digestsOf([]byte("x")).Address(digest.BLAKE3)
	if _, err := b.Head(t.Context(), addr); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Head in a missing bucket: %v; want an error that is not ErrNotFound", err)
	}
	if _, err := b.Get(t.Context(), addr, nil); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get in a missing bucket: %v; want an error that is not ErrNotFound", err)
	}
	if _, err := b.Tree(t.Context(), addr); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Tree in a missing bucket: %v; want an error that is not ErrNotFound", err)
	}
	if h := b.Health(t.Context()); h.Healthy || !strings.Contains(h.Detail, "no-such-bucket-here") {
		t.Fatalf("Health with a missing bucket = %+v; want unhealthy, naming the bucket", h)
	}
}

func TestParseURL(t *testing.T) {
	t.Parallel()
	cfg, err := ParseURL("s3://bucket/a/b/?endpoint=http://127.0.0.1:7070&region=eu-west-1&path_style=true&id=cold&part_size=16MiB&concurrency=4&checksums=false&profile=ci")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{ID: "cold", Bucket: "bucket", Prefix: "a/b", Endpoint: "http://127.0.0.1:7070", Region: "eu-west-1",
		PathStyle: true, Profile: "ci", PartSize: 16 << 20, Concurrency: 4, NoChecksums: true}
	if fmt.Sprintf("%+v", cfg) != fmt.Sprintf("%+v", want) {
		t.Fatalf("ParseURL = %+v\nwant %+v", cfg, want)
	}
	for raw, wantMsg := range map[string]string{
		"s3://key:secret@bucket/p":  "credentials",
		"s3:///p":                   "no bucket",
		"file:///x":                 "not s3",
		"s3://b?endpoint=localhost": "endpoint",
		"s3://b?pathstyle=true":     "unknown parameter",
		"s3://b?part_size=0":        "part_size",
		"s3://b?concurrency=none":   "concurrency",
	} {
		_, err := ParseURL(raw)
		if err == nil || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("ParseURL(%q) = %v; want an error about %s", raw, err, wantMsg)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL(%q) error shows the secret: %v", raw, err)
		}
	}
	if _, err := Open(t.Context(), Config{Bucket: "b", PartSize: 1 << 20}); err == nil {
		t.Error("a part size under S3's minimum was accepted")
	}
}
