package explain

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/events"
)

// summarize says in one line what an event recorded.
func summarize(p events.Payload) string {
	switch p := p.(type) {
	case events.PackageCreatedV1:
		return fmt.Sprintf("package %s created, class %s", p.Name, p.RetentionClass)
	case events.PackageSealedV1:
		return fmt.Sprintf("package %s sealed", p.Name)
	case events.FileAddedV1:
		return fmt.Sprintf("%s: file %s -> %s (%d bytes)", p.Package, p.Path, p.Address, p.Size)
	case events.ObjectStoredV1:
		s := fmt.Sprintf("stored on %s (%d bytes)", p.BackendID, p.Size)
		if p.Deduplicated {
			s += ", already there (deduplicated)"
		}
		return s
	case events.RetentionAssignedV1:
		return fmt.Sprintf("%s: retention class %s, %s", p.Package, p.Class, until(p.RetainUntil))
	case events.RetentionChangedV1:
		s := fmt.Sprintf("%s: retention %s -> %s, %s (was %s)", p.Package, p.FromClass, p.Class, until(p.RetainUntil), until(p.PrevRetainTill))
		if p.Reason != "" {
			s += ": " + p.Reason
		}
		return s
	case events.LegalHoldSetV1:
		return fmt.Sprintf("%s: legal hold set: %s", p.Package, p.Reason)
	case events.LegalHoldReleasedV1:
		s := fmt.Sprintf("%s: legal hold released", p.Package)
		if p.Reason != "" {
			s += ": " + p.Reason
		}
		return s
	case events.RetentionExpiredV1:
		return fmt.Sprintf("%s: retention expired (class %s, retain-until %s)", p.Package, p.Class, day(p.RetainUntil))
	case events.ObjectVerifiedV1:
		return fmt.Sprintf("verified on %s: both digests and the size (%d bytes) match", p.BackendID, p.Size)
	case events.ObjectCorruptV1:
		return fmt.Sprintf("CORRUPT on %s: read %d bytes (expected %d), sha256 %s", p.BackendID, p.ActualSize, p.ExpectedSize, short(p.ActualSHA256))
	case events.ObjectMissingV1:
		return fmt.Sprintf("MISSING on %s: the backend does not hold the bytes", p.BackendID)
	case events.ObjectDeletedV1:
		return fmt.Sprintf("deleted from %s (%d bytes): %s", p.BackendID, p.Size, p.Reason)
	case events.ObjectRepairedV1:
		s := fmt.Sprintf("REPAIRED on %s from %s (%d bytes): the stored copy was %s", p.BackendID, repairSource(p.Source), p.Size, p.Was)
		if p.Detail != "" {
			s += ": " + p.Detail
		}
		return s
	case events.ObjectReplicatedV1:
		s := fmt.Sprintf("replicated to %s from the verified copy on %s (%d bytes)", p.BackendID, p.SourceBackendID, p.Size)
		if p.Deduplicated {
			s += ", already there (deduplicated)"
		}
		if p.Reason != "" {
			s += ": " + p.Reason
		}
		return s
	case events.IngestRejectedV1:
		return fmt.Sprintf("ingest rejected (%s): %s", p.Code, p.Reason)
	default:
		return fmt.Sprintf("%s v%d", p.EventType(), p.PayloadVersion())
	}
}

// repairSource says where a repair's good bytes came from, in words.
func repairSource(src string) string {
	if src == events.RepairSourceReupload {
		return "a re-upload"
	}
	if b, ok := strings.CutPrefix(src, events.RepairSourceReplica("")); ok {
		return "the copy on backend " + b
	}
	return src
}

func until(t *time.Time) string {
	if t == nil {
		return "never expires"
	}
	return "retain until " + day(*t)
}

func short(b []byte) string {
	h := hex.EncodeToString(b)
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

// objectVerdict is the one-paragraph answer for an object.
func objectVerdict(r *ObjectReport, hist []event) string {
	var state catalog.LocationState
	for _, l := range r.Locations {
		if state == "" || l.State.Rank() < state.Rank() {
			state = l.State
		}
	}
	var keepers, gone []string
	for _, ref := range r.References {
		s := fmt.Sprintf("%s (%s: %s)", ref.Package, ref.Retention.Class, ref.Why)
		if ref.Keeps {
			keepers = append(keepers, s)
		} else {
			gone = append(gone, s)
		}
	}
	refs := func() string {
		switch {
		case len(r.References) == 0:
			return "no package references it"
		case len(keepers) == 0:
			return fmt.Sprintf("none of the %d referencing package file(s) keeps it: %s", len(r.References), strings.Join(gone, "; "))
		default:
			return fmt.Sprintf("kept by %d of %d referencing package file(s): %s", len(keepers), len(r.References), strings.Join(keepers, "; "))
		}
	}
	last := func(t events.Type) *event {
		for i := len(hist) - 1; i >= 0; i-- {
			if events.Type(hist[i].Type) == t {
				return &hist[i]
			}
		}
		return nil
	}
	switch state {
	case "":
		return "No stored location is recorded (never stored, or the projector has not caught up); " + refs() + "."
	case catalog.LocationOK:
		v := "Present and served; " + refs() + "."
		if rp := lastRepair(hist); rp != nil {
			p := rp.payload.(events.ObjectRepairedV1)
			v = fmt.Sprintf("Present and served, repaired at %s from %s (the copy on %s was %s); %s.",
				day(rp.At), repairSource(p.Source), p.BackendID, p.Was, refs())
		}
		if len(keepers) == 0 {
			v += " Nothing keeps it: the reaper may delete it on its next run."
		}
		return v
	case catalog.LocationDeleted:
		v := "Deleted"
		if d := last(events.TypeObjectDeleted); d != nil {
			v += " at " + day(d.At) + " by " + d.Actor
			if p, ok := d.payload.(events.ObjectDeletedV1); ok {
				v += " (" + p.Reason + ")"
			}
		}
		return v + "; " + refs() + "."
	case catalog.LocationCorrupt:
		v := "Corrupt: its bytes failed verification"
		if c := last(events.TypeObjectCorrupt); c != nil {
			v += " at " + day(c.At)
		}
		return v + " and are not served; restore it from another copy. " + capitalize(refs()) + "."
	case catalog.LocationMissing:
		v := "Missing: the backend does not hold its bytes"
		if c := last(events.TypeObjectMissing); c != nil {
			v += " (found at " + day(c.At) + ")"
		}
		return v + "; restore it from another copy. " + capitalize(refs()) + "."
	default:
		return fmt.Sprintf("In storage state %q; %s.", state, refs())
	}
}

// lastRepair returns the object's last object.repaired event when no
// verification found the object damaged after it (the repair is what
// made the object ok), or nil.
func lastRepair(hist []event) *event {
	for i := len(hist) - 1; i >= 0; i-- {
		switch events.Type(hist[i].Type) {
		case events.TypeObjectRepaired:
			if _, ok := hist[i].payload.(events.ObjectRepairedV1); ok {
				return &hist[i]
			}
			return nil
		case events.TypeObjectCorrupt, events.TypeObjectMissing:
			return nil
		}
	}
	return nil
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// PackageFile is one file of a package with its object's state.
type PackageFile struct {
	Path    string `json:"path"`
	Address string `json:"address"`
	Size    int64  `json:"size"`
	// State is the best location state of the object (ok, corrupt,
	// missing, deleted) or "unknown" when none is recorded.
	State catalog.LocationState `json:"state"`
	// SharedWith counts the other packages that reference the object.
	SharedWith int `json:"shared_with"`
}

// PackageReport explains one package.
type PackageReport struct {
	Name       string               `json:"name"`
	Verdict    string               `json:"verdict"`
	State      catalog.PackageState `json:"state"`
	CreatedAt  *time.Time           `json:"created_at,omitempty"`
	SealedAt   *time.Time           `json:"sealed_at,omitempty"`
	FileCount  int64                `json:"file_count"`
	TotalBytes int64                `json:"total_bytes"`
	Retention  *Retention           `json:"retention,omitempty"`
	Files      []PackageFile        `json:"files"`
	History    []Entry              `json:"history"`
}

// Package explains the package name. It fails with ErrNotFound when
// neither the projections nor the log know it.
func (x *Explainer) Package(ctx context.Context, name string) (*PackageReport, error) {
	rep := &PackageReport{Name: name, State: catalog.PackageUnknown, Files: []PackageFile{}, History: []Entry{}}
	var class string
	p, err := x.catalog.Package(ctx, name)
	switch {
	case err == nil:
		rep.State, rep.CreatedAt, rep.SealedAt, rep.FileCount, rep.TotalBytes, class = p.State, &p.CreatedAt, p.SealedAt, p.FileCount, p.TotalBytes, p.Class
	case !errors.Is(err, catalog.ErrNotFound):
		return nil, fmt.Errorf("explain package %q: %w", name, err)
	}
	rt, err := x.catalog.Retention(ctx, name)
	switch {
	case err == nil:
		r := retention(rt)
		rep.Retention = &r
	case !errors.Is(err, catalog.ErrNotFound):
		return nil, fmt.Errorf("explain package %q: %w", name, err)
	}
	files, err := x.catalog.FileSummaries(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("explain package %q: %w", name, err)
	}
	for _, f := range files {
		rep.Files = append(rep.Files, PackageFile{Path: f.Path, Address: f.Address, Size: f.Size, State: f.State, SharedWith: int(f.SharedWith)})
	}
	hist, err := x.history(ctx, `subject_kind = 'package' AND subject_id = $1`, name)
	if err != nil {
		return nil, fmt.Errorf("explain package %q: %w", name, err)
	}
	for _, h := range hist {
		rep.History = append(rep.History, h.Entry)
	}
	if rep.State == catalog.PackageUnknown && rep.Retention == nil && len(rep.Files) == 0 && len(rep.History) == 0 {
		return nil, fmt.Errorf("package %q: %w: no projection row and no event names it", name, ErrNotFound)
	}
	if class == "" && rep.Retention != nil {
		class = rep.Retention.Class
	}
	rep.Verdict = packageVerdict(rep, class, x.now())
	return rep, nil
}

func packageVerdict(r *PackageReport, class string, now time.Time) string {
	if r.Retention == nil {
		return fmt.Sprintf("Package in state %s with no retention recorded yet (the projector may be behind).", r.State)
	}
	_, why := keeps(*r.Retention, now)
	counts := map[catalog.LocationState]int{}
	for _, f := range r.Files {
		counts[f.State]++
	}
	var parts []string
	for _, st := range append(catalog.LocationStates(), catalog.LocationUnknown) {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
		}
	}
	files := "no files"
	if len(parts) > 0 {
		files = "files: " + strings.Join(parts, ", ")
	}
	return fmt.Sprintf("Package %s, class %s: %s; %s.", r.State, class, why, files)
}

// WriteText writes the report for people.
func (r *ObjectReport) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("object %s\n\n%s\n\n", r.Address, r.Verdict)
	ew.printf("storage locations:\n")
	if len(r.Locations) == 0 {
		ew.printf("  none recorded\n")
	}
	tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	for _, l := range r.Locations {
		v := "never verified"
		if l.LastVerifiedAt != nil {
			v = fmt.Sprintf("last verified %s (%d verifications)", day(*l.LastVerifiedAt), l.VerificationCount)
		}
		if l.RepairedAt != nil {
			v += fmt.Sprintf(", repaired %s (%d repairs)", day(*l.RepairedAt), l.RepairCount)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d bytes\tstored %s\t%s\n", l.Backend, l.State, l.Size, day(l.StoredAt), v)
	}
	_ = tw.Flush()
	ew.printf("\nreferenced by:\n")
	if len(r.References) == 0 {
		ew.printf("  no package\n")
	}
	tw = tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	for _, ref := range r.References {
		k := "does not keep it"
		if ref.Keeps {
			k = "KEEPS it"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s: %s\n", ref.Package, ref.Path, ref.Retention.Class, ref.PackageState, k, ref.Why)
	}
	_ = tw.Flush()
	writeHistory(ew, r.History)
	return ew.err
}

// WriteText writes the report for people.
func (r *PackageReport) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("package %s\n\n%s\n\n", r.Name, r.Verdict)
	ew.printf("state: %s, %d files, %d bytes\n", r.State, r.FileCount, r.TotalBytes)
	if r.CreatedAt != nil {
		ew.printf("created: %s\n", day(*r.CreatedAt))
	}
	if r.SealedAt != nil {
		ew.printf("sealed: %s\n", day(*r.SealedAt))
	}
	if rt := r.Retention; rt != nil {
		ew.printf("retention: class %s, %s", rt.Class, until(rt.RetainUntil))
		if rt.NeverExpires {
			ew.printf(" (the class never expires)")
		}
		ew.printf("\n")
		if rt.LegalHold {
			ew.printf("legal hold: %s\n", rt.LegalHoldReason)
		}
		if rt.ExpiredAt != nil {
			ew.printf("expired: %s\n", day(*rt.ExpiredAt))
		}
		if rt.ReapedAt != nil {
			ew.printf("reaped: %s\n", day(*rt.ReapedAt))
		}
	}
	ew.printf("\nfiles:\n")
	if len(r.Files) == 0 {
		ew.printf("  none\n")
	}
	tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	for _, f := range r.Files {
		shared := ""
		if f.SharedWith > 0 {
			shared = fmt.Sprintf("shared with %d other package(s)", f.SharedWith)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d bytes\t%s\t%s\n", f.Path, f.Address, f.Size, f.State, shared)
	}
	_ = tw.Flush()
	writeHistory(ew, r.History)
	return ew.err
}

func writeHistory(ew *errWriter, h []Entry) {
	ew.printf("\nhistory (from the event log):\n")
	if len(h) == 0 {
		ew.printf("  no events\n")
	}
	for _, e := range h {
		ew.printf("  %-7s %s  %-20s %s  [%s]\n", fmt.Sprintf("#%d", e.Sequence), day(e.At), e.Type, e.Summary, e.Actor)
	}
}

// errWriter keeps the first write error so that the text can be written
// without checking every line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, args ...any) { fmt.Fprintf(e, format, args...) }
