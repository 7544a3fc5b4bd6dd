// Package explain answers "why is this object still here?" and "why was it
// deleted?" from the event log and the projections derived from it: for a
// content address, its storage locations, every package and path that
// references it with that package's retention (class, retain-until, legal
// hold, expiry, reaping), and the history of events about it and about the
// retention of its packages; for a package, its retention, its files and
// its history.
//
// It only reads. Whether a reference keeps an object alive follows the
// retention rules of the design (a legal hold or a class that never expires
// keeps it; an expired or reaped package does not); the reaper decides, the
// explanation only reports.
package explain

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

// ErrNotFound: neither the projections nor the event log know the subject.
var ErrNotFound = errors.New("nothing is known about it")

// maxHistoryPackages caps how many referencing packages contribute their
// retention events to an object's history, so that an object shared by
// thousands of packages gives a readable answer.
const maxHistoryPackages = 50

// catalogReader is what an Explainer reads of the projections.
type catalogReader interface {
	Locations(ctx context.Context, addr digest.Address) ([]catalog.Location, error)
	References(ctx context.Context, addr digest.Address) ([]catalog.Reference, error)
	Package(ctx context.Context, name string) (catalog.Package, error)
	Retention(ctx context.Context, name string) (catalog.Retention, error)
	FileSummaries(ctx context.Context, pkg string) ([]catalog.FileSummary, error)
}

var _ catalogReader = (*catalog.Catalog)(nil)

// Explainer reads the log and the projections of one database.
type Explainer struct {
	db      *pgxpool.Pool // the event log
	catalog catalogReader
	codec   *events.Codec
	now     func() time.Time
}

// New returns an Explainer; now is the clock that decides whether a
// retain-until date has passed (nil means time.Now).
func New(db *pgxpool.Pool, codec *events.Codec, now func() time.Time) *Explainer {
	if now == nil {
		now = time.Now
	}
	return &Explainer{db: db, catalog: catalog.New(db), codec: codec, now: now}
}

// Location is one storage location of an object.
type Location struct {
	Backend           string                `json:"backend"`
	State             catalog.LocationState `json:"state"`
	Size              int64                 `json:"size"`
	StoredAt          time.Time             `json:"stored_at"`
	LastVerifiedAt    *time.Time            `json:"last_verified_at,omitempty"`
	VerificationCount int64                 `json:"verification_count"`
	// RepairedAt is when a damaged or lost copy was last replaced by
	// verified bytes; RepairCount how many times that happened.
	RepairedAt  *time.Time `json:"repaired_at,omitempty"`
	RepairCount int64      `json:"repair_count"`
}

// Retention is a package's retention as projected from the log.
type Retention struct {
	Class           string     `json:"class"`
	RetainUntil     *time.Time `json:"retain_until,omitempty"`
	NeverExpires    bool       `json:"never_expires"`
	LegalHold       bool       `json:"legal_hold"`
	LegalHoldReason string     `json:"legal_hold_reason,omitempty"`
	ExpiredAt       *time.Time `json:"expired_at,omitempty"`
	ReapedAt        *time.Time `json:"reaped_at,omitempty"`
}

// Reference is one path of one package that names the object.
type Reference struct {
	Package      string               `json:"package"`
	Path         string               `json:"path"`
	PackageState catalog.PackageState `json:"package_state"`
	Retention    Retention            `json:"retention"`
	// Keeps is true when this reference alone keeps the bytes from being
	// reaped; Why says why (or why not) in words.
	Keeps bool   `json:"keeps"`
	Why   string `json:"why"`
}

// Entry is one event of a history.
type Entry struct {
	Sequence  int64     `json:"sequence"`
	At        time.Time `json:"at"`
	Type      string    `json:"type"`
	Subject   string    `json:"subject"`
	Actor     string    `json:"actor"`
	CommandID string    `json:"command_id,omitempty"`
	Summary   string    `json:"summary"`
}

// ObjectReport explains one content address.
type ObjectReport struct {
	Address    string      `json:"address"`
	Verdict    string      `json:"verdict"`
	Locations  []Location  `json:"locations"`
	References []Reference `json:"references"`
	History    []Entry     `json:"history"`
}

// Object explains the object at addr. It fails with ErrNotFound when no
// location, no reference and no event names it.
func (x *Explainer) Object(ctx context.Context, addr digest.Address) (*ObjectReport, error) {
	a := addr.String()
	rep := &ObjectReport{Address: a, Locations: []Location{}, References: []Reference{}, History: []Entry{}}
	locs, err := x.catalog.Locations(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("explain %s: %w", a, err)
	}
	for _, l := range locs {
		rep.Locations = append(rep.Locations, Location{Backend: l.Backend, State: l.State, Size: l.Size,
			StoredAt: l.StoredAt, LastVerifiedAt: l.LastVerifiedAt, VerificationCount: l.VerificationCount,
			RepairedAt: l.RepairedAt, RepairCount: l.RepairCount})
	}
	refs, err := x.catalog.References(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("explain %s: %w", a, err)
	}
	now := x.now()
	for _, r := range refs {
		ref := Reference{Package: r.Package, Path: r.Path, PackageState: r.PackageState, Retention: retention(r.Retention)}
		ref.Keeps, ref.Why = keeps(ref.Retention, now)
		rep.References = append(rep.References, ref)
	}

	var pkgs []string
	seen := map[string]bool{}
	for _, r := range rep.References {
		if !seen[r.Package] && len(pkgs) < maxHistoryPackages {
			seen[r.Package] = true
			pkgs = append(pkgs, r.Package)
		}
	}
	hist, err := x.history(ctx, `(subject_kind = 'object' AND subject_id = $1)
		OR (subject_kind = 'package' AND subject_id = ANY($2) AND event_type IN
			('file.added', 'retention.assigned', 'retention.changed', 'legal_hold.set', 'legal_hold.released', 'retention.expired'))`,
		a, pkgs)
	if err != nil {
		return nil, fmt.Errorf("explain %s: %w", a, err)
	}
	for _, h := range hist {
		// Files of the referencing packages that name other objects are
		// not part of this story.
		if fa, ok := h.payload.(events.FileAddedV1); ok && fa.Address != addr {
			continue
		}
		rep.History = append(rep.History, h.Entry)
	}
	if len(rep.Locations) == 0 && len(rep.References) == 0 && len(rep.History) == 0 {
		return nil, fmt.Errorf("object %s: %w: no location, no package file and no event names it", a, ErrNotFound)
	}
	rep.Verdict = objectVerdict(rep, hist)
	return rep, nil
}

func retention(r catalog.Retention) Retention {
	return Retention{Class: r.Class, RetainUntil: r.RetainUntil, NeverExpires: r.NeverExpires, LegalHold: r.LegalHold,
		LegalHoldReason: r.LegalHoldReason, ExpiredAt: r.ExpiredAt, ReapedAt: r.ReapedAt}
}

// keeps applies the retention rules to one package.
func keeps(r Retention, now time.Time) (bool, string) {
	switch {
	case r.ReapedAt != nil:
		return false, "package reaped " + day(*r.ReapedAt)
	case r.LegalHold:
		why := "legal hold"
		if r.LegalHoldReason != "" {
			why += ": " + r.LegalHoldReason
		}
		return true, why
	case r.ExpiredAt != nil:
		return false, "retention expired " + day(*r.ExpiredAt)
	case r.NeverExpires:
		return true, "class " + r.Class + " never expires"
	case r.Class == "":
		return true, "no retention recorded yet (the projector may be behind); kept"
	case r.RetainUntil == nil:
		return true, "no retain-until date; kept"
	case r.RetainUntil.After(now):
		return true, "retained until " + day(*r.RetainUntil)
	default:
		return true, "retain-until " + day(*r.RetainUntil) + " has passed; kept until the reaper expires the package"
	}
}

func day(t time.Time) string { return t.UTC().Format(time.RFC3339) }

type event struct {
	Entry
	payload events.Payload
}

// history reads the events matching where ($1, $2 its arguments) in log
// order, with a one-line summary each.
func (x *Explainer) history(ctx context.Context, where string, args ...any) ([]event, error) {
	rows, err := x.db.Query(ctx, `SELECT sequence, occurred_at, event_type, payload_version, subject_kind, subject_id,
			actor, command_id, payload, payload_digest
		FROM events WHERE `+where+` ORDER BY sequence`, args...)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	defer rows.Close()
	var out []event
	for rows.Next() {
		var (
			e       events.Event
			typ     string
			version int16
			cmd     *string
			pd      []byte
		)
		if err := rows.Scan(&e.Sequence, &e.OccurredAt, &typ, &version, &e.SubjectKind, &e.SubjectID,
			&e.Actor, &cmd, &e.Payload, &pd); err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
		e.Type, e.PayloadVersion = events.Type(typ), int(version)
		copy(e.PayloadDigest[:], pd)
		ev := event{Entry: Entry{Sequence: e.Sequence, At: e.OccurredAt.UTC(), Type: typ, Actor: e.Actor,
			Subject: e.SubjectKind + " " + e.SubjectID}}
		if cmd != nil {
			ev.CommandID = *cmd
		}
		p, err := x.codec.DecodeEvent(e)
		if err != nil {
			ev.Summary = fmt.Sprintf("UNREADABLE payload (%v); run 'artifactstore audit'", err)
		} else {
			ev.payload = p
			ev.Summary = summarize(p)
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}
