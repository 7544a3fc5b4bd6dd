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

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/commands"
)

// Page sizes of GET /v1/packages.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// PackageList is the body of GET /v1/packages.
type PackageList struct {
	Packages []Package `json:"packages"`
	// NextCursor continues the listing (?cursor=…); empty on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Package is one package. Files is set only by GET /v1/packages/{name}.
type Package struct {
	Name           string               `json:"name"`
	RetentionClass string               `json:"retention_class"`
	State          catalog.PackageState `json:"state"`
	Metadata       json.RawMessage      `json:"metadata"`
	CreatedAt      time.Time            `json:"created_at"`
	SealedAt       *time.Time           `json:"sealed_at,omitempty"`
	FileCount      int64                `json:"file_count"`
	TotalBytes     int64                `json:"total_bytes"`
	Retention      *Retention           `json:"retention,omitempty"`
	Files          []File               `json:"files,omitempty"`
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
	State             catalog.LocationState `json:"state"`
	Backend           string                `json:"backend,omitempty"`
	LastVerifiedAt    *time.Time            `json:"last_verified_at,omitempty"`
	VerificationCount int64                 `json:"verification_count"`
	// Copies lists every stored copy of the object (one per backend)
	// and its state, best first.
	Copies []catalog.CopyState `json:"copies,omitempty"`
}

// packageJSON is the API's form of a package.
func packageJSON(p catalog.Package) Package {
	out := Package{Name: p.Name, RetentionClass: p.Class, State: p.State, Metadata: json.RawMessage(p.Metadata),
		CreatedAt: p.CreatedAt, SealedAt: p.SealedAt, FileCount: p.FileCount, TotalBytes: p.TotalBytes}
	if r := p.Retention; r != nil {
		out.Retention = &Retention{Class: r.Class, RetainUntil: r.RetainUntil, LegalHold: r.LegalHold,
			LegalHoldReason: r.LegalHoldReason, ExpiredAt: r.ExpiredAt, ReapedAt: r.ReapedAt}
	}
	return out
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
	state := catalog.PackageState(q.Get("state"))
	if state != "" && !state.Known() {
		s.fail(w, r, badParam("state=%q is unknown; use one of %s", state, packageStateList()))
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
	pkgs, err := s.catalog.Packages(r.Context(), catalog.PackageQuery{
		Prefix: q.Get("prefix"), Class: q.Get("class"), State: state, After: after, Limit: limit + 1})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	list := PackageList{Packages: make([]Package, 0, len(pkgs))}
	for _, p := range pkgs {
		list.Packages = append(list.Packages, packageJSON(p))
	}
	if len(list.Packages) > limit {
		list.Packages = list.Packages[:limit]
		list.NextCursor = encodeCursor(list.Packages[limit-1].Name)
	}
	writeJSON(w, http.StatusOK, list)
}

// packageStateList names the package states for an error message.
func packageStateList() string {
	var names []string
	for _, st := range catalog.PackageStates() {
		names = append(names, string(st))
	}
	return strings.Join(names, ", ")
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
	cp, err := s.catalog.Package(r.Context(), name)
	if errors.Is(err, catalog.ErrNotFound) {
		s.fail(w, r, packageNotFound(name))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	files, err := s.packageFiles(r, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	p := packageJSON(cp)
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
	files, err := s.catalog.PackageFiles(r.Context(), name)
	if err != nil {
		return nil, err
	}
	out := make([]fileRow, 0, len(files))
	for _, cf := range files {
		f := fileRow{File: File{Path: cf.Path, Address: cf.Address.String(),
			BLAKE3: hex.EncodeToString(cf.BLAKE3[:]), SHA256: hex.EncodeToString(cf.SHA256[:]),
			Size: cf.Size, MediaType: cf.MediaType, AddedAt: cf.AddedAt}}
		f.Verification.State = catalog.LocationUnknown
		f.obj.Address, f.obj.Size, f.obj.BLAKE3, f.obj.SHA256 = cf.Address, cf.Size, cf.BLAKE3, cf.SHA256
		if l := cf.Best; l != nil {
			f.Verification = Verification{State: l.State, Backend: l.Backend,
				LastVerifiedAt: l.LastVerifiedAt, VerificationCount: l.VerificationCount, Copies: l.Copies}
			f.obj.Backend, f.obj.State, f.obj.StoredAt, f.obj.Copies = l.Backend, l.State, l.StoredAt, l.Copies
		}
		out = append(out, f)
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
	file, err := s.catalog.File(r.Context(), name, path)
	if errors.Is(err, catalog.ErrNotFound) {
		exists, err := s.catalog.PackageExists(r.Context(), name)
		if err != nil {
			s.fail(w, r, err)
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
		s.fail(w, r, err)
		return
	}
	addr := file.Address
	what := fmt.Sprintf("file %q of package %q (object %s)", path, name, addr)
	o, err := s.lookupObject(r.Context(), addr)
	if err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.code == CodeNotFound {
			err = unservable(what, catalog.LocationMissing)
		}
		s.fail(w, r, err)
		return
	}
	ct := "application/octet-stream"
	if file.MediaType != "" {
		ct = file.MediaType
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
	exists, err := s.catalog.PackageExists(r.Context(), name)
	if err != nil {
		s.fail(w, r, err)
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
	for i, f := range files {
		if f.obj.State == catalog.LocationOK && s.objects.Corrupt(f.obj.Backend, f.obj.Address) != nil {
			// A read found it corrupt; the projection does not say so yet.
			files[i].obj.State, files[i].Verification.State = catalog.LocationCorrupt, catalog.LocationCorrupt
			f = files[i]
		}
		if f.obj.State == catalog.LocationOK {
			continue
		}
		st := f.obj.State
		if st == "" {
			st = catalog.LocationMissing
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

// copyObject writes the whole object o to w, every byte proven against its
// tree on the way.
func (s *Server) copyObject(r *http.Request, w io.Writer, o object) error {
	body, err := s.objects.ServeAny(r.Context(), o.backends(), o.Address, nil, o.expected())
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = copyProven(s.counting(w, "tar"), body, o.Size)
	return err
}

func countOK(files []fileRow) int {
	n := 0
	for _, f := range files {
		if f.obj.State == catalog.LocationOK {
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
