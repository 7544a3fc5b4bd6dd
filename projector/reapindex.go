package projector

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// reapIndex is what the projector remembers between batches about the
// packages the reap rule may still reach: every package that is expired and
// not reaped, with a witness (one location, not deleted, of one of its
// files' addresses) that keeps it from being reaped, or in pending when it
// has none.
//
// A package with a witness cannot become reapable in a batch unless an
// event of the batch deletes the witness location or adds a file to the
// package (which may replace the witness's file). So a batch needs to load
// only the expiring packages, the packages whose witness it deletes, the
// packages it adds files to and the pending ones, instead of finding every
// expired package with a file at each deleted address (a query on the files
// table per batch) and loading all their files and locations.
//
// The index describes the tables at exactly one checkpoint (seq) of one
// generation of the tables (oid of the retention table, which a rebuild's
// swap replaces). It is safe only while this process is the only writer
// (the checkpoint row lock) and is used only when it matches the locked
// checkpoint; a batch takes it out of the Projector and puts it back only
// after its transaction committed, so a failed batch drops it and the next
// one rebuilds it from the tables.
type reapIndex struct {
	seq     int64
	oid     uint32
	witness map[string]locKey
	byLoc   map[locKey]map[string]bool
	pending map[string]bool
}

func newReapIndex(seq int64, oid uint32) *reapIndex {
	return &reapIndex{seq: seq, oid: oid, witness: map[string]locKey{}, byLoc: map[locKey]map[string]bool{}, pending: map[string]bool{}}
}

func (x *reapIndex) remove(pkg string) {
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

func (x *reapIndex) set(pkg string, w locKey, ok bool) {
	if !ok {
		x.pending[pkg] = true
		return
	}
	x.witness[pkg] = w
	addIndex(x.byLoc, w, pkg)
}

// candidates adds to cands the packages a batch with the keys k may reap,
// besides those it expires or touches (see loadReapable).
func (x *reapIndex) candidates(k keys, cands map[string]bool) {
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
func (x *reapIndex) update(s *state, seq int64) {
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
			if s.locs[lk].State != LocationDeleted {
				return lk, true
			}
		}
	}
	return locKey{}, false
}

// loadReapIndex builds the index from the tables as of checkpoint seq.
func loadReapIndex(ctx context.Context, tx pgx.Tx, t tables, seq int64, oid uint32) (*reapIndex, error) {
	rows, err := tx.Query(ctx, `SELECT r.package, w.content_address, w.backend_id FROM `+t.retention+` r
		LEFT JOIN LATERAL (
			SELECT l.content_address, l.backend_id FROM `+t.files+` f
			JOIN `+t.locations+` l ON l.content_address = f.content_address
			WHERE f.package = r.package AND l.state <> 'deleted' LIMIT 1) w ON true
		WHERE r.expired_at IS NOT NULL AND r.reaped_at IS NULL`)
	if err != nil {
		return nil, fmt.Errorf("load expired packages: %w", err)
	}
	x := newReapIndex(seq, oid)
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

// takeReapIndex removes the index of the tables t from p and returns it if
// it describes checkpoint seq of the table generation oid, else nil.
func (p *Projector) takeReapIndex(t tables, seq int64, oid uint32) *reapIndex {
	p.mu.Lock()
	defer p.mu.Unlock()
	x := p.reapIdx[t.retention]
	delete(p.reapIdx, t.retention)
	if x == nil || x.seq != seq || x.oid != oid {
		return nil
	}
	return x
}

// putReapIndex stores the index of a committed batch.
func (p *Projector) putReapIndex(t tables, x *reapIndex) {
	if x == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reapIdx[t.retention] = x
}
