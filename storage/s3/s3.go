// Package s3 is the storage backend on an S3-compatible object store (AWS
// S3, MinIO, Ceph RGW, SeaweedFS, versitygw), through the AWS SDK for Go
// v2.
//
// Layout under the bucket and the configured prefix:
//
//	<prefix>/<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>       stored objects
//	<prefix>/<algorithm>/<hex[0:2]>/<hex[2:4]>/<hex>.bao   their BLAKE3 trees (Bao outboard)
//	<prefix>/.tmp/<random>                                 objects written before their address was known
//	<prefix>/.quarantine/<algorithm>/…/<hex>.<UTC time>    objects no row knows, kept for a reaper
//
// A put (storage.Putter over Create) streams the bytes while the putter
// hashes them: they are cut into parts (8 MiB by default) that are
// uploaded as a multipart upload, a few at a time, so memory stays a few
// parts whatever the size. Nothing is visible before Commit: a multipart
// upload shows no object until it is completed, and Commit completes it
// only after the putter has checked both digests, the size and the
// claims; Abort aborts it. Where the upload goes depends on what the
// producer claimed (storage.CreateOptions): with a claimed address it goes
// straight to that address's key, and a Commit under any other address
// aborts it; without one it goes to a key under .tmp and Commit copies it
// server-side to its address (S3 has no rename), which costs a second
// write of the bytes on the server. An object smaller than one part never
// starts a multipart upload: Commit puts it in one request under its
// address. Every object and part is sent with its SHA-256 checksum
// (x-amz-checksum-sha256), which the server checks before it stores the
// bytes: a check of the transfer, on top of the putter's digests, never
// instead of them.
//
// The tree of an object is written next to it before the object is
// completed, and Delete removes the object before its tree, so an object
// is never visible without its tree (objects stored before trees existed
// have none until the data plane adds one). Commit writes the object with
// If-None-Match: *, so "store unless present" is atomic where the store
// supports conditional writes (AWS S3, MinIO, versitygw): a concurrent
// put of the same content finds the object and leaves it untouched.
//
// A crashed writer leaves an incomplete multipart upload (invisible, but
// billed) or a temp object under .tmp; CleanAbandoned removes those older
// than a bound, and the reaper calls it on its orphan scan. A bucket
// lifecycle rule (AbortIncompleteMultipartUpload) does the same on the
// store's side.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

const (
	// DefaultID is the backend id unless Config.ID says otherwise.
	DefaultID = "s3"
	// DefaultPartSize is the size of the parts of a multipart upload.
	DefaultPartSize = 8 << 20
	// MinPartSize is S3's smallest part (but the last).
	MinPartSize = 5 << 20
	// DefaultConcurrency is how many parts of one upload are in flight.
	DefaultConcurrency = 2

	tmpDir        = ".tmp"
	quarantineDir = ".quarantine"
	treeSuffix    = ".bao"

	// maxParts is S3's limit of parts per upload; maxPartSize its largest
	// part; maxCopySize the largest object one CopyObject copies.
	maxParts    = 10_000
	maxPartSize = 5 << 30
	maxCopySize = 5 << 30
	// copyPartSize is the part size of a multipart copy.
	copyPartSize = 512 << 20

	// cleanupTimeout bounds the requests of Abort, which has no context.
	cleanupTimeout = 2 * time.Minute
)

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Lister  = (*Backend)(nil)
)

// Config says where a backend keeps its objects and how it talks to the
// store. Bucket is required; every other field has a default.
type Config struct {
	// ID is the backend id in a storage.Registry (default "s3").
	ID string
	// Bucket is the bucket; it must exist.
	Bucket string
	// Prefix is prepended to every key ("" for the bucket's root); leading
	// and trailing slashes are ignored.
	Prefix string
	// Endpoint is the store's URL, e.g. http://127.0.0.1:9000; empty means
	// AWS S3.
	Endpoint string
	// Region is the signing region; empty takes the region of the
	// environment or profile, else us-east-1.
	Region string
	// PathStyle addresses buckets as http://host/bucket (most
	// S3-compatible stores need it) instead of http://bucket.host.
	PathStyle bool
	// Profile is the shared config profile to read credentials and
	// settings from; empty means AWS_PROFILE or "default".
	Profile string
	// Credentials, when set, replace the SDK's default chain
	// (environment, shared files, SSO, web identity, container and
	// instance roles).
	Credentials aws.CredentialsProvider
	// HTTPClient, when set, replaces the SDK's HTTP client (which then
	// owns TLS settings such as AWS_CA_BUNDLE's).
	HTTPClient aws.HTTPClient

	// PartSize is the size of the parts of a multipart upload (default 8
	// MiB, at least 5 MiB). An object no larger is put in one request.
	// Parts grow for objects of more than 1,000 parts, so that S3's limit
	// of 10,000 parts reaches its 5 TiB limit of an object.
	PartSize int64
	// Concurrency is how many parts of one upload are sent at once
	// (default 2). Memory per put is at most Concurrency+1 parts.
	Concurrency int
	// PageSize is how many keys one listing request asks for (default
	// and S3's maximum: 1000).
	PageSize int32
	// NoChecksums stops sending x-amz-checksum-sha256 with uploads, for
	// stores that refuse it. The putter's digests are checked either way.
	NoChecksums bool
	// Now is the clock of CleanAbandoned and Quarantine (default time.Now).
	Now func() time.Time
}

// Backend stores objects in an S3 bucket. It is safe for concurrent use,
// also by several processes sharing one bucket and prefix.
type Backend struct {
	cfg    Config
	client *s3sdk.Client
	prefix string // "" or ending in "/"
	bufs   sync.Pool
}

// Open builds the S3 client from cfg (credentials from cfg, or else from
// the standard places: environment, shared config and credentials files,
// SSO, web identity, container or instance role) and returns the backend.
// It does not contact the store; Health does.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	// Our puts name their checksum (SHA-256) themselves; reads are proven
	// by the data plane against the object's tree, so the SDK's own
	// checksums (CRC32 by default) would only cost CPU.
	opts = append(opts,
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired))
	ac, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load the AWS configuration (profile %q): %w; check AWS_PROFILE, ~/.aws/config and ~/.aws/credentials", cfg.Profile, err)
	}
	if ac.Region == "" {
		ac.Region = "us-east-1"
	}
	client := s3sdk.NewFromConfig(ac, func(o *s3sdk.Options) {
		o.UsePathStyle = cfg.PathStyle
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		if cfg.HTTPClient != nil {
			// Set here, not in the loaded config: there the SDK would
			// insist on adding AWS_CA_BUNDLE to it.
			o.HTTPClient = cfg.HTTPClient
		}
	})
	return New(client, cfg)
}

// New returns a backend over an existing client; cfg's connection fields
// (Endpoint, Region, PathStyle, Profile, Credentials, HTTPClient) are not
// used.
func New(client *s3sdk.Client, cfg Config) (*Backend, error) {
	if client == nil {
		return nil, errors.New("s3: nil client")
	}
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket; name one, e.g. s3://my-bucket/prefix")
	}
	if cfg.ID == "" {
		cfg.ID = DefaultID
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.PartSize < MinPartSize || cfg.PartSize > maxPartSize {
		return nil, fmt.Errorf("s3: part size %d is outside S3's limits; use %d to %d bytes", cfg.PartSize, MinPartSize, maxPartSize)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.Concurrency < 1 {
		return nil, fmt.Errorf("s3: concurrency %d must be at least 1", cfg.Concurrency)
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = 1000
	}
	if cfg.PageSize < 1 || cfg.PageSize > 1000 {
		return nil, fmt.Errorf("s3: page size %d is outside 1..1000", cfg.PageSize)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if !validPrefix(prefix) {
			return nil, fmt.Errorf("s3: prefix %q: use slash-separated names without empty, . or .. elements", cfg.Prefix)
		}
		prefix += "/"
	}
	b := &Backend{cfg: cfg, client: client, prefix: prefix}
	b.bufs.New = func() any { p := make([]byte, 0, b.cfg.PartSize); return &p }
	return b, nil
}

func validPrefix(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == "" || e == "." || e == ".." {
			return false
		}
	}
	return true
}

// ID returns the backend id.
func (b *Backend) ID() string { return b.cfg.ID }

// Bucket returns the bucket name.
func (b *Backend) Bucket() string { return b.cfg.Bucket }

// Prefix returns the key prefix ("" or ending in a slash).
func (b *Backend) Prefix() string { return b.prefix }

// Client returns the S3 client, for tools and tests.
func (b *Backend) Client() *s3sdk.Client { return b.client }

// String names the backend's place for logs (no credentials in it).
func (b *Backend) String() string {
	ep := b.cfg.Endpoint
	if ep == "" {
		ep = "aws"
	}
	return fmt.Sprintf("s3://%s/%s (endpoint %s)", b.cfg.Bucket, strings.TrimSuffix(b.prefix, "/"), ep)
}

func (b *Backend) objectKey(addr digest.Address) string { return b.prefix + ObjectKey(addr) }

// ObjectKey is the key of the object at addr below the prefix:
// "<alg>/<hex[0:2]>/<hex[2:4]>/<hex>", the local backend's layout too, so
// that a tree copied between them keeps its shape. It panics on the zero
// Address.
func ObjectKey(addr digest.Address) string {
	if addr.IsZero() {
		panic("s3: ObjectKey of the zero Address")
	}
	h := addr.Hex()
	return path.Join(addr.Algorithm().String(), h[0:2], h[2:4], h)
}

func (b *Backend) treeKey(addr digest.Address) string { return b.objectKey(addr) + treeSuffix }

// storedAt is the time a backend reports for an object: its Last-Modified,
// in whole seconds, as HEAD has it, so that every call agrees.
func storedAt(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Second)
}

// Get implements storage.Backend: a ranged GET for a range.
func (b *Backend) Get(ctx context.Context, addr digest.Address, rng *storage.Range) (io.ReadCloser, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return nil, err
	}
	in := &s3sdk.GetObjectInput{Bucket: &b.cfg.Bucket, Key: aws.String(b.objectKey(addr))}
	if rng != nil {
		// A malformed range is refused before any request; one past the
		// end is the store's to tell (416).
		if _, _, err := rng.Resolve(math.MaxInt64); err != nil {
			return nil, fmt.Errorf("s3: get %s: %w", addr, err)
		}
		in.Range = aws.String("bytes=" + rng.String())
	}
	out, err := b.client.GetObject(ctx, in)
	if err != nil {
		return nil, b.objectErr(ctx, "get", addr, err)
	}
	if rng == nil || out.ContentRange != nil {
		return out.Body, nil
	}
	// The store sent the whole object (some do for an empty one): cut
	// the range out of it.
	size := aws.ToInt64(out.ContentLength)
	off, n, err := rng.Resolve(size)
	if err != nil {
		out.Body.Close()
		return nil, fmt.Errorf("s3: get %s: %w", addr, err)
	}
	if _, err := io.CopyN(io.Discard, out.Body, off); err != nil {
		out.Body.Close()
		return nil, fmt.Errorf("s3: get %s: skip to byte %d: %w", addr, off, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(out.Body, n), out.Body}, nil
}

// Head implements storage.Backend.
func (b *Backend) Head(ctx context.Context, addr digest.Address) (storage.ObjectInfo, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return storage.ObjectInfo{}, err
	}
	out, err := b.head(ctx, b.objectKey(addr))
	if err != nil {
		return storage.ObjectInfo{}, b.objectErr(ctx, "head", addr, err)
	}
	return storage.ObjectInfo{Address: addr, Size: aws.ToInt64(out.ContentLength), StoredAt: storedAt(out.LastModified)}, nil
}

func (b *Backend) head(ctx context.Context, key string) (*s3sdk.HeadObjectOutput, error) {
	return b.client.HeadObject(ctx, &s3sdk.HeadObjectInput{Bucket: &b.cfg.Bucket, Key: &key})
}

// Tree implements storage.Backend: the tree is read with ranged GETs of
// its key, through a window that keeps what it read. The first window is
// fetched here, and tells the tree's size: one request, where a HEAD
// would be a second.
func (b *Backend) Tree(ctx context.Context, addr digest.Address) (storage.TreeReader, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return nil, err
	}
	t, err := openTree(ctx, b, b.treeKey(addr))
	if err == nil {
		return t, nil
	}
	if !isNotFound(err) {
		return nil, fmt.Errorf("s3: open the tree of %s: %w", addr, err)
	}
	if _, err := b.head(ctx, b.objectKey(addr)); err != nil {
		return nil, b.objectErr(ctx, "head", addr, err)
	}
	return nil, fmt.Errorf("s3: %s: %w", addr, storage.ErrNoTree)
}

// PutTree implements storage.Backend: the tree's key is overwritten.
func (b *Backend) PutTree(ctx context.Context, addr digest.Address, tree storage.TreeSource) error {
	if err := storage.ValidateAddress(addr); err != nil {
		return err
	}
	if _, err := b.head(ctx, b.objectKey(addr)); err != nil {
		return b.objectErr(ctx, "head", addr, err)
	}
	if err := b.writeTree(ctx, addr, tree); err != nil {
		return fmt.Errorf("s3: tree of %s: %w", addr, err)
	}
	return nil
}

// Delete implements storage.Backend: the object goes before its tree.
func (b *Backend) Delete(ctx context.Context, addr digest.Address) (bool, error) {
	if err := storage.ValidateAddress(addr); err != nil {
		return false, err
	}
	existed := true
	if _, err := b.head(ctx, b.objectKey(addr)); err != nil {
		if err := b.objectErr(ctx, "head", addr, err); !errors.Is(err, storage.ErrNotFound) {
			return false, err
		}
		existed = false
	}
	if existed {
		if err := b.deleteKey(ctx, b.objectKey(addr)); err != nil {
			return false, fmt.Errorf("s3: delete %s: %w", addr, err)
		}
	}
	// Also when the object is gone: a crash between the two deletes may
	// have left the tree.
	if err := b.deleteKey(ctx, b.treeKey(addr)); err != nil {
		return existed, fmt.Errorf("s3: delete the tree of %s: %w", addr, err)
	}
	return existed, nil
}

func (b *Backend) deleteKey(ctx context.Context, key string) error {
	_, err := b.client.DeleteObject(ctx, &s3sdk.DeleteObjectInput{Bucket: &b.cfg.Bucket, Key: &key})
	if err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

// Health implements storage.Backend through HeadBucket. S3 reports no
// capacity, so FreeBytes and UsedBytes stay 0 (unknown).
func (b *Backend) Health(ctx context.Context) storage.Health {
	if _, err := b.client.HeadBucket(ctx, &s3sdk.HeadBucketInput{Bucket: &b.cfg.Bucket}); err != nil {
		return storage.Health{Detail: fmt.Sprintf("bucket %s is not reachable: %v; check the endpoint, the bucket name and the credentials", b.cfg.Bucket, err)}
	}
	return storage.Health{Healthy: true, Detail: "ok (S3 reports no free space; capacity unknown)"}
}

// objectErr translates a failed request about addr: ErrNotFound when the
// object is missing, ErrInvalidRange for a range the store refused, else
// the error with what was asked. A 404 of a HEAD carries no code, so it
// is only taken for a missing object once the bucket proves reachable: a
// bucket that vanished must not make every object look missing.
func (b *Backend) objectErr(ctx context.Context, op string, addr digest.Address, err error) error {
	var nsk *types.NoSuchKey
	switch {
	case errors.As(err, &nsk), hasCode(err, "NoSuchKey"):
		return fmt.Errorf("s3: %s: %w", addr, storage.ErrNotFound)
	case isNotFound(err):
		if _, berr := b.client.HeadBucket(ctx, &s3sdk.HeadBucketInput{Bucket: &b.cfg.Bucket}); berr != nil {
			return fmt.Errorf("s3: %s %s: bucket %s is not reachable: %w", op, addr, b.cfg.Bucket, berr)
		}
		return fmt.Errorf("s3: %s: %w", addr, storage.ErrNotFound)
	case hasStatus(err, http.StatusRequestedRangeNotSatisfiable), hasCode(err, "InvalidRange"):
		return fmt.Errorf("s3: %s %s: %w", op, addr, storage.ErrInvalidRange)
	}
	return fmt.Errorf("s3: %s %s in bucket %s: %w", op, addr, b.cfg.Bucket, err)
}

// isNotFound reports whether err says that a key (not the bucket) is
// missing, or, for a bodyless 404 (HEAD), that something is.
func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	switch {
	case errors.As(err, &nsk), errors.As(err, &nf), hasCode(err, "NoSuchKey"):
		return true
	case hasCode(err, "NoSuchBucket"):
		return false
	}
	return hasStatus(err, http.StatusNotFound)
}

func hasCode(err error, code string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == code
}

func hasStatus(err error, status int) bool {
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == status
}

// relKey returns key relative to the prefix.
func (b *Backend) relKey(key string) string { return strings.TrimPrefix(key, b.prefix) }

// parseObjectKey returns the address of an object key, or false for keys
// that are not objects (trees, temp and quarantined objects, strangers).
func (b *Backend) parseObjectKey(alg digest.Algorithm, key string) (digest.Address, bool) {
	rel := b.relKey(key)
	addr, err := digest.Parse(alg.String() + ":" + path.Base(rel))
	if err != nil || ObjectKey(addr) != rel {
		return digest.Address{}, false
	}
	return addr, true
}
