package s3

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

const benchPutSize = 256 << 20

// BenchmarkPut measures a whole put of 256 MiB of unique content through
// the putter (both digests and the tree computed while the parts go out,
// claims checked, then committed): with a claimed address (the parts go
// to the final key) and without (to a temp key, then a server-side copy).
// claimed_nochecksums is the claimed put without S3's SHA-256 checksums
// (checksums=false), to tell their cost on the server from ours.
// baseline_multipart is a plain multipart upload of the same bytes to the
// same server with the same client, part size and concurrency, and no
// hashing of ours.
func BenchmarkPut(b *testing.B) {
	p := make([]byte, benchPutSize)
	fill(p)
	b.Run("256MiB", func(b *testing.B) {
		b.Run("claimed", func(b *testing.B) { benchPut(b, p, true, nil) })
		b.Run("claimed_nochecksums", func(b *testing.B) {
			benchPut(b, p, true, func(c *Config) { c.NoChecksums = true })
		})
		b.Run("unclaimed", func(b *testing.B) { benchPut(b, p, false, nil) })
		b.Run("baseline_multipart", func(b *testing.B) {
			be, _ := openTest(b, func(c *Config) { c.PartSize = 0 })
			b.SetBytes(int64(len(p)))
			for i := 0; b.Loop(); i++ {
				binary.LittleEndian.PutUint64(p, uint64(i))
				key := fmt.Sprintf("plain/%d", i)
				if err := plainMultipart(context.Background(), be, key, p); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				be.deleteKey(context.Background(), key)
				b.StartTimer()
			}
		})
	})
}

func benchPut(b *testing.B, p []byte, claim bool, mod func(*Config)) {
	be, _ := openTest(b, func(c *Config) {
		c.PartSize = 0
		if mod != nil {
			mod(c)
		}
	})
	putter := storage.NewPutter()
	b.SetBytes(int64(len(p)))
	for i := 0; b.Loop(); i++ {
		binary.LittleEndian.PutUint64(p, uint64(i)) // unique content, no dedup
		opts := storage.PutOptions{ExpectSize: int64(len(p))}
		if claim {
			b.StopTimer() // the producer knows its digest before it sends
			opts.Expect = []digest.Address{digestsOf(p).Address(digest.BLAKE3)}
			b.StartTimer()
		}
		rc, err := putter.Put(context.Background(), be, bytes.NewReader(p), opts)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := be.Delete(context.Background(), rc.Address); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// plainMultipart uploads p to key as the SDK's documentation shows it:
// parts of the backend's size, as many in flight as the backend sends.
func plainMultipart(ctx context.Context, be *Backend, key string, p []byte) error {
	c := be.client
	out, err := c.CreateMultipartUpload(ctx, &s3sdk.CreateMultipartUploadInput{Bucket: &be.cfg.Bucket, Key: &key})
	if err != nil {
		return err
	}
	size := int(be.cfg.PartSize)
	n := (len(p) + size - 1) / size
	parts := make([]types.CompletedPart, n)
	errs := make([]error, n)
	slots := make(chan struct{}, be.cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range n {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			part := p[i*size : min((i+1)*size, len(p))]
			num := aws.Int32(int32(i + 1))
			r, err := c.UploadPart(ctx, &s3sdk.UploadPartInput{
				Bucket: &be.cfg.Bucket, Key: &key, UploadId: out.UploadId, PartNumber: num,
				Body: bytes.NewReader(part), ContentLength: aws.Int64(int64(len(part))),
			})
			if err != nil {
				errs[i] = err
				return
			}
			parts[i] = types.CompletedPart{PartNumber: num, ETag: r.ETag}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	_, err = c.CompleteMultipartUpload(ctx, &s3sdk.CompleteMultipartUploadInput{
		Bucket: &be.cfg.Bucket, Key: &key, UploadId: out.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	return err
}

// BenchmarkGetRange reads 1 MiB ranges at scattered offsets of a 64 MiB
// object: the backend's Get, and the data plane's Serve, which also reads
// the range's proof from the stored tree and checks every chunk group
// before it releases it. baseline_get is a plain ranged GetObject of the
// same bytes with the same client.
func BenchmarkGetRange(b *testing.B) {
	be, _ := openTest(b, func(c *Config) { c.PartSize = 0 })
	p := make([]byte, 64<<20)
	fill(p)
	rc, err := storage.NewPutter().Put(context.Background(), be, bytes.NewReader(p), storage.PutOptions{ExpectSize: storage.NoSizeClaim})
	if err != nil {
		b.Fatal(err)
	}
	reg := storage.NewRegistry()
	if err := reg.Register(be); err != nil {
		b.Fatal(err)
	}
	dp, err := dataplane.New(reg, be.ID())
	if err != nil {
		b.Fatal(err)
	}
	const n = 1 << 20
	offset := func(i int) int64 { return int64(i*7_340_033) % int64(len(p)-n) }
	key := be.objectKey(rc.Address)
	buf := make([]byte, n)
	read := func(b *testing.B, r io.ReadCloser, err error, i int) {
		if err != nil {
			b.Fatal(err)
		}
		m, err := io.ReadFull(r, buf)
		r.Close()
		if err != nil || m != n {
			b.Fatalf("read %d of %d bytes: %v", m, n, err)
		}
		if off := offset(i); !bytes.Equal(buf, p[off:off+n]) {
			b.Fatal("the range read other bytes")
		}
	}
	b.Run("1MiB", func(b *testing.B) {
		b.Run("backend", func(b *testing.B) {
			b.SetBytes(n)
			for i := 0; b.Loop(); i++ {
				off := offset(i)
				r, err := be.Get(context.Background(), rc.Address, &storage.Range{Start: off, End: off + n - 1})
				read(b, r, err, i)
			}
		})
		b.Run("proven_serve", func(b *testing.B) {
			b.SetBytes(n)
			exp := dataplane.Expected{Size: int64(len(p))}
			for i := 0; b.Loop(); i++ {
				off := offset(i)
				r, err := dp.Serve(context.Background(), "", rc.Address, &storage.Range{Start: off, End: off + n - 1}, exp)
				read(b, r, err, i)
			}
		})
		b.Run("baseline_get", func(b *testing.B) {
			b.SetBytes(n)
			for i := 0; b.Loop(); i++ {
				off := offset(i)
				out, err := be.client.GetObject(context.Background(), &s3sdk.GetObjectInput{
					Bucket: &be.cfg.Bucket, Key: &key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1)),
				})
				var body io.ReadCloser
				if err == nil {
					body = out.Body
				}
				read(b, body, err, i)
			}
		})
	})
}

// fill fills p with bytes that do not compress.
func fill(p []byte) {
	copy(p, pattern("bench", len(p)))
}
