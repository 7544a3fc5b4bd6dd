package s3

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

// Walk implements storage.Lister through paginated listings (ListObjectsV2,
// Config.PageSize keys a page) of each algorithm's folder; trees, temp and
// quarantined objects and keys not shaped like an object are skipped.
// Memory stays one page.
func (b *Backend) Walk(ctx context.Context, fn func(storage.ObjectInfo) error) error {
	for _, alg := range digest.Algorithms {
		err := b.list(ctx, b.prefix+alg.String()+"/", func(key string, size int64, modified *time.Time) error {
			addr, ok := b.parseObjectKey(alg, key)
			if !ok {
				return nil
			}
			return fn(storage.ObjectInfo{Address: addr, Size: size, StoredAt: storedAt(modified)})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// list calls fn for every key under prefix, a page at a time.
func (b *Backend) list(ctx context.Context, prefix string, fn func(key string, size int64, modified *time.Time) error) error {
	p := s3sdk.NewListObjectsV2Paginator(b.client, &s3sdk.ListObjectsV2Input{
		Bucket: &b.cfg.Bucket, Prefix: &prefix, MaxKeys: aws.Int32(b.cfg.PageSize),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("s3: list %s in bucket %s: %w", prefix, b.cfg.Bucket, err)
		}
		for _, o := range page.Contents {
			if err := fn(aws.ToString(o.Key), aws.ToInt64(o.Size), o.LastModified); err != nil {
				return err
			}
		}
	}
	return nil
}

// Quarantine moves the object at addr to .quarantine/<its key>.<UTC
// time> (relative to the prefix), where an operator can inspect it, and
// returns the new key relative to the prefix. S3 has no rename: the object
// is copied on the server, then deleted.
func (b *Backend) Quarantine(ctx context.Context, addr digest.Address) (string, error) {
	src := b.objectKey(addr)
	out, err := b.head(ctx, src)
	if err != nil {
		return "", b.objectErr(ctx, "quarantine", addr, err)
	}
	dest := quarantineDir + "/" + ObjectKey(addr) + "." + b.cfg.Now().UTC().Format("20060102T150405.000000000Z")
	if err := b.copyObject(ctx, src, b.prefix+dest, aws.ToInt64(out.ContentLength), false); err != nil {
		return "", fmt.Errorf("s3: quarantine %s: %w", addr, err)
	}
	if err := b.deleteKey(ctx, src); err != nil {
		return dest, fmt.Errorf("s3: quarantine %s: delete it after the copy: %w", addr, err)
	}
	return dest, nil
}

// Cleaned counts what CleanAbandoned removed.
type Cleaned struct {
	// Uploads is the number of multipart uploads aborted.
	Uploads int
	// TempObjects is the number of temp objects deleted.
	TempObjects int
}

// CleanAbandoned removes what crashed writers left under the prefix:
// multipart uploads started, and temp objects written, more than
// olderThan ago. A live put is younger than any sensible bound (make it
// longer than the slowest upload; the reaper passes its orphan age, 24
// hours by default). An AbortIncompleteMultipartUpload lifecycle rule on
// the bucket does the first half on the store's side.
func (b *Backend) CleanAbandoned(ctx context.Context, olderThan time.Duration) (Cleaned, error) {
	var c Cleaned
	if olderThan <= 0 {
		return c, fmt.Errorf("s3: clean abandoned uploads: the age bound %s must be positive, or live uploads would be aborted", olderThan)
	}
	cutoff := b.cfg.Now().Add(-olderThan)
	in := &s3sdk.ListMultipartUploadsInput{Bucket: &b.cfg.Bucket, Prefix: aws.String(b.prefix), MaxUploads: aws.Int32(b.cfg.PageSize)}
	for {
		page, err := b.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return c, fmt.Errorf("s3: list multipart uploads in bucket %s: %w", b.cfg.Bucket, err)
		}
		for _, u := range page.Uploads {
			if u.Initiated == nil || !u.Initiated.Before(cutoff) {
				continue
			}
			_, err := b.client.AbortMultipartUpload(ctx, &s3sdk.AbortMultipartUploadInput{Bucket: &b.cfg.Bucket, Key: u.Key, UploadId: u.UploadId})
			if err != nil && !hasCode(err, "NoSuchUpload") {
				return c, fmt.Errorf("s3: abort the multipart upload %s of %s: %w", aws.ToString(u.UploadId), aws.ToString(u.Key), err)
			}
			c.Uploads++
		}
		if !aws.ToBool(page.IsTruncated) {
			break
		}
		in.KeyMarker, in.UploadIdMarker = page.NextKeyMarker, page.NextUploadIdMarker
	}
	err := b.list(ctx, b.prefix+tmpDir+"/", func(key string, _ int64, modified *time.Time) error {
		if modified == nil || !modified.Before(cutoff) {
			return nil
		}
		if err := b.deleteKey(ctx, key); err != nil {
			return fmt.Errorf("s3: delete the temp object %s: %w", key, err)
		}
		c.TempObjects++
		return nil
	})
	return c, err
}
