package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/artifactstore/artifactstore/catalog"
	"github.com/artifactstore/artifactstore/events"
)

// tables names the four projection tables a projector writes: the live
// ones, or their *_rebuild twins during a rebuild.
type tables struct {
	packages, files, locations, retention string
}

var liveTables = tables{"artifact_packages", "artifact_files", "storage_locations", "retention_state"}

func (t tables) suffixed(s string) tables {
	return tables{t.packages + s, t.files + s, t.locations + s, t.retention + s}
}

func (t tables) all() []string { return []string{t.packages, t.files, t.locations, t.retention} }

func metadataJSON(m map[string]string) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(m) // map keys are sorted: deterministic
	if err != nil {
		return "", fmt.Errorf("encode package metadata: %w", err)
	}
	return string(b), nil
}

// keys collects what a batch's events touch, so that every row they can
// read is loaded with one query per table.
type keys struct {
	pkgs          map[string]bool
	files         map[fileKey]bool
	locs          map[locKey]bool
	deletedAddrs  map[string]bool
	deletedLocs   map[locKey]bool
	expiredPkgs   map[string]bool
	addedAddrs    map[string]map[string]bool // package → addresses of its files added
	needReapCheck bool
}

func collectKeys(ps []events.Payload) keys {
	k := keys{
		pkgs: map[string]bool{}, files: map[fileKey]bool{}, locs: map[locKey]bool{},
		deletedAddrs: map[string]bool{}, deletedLocs: map[locKey]bool{}, expiredPkgs: map[string]bool{}, addedAddrs: map[string]map[string]bool{},
	}
	for _, p := range ps {
		switch p := p.(type) {
		case events.PackageCreatedV1:
			k.pkgs[p.Name] = true
		case events.PackageSealedV1:
			k.pkgs[p.Name] = true
		case events.FileAddedV1:
			k.pkgs[p.Package] = true
			k.files[fileKey{p.Package, p.Path}] = true
			addIndex(k.addedAddrs, p.Package, p.Address.String())
		case events.ObjectStoredV1:
			k.locs[locKey{p.Address.String(), p.BackendID}] = true
		case events.RetentionAssignedV1:
			k.pkgs[p.Package] = true
		case events.RetentionChangedV1:
			k.pkgs[p.Package] = true
		case events.LegalHoldSetV1:
			k.pkgs[p.Package] = true
		case events.LegalHoldReleasedV1:
			k.pkgs[p.Package] = true
		case events.ObjectVerifiedV1:
			k.locs[locKey{p.Address.String(), p.BackendID}] = true
		case events.ObjectCorruptV1:
			k.locs[locKey{p.Address.String(), p.BackendID}] = true
		case events.ObjectMissingV1:
			k.locs[locKey{p.Address.String(), p.BackendID}] = true
		case events.ObjectRepairedV1:
			k.locs[locKey{p.Address.String(), p.BackendID}] = true
		case events.ObjectReplicatedV1:
			k.locs[locKey{p.Address.String(), p.BackendID}] = true
		case events.RetentionExpiredV1:
			k.pkgs[p.Package] = true
			k.expiredPkgs[p.Package] = true
			k.needReapCheck = true
		case events.ObjectDeletedV1:
			k.locs[locKey{p.Address.String(), p.BackendID}] = true
			k.deletedAddrs[p.Address.String()] = true
			k.deletedLocs[locKey{p.Address.String(), p.BackendID}] = true
			k.needReapCheck = true
		}
	}
	return k
}

func setKeys[K comparable](m map[K]bool) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func nullTime(t pgtype.Timestamptz) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

func nullText(t pgtype.Text) *string {
	if !t.Valid {
		return nil
	}
	s := t.String
	return &s
}

const (
	pkgCols  = `name, retention_class, metadata::text, created_at, sealed_at, file_count, total_bytes, state`
	fileCols = `package, path, content_address, digest_algorithm, digest_primary, digest_blake3, digest_sha256, size_bytes, media_type, added_at`
	locCols  = `content_address, backend_id, digest_algorithm, digest_blake3, digest_sha256, size_bytes, state, stored_at, last_verified_at, verification_count, retrieval_tier, restore_status, repaired_at, repair_count`
	retCols  = `package, retention_class, retain_until, legal_hold, legal_hold_reason, expired_at, reaped_at`
)

func scanPkg(row pgx.CollectableRow) (*pkgRow, error) {
	var r pkgRow
	var sealed pgtype.Timestamptz
	var st string
	if err := row.Scan(&r.Name, &r.Class, &r.Metadata, &r.CreatedAt, &sealed, &r.FileCount, &r.TotalBytes, &st); err != nil {
		return nil, err
	}
	r.State = catalog.PackageState(st)
	r.CreatedAt = r.CreatedAt.UTC()
	r.SealedAt = nullTime(sealed)
	r.existed = true
	return &r, nil
}

func scanFile(row pgx.CollectableRow) (*fileRow, error) {
	var r fileRow
	var mt pgtype.Text
	if err := row.Scan(&r.Package, &r.Path, &r.Address, &r.Algorithm, &r.Primary, &r.BLAKE3, &r.SHA256, &r.Size, &mt, &r.AddedAt); err != nil {
		return nil, err
	}
	r.AddedAt = r.AddedAt.UTC()
	r.MediaType = nullText(mt)
	r.existed = true
	return &r, nil
}

func scanLoc(row pgx.CollectableRow) (*locRow, error) {
	var r locRow
	var lv, ra pgtype.Timestamptz
	var rs pgtype.Text
	var st, tier string
	if err := row.Scan(&r.Address, &r.Backend, &r.Algorithm, &r.BLAKE3, &r.SHA256, &r.Size, &st, &r.StoredAt, &lv, &r.Verified, &tier, &rs, &ra, &r.Repairs); err != nil {
		return nil, err
	}
	r.State, r.Tier = catalog.LocationState(st), catalog.RetrievalTier(tier)
	r.StoredAt = r.StoredAt.UTC()
	r.LastVerified = nullTime(lv)
	r.RepairedAt = nullTime(ra)
	r.Restore = nullText(rs)
	r.existed = true
	return &r, nil
}

func scanPartialFile(row pgx.CollectableRow) (*fileRow, error) {
	r := fileRow{existed: true, partial: true}
	return &r, row.Scan(&r.Package, &r.Path, &r.Address)
}

func scanPartialLoc(row pgx.CollectableRow) (*locRow, error) {
	r := locRow{existed: true, partial: true}
	var st string
	err := row.Scan(&r.Address, &r.Backend, &st)
	r.State = catalog.LocationState(st)
	return &r, err
}

func scanRet(row pgx.CollectableRow) (*retRow, error) {
	var r retRow
	var until, exp, reaped pgtype.Timestamptz
	var reason pgtype.Text
	if err := row.Scan(&r.Package, &r.Class, &until, &r.Hold, &reason, &exp, &reaped); err != nil {
		return nil, err
	}
	r.RetainUntil, r.ExpiredAt, r.ReapedAt = nullTime(until), nullTime(exp), nullTime(reaped)
	r.HoldReason = nullText(reason)
	r.existed = true
	return &r, nil
}

func queryRows[T any](ctx context.Context, tx pgx.Tx, scan pgx.RowToFunc[T], sql string, args ...any) ([]T, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scan)
}

// load reads every row the batch can touch into a fresh state. It runs in
// the batch's transaction, after the checkpoint row is locked, so the rows
// are those the previous batch committed. idx, if not nil, is the memo
// at that checkpoint: rows it remembers are not queried.
func load(ctx context.Context, tx pgx.Tx, t tables, k keys, idx *memo) (*state, error) {
	s := newState()
	var (
		names []string
		fks   []fileKey
		lks   []locKey
	)
	for name := range k.pkgs {
		if c, ok := idx.cachedPkg(name); ok {
			if c.pkg != nil {
				s.pkgs[name] = c.pkg
			}
			if c.ret != nil {
				s.ret[name] = c.ret
			}
			continue
		}
		names = append(names, name)
	}
	for fk := range k.files {
		if c, ok := idx.cachedFile(fk); ok {
			if c != nil {
				s.putFile(c)
			}
			continue
		}
		if idx.absentFile(fk) {
			continue
		}
		fks = append(fks, fk)
	}
	for lk := range k.locs {
		if c, ok := idx.cachedLoc(lk); ok {
			if c != nil {
				s.putLoc(c)
			}
			continue
		}
		if idx.absentLoc(lk) {
			continue
		}
		lks = append(lks, lk)
	}
	if len(names) > 0 {
		pkgs, err := queryRows(ctx, tx, scanPkg, `SELECT `+pkgCols+` FROM `+t.packages+` WHERE name = ANY($1)`, names)
		if err != nil {
			return nil, fmt.Errorf("load packages: %w", err)
		}
		for _, r := range pkgs {
			s.pkgs[r.Name] = r
		}
		rets, err := queryRows(ctx, tx, scanRet, `SELECT `+retCols+` FROM `+t.retention+` WHERE package = ANY($1)`, names)
		if err != nil {
			return nil, fmt.Errorf("load retention: %w", err)
		}
		for _, r := range rets {
			s.ret[r.Package] = r
		}
	}
	if len(fks) > 0 {
		ps, paths := make([]string, 0, len(fks)), make([]string, 0, len(fks))
		for _, fk := range fks {
			ps, paths = append(ps, fk.Package), append(paths, fk.Path)
		}
		files, err := queryRows(ctx, tx, scanFile, t.filesByKeySQL(), ps, paths)
		if err != nil {
			return nil, fmt.Errorf("load files: %w", err)
		}
		for _, r := range files {
			s.putFile(r)
		}
	}
	if len(lks) > 0 {
		as, bs := make([]string, 0, len(lks)), make([]string, 0, len(lks))
		for _, lk := range lks {
			as, bs = append(as, lk.Address), append(bs, lk.Backend)
		}
		locs, err := queryRows(ctx, tx, scanLoc, t.locationsByKeySQL(), as, bs)
		if err != nil {
			return nil, fmt.Errorf("load locations: %w", err)
		}
		for _, r := range locs {
			s.putLoc(r)
		}
	}
	// With an index, a batch that only adds files to an expired package
	// must still recompute its witness.
	if k.needReapCheck || idx != nil {
		if err := loadReapable(ctx, tx, t, k, s, idx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// loadReapable finds the packages the reap rule may reach in this batch and
// loads all their files and every location of those files' addresses. A
// package can be reaped in this batch only if it is expired (before or
// during the batch) and not reaped: the ones expiring in the batch, the
// expired ones with a file at an address deleted in the batch, and the
// expired ones the batch adds files to. With the memo idx, the second
// set narrows to the packages whose witness the batch deletes (see
// memo), and no query is needed to find them.
func loadReapable(ctx context.Context, tx pgx.Tx, t tables, k keys, s *state, idx *memo) error {
	cands := map[string]bool{}
	for name := range k.expiredPkgs {
		cands[name] = true
	}
	for name := range k.pkgs {
		if r := s.ret[name]; r != nil && r.ExpiredAt != nil && r.ReapedAt == nil {
			cands[name] = true
		}
	}
	if idx != nil {
		idx.candidates(k, cands)
	} else if len(k.deletedAddrs) > 0 {
		// Driven by the deleted addresses (MATERIALIZED fixes the join
		// order): starting from the expired packages instead visits every
		// expired package that is not reaped yet, a set that only grows.
		rows, err := tx.Query(ctx, `WITH f AS MATERIALIZED (
				SELECT DISTINCT package FROM `+t.files+` WHERE content_address = ANY($1))
			SELECT f.package FROM f JOIN `+t.retention+` r ON r.package = f.package
			WHERE r.expired_at IS NOT NULL AND r.reaped_at IS NULL`, setKeys(k.deletedAddrs))
		if err != nil {
			return fmt.Errorf("find reapable packages: %w", err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("find reapable packages: %w", err)
		}
		for _, n := range names {
			cands[n] = true
		}
	}
	if len(cands) == 0 {
		return nil
	}
	names := setKeys(cands)
	var missing []string
	for _, n := range names {
		s.reapable[n] = true
		if _, ok := s.ret[n]; !ok {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		pkgs, err := queryRows(ctx, tx, scanPkg, `SELECT `+pkgCols+` FROM `+t.packages+` WHERE name = ANY($1)`, missing)
		if err != nil {
			return fmt.Errorf("load reapable packages: %w", err)
		}
		for _, r := range pkgs {
			s.pkgs[r.Name] = r
		}
		rets, err := queryRows(ctx, tx, scanRet, `SELECT `+retCols+` FROM `+t.retention+` WHERE package = ANY($1)`, missing)
		if err != nil {
			return fmt.Errorf("load reapable retention: %w", err)
		}
		for _, r := range rets {
			s.ret[r.Package] = r
		}
	}
	// The reap rule reads only the address of a file and the state of a
	// location, and every row an event of the batch writes was loaded in
	// full above (rows loaded here are never written: see partial).
	files, err := queryRows(ctx, tx, scanPartialFile, `SELECT package, path, content_address FROM `+t.files+` WHERE package = ANY($1)`, names)
	if err != nil {
		return fmt.Errorf("load files of reapable packages: %w", err)
	}
	addrs := map[string]bool{}
	for _, n := range names {
		for a := range k.addedAddrs[n] {
			addrs[a] = true
		}
	}
	for _, f := range files {
		if _, ok := s.files[fileKey{f.Package, f.Path}]; !ok {
			s.putFile(f)
		}
		addrs[f.Address] = true
	}
	locs, err := queryRows(ctx, tx, scanPartialLoc, `SELECT content_address, backend_id, state FROM `+t.locations+` WHERE content_address = ANY($1)`, setKeys(addrs))
	if err != nil {
		return fmt.Errorf("load locations of reapable packages: %w", err)
	}
	for _, l := range locs {
		if _, ok := s.locs[locKey{l.Address, l.Backend}]; !ok {
			s.putLoc(l)
		}
	}
	return nil
}

// filesByKeySQL reads the file rows of the keys ($1[i], $2[i]) =
// (package, path), and locationsByKeySQL the location rows of the keys
// (content_address, backend_id): one index lookup per key, the inner side
// of a LATERAL join (OFFSET 0 keeps the planner from flattening it). A
// plain join with unnest let a connection cache a generic plan made while
// the tables were empty and never analyzed (a fresh database) that hashes
// the keys and scans the whole table on every later batch (see pkgstate's
// byKeys).
func (t tables) filesByKeySQL() string {
	return `SELECT ` + prefixed("f.", fileCols) + ` FROM unnest($1::text[], $2::text[]) AS k(p, pa)
		CROSS JOIN LATERAL (SELECT * FROM ` + t.files + ` WHERE package = k.p AND path = k.pa OFFSET 0) f`
}

// locationsByKeySQL: see [tables.filesByKeySQL].
func (t tables) locationsByKeySQL() string {
	return `SELECT ` + prefixed("l.", locCols) + ` FROM unnest($1::text[], $2::text[]) AS k(a, b)
		CROSS JOIN LATERAL (SELECT * FROM ` + t.locations + ` WHERE content_address = k.a AND backend_id = k.b OFFSET 0) l`
}

func prefixed(p, cols string) string {
	out := []byte{}
	start := true
	for i := 0; i < len(cols); i++ {
		c := cols[i]
		if start && c != ' ' && c != '\n' && c != '\t' {
			out = append(out, p...)
			start = false
		}
		if c == ',' {
			start = true
		}
		out = append(out, c)
	}
	return string(out)
}

func ts(t *time.Time) pgtype.Timestamptz {
	if t == nil {
		return pgtype.Timestamptz{}
	}
	return pgtype.Timestamptz{Time: *t, Valid: true}
}

func txt(s *string) pgtype.Text {
	if s == nil {
		return pgtype.Text{}
	}
	return pgtype.Text{String: *s, Valid: true}
}

// write stores every dirty row of s: the rows this batch created go in
// with COPY (multi-row inserts, the cheapest path), the rows it changed
// with one set-based upsert per table, queued on b.
func write(ctx context.Context, tx pgx.Tx, b *pgx.Batch, t tables, s *state) error {
	for _, r := range s.files {
		if r.dirty && r.partial {
			return fmt.Errorf("projector bug: file %s/%s was loaded in part and then changed", r.Package, r.Path)
		}
	}
	for _, r := range s.locs {
		if r.dirty && r.partial {
			return fmt.Errorf("projector bug: location %s on %s was loaded in part and then changed", r.Address, r.Backend)
		}
	}
	if err := copyNew(ctx, tx, t, s); err != nil {
		return err
	}
	var (
		pn, pc, pm, ps []string
		pca            []time.Time
		psa            []pgtype.Timestamptz
		pfc, ptb       []int64
	)
	for _, r := range s.pkgs {
		if !r.dirty || !r.existed {
			continue
		}
		pn, pc, pm, ps = append(pn, r.Name), append(pc, r.Class), append(pm, r.Metadata), append(ps, string(r.State))
		pca, psa = append(pca, r.CreatedAt), append(psa, ts(r.SealedAt))
		pfc, ptb = append(pfc, r.FileCount), append(ptb, r.TotalBytes)
	}
	if len(pn) > 0 {
		b.Queue(`INSERT INTO `+t.packages+` (name, retention_class, metadata, created_at, sealed_at, file_count, total_bytes, state)
			SELECT n, c, m::jsonb, ca, sa, fc, tb, st
			FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bigint[], $7::bigint[], $8::text[])
			     AS u(n, c, m, ca, sa, fc, tb, st)
			ON CONFLICT (name) DO UPDATE SET retention_class = EXCLUDED.retention_class, metadata = EXCLUDED.metadata,
			  created_at = EXCLUDED.created_at, sealed_at = EXCLUDED.sealed_at, file_count = EXCLUDED.file_count,
			  total_bytes = EXCLUDED.total_bytes, state = EXCLUDED.state`,
			pn, pc, pm, pca, psa, pfc, ptb, ps)
	}

	var (
		fp, fpa, fa, falg []string
		fpr, fb3, fs2     [][]byte
		fsz               []int64
		fmt_              []pgtype.Text
		fat               []time.Time
	)
	for _, r := range s.files {
		if !r.dirty || !r.existed {
			continue
		}
		fp, fpa, fa, falg = append(fp, r.Package), append(fpa, r.Path), append(fa, r.Address), append(falg, r.Algorithm)
		fpr, fb3, fs2 = append(fpr, r.Primary), append(fb3, r.BLAKE3), append(fs2, r.SHA256)
		fsz, fmt_, fat = append(fsz, r.Size), append(fmt_, txt(r.MediaType)), append(fat, r.AddedAt)
	}
	if len(fp) > 0 {
		b.Queue(`INSERT INTO `+t.files+` (`+fileCols+`)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::bytea[],
			                     $8::bigint[], $9::text[], $10::timestamptz[])
			ON CONFLICT (package, path) DO UPDATE SET content_address = EXCLUDED.content_address,
			  digest_algorithm = EXCLUDED.digest_algorithm, digest_primary = EXCLUDED.digest_primary,
			  digest_blake3 = EXCLUDED.digest_blake3, digest_sha256 = EXCLUDED.digest_sha256,
			  size_bytes = EXCLUDED.size_bytes, media_type = EXCLUDED.media_type, added_at = EXCLUDED.added_at`,
			fp, fpa, fa, falg, fpr, fb3, fs2, fsz, fmt_, fat)
	}

	var (
		la, lb, lalg, lst, ltier []string
		lb3, ls2                 [][]byte
		lsz, lcnt, lrc           []int64
		lsa                      []time.Time
		llv, lra                 []pgtype.Timestamptz
		lrs                      []pgtype.Text
	)
	for _, r := range s.locs {
		if !r.dirty || !r.existed {
			continue
		}
		la, lb, lalg, lst, ltier = append(la, r.Address), append(lb, r.Backend), append(lalg, r.Algorithm), append(lst, string(r.State)), append(ltier, string(r.Tier))
		lb3, ls2 = append(lb3, r.BLAKE3), append(ls2, r.SHA256)
		lsz, lcnt = append(lsz, r.Size), append(lcnt, r.Verified)
		lsa, llv, lrs = append(lsa, r.StoredAt), append(llv, ts(r.LastVerified)), append(lrs, txt(r.Restore))
		lra, lrc = append(lra, ts(r.RepairedAt)), append(lrc, r.Repairs)
	}
	if len(la) > 0 {
		b.Queue(`INSERT INTO `+t.locations+` (`+locCols+`)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::bigint[], $7::text[],
			                     $8::timestamptz[], $9::timestamptz[], $10::bigint[], $11::text[], $12::text[],
			                     $13::timestamptz[], $14::bigint[])
			ON CONFLICT (content_address, backend_id) DO UPDATE SET state = EXCLUDED.state,
			  stored_at = EXCLUDED.stored_at, last_verified_at = EXCLUDED.last_verified_at,
			  verification_count = EXCLUDED.verification_count,
			  repaired_at = EXCLUDED.repaired_at, repair_count = EXCLUDED.repair_count`,
			la, lb, lalg, lb3, ls2, lsz, lst, lsa, llv, lcnt, ltier, lrs, lra, lrc)
	}

	var (
		rp, rc       []string
		ru, rea, rra []pgtype.Timestamptz
		rh           []bool
		rr           []pgtype.Text
	)
	for _, r := range s.ret {
		if !r.dirty || !r.existed {
			continue
		}
		rp, rc, rh, rr = append(rp, r.Package), append(rc, r.Class), append(rh, r.Hold), append(rr, txt(r.HoldReason))
		ru, rea, rra = append(ru, ts(r.RetainUntil)), append(rea, ts(r.ExpiredAt)), append(rra, ts(r.ReapedAt))
	}
	if len(rp) > 0 {
		b.Queue(`INSERT INTO `+t.retention+` (`+retCols+`)
			SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bool[], $5::text[], $6::timestamptz[], $7::timestamptz[])
			ON CONFLICT (package) DO UPDATE SET retention_class = EXCLUDED.retention_class,
			  retain_until = EXCLUDED.retain_until, legal_hold = EXCLUDED.legal_hold,
			  legal_hold_reason = EXCLUDED.legal_hold_reason, expired_at = EXCLUDED.expired_at,
			  reaped_at = EXCLUDED.reaped_at`,
			rp, rc, ru, rh, rr, rea, rra)
	}
	return nil
}

// copyNew inserts the rows created in this batch with one COPY per table.
func copyNew(ctx context.Context, tx pgx.Tx, t tables, s *state) error {
	var rows [][]any
	for _, r := range s.pkgs {
		if r.dirty && !r.existed {
			rows = append(rows, []any{r.Name, r.Class, []byte(r.Metadata), r.CreatedAt, ts(r.SealedAt), r.FileCount, r.TotalBytes, string(r.State)})
		}
	}
	if err := copyRows(ctx, tx, t.packages, []string{"name", "retention_class", "metadata", "created_at", "sealed_at", "file_count", "total_bytes", "state"}, rows); err != nil {
		return err
	}
	rows = rows[:0]
	for _, r := range s.files {
		if r.dirty && !r.existed {
			rows = append(rows, []any{r.Package, r.Path, r.Address, r.Algorithm, r.Primary, r.BLAKE3, r.SHA256, r.Size, txt(r.MediaType), r.AddedAt})
		}
	}
	if err := copyRows(ctx, tx, t.files, []string{"package", "path", "content_address", "digest_algorithm", "digest_primary", "digest_blake3", "digest_sha256", "size_bytes", "media_type", "added_at"}, rows); err != nil {
		return err
	}
	rows = rows[:0]
	for _, r := range s.locs {
		if r.dirty && !r.existed {
			rows = append(rows, []any{r.Address, r.Backend, r.Algorithm, r.BLAKE3, r.SHA256, r.Size, string(r.State), r.StoredAt, ts(r.LastVerified), r.Verified, string(r.Tier), txt(r.Restore), ts(r.RepairedAt), r.Repairs})
		}
	}
	if err := copyRows(ctx, tx, t.locations, []string{"content_address", "backend_id", "digest_algorithm", "digest_blake3", "digest_sha256", "size_bytes", "state", "stored_at", "last_verified_at", "verification_count", "retrieval_tier", "restore_status", "repaired_at", "repair_count"}, rows); err != nil {
		return err
	}
	rows = rows[:0]
	for _, r := range s.ret {
		if r.dirty && !r.existed {
			rows = append(rows, []any{r.Package, r.Class, ts(r.RetainUntil), r.Hold, txt(r.HoldReason), ts(r.ExpiredAt), ts(r.ReapedAt)})
		}
	}
	return copyRows(ctx, tx, t.retention, []string{"package", "retention_class", "retain_until", "legal_hold", "legal_hold_reason", "expired_at", "reaped_at"}, rows)
}

func copyRows(ctx context.Context, tx pgx.Tx, table string, cols []string, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("copy %d new rows into %s: %w", len(rows), table, err)
	}
	return nil
}
