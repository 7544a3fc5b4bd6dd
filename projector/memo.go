package projector

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/artifactstore/artifactstore/catalog"
)

// memo is what the projector remembers between batches, valid only while
// this process is the only writer of the tables (the checkpoint row lock):
//
//   - The reap index: every package that is expired and not reaped, with a
//     witness (one location, not deleted, of one of its files' addresses)
//     that keeps it from being reaped, or in pending when it has none. A
//     package with a witness cannot become reapable in a batch unless an
//     event of the batch deletes the witness location or adds a file to
//     the package (which may replace the witness's file). So a batch loads
//     only the expiring packages, the packages whose witness it deletes,
//     the packages it adds files to and the pending ones, instead of
//     finding every expired package with a file at each deleted address (a
//     query on the files table per batch) and loading all their files and
//     locations.
//   - The rows (or their absence) of the keys the last few batches touched,
//     as those batches committed them: scrub outcomes, restores and files
//     of open packages mostly name rows of recent batches, which then need
//     no query. Rows loaded in part for the reap rule are not kept.
//   - A Bloom filter of the keys of the files and of the locations table
//     (see keyFilter), built when a catch-up starts: a key it does not hold
//     is not queried.
//
// Memory: the reap index holds one entry per expired, unreaped package; the
// rows, those of the last memoGenerations batches; each filter, 10 bits per
// key for up to twice maxFilterKeys keys (about 20 MiB at most), and its
// build a transient 8 bytes per key. Tables above maxFilterKeys get no
// filter.
//
// A memo describes the tables at exactly one checkpoint (seq) of one
// generation of the tables (oid of the retention table, which a rebuild's
// swap replaces), and is used only when it matches the locked checkpoint.
// A batch takes it out of the Projector and puts it back only after its
// transaction committed, so a failed batch drops it and the next one
// rebuilds it from the tables.
type memo struct {
	seq     int64
	oid     uint32
	witness map[string]locKey
	byLoc   map[locKey]map[string]bool
	pending map[string]bool

	gen  int64
	ring [memoGenerations]struct { // the keys of each of the last batches
		pkgs  []string
		files []fileKey
		locs  []locKey
	}
	pkgs  map[string]cached[pkgEntry] // package and retention rows of a name
	files map[fileKey]cached[*fileRow]
	locs  map[locKey]cached[*locRow]

	fileKeys, locKeys *keyFilter // nil: none
	filtersTried      bool       // the tables were too large for filters
}

// memoGenerations is how many batches a remembered row outlives the last
// batch that touched it.
const memoGenerations = 4

type cached[T any] struct {
	row T // nil: no such row
	gen int64
}

type pkgEntry struct {
	pkg *pkgRow
	ret *retRow
}

func newMemo(seq int64, oid uint32) *memo {
	return &memo{
		seq: seq, oid: oid, witness: map[string]locKey{}, byLoc: map[locKey]map[string]bool{}, pending: map[string]bool{},
		pkgs: map[string]cached[pkgEntry]{}, files: map[fileKey]cached[*fileRow]{}, locs: map[locKey]cached[*locRow]{},
	}
}

// loadFilters builds the key filters if they are missing, unless the
// tables were found too large for them before.
func (x *memo) loadFilters(ctx context.Context, tx pgx.Tx, t tables) error {
	if x.filtersTried || (x.fileKeys != nil && x.locKeys != nil) {
		return nil
	}
	var err error
	if x.fileKeys == nil {
		if x.fileKeys, err = loadKeyFilter(ctx, tx, t.files, `package, path`); err != nil {
			return fmt.Errorf("load the keys of %s: %w", t.files, err)
		}
	}
	if x.locKeys == nil {
		if x.locKeys, err = loadKeyFilter(ctx, tx, t.locations, `content_address, backend_id`); err != nil {
			return fmt.Errorf("load the keys of %s: %w", t.locations, err)
		}
	}
	x.filtersTried = x.fileKeys == nil || x.locKeys == nil
	return nil
}

// absentFile reports whether the files table certainly has no row k.
func (x *memo) absentFile(k fileKey) bool {
	return x != nil && x.fileKeys != nil && !x.fileKeys.mayHave(k.Package, k.Path)
}

// absentLoc reports whether the locations table certainly has no row k.
func (x *memo) absentLoc(k locKey) bool {
	return x != nil && x.locKeys != nil && !x.locKeys.mayHave(k.Address, k.Backend)
}

// remember records the rows of the keys a committed batch looked up, as
// it wrote them, and forgets rows no batch touched for memoGenerations.
func (x *memo) remember(s *state, k keys) {
	x.gen++
	g := x.gen
	// The reap rule also writes the package and retention rows of the
	// packages it was loaded for (s.reapable), which are read in full.
	names := k.pkgs
	if len(s.reapable) > 0 {
		names = maps.Clone(k.pkgs)
		maps.Copy(names, s.reapable)
	}
	for name := range names {
		e := pkgEntry{pkg: s.pkgs[name], ret: s.ret[name]}
		if e.pkg != nil {
			e.pkg.dirty, e.pkg.existed = false, true
		}
		if e.ret != nil {
			e.ret.dirty, e.ret.existed = false, true
		}
		x.pkgs[name] = cached[pkgEntry]{e, g}
	}
	for fk := range k.files {
		f := s.files[fk]
		if f != nil {
			if !f.existed && x.fileKeys != nil {
				x.fileKeys.add(fk.Package, fk.Path)
			}
			f.dirty, f.existed = false, true
		}
		x.files[fk] = cached[*fileRow]{f, g}
	}
	for lk := range k.locs {
		l := s.locs[lk]
		if l != nil {
			if !l.existed && x.locKeys != nil {
				x.locKeys.add(lk.Address, lk.Backend)
			}
			l.dirty, l.existed = false, true
		}
		x.locs[lk] = cached[*locRow]{l, g}
	}
	// A filter past its capacity is rebuilt, twice as large, by the next
	// catch-up batch.
	if x.fileKeys != nil && x.fileKeys.full() {
		x.fileKeys = nil
	}
	if x.locKeys != nil && x.locKeys.full() {
		x.locKeys = nil
	}
	// Forget the keys of the batch memoGenerations ago that no later batch
	// touched.
	slot := &x.ring[g%memoGenerations]
	for _, n := range slot.pkgs {
		if x.pkgs[n].gen <= g-memoGenerations {
			delete(x.pkgs, n)
		}
	}
	for _, k := range slot.files {
		if x.files[k].gen <= g-memoGenerations {
			delete(x.files, k)
		}
	}
	for _, k := range slot.locs {
		if x.locs[k].gen <= g-memoGenerations {
			delete(x.locs, k)
		}
	}
	slot.pkgs, slot.files, slot.locs = slices.Collect(maps.Keys(names)), slices.Collect(maps.Keys(k.files)), slices.Collect(maps.Keys(k.locs))
}

// cachedPkg returns the remembered package and retention rows of name
// (nil when there is none) and whether they are remembered. x may be nil.
func (x *memo) cachedPkg(name string) (pkgEntry, bool) {
	if x == nil {
		return pkgEntry{}, false
	}
	c, ok := x.pkgs[name]
	return c.row, ok
}

func (x *memo) cachedFile(k fileKey) (*fileRow, bool) {
	if x == nil {
		return nil, false
	}
	c, ok := x.files[k]
	return c.row, ok
}

func (x *memo) cachedLoc(k locKey) (*locRow, bool) {
	if x == nil {
		return nil, false
	}
	c, ok := x.locs[k]
	return c.row, ok
}

func (x *memo) remove(pkg string) {
	delete(x.pending, pkg)
	w, ok := x.witness[pkg]
	if !ok {
		return
	}
	delete(x.witness, pkg)
	if s := x.byLoc[w]; s != nil {
		delete(s, pkg)
		if len(s) == 0 {
			delete(x.byLoc, w)
		}
	}
}

func (x *memo) set(pkg string, w locKey, ok bool) {
	if !ok {
		x.pending[pkg] = true
		return
	}
	x.witness[pkg] = w
	addIndex(x.byLoc, w, pkg)
}

// candidates adds to cands the packages a batch with the keys k may reap,
// besides those it expires or touches (see loadReapable).
func (x *memo) candidates(k keys, cands map[string]bool) {
	for n := range x.pending {
		cands[n] = true
	}
	for lk := range k.deletedLocs {
		for n := range x.byLoc[lk] {
			cands[n] = true
		}
	}
}

// update records the outcome of a batch that moved the tables to seq: every
// package the batch loaded for the reap rule (s.reapable) was loaded with
// all its files and all their locations, so its witness is recomputed from
// s; no other package changed its expired or reaped state or its files.
func (x *memo) update(s *state, seq int64) {
	// Rows loaded only for the reap rule are partial and never
	// remembered; every other row the batch read is in k (remember).
	for pkg := range s.reapable {
		x.remove(pkg)
		r := s.ret[pkg]
		if r == nil || r.ExpiredAt == nil || r.ReapedAt != nil {
			continue
		}
		w, ok := s.liveLocation(pkg)
		x.set(pkg, w, ok)
	}
	x.seq = seq
}

// liveLocation returns a location, not deleted, of an address of one of
// pkg's files. Only meaningful for packages in s.reapable.
func (s *state) liveLocation(pkg string) (locKey, bool) {
	for fk := range s.filesByPkg[pkg] {
		for lk := range s.locsByAddr[s.files[fk].Address] {
			if s.locs[lk].State != catalog.LocationDeleted {
				return lk, true
			}
		}
	}
	return locKey{}, false
}

// loadMemo builds the index from the tables as of checkpoint seq.
func loadMemo(ctx context.Context, tx pgx.Tx, t tables, seq int64, oid uint32) (*memo, error) {
	rows, err := tx.Query(ctx, `SELECT r.package, w.content_address, w.backend_id FROM `+t.retention+` r
		LEFT JOIN LATERAL (
			SELECT l.content_address, l.backend_id FROM `+t.files+` f
			JOIN `+t.locations+` l ON l.content_address = f.content_address
			WHERE f.package = r.package AND l.state <> '`+string(catalog.LocationDeleted)+`' LIMIT 1) w ON true
		WHERE r.expired_at IS NOT NULL AND r.reaped_at IS NULL`)
	if err != nil {
		return nil, fmt.Errorf("load expired packages: %w", err)
	}
	x := newMemo(seq, oid)
	var (
		pkg  string
		a, b pgtype.Text
	)
	_, err = pgx.ForEachRow(rows, []any{&pkg, &a, &b}, func() error {
		x.set(pkg, locKey{a.String, b.String}, a.Valid)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load expired packages: %w", err)
	}
	return x, nil
}

// takeMemo removes the index of the tables t from p and returns it if
// it describes checkpoint seq of the table generation oid, else nil.
func (p *Projector) takeMemo(t tables, seq int64, oid uint32) *memo {
	p.mu.Lock()
	defer p.mu.Unlock()
	x := p.memos[t.retention]
	delete(p.memos, t.retention)
	if x == nil || x.seq != seq || x.oid != oid {
		return nil
	}
	return x
}

// putMemo stores the index of a committed batch.
func (p *Projector) putMemo(t tables, x *memo) {
	if x == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.memos[t.retention] = x
}
