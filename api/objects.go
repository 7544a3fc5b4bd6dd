package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/digest/blaketree"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

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
// requests, one byte range, digests, and the body, every byte of which the
// data plane proves against the object's BLAKE3 tree before it leaves.
// The first 1 MiB of the answer is proven before the status line, so
// damage there (always, for a short range) is a 409 object_corrupt; damage
// found later aborts the response before the bad bytes. what names the
// requested thing in error messages.
func (s *Server) serveObject(w http.ResponseWriter, r *http.Request, route string, o object, what, contentType, cacheControl string) {
	if o.State != catalog.LocationOK {
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

	body, err := s.objects.ServeAny(r.Context(), o.backends(), o.Address, rng, o.expected())
	if err != nil {
		s.failOpen(w, r, err, o, what)
		return
	}
	defer body.Close()

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
	if _, err := copyProven(s.counting(w, route), body, n); err != nil {
		s.abort(r.Context(), err, what)
	}
}

// counting returns w counting what it writes in the bytes-served metric of
// route as it goes (so the metric is up to date when the client has the
// bytes).
func (s *Server) counting(w io.Writer, route string) io.Writer {
	return &countingWriter{w: w, c: s.bytes.WithLabelValues(route)}
}

type countingWriter struct {
	w io.Writer
	c prometheus.Counter
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.c.Add(float64(n))
	return n, err
}

// ReadFrom keeps the response's own ReadFrom (sendfile) usable for
// readers that have nothing to prove, such as a tree.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.w.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		c.c.Add(float64(n))
		return n, err
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

// failOpen answers an object that could not be opened.
func (s *Server) failOpen(w http.ResponseWriter, r *http.Request, err error, o object, what string) {
	switch {
	case errors.Is(err, dataplane.ErrCorrupt):
		s.logger.Error().Err(err).Str("address", o.Address.String()).Str("backend", o.Backend).
			Msg("refused to serve corrupt bytes")
		ae := unservable(what, catalog.LocationCorrupt)
		var ce *dataplane.CorruptError
		if errors.As(err, &ce) {
			ae.msg += fmt.Sprintf(" (bytes %d-%d on backend %q failed their check)", ce.Offset, ce.Offset+ce.Length-1, ce.BackendID)
		}
		s.fail(w, r, ae)
	case errors.Is(err, storage.ErrNotFound):
		s.logger.Error().Err(err).Str("address", o.Address.String()).Str("backend", o.Backend).
			Msg("catalog says ok but the backend does not hold the object")
		s.fail(w, r, unservable(what, catalog.LocationMissing))
	case errors.Is(err, storage.ErrInvalidRange):
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", o.Size))
		s.fail(w, r, &apiError{status: http.StatusRequestedRangeNotSatisfiable, code: CodeRangeNotSatisfiable,
			msg: fmt.Sprintf("the range lies outside %s, which has %d bytes on its backend", what, o.Size)})
	default:
		s.fail(w, r, fmt.Errorf("open %s: %w", what, err))
	}
}

// copyProven copies the n proven bytes of body to w (through the body's
// WriteTo, without a second buffer). Fewer bytes than n is an error.
func copyProven(w io.Writer, body io.Reader, n int64) (int64, error) {
	written, err := io.Copy(w, body)
	if err == nil && written != n {
		err = fmt.Errorf("%w: the backend returned %d of %d bytes", io.ErrUnexpectedEOF, written, n)
	}
	return written, err
}

// getTree serves the proof of an object's bytes: GET
// /v1/objects/{address}/tree is its whole BLAKE3 tree as a Bao outboard
// (group blaketree.Group), and ?range=FIRST-LAST (inclusive, as in a Range
// header) only the tree nodes that prove those bytes, in the order a
// verifier reads them (see blaketree.Proof). Clients check both against
// the address; `artifactstore get` does.
func (s *Server) getTree(w http.ResponseWriter, r *http.Request) {
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
	what := "the tree of object " + addr.String()
	if o.State != catalog.LocationOK {
		s.fail(w, r, unservable(what, o.State))
		return
	}
	var rng *storage.Range
	if spec := r.URL.Query().Get("range"); spec != "" {
		if rng, err = parseRange("bytes="+spec, o.Size); err != nil || rng == nil {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", o.Size))
			s.fail(w, r, &apiError{status: http.StatusRequestedRangeNotSatisfiable, code: CodeRangeNotSatisfiable,
				msg: fmt.Sprintf("range=%q is not FIRST-LAST, FIRST- or -SUFFIX inside the object's %d bytes", spec, o.Size)})
			return
		}
	}
	proof, size, err := s.objects.Proof(r.Context(), o.Backend, o.Address, rng, o.expected())
	if err != nil {
		s.failOpen(w, r, err, o, what)
		return
	}
	defer proof.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Bao-Group", strconv.Itoa(blaketree.Group))
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if _, err := copyProven(w, proof, size); err != nil {
		s.abort(r.Context(), err, what)
	}
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
