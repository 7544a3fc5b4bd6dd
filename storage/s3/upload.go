package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3sdk "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

// firstBufSize is where the buffer of an upload's first part starts: it
// grows to a part only for objects that need it, so small objects cost
// little memory.
const firstBufSize = 64 << 10

// upload sends the bytes written to it to one key: kept in memory while
// they fit in one part (finish then puts them in one request), else as a
// multipart upload whose parts go out, at most Concurrency at a time,
// while the next part fills. Write and finish are called by one
// goroutine; the parts' uploads run in their own.
type upload struct {
	b      *Backend
	ctx    context.Context // of the part uploads; canceled by abort
	cancel context.CancelFunc
	key    func() string // where a multipart upload goes, asked when it starts
	base   int64         // part size before growth

	buf   *[]byte
	limit int64 // size of the part being filled
	n     int64 // bytes written

	mpuKey string // key of the multipart upload, "" before it starts
	id     string // its upload id
	slots  chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	parts  []types.CompletedPart
	err    error // first failure of a part upload
}

func (b *Backend) newUpload(ctx context.Context, sizeHint int64, key func() string) *upload {
	ctx, cancel := context.WithCancel(ctx)
	base := b.cfg.PartSize
	if need := (sizeHint + maxParts/10*9 - 1) / (maxParts / 10 * 9); need > base {
		// A claimed size that needs more than 9,000 parts of the default
		// size gets bigger parts from the start (1 MiB multiples).
		base = min((need+1<<20-1)>>20<<20, maxPartSize)
	}
	buf := make([]byte, 0, min(firstBufSize, base))
	return &upload{
		b: b, ctx: ctx, cancel: cancel, key: key, base: base,
		buf: &buf, limit: base, slots: make(chan struct{}, b.cfg.Concurrency),
	}
}

// Write buffers p, sending every full part.
func (u *upload) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		room := u.limit - int64(len(*u.buf))
		if room == 0 {
			if err := u.sendPart(); err != nil {
				return n, err
			}
			continue
		}
		k := int(min(room, int64(len(p))))
		u.grow(k)
		*u.buf = append(*u.buf, p[:k]...)
		p, n, u.n = p[k:], n+k, u.n+int64(k)
	}
	return n, nil
}

// grow makes room for k more bytes in the first part's buffer, doubling
// it up to the part size.
func (u *upload) grow(k int) {
	b := *u.buf
	if len(b)+k <= cap(b) {
		return
	}
	c := max(cap(b), firstBufSize)
	for c < len(b)+k {
		c *= 2
	}
	nb := make([]byte, len(b), min(int64(c), u.limit))
	copy(nb, b)
	*u.buf = nb
}

// partLimit is the size of part number i (from 1): the base size for the
// first 1,000 parts, then doubling every 1,000 parts, so that 10,000 parts
// reach S3's largest object.
func (u *upload) partLimit(i int) int64 {
	return min(u.base<<((i-1)/1000), maxPartSize)
}

// failed returns the first part upload's failure.
func (u *upload) failed() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

// sendPart starts the multipart upload when needed and hands the full
// buffer to a part upload, waiting for a free slot; the next part fills a
// new buffer meanwhile.
func (u *upload) sendPart() error {
	if err := u.failed(); err != nil {
		return err
	}
	if u.id == "" {
		key := u.key()
		in := &s3sdk.CreateMultipartUploadInput{Bucket: &u.b.cfg.Bucket, Key: &key}
		if !u.b.cfg.NoChecksums {
			in.ChecksumAlgorithm = types.ChecksumAlgorithmSha256
		}
		out, err := u.b.client.CreateMultipartUpload(u.ctx, in)
		if err != nil {
			return fmt.Errorf("start a multipart upload to %s: %w", key, err)
		}
		u.mpuKey, u.id = key, aws.ToString(out.UploadId)
	}
	select {
	case u.slots <- struct{}{}:
	case <-u.ctx.Done():
		if err := u.failed(); err != nil {
			return err
		}
		return u.ctx.Err()
	}
	u.mu.Lock()
	u.parts = append(u.parts, types.CompletedPart{})
	num := len(u.parts)
	u.mu.Unlock()
	buf := u.buf
	u.wg.Go(func() {
		defer func() { <-u.slots }()
		err := u.putPart(num, *buf)
		u.b.putBuf(buf)
		if err != nil {
			// The other parts in flight run to their end: a part cut
			// off mid-request may still land on the server after the
			// upload is aborted, and so outlive it.
			u.mu.Lock()
			if u.err == nil {
				u.err = err
			}
			u.mu.Unlock()
		}
	})
	u.limit = u.partLimit(num + 1)
	u.buf = u.b.getBuf(u.limit)
	return nil
}

// putPart uploads part num. The SDK computes its SHA-256 once, for the
// signature and the checksum the server checks (or streams it as a
// trailer over TLS).
func (u *upload) putPart(num int, p []byte) error {
	in := &s3sdk.UploadPartInput{
		Bucket: &u.b.cfg.Bucket, Key: &u.mpuKey, UploadId: &u.id,
		PartNumber: aws.Int32(int32(num)), Body: bytes.NewReader(p), ContentLength: aws.Int64(int64(len(p))),
	}
	if !u.b.cfg.NoChecksums {
		in.ChecksumAlgorithm = types.ChecksumAlgorithmSha256
	}
	out, err := u.b.client.UploadPart(u.ctx, in)
	if err != nil {
		return fmt.Errorf("upload part %d of %s: %w", num, u.mpuKey, err)
	}
	u.mu.Lock()
	u.parts[num-1] = types.CompletedPart{PartNumber: aws.Int32(int32(num)), ETag: out.ETag, ChecksumSHA256: out.ChecksumSHA256}
	u.mu.Unlock()
	return nil
}

// multipart reports whether the bytes went into a multipart upload.
func (u *upload) multipart() bool { return u.id != "" }

// wait waits for the part uploads and returns the first failure.
func (u *upload) wait() error {
	u.wg.Wait()
	return u.failed()
}

// flush sends the last part of a multipart upload and waits for every
// part; it does nothing for bytes that never left memory. It is safe more
// than once.
func (u *upload) flush() error {
	if !u.multipart() {
		return nil
	}
	if len(*u.buf) > 0 {
		if err := u.sendPart(); err != nil {
			return err
		}
	}
	return u.wait()
}

// errExists is finish's answer when ifAbsent was set and key is taken.
var errExists = errors.New("the key is taken")

// finish makes the bytes the object at key: one PutObject when they never
// left memory, else the last part and the completion of the multipart
// upload (then key must be the upload's). With ifAbsent the write is
// conditional (If-None-Match: *) and fails with errExists when key
// exists, leaving it untouched.
func (u *upload) finish(ctx context.Context, key string, ifAbsent bool) error {
	var cond *string
	if ifAbsent {
		cond = aws.String("*")
	}
	if !u.multipart() {
		in := &s3sdk.PutObjectInput{
			Bucket: &u.b.cfg.Bucket, Key: &key, IfNoneMatch: cond,
			Body: bytes.NewReader(*u.buf), ContentLength: aws.Int64(int64(len(*u.buf))),
		}
		if !u.b.cfg.NoChecksums {
			in.ChecksumAlgorithm = types.ChecksumAlgorithmSha256
		}
		_, err := u.b.client.PutObject(ctx, in)
		return conditionalErr(key, err)
	}
	if key != u.mpuKey {
		return fmt.Errorf("complete the multipart upload to %s under %s: a multipart upload has one key", u.mpuKey, key)
	}
	if err := u.flush(); err != nil {
		return err
	}
	_, err := u.b.client.CompleteMultipartUpload(ctx, &s3sdk.CompleteMultipartUploadInput{
		Bucket: &u.b.cfg.Bucket, Key: &key, UploadId: &u.id, IfNoneMatch: cond,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: u.parts},
	})
	if err == nil {
		u.id = "" // completed: nothing to abort
	}
	return conditionalErr(key, err)
}

func conditionalErr(key string, err error) error {
	switch {
	case err == nil:
		return nil
	case hasStatus(err, http.StatusPreconditionFailed), hasCode(err, "PreconditionFailed"):
		return errExists
	}
	return fmt.Errorf("write %s: %w", key, err)
}

// abort waits for the parts in flight (they end at once when the put's
// context is canceled) and aborts the multipart upload, so that nothing
// of it stays (nor is billed). It is safe more than once.
func (u *upload) abort() error {
	u.wg.Wait()
	defer u.cancel()
	if u.buf != nil {
		u.b.putBuf(u.buf)
		u.buf = nil
	}
	if u.id == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(u.ctx), cleanupTimeout)
	defer cancel()
	_, err := u.b.client.AbortMultipartUpload(ctx, &s3sdk.AbortMultipartUploadInput{Bucket: &u.b.cfg.Bucket, Key: &u.mpuKey, UploadId: &u.id})
	if err != nil && !hasCode(err, "NoSuchUpload") && !isNotFound(err) {
		return fmt.Errorf("s3: abort the multipart upload %s of %s (CleanAbandoned or a lifecycle rule will remove it): %w", u.id, u.mpuKey, err)
	}
	u.id = ""
	return nil
}

// getBuf returns an empty buffer for a part of size bytes.
func (b *Backend) getBuf(size int64) *[]byte {
	if size == b.cfg.PartSize {
		p := b.bufs.Get().(*[]byte)
		*p = (*p)[:0]
		return p
	}
	p := make([]byte, 0, size)
	return &p
}

func (b *Backend) putBuf(p *[]byte) {
	if int64(cap(*p)) == b.cfg.PartSize {
		b.bufs.Put(p)
	}
}

// Create implements storage.Backend. With a claimed address the bytes go
// to that address's key (a Commit under another address aborts them);
// without one, to a temp key that Commit copies from.
func (b *Backend) Create(ctx context.Context, opts storage.CreateOptions) (storage.ObjectWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &objectWriter{b: b, claimed: opts.Claimed}
	w.up = b.newUpload(ctx, opts.Size, func() string {
		if !w.claimed.IsZero() {
			return b.objectKey(w.claimed)
		}
		w.tmpKey = b.prefix + tmpDir + "/" + rand.Text()
		return w.tmpKey
	})
	return w, nil
}

// objectWriter is one object being written (see Create).
type objectWriter struct {
	b       *Backend
	up      *upload
	claimed digest.Address
	tmpKey  string // the temp key, once the multipart upload went there
	tmpDone bool   // the temp object is complete: Abort deletes it
	done    bool
}

// Write implements storage.ObjectWriter.
func (w *objectWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errors.New("s3: write after Commit or Abort")
	}
	n, err := w.up.Write(p)
	if err != nil {
		return n, fmt.Errorf("s3: %w", err)
	}
	return n, nil
}

// Commit implements storage.ObjectWriter: the tree first, then the object
// under its address, written only if absent; a deduplicated commit
// leaves the stored object as it is and adds its tree if it lacks one.
// With storage.CommitReplace the tree and the object are written
// unconditionally (a PUT, or the completion of a multipart upload or
// copy, without If-None-Match), so each replaces the stored one whole,
// and the tree of an object that has none is deleted.
func (w *objectWriter) Commit(ctx context.Context, addr digest.Address, tree storage.TreeSource, mode storage.CommitMode) (storage.Committed, error) {
	if w.done {
		return storage.Committed{}, errors.New("s3: Commit after Commit or Abort")
	}
	defer w.Abort()
	b := w.b
	if err := storage.ValidateAddress(addr); err != nil {
		return storage.Committed{}, err
	}
	if err := ctx.Err(); err != nil {
		return storage.Committed{}, err
	}
	fail := func(err error) (storage.Committed, error) {
		return storage.Committed{}, fmt.Errorf("s3: store %s: %w", addr, err)
	}
	if err := w.up.failed(); err != nil {
		return fail(err)
	}
	if w.up.multipart() && w.tmpKey == "" && addr != w.claimed {
		return fail(fmt.Errorf("the bytes went to the claimed address %s, so they cannot be stored under another; nothing was stored", w.claimed))
	}
	// Every part is in before anything else is written: a part the
	// server refused fails the commit before the tree is stored.
	if err := w.up.flush(); err != nil {
		return fail(err)
	}
	replace := mode == storage.CommitReplace
	if !replace {
		if c, ok, err := b.existing(ctx, addr, tree); err != nil || ok {
			if err != nil {
				return fail(err)
			}
			return c, nil
		}
	}
	if tree != nil {
		if err := b.writeTree(ctx, addr, tree); err != nil {
			return fail(err)
		}
	} else if replace {
		if err := b.deleteKey(ctx, b.treeKey(addr)); err != nil {
			return fail(fmt.Errorf("delete the stale tree: %w", err))
		}
	}
	key := b.objectKey(addr)
	var err error
	if w.tmpKey == "" {
		err = w.up.finish(ctx, key, !replace)
	} else {
		if err = w.up.finish(ctx, w.tmpKey, false); err == nil {
			w.tmpDone = true
			err = b.copyObject(ctx, w.tmpKey, key, w.up.n, !replace)
		}
	}
	if errors.Is(err, errExists) {
		// A concurrent put of the same content was first.
		c, ok, err := b.existing(ctx, addr, tree)
		if err == nil && !ok {
			err = errors.New("the store refused the write because the key exists, but it does not; retry")
		}
		if err != nil {
			return fail(err)
		}
		return c, nil
	}
	if err != nil {
		return fail(err)
	}
	out, err := b.head(ctx, key)
	if err != nil {
		return fail(fmt.Errorf("head what was just written: %w", err))
	}
	return storage.Committed{StoredAt: storedAt(out.LastModified)}, nil
}

// existing reports whether the object at addr is stored and, if so,
// gives it tree when it has none.
func (b *Backend) existing(ctx context.Context, addr digest.Address, tree storage.TreeSource) (storage.Committed, bool, error) {
	out, err := b.head(ctx, b.objectKey(addr))
	if isNotFound(err) {
		return storage.Committed{}, false, nil
	}
	if err != nil {
		return storage.Committed{}, false, fmt.Errorf("look for the object: %w", err)
	}
	if tree != nil {
		_, err := b.head(ctx, b.treeKey(addr))
		if isNotFound(err) {
			err = b.writeTree(ctx, addr, tree)
		}
		if err != nil {
			return storage.Committed{}, false, fmt.Errorf("give the stored object its tree: %w", err)
		}
	}
	return storage.Committed{StoredAt: storedAt(out.LastModified), Deduplicated: true}, true, nil
}

// Abort implements storage.ObjectWriter: the multipart upload is aborted
// and a temp object deleted.
func (w *objectWriter) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	err := w.up.abort()
	if w.tmpDone {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(w.up.ctx), cleanupTimeout)
		defer cancel()
		if derr := w.b.deleteKey(ctx, w.tmpKey); derr != nil && err == nil {
			err = fmt.Errorf("s3: delete the temp object %s (CleanAbandoned will): %w", w.tmpKey, derr)
		}
	}
	return err
}

// writeTree stores tree under the tree key of addr, replacing any.
func (b *Backend) writeTree(ctx context.Context, addr digest.Address, tree storage.TreeSource) error {
	key := b.treeKey(addr)
	u := b.newUpload(ctx, tree.Size(), func() string { return key })
	defer u.abort()
	n, err := tree.WriteTo(u)
	if err == nil && n != tree.Size() {
		err = fmt.Errorf("the tree wrote %d bytes, not the %d it announced", n, tree.Size())
	}
	if err == nil {
		err = u.finish(ctx, key, false)
	}
	if err != nil {
		return fmt.Errorf("write the tree: %w", err)
	}
	return nil
}

// copyObject copies the object at src (size bytes) to dst on the server:
// one CopyObject up to 5 GiB, else a multipart copy. With ifAbsent it
// fails with errExists when dst exists.
func (b *Backend) copyObject(ctx context.Context, src, dst string, size int64, ifAbsent bool) error {
	var cond *string
	if ifAbsent {
		cond = aws.String("*")
	}
	source := (&url.URL{Path: b.cfg.Bucket + "/" + src}).EscapedPath()
	if size <= maxCopySize {
		_, err := b.client.CopyObject(ctx, &s3sdk.CopyObjectInput{Bucket: &b.cfg.Bucket, Key: &dst, CopySource: &source, IfNoneMatch: cond})
		return conditionalErr(dst, err)
	}
	out, err := b.client.CreateMultipartUpload(ctx, &s3sdk.CreateMultipartUploadInput{Bucket: &b.cfg.Bucket, Key: &dst})
	if err != nil {
		return fmt.Errorf("start a multipart copy to %s: %w", dst, err)
	}
	id := out.UploadId
	completed := false
	defer func() {
		if !completed {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			b.client.AbortMultipartUpload(actx, &s3sdk.AbortMultipartUploadInput{Bucket: &b.cfg.Bucket, Key: &dst, UploadId: id})
		}
	}()
	var parts []types.CompletedPart
	for off, num := int64(0), int32(1); off < size; off, num = off+copyPartSize, num+1 {
		end := min(off+copyPartSize, size) - 1
		pc, err := b.client.UploadPartCopy(ctx, &s3sdk.UploadPartCopyInput{
			Bucket: &b.cfg.Bucket, Key: &dst, UploadId: id, PartNumber: aws.Int32(num),
			CopySource: &source, CopySourceRange: aws.String(fmt.Sprintf("bytes=%d-%d", off, end)),
		})
		if err != nil {
			return fmt.Errorf("copy part %d to %s: %w", num, dst, err)
		}
		parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(num), ETag: pc.CopyPartResult.ETag})
	}
	_, err = b.client.CompleteMultipartUpload(ctx, &s3sdk.CompleteMultipartUploadInput{
		Bucket: &b.cfg.Bucket, Key: &dst, UploadId: id, IfNoneMatch: cond,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err == nil {
		completed = true
	}
	return conditionalErr(dst, err)
}
