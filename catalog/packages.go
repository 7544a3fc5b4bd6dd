package catalog

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/digest"
)

// Package is one package (an artifact_packages row) with its retention.
type Package struct {
	Name  string
	Class string
	State PackageState
	// Metadata is the package's metadata as a JSON object.
	Metadata   []byte
	CreatedAt  time.Time
	SealedAt   *time.Time
	FileCount  int64
	TotalBytes int64
	// Retention is nil when no retention is recorded (yet).
	Retention *Retention
}

// Retention is a package's retention (a retention_state row).
type Retention struct {
	Class       string
	RetainUntil *time.Time
	// NeverExpires tells whether the class never expires
	// (retention_classes); only Retention and References read it.
	NeverExpires    bool
	LegalHold       bool
	LegalHoldReason string
	ExpiredAt       *time.Time
	ReapedAt        *time.Time
}

// PackageQuery selects a page of packages; empty fields select all.
type PackageQuery struct {
	// Prefix selects the names that start with it.
	Prefix string
	Class  string
	State  PackageState
	// After selects the names after it in byte order (a page's cursor).
	After string
	// Limit is the most packages returned.
	Limit int
}

const packageColumns = `p.name, p.retention_class, p.state, p.metadata, p.created_at, p.sealed_at,
	p.file_count, p.total_bytes, r.retention_class, r.retain_until, coalesce(r.legal_hold, false),
	r.legal_hold_reason, r.expired_at, r.reaped_at`

func scanPackage(row pgx.Row) (Package, error) {
	var (
		p                  Package
		rClass, holdReason *string
		r                  Retention
	)
	err := row.Scan(&p.Name, &p.Class, &p.State, &p.Metadata, &p.CreatedAt, &p.SealedAt,
		&p.FileCount, &p.TotalBytes, &rClass, &r.RetainUntil, &r.LegalHold, &holdReason, &r.ExpiredAt, &r.ReapedAt)
	if err != nil {
		return p, err
	}
	if rClass != nil {
		r.Class = *rClass
		if holdReason != nil {
			r.LegalHoldReason = *holdReason
		}
		p.Retention = &r
	}
	return p, nil
}

// Packages returns the packages q selects, in byte order of their names.
func (c *Catalog) Packages(ctx context.Context, q PackageQuery) ([]Package, error) {
	rows, err := c.db.Query(ctx, `SELECT `+packageColumns+`
		FROM artifact_packages p LEFT JOIN retention_state r ON r.package = p.name
		WHERE ($1 = '' OR starts_with(p.name, $1))
		  AND ($2 = '' OR p.retention_class = $2)
		  AND ($3 = '' OR p.state = $3)
		  AND p.name COLLATE "C" > $4
		ORDER BY p.name COLLATE "C" LIMIT $5`,
		q.Prefix, q.Class, string(q.State), q.After, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("catalog: list packages: %w", err)
	}
	defer rows.Close()
	var out []Package
	for rows.Next() {
		p, err := scanPackage(rows)
		if err != nil {
			return nil, fmt.Errorf("catalog: list packages: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: list packages: %w", err)
	}
	return out, nil
}

// Package returns the package name. It fails with ErrNotFound when there
// is no such package.
func (c *Catalog) Package(ctx context.Context, name string) (Package, error) {
	p, err := scanPackage(c.db.QueryRow(ctx, `SELECT `+packageColumns+`
		FROM artifact_packages p LEFT JOIN retention_state r ON r.package = p.name
		WHERE p.name = $1`, name))
	if err != nil {
		return p, noRow(err, fmt.Sprintf("package %q", name))
	}
	return p, nil
}

// PackageExists reports whether the package name exists.
func (c *Catalog) PackageExists(ctx context.Context, name string) (bool, error) {
	var exists bool
	if err := c.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM artifact_packages WHERE name = $1)`, name).Scan(&exists); err != nil {
		return false, fmt.Errorf("catalog: read package %q: %w", name, err)
	}
	return exists, nil
}

// Retention returns the retention of the package name, with whether its
// class never expires. It fails with ErrNotFound when none is recorded.
func (c *Catalog) Retention(ctx context.Context, name string) (Retention, error) {
	var rt Retention
	err := c.db.QueryRow(ctx, `SELECT r.retention_class, r.retain_until, coalesce(c.never_expires, false), r.legal_hold,
			coalesce(r.legal_hold_reason, ''), r.expired_at, r.reaped_at
		FROM retention_state r LEFT JOIN retention_classes c ON c.name = r.retention_class
		WHERE r.package = $1`, name).
		Scan(&rt.Class, &rt.RetainUntil, &rt.NeverExpires, &rt.LegalHold, &rt.LegalHoldReason, &rt.ExpiredAt, &rt.ReapedAt)
	if err != nil {
		return rt, noRow(err, fmt.Sprintf("retention of package %q", name))
	}
	return rt, nil
}

// File is one file of a package (an artifact_files row).
type File struct {
	Package, Path  string
	Address        digest.Address
	BLAKE3, SHA256 [32]byte
	Size           int64
	MediaType      string
	AddedAt        time.Time
	// Best is the best location of the file's object (LocationState.Rank,
	// then backend id): Backend, State, StoredAt, LastVerifiedAt and
	// VerificationCount, and Copies (every location of the object); nil
	// when none is recorded. Only PackageFiles fills it.
	Best *Location
}

// File returns the address and media type of the file at path in the
// package pkg. It fails with ErrNotFound when there is no such file (the
// package may still exist: PackageExists).
func (c *Catalog) File(ctx context.Context, pkg, path string) (File, error) {
	f := File{Package: pkg, Path: path}
	var (
		address string
		media   *string
	)
	err := c.db.QueryRow(ctx, `SELECT content_address, media_type FROM artifact_files
		WHERE package = $1 AND path = $2`, pkg, path).Scan(&address, &media)
	if err != nil {
		return f, noRow(err, fmt.Sprintf("file %q of package %q", path, pkg))
	}
	if media != nil {
		f.MediaType = *media
	}
	f.Address, err = parseAddress(address, fmt.Sprintf("file %q of package %q", path, pkg))
	return f, err
}

// PackageFiles returns the files of the package pkg in byte order of their
// paths, each with the best location of its object. A package without
// files, or without a row, has none.
func (c *Catalog) PackageFiles(ctx context.Context, pkg string) ([]File, error) {
	rows, err := c.db.Query(ctx, `SELECT f.path, f.content_address, f.digest_blake3, f.digest_sha256,
			f.size_bytes, f.media_type, f.added_at,
			l.backend_id, l.state, l.last_verified_at, l.verification_count, l.stored_at, `+copiesSQL+`
		FROM artifact_files f
		LEFT JOIN LATERAL (SELECT * FROM storage_locations l
			WHERE l.content_address = f.content_address ORDER BY `+locationRank+`, backend_id LIMIT 1) l ON true
		WHERE f.package = $1
		ORDER BY f.path COLLATE "C"`, pkg)
	if err != nil {
		return nil, fmt.Errorf("catalog: read files of package %q: %w", pkg, err)
	}
	defer rows.Close()
	var out []File
	for rows.Next() {
		var (
			f             = File{Package: pkg}
			address       string
			b3, s256      []byte
			media         *string
			backend       *string
			st            *LocationState
			lastVerified  *time.Time
			verifiedCount *int64
			storedAt      *time.Time
			copyBackends  []string
			copyStates    []string
		)
		if err := rows.Scan(&f.Path, &address, &b3, &s256, &f.Size, &media, &f.AddedAt,
			&backend, &st, &lastVerified, &verifiedCount, &storedAt, &copyBackends, &copyStates); err != nil {
			return nil, fmt.Errorf("catalog: read files of package %q: %w", pkg, err)
		}
		if media != nil {
			f.MediaType = *media
		}
		where := fmt.Sprintf("file %q of package %q", f.Path, pkg)
		if f.Address, err = parseAddress(address, where); err != nil {
			return nil, err
		}
		if err := digest32(&f.BLAKE3, b3, where); err != nil {
			return nil, err
		}
		if err := digest32(&f.SHA256, s256, where); err != nil {
			return nil, err
		}
		if st != nil {
			f.Best = &Location{Address: f.Address, Backend: *backend, State: *st, Size: f.Size, BLAKE3: f.BLAKE3, SHA256: f.SHA256,
				StoredAt: *storedAt, LastVerifiedAt: lastVerified, VerificationCount: *verifiedCount}
			fillCopies(f.Best, copyBackends, copyStates)
		}
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("catalog: read files of package %q: %w", pkg, err)
	}
	return out, nil
}

// FileSummary is one file of a package with the state of its object and
// how widely the object is shared.
type FileSummary struct {
	Path    string
	Address string
	Size    int64
	// State is the best location state of the object, or LocationUnknown
	// when none is recorded.
	State LocationState
	// SharedWith counts the other packages that reference the object.
	SharedWith int64
}

// FileSummaries returns the files of the package pkg in byte order of
// their paths. The address is reported as recorded, unparsed: the
// summaries are for people.
func (c *Catalog) FileSummaries(ctx context.Context, pkg string) ([]FileSummary, error) {
	rows, err := c.db.Query(ctx, `SELECT f.path, f.content_address, f.size_bytes,
			coalesce((SELECT state FROM storage_locations l WHERE l.content_address = f.content_address
				ORDER BY `+locationRank+` LIMIT 1), '`+string(LocationUnknown)+`'),
			(SELECT count(DISTINCT o.package) FROM artifact_files o WHERE o.content_address = f.content_address AND o.package <> f.package)
		FROM artifact_files f WHERE f.package = $1 ORDER BY f.path COLLATE "C"`, pkg)
	if err != nil {
		return nil, fmt.Errorf("catalog: read files of package %q: %w", pkg, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (FileSummary, error) {
		var f FileSummary
		err := r.Scan(&f.Path, &f.Address, &f.Size, &f.State, &f.SharedWith)
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: read files of package %q: %w", pkg, err)
	}
	return out, nil
}

// Reference is one path of one package that names an object, with the
// package's state and retention as projected.
type Reference struct {
	Package string
	Path    string
	// PackageState is PackageUnknown when the package has no row (yet).
	PackageState PackageState
	// Retention.Class falls back to the package's class, or "", when no
	// retention is recorded.
	Retention Retention
}

// References returns every package file that names addr (by its primary
// address), by package then path.
func (c *Catalog) References(ctx context.Context, addr digest.Address) ([]Reference, error) {
	rows, err := c.db.Query(ctx, `SELECT f.package, f.path, coalesce(p.state, '`+string(PackageUnknown)+`'),
			coalesce(r.retention_class, p.retention_class, ''), r.retain_until, coalesce(c.never_expires, false),
			coalesce(r.legal_hold, false), coalesce(r.legal_hold_reason, ''), r.expired_at, r.reaped_at
		FROM artifact_files f
		LEFT JOIN artifact_packages p ON p.name = f.package
		LEFT JOIN retention_state r ON r.package = f.package
		LEFT JOIN retention_classes c ON c.name = coalesce(r.retention_class, p.retention_class)
		WHERE f.content_address = $1
		ORDER BY f.package COLLATE "C", f.path COLLATE "C"`, addr.String())
	if err != nil {
		return nil, fmt.Errorf("catalog: read references to %s: %w", addr, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Reference, error) {
		var ref Reference
		rt := &ref.Retention
		err := r.Scan(&ref.Package, &ref.Path, &ref.PackageState, &rt.Class, &rt.RetainUntil, &rt.NeverExpires,
			&rt.LegalHold, &rt.LegalHoldReason, &rt.ExpiredAt, &rt.ReapedAt)
		return ref, err
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: read references to %s: %w", addr, err)
	}
	return out, nil
}

// PackageCounts counts the packages by state (a state with none is
// absent).
func (c *Catalog) PackageCounts(ctx context.Context) (map[PackageState]int64, error) {
	rows, err := c.db.Query(ctx, `SELECT state, count(*) FROM artifact_packages GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("catalog: count packages: %w", err)
	}
	out := map[PackageState]int64{}
	var (
		st PackageState
		n  int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&st, &n}, func() error {
		out[st] = n
		return nil
	}); err != nil {
		return nil, fmt.Errorf("catalog: count packages: %w", err)
	}
	return out, nil
}

// LegalHolds counts the packages on legal hold.
func (c *Catalog) LegalHolds(ctx context.Context) (int64, error) {
	var n int64
	if err := c.db.QueryRow(ctx, `SELECT count(*) FROM retention_state WHERE legal_hold`).Scan(&n); err != nil {
		return 0, fmt.Errorf("catalog: count legal holds: %w", err)
	}
	return n, nil
}

// Expiry is a package that will expire.
type Expiry struct {
	Package     string
	Class       string
	RetainUntil time.Time
}

// NextExpiries returns the limit packages that expire next: not expired,
// not on hold, with a retain-until date; by date, then name. The limit is
// a literal of the query, so that the planner sees it.
func (c *Catalog) NextExpiries(ctx context.Context, limit int) ([]Expiry, error) {
	rows, err := c.db.Query(ctx, `
		SELECT package, retention_class, retain_until FROM retention_state
		WHERE retain_until IS NOT NULL AND expired_at IS NULL AND NOT legal_hold
		ORDER BY retain_until, package LIMIT `+strconv.Itoa(limit))
	if err != nil {
		return nil, fmt.Errorf("catalog: list next expiries: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Expiry, error) {
		var e Expiry
		err := r.Scan(&e.Package, &e.Class, &e.RetainUntil)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: list next expiries: %w", err)
	}
	return out, nil
}
