package api

import (
	"archive/tar"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
)

// Page sizes of GET /v1/packages.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// packageStates are the values of artifact_packages.state.
var packageStates = []string{"open", "sealed", "expired", "reaped"}

// PackageList is the body of GET /v1/packages.
type PackageList struct {
	Packages []Package `json:"packages"`
	// NextCursor continues the listing (?cursor=…); empty on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Package is one package. Files is set only by GET /v1/packages/{name}.
type Package struct {
	Name           string          `json:"name"`
	RetentionClass string          `json:"retention_class"`
	State          string          `json:"state"`
	Metadata       json.RawMessage `json:"metadata"`
	CreatedAt      time.Time       `json:"created_at"`
	SealedAt       *time.Time      `json:"sealed_at,omitempty"`
	FileCount      int64           `json:"file_count"`
	TotalBytes     int64           `json:"total_bytes"`
	Retention      *Retention      `json:"retention,omitempty"`
	Files          []File          `json:"files,omitempty"`
}

// Retention is the retention state of a package.
type Retention struct {
	Class           string     `json:"class"`
	RetainUntil     *time.Time `json:"retain_until"`
	LegalHold       bool       `json:"legal_hold"`
	LegalHoldReason string     `json:"legal_hold_reason,omitempty"`
	ExpiredAt       *time.Time `json:"expired_at,omitempty"`
	ReapedAt        *time.Time `json:"reaped_at,omitempty"`
}

// File is one file of a package with both digests of its object and the
// object's verification state.
type File struct {
	Path         string       `json:"path"`
	Address      string       `json:"address"`
	BLAKE3       string       `json:"blake3"`
	SHA256       string       `json:"sha256"`
	Size         int64        `json:"size"`
	MediaType    string       `json:"media_type,omitempty"`
	AddedAt      time.Time    `json:"added_at"`
	Verification Verification `json:"verification"`
}

// Verification is the state of the best storage location of an object:
// ok, corrupt, missing, deleted, or unknown when no location is recorded
// (yet).
type Verification struct {
	State             string     `json:"state"`
	Backend           string     `json:"backend,omitempty"`
	LastVerifiedAt    *time.Time `json:"last_verified_at,omitempty"`
	VerificationCount int64      `json:"verification_count"`
}

const packageColumns = `p.name, p.retention_class, p.state, p.metadata, p.created_at, p.sealed_at,
	p.file_count, p.total_bytes, r.retention_class, r.retain_until, coalesce(r.legal_hold, false),
	r.legal_hold_reason, r.expired_at, r.reaped_at`

func scanPackage(row pgx.Row) (Package, error) {
	var (
		p                  Package
		meta               []byte
		rClass, holdReason *string
		r                  Retention
	)
	err := row.Scan(&p.Name, &p.RetentionClass, &p.State, &meta, &p.CreatedAt, &p.SealedAt,
		&p.FileCount, &p.TotalBytes, &rClass, &r.RetainUntil, &r.LegalHold, &holdReason, &r.ExpiredAt, &r.ReapedAt)
	if err != nil {
		return p, err
	}
	p.Metadata = json.RawMessage(meta)
	if rClass != nil {
		r.Class = *rClass
		if holdReason != nil {
			r.LegalHoldReason = *holdReason
		}
		p.Retention = &r
	}
	return p, nil
}

func badParam(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: CodeInvalidParameter, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) listPackages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := DefaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			s.fail(w, r, badParam("limit=%q is not a number in 1..%d", v, MaxPageSize))
			return
		}
		limit = n
	}
	state := q.Get("state")
	if state != "" && !contains(packageStates, state) {
		s.fail(w, r, badParam("state=%q is unknown; use one of %s", state, strings.Join(packageStates, ", ")))
		return
	}
	after := ""
	if c := q.Get("cursor"); c != "" {
		var ok bool
		if after, ok = decodeCursor(c); !ok || commands.CheckText(after, commands.Line) != nil {
			s.fail(w, r, &apiError{status: http.StatusBadRequest, code: CodeInvalidCursor,
				msg: "the cursor was not issued by this API; pass next_cursor from the previous page unchanged, or drop it to start over"})
			return
		}
	}
	rows, err := s.db.Query(r.Context(), `SELECT `+packageColumns+`
		FROM artifact_packages p LEFT JOIN retention_state r ON r.package = p.name
		WHERE ($1 = '' OR starts_with(p.name, $1))
		  AND ($2 = '' OR p.retention_class = $2)
		  AND ($3 = '' OR p.state = $3)
		  AND p.name COLLATE "C" > $4
		ORDER BY p.name COLLATE "C" LIMIT $5`,
		q.Get("prefix"), q.Get("class"), state, after, limit+1)
	if err != nil {
		s.fail(w, r, fmt.Errorf("list packages: %w", err))
		return
	}
	list := PackageList{Packages: []Package{}}
	for rows.Next() {
		p, err := scanPackage(rows)
		if err != nil {
			rows.Close()
			s.fail(w, r, fmt.Errorf("list packages: %w", err))
			return
		}
		list.Packages = append(list.Packages, p)
	}
	if err := rows.Err(); err != nil {
		s.fail(w, r, fmt.Errorf("list packages: %w", err))
		return
	}
	if len(list.Packages) > limit {
		list.Packages = list.Packages[:limit]
		list.NextCursor = encodeCursor(list.Packages[limit-1].Name)
	}
	writeJSON(w, http.StatusOK, list)
}

func contains(set []string, v string) bool {
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

// A cursor is the last name of a page, versioned so that its form can
// change without misreading old ones.
const cursorPrefix = "n1:"

func encodeCursor(name string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + name))
}

func decodeCursor(c string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !strings.HasPrefix(string(b), cursorPrefix) {
		return "", false
	}
	return strings.TrimPrefix(string(b), cursorPrefix), true
}

func (s *Server) getPackage(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	format := r.URL.Query().Get("format")
	if format != "" && format != "json" && format != "tar" {
		s.fail(w, r, badParam("format=%q is unknown; use json or tar", format))
		return
	}
	if format == "tar" || format == "" && strings.HasSuffix(name, ".tar") {
		s.getTar(w, r, strings.TrimSuffix(name, ".tar"))
		return
	}
	p, err := scanPackage(s.db.QueryRow(r.Context(), `SELECT `+packageColumns+`
		FROM artifact_packages p LEFT JOIN retention_state r ON r.package = p.name
		WHERE p.name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		s.fail(w, r, packageNotFound(name))
		return
	}
	if err != nil {
		s.fail(w, r, fmt.Errorf("read package %q: %w", name, err))
		return
	}
	files, err := s.packageFiles(r, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p.Files = make([]File, 0, len(files))
	for _, f := range files {
		p.Files = append(p.Files, f.File)
	}
	writeJSON(w, http.StatusOK, p)
}

func packageNotFound(name string) *apiError {
	return &apiError{status: http.StatusNotFound, code: CodeNotFound,
		msg: fmt.Sprintf("no package %q; list packages with GET /v1/packages?prefix=…", name)}
}

// fileRow is a File with what serving its bytes needs.
type fileRow struct {
	File
	obj object
}

// packageFiles returns the files of a package in byte order of their paths,
// each with the best location of its object.
func (s *Server) packageFiles(r *http.Request, name string) ([]fileRow, error) {
	rows, err := s.db.Query(r.Context(), `SELECT f.path, f.content_address, f.digest_blake3, f.digest_sha256,
			f.size_bytes, f.media_type, f.added_at,
			l.backend_id, l.state, l.last_verified_at, l.verification_count, l.stored_at
		FROM artifact_files f
		LEFT JOIN LATERAL (SELECT * FROM storage_locations l
			WHERE l.content_address = f.content_address ORDER BY `+locationOrder+` LIMIT 1) l ON true
		WHERE f.package = $1
		ORDER BY f.path COLLATE "C"`, name)
	if err != nil {
		return nil, fmt.Errorf("read files of package %q: %w", name, err)
	}
	defer rows.Close()
	var out []fileRow
	for rows.Next() {
		var (
			f             fileRow
			b3, s256      []byte
			media         *string
			backend, st   *string
			verifiedCount *int64
			storedAt      *time.Time
		)
		if err := rows.Scan(&f.Path, &f.Address, &b3, &s256, &f.Size, &media, &f.AddedAt,
			&backend, &st, &f.Verification.LastVerifiedAt, &verifiedCount, &storedAt); err != nil {
			return nil, fmt.Errorf("read files of package %q: %w", name, err)
		}
		f.BLAKE3, f.SHA256 = hex.EncodeToString(b3), hex.EncodeToString(s256)
		if media != nil {
			f.MediaType = *media
		}
		f.Verification.State = "unknown"
		if st != nil {
			f.Verification.State, f.Verification.Backend = *st, *backend
			f.Verification.VerificationCount = *verifiedCount
			f.obj.Backend, f.obj.State, f.obj.StoredAt = *backend, *st, *storedAt
		}
		addr, err := digest.Parse(f.Address)
		if err != nil {
			return nil, fmt.Errorf("package %q file %q: the catalog holds a bad address: %w", name, f.Path, err)
		}
		f.obj.Address, f.obj.Size = addr, f.Size
		copy(f.obj.BLAKE3[:], b3)
		copy(f.obj.SHA256[:], s256)
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read files of package %q: %w", name, err)
	}
	return out, nil
}

func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	name, path := r.PathValue("name"), r.PathValue("path")
	// A path no ingest could have stored names no file: say why.
	if err := commands.ValidatePath(path); err != nil {
		msg := err.Error()
		var rej *commands.Error
		if errors.As(err, &rej) {
			msg = rej.Reason
		}
		s.fail(w, r, badPath("%s; GET /v1/packages/%s lists the package's files", msg, urlSegment(name)))
		return
	}
	var (
		address string
		media   *string
	)
	err := s.db.QueryRow(r.Context(), `SELECT content_address, media_type FROM artifact_files
		WHERE package = $1 AND path = $2`, name, path).Scan(&address, &media)
	if errors.Is(err, pgx.ErrNoRows) {
		var exists bool
		if err := s.db.QueryRow(r.Context(), `SELECT EXISTS (SELECT 1 FROM artifact_packages WHERE name = $1)`, name).Scan(&exists); err != nil {
			s.fail(w, r, fmt.Errorf("read package %q: %w", name, err))
			return
		}
		if !exists {
			s.fail(w, r, packageNotFound(name))
			return
		}
		s.fail(w, r, &apiError{status: http.StatusNotFound, code: CodeNotFound,
			msg: fmt.Sprintf("package %q has no file %q; GET /v1/packages/%s lists its files", name, path, urlSegment(name))})
		return
	}
	if err != nil {
		s.fail(w, r, fmt.Errorf("read file %q of package %q: %w", path, name, err))
		return
	}
	addr, err := digest.Parse(address)
	if err != nil {
		s.fail(w, r, fmt.Errorf("package %q file %q: the catalog holds a bad address: %w", name, path, err))
		return
	}
	what := fmt.Sprintf("file %q of package %q (object %s)", path, name, addr)
	o, err := s.lookupObject(r.Context(), addr)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.code == CodeNotFound {
			err = unservable(what, stateMissing)
		}
		s.fail(w, r, err)
		return
	}
	ct := "application/octet-stream"
	if media != nil && *media != "" {
		ct = *media
	}
	// A path of an open package may be bound to other bytes later:
	// revalidate with the ETag every time.
	s.serveObject(w, r, "file", o, what, ct, "no-cache")
}

func urlSegment(name string) string { return strings.ReplaceAll(name, "/", "%2F") }

// getTar streams a whole package as a tar archive: files in byte order of
// their paths, mode 0644, modification time = when the file was added. Any
// file whose object is not servable fails the request before any byte is
// sent.
func (s *Server) getTar(w http.ResponseWriter, r *http.Request, name string) {
	var exists bool
	if err := s.db.QueryRow(r.Context(), `SELECT EXISTS (SELECT 1 FROM artifact_packages WHERE name = $1)`, name).Scan(&exists); err != nil {
		s.fail(w, r, fmt.Errorf("read package %q: %w", name, err))
		return
	}
	if !exists {
		s.fail(w, r, packageNotFound(name))
		return
	}
	files, err := s.packageFiles(r, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var worst *apiError
	var bad []string
	for _, f := range files {
		if f.obj.State == stateOK {
			continue
		}
		st := f.obj.State
		if st == "" {
			st = stateMissing
		}
		e := unservable("", st)
		if worst == nil || worseThan(e.code, worst.code) {
			worst = e
		}
		bad = append(bad, fmt.Sprintf("%s (%s)", f.Path, f.Verification.State))
	}
	if worst != nil {
		if len(bad) > 10 {
			bad = append(bad[:10], fmt.Sprintf("and %d more", len(bad)-10))
		}
		worst.msg = fmt.Sprintf("package %q cannot be served whole: %d file(s) have no servable bytes: %s; fetch the other files one by one, and run 'artifactstore explain %s'",
			name, len(files)-countOK(files), strings.Join(bad, ", "), name)
		s.fail(w, r, worst)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-tar")
	h.Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", strings.ReplaceAll(name, "/", "_")+".tar"))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	tw := tar.NewWriter(w)
	for _, f := range files {
		what := fmt.Sprintf("file %q of package %q in a tar stream", f.Path, name)
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg,
			Name:     f.Path,
			Size:     f.Size,
			Mode:     0o644,
			ModTime:  f.AddedAt,
		}); err != nil {
			s.abort(r.Context(), err, what)
		}
		if err := s.copyObject(r, tw, f.obj); err != nil {
			s.abort(r.Context(), err, what)
		}
	}
	if err := tw.Close(); err != nil {
		s.abort(r.Context(), err, fmt.Sprintf("the end of the tar stream of package %q", name))
	}
}

// copyObject writes the whole object o to w, checking its SHA-256.
func (s *Server) copyObject(r *http.Request, w io.Writer, o object) error {
	rc, err := s.objects.Serve(r.Context(), o.Backend, o.Address, nil)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := s.copyVerified(w, rc, o.Size, o.SHA256)
	s.bytes.WithLabelValues("tar").Add(float64(n))
	return err
}

func countOK(files []fileRow) int {
	n := 0
	for _, f := range files {
		if f.obj.State == stateOK {
			n++
		}
	}
	return n
}

// worseThan orders the codes of unservable objects: corrupt, then missing,
// then deleted.
func worseThan(a, b string) bool {
	rank := map[string]int{CodeObjectCorrupt: 0, CodeObjectMissing: 1, CodeObjectDeleted: 2}
	return rank[a] < rank[b]
}
