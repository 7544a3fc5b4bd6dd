package api

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/storage"
)

const copyBufSize = 256 << 10

func (s *Server) getObject(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("address")
	addr, err := digest.Parse(raw)
	if err != nil {
		s.fail(w, r, &apiError{status: http.StatusBadRequest, code: CodeInvalidAddress,
			msg: fmt.Sprintf("%v; an address looks like blake3:<64 lowercase hex digits> or sha256:<64 lowercase hex digits>", err)})
		return
	}
	o, err := s.lookupObject(r.Context(), addr)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.serveObject(w, r, "object", o, "object "+addr.String(), "application/octet-stream",
		"max-age=31536000, immutable")
}

// serveObject answers a GET or HEAD for the bytes of o: conditional
// requests, one byte range, digests, and the streamed body. what names the
// requested thing in error messages.
func (s *Server) serveObject(w http.ResponseWriter, r *http.Request, route string, o object, what, contentType, cacheControl string) {
	if o.State != stateOK {
		s.fail(w, r, unservable(what, o.State))
		return
	}
	// The ETag is the address the client asked by (the object's primary
	// one for a file); a validator naming the object's other address names
	// the same bytes, so conditions accept either.
	named := o.Asked
	if named.IsZero() {
		named = o.Address
	}
	etag := `"` + named.String() + `"`
	var validators []string
	for _, a := range o.addresses() {
		validators = append(validators, `"`+a.String()+`"`)
	}
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Accept-Ranges", "bytes")
	b64 := base64.StdEncoding.EncodeToString(o.SHA256[:])
	h.Set("Repr-Digest", "sha-256=:"+b64+":")
	h.Set("Digest", "SHA-256="+b64)
	h.Set("Last-Modified", o.StoredAt.UTC().Format(http.TimeFormat))
	if s.auth {
		cacheControl = "private, " + cacheControl
	}
	h.Set("Cache-Control", cacheControl)

	if inm := r.Header.Get("If-None-Match"); inm != "" && etagMatches(inm, validators) {
		w.WriteHeader(http.StatusNotModified)
		return
	}

	var rng *storage.Range
	if spec := r.Header.Get("Range"); spec != "" && ifRangeHolds(r.Header.Get("If-Range"), validators) {
		var err error
		rng, err = parseRange(spec, o.Size)
		if err != nil {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", o.Size))
			s.fail(w, r, &apiError{status: http.StatusRequestedRangeNotSatisfiable, code: CodeRangeNotSatisfiable,
				msg: fmt.Sprintf("%v; %s has %d bytes", err, what, o.Size)})
			return
		}
	}

	rc, err := s.objects.Serve(r.Context(), o.Backend, o.Address, rng)
	if err != nil {
		switch {
		case errors.Is(err, storage.ErrNotFound):
			s.logger.Error().Err(err).Str("address", o.Address.String()).Str("backend", o.Backend).
				Msg("catalog says ok but the backend does not hold the object")
			s.fail(w, r, unservable(what, stateMissing))
		case errors.Is(err, storage.ErrInvalidRange):
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", o.Size))
			s.fail(w, r, &apiError{status: http.StatusRequestedRangeNotSatisfiable, code: CodeRangeNotSatisfiable,
				msg: fmt.Sprintf("the range lies outside %s, which has %d bytes on its backend", what, o.Size)})
		default:
			s.fail(w, r, fmt.Errorf("open %s: %w", what, err))
		}
		return
	}
	defer rc.Close()

	h.Set("Content-Type", contentType)
	h.Set("X-Content-Type-Options", "nosniff")
	n, status := o.Size, http.StatusOK
	if rng != nil {
		n = rng.End - rng.Start + 1
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rng.Start, rng.End, o.Size))
	}
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	var written int64
	if rng == nil {
		written, err = s.copyVerified(w, rc, n, o.SHA256)
	} else {
		written, err = s.copyBody(w, rc, n, nil)
	}
	s.bytes.WithLabelValues(route).Add(float64(written))
	if err != nil {
		s.abort(r.Context(), err, what)
	}
}

// copyVerified copies the whole object of n bytes from rc to w and checks
// its SHA-256 against want. The last byte is held back until the digest
// matches, so that a client never receives all the bytes of a corrupt
// object: on a mismatch the caller aborts a response that is one byte
// short of its Content-Length.
func (s *Server) copyVerified(w io.Writer, rc io.Reader, n int64, want [32]byte) (int64, error) {
	sum := sha256.New()
	if n == 0 {
		return 0, checkSum(sum, want)
	}
	written, err := s.copyBody(w, rc, n-1, sum)
	if err != nil {
		return written, err
	}
	var last [1]byte
	if _, err := io.ReadFull(rc, last[:]); err != nil {
		return written, fmt.Errorf("read the last byte: %w", err)
	}
	sum.Write(last[:])
	if err := checkSum(sum, want); err != nil {
		return written, err
	}
	m, err := w.Write(last[:])
	return written + int64(m), err
}

func checkSum(sum hash.Hash, want [32]byte) error {
	if [32]byte(sum.Sum(nil)) != want {
		return fmt.Errorf("%w: the bytes read do not have the recorded SHA-256 %x; the verifier will mark the object corrupt when it scrubs it",
			storage.ErrDigestMismatch, want)
	}
	return nil
}

// copyBody copies exactly n bytes of rc to w, feeding them to sum when it
// is not nil. A short object is an error.
func (s *Server) copyBody(w io.Writer, rc io.Reader, n int64, sum hash.Hash) (int64, error) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	src := io.LimitReader(rc, n)
	if sum != nil {
		src = io.TeeReader(src, sum)
	}
	written, err := io.CopyBuffer(w, src, *bp)
	if err == nil && written < n {
		err = fmt.Errorf("%w: the backend returned %d of %d bytes", io.ErrUnexpectedEOF, written, n)
	}
	return written, err
}

// abort ends a response whose status line is already sent: the client must
// see a broken transfer, never a complete-looking one.
func (s *Server) abort(ctx context.Context, err error, what string) {
	if ctx.Err() == nil {
		s.logger.Error().Err(err).Msgf("aborted the response for %s", what)
	}
	panic(http.ErrAbortHandler)
}

// parseRange parses a Range header with one byte range against an object
// of size bytes. It returns nil (serve the whole object) for several
// ranges or another unit, which RFC 9110 allows a server to ignore, and an
// error for a byte range that cannot be satisfied or read.
func parseRange(spec string, size int64) (*storage.Range, error) {
	unit, set, ok := strings.Cut(spec, "=")
	if !ok || strings.TrimSpace(unit) != "bytes" {
		return nil, nil
	}
	if strings.Contains(set, ",") {
		return nil, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(set), "-")
	if !ok {
		return nil, fmt.Errorf("range %q is not bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX", spec)
	}
	bad := fmt.Errorf("range %q is not bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX with decimal byte positions", spec)
	if first == "" {
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return nil, bad
		}
		if n == 0 || size == 0 {
			return nil, fmt.Errorf("range %q asks for no bytes", spec)
		}
		n = min(n, size)
		return &storage.Range{Start: size - n, End: size - 1}, nil
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 {
		return nil, bad
	}
	end := size - 1
	if last != "" {
		end, err = strconv.ParseInt(last, 10, 64)
		if err != nil || end < start {
			return nil, bad
		}
		end = min(end, size-1)
	}
	if start >= size {
		return nil, fmt.Errorf("range %q starts at or after the end", spec)
	}
	return &storage.Range{Start: start, End: end}, nil
}

// etagMatches is the weak comparison of If-None-Match (RFC 9110 13.1.2)
// against the object's validators.
func etagMatches(header string, validators []string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || slices.Contains(validators, strings.TrimPrefix(t, "W/")) {
			return true
		}
	}
	return false
}

// ifRangeHolds reports whether a Range header may be honoured: no If-Range,
// or an If-Range equal to one of the (strong) validators. A date in
// If-Range is not used: an address never changes its bytes, but a date
// cannot prove that the client's copy is of this address.
func ifRangeHolds(ifRange string, validators []string) bool {
	return ifRange == "" || slices.Contains(validators, ifRange)
}

// fail writes err as a JSON error: an *apiError as it is, anything else as
// 503 (database or backend unreachable) or 500, logged.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeError(w, ae)
		return
	}
	if r.Context().Err() != nil {
		return // the client went away; nobody reads the answer
	}
	if isUnavailable(err) {
		s.logger.Warn().Err(err).Str("path", r.URL.Path).Msg("dependency unavailable")
		writeError(w, &apiError{status: http.StatusServiceUnavailable, code: CodeUnavailable,
			msg: "the database or the storage backend did not answer; retry in a moment"})
		return
	}
	s.logger.Error().Err(err).Str("path", r.URL.Path).Msg("request failed")
	writeError(w, &apiError{status: http.StatusInternalServerError, code: CodeInternal,
		msg: "the server failed to answer this request (the error is in its log); retry, and report it if it persists"})
}
