package projector

import (
	"context"
	"hash/maphash"
	"math/bits"

	"github.com/jackc/pgx/v5"
)

// keyFilter is a Bloom filter over the keys of a projection table: a key
// it does not hold is certainly not in the table, so a batch need not look
// it up. Most keys of a catch-up batch are new (an object stored for the
// first time, a file added at a new path), and each used to cost an index
// lookup that found nothing.
type keyFilter struct {
	seed  maphash.Seed
	words []uint64
	mask  uint64
	n     int // keys added
	cap   int // keys it was sized for
}

// filterBitsPerKey and filterProbes give about 1% false positives at cap.
const (
	filterBitsPerKey = 10
	filterProbes     = 7
)

// newKeyFilter returns an empty filter for capacity keys, hashing with
// seed.
func newKeyFilter(seed maphash.Seed, capacity int) *keyFilter {
	nbits := uint64(1) << bits.Len64(uint64(capacity*filterBitsPerKey))
	return &keyFilter{seed: seed, words: make([]uint64, nbits/64), mask: nbits - 1, cap: capacity}
}

// Bounds of the filters: the smallest capacity, and the most keys a table
// may hold for the projector to build one (above it, a batch looks every
// key up, as without a filter).
const (
	minFilterKeys = 1 << 20
	maxFilterKeys = 8 << 20
)

// loadKeyFilter builds the filter of the keys (two text columns, cols) of
// table, sized for twice as many, or returns nil if there are more than
// maxFilterKeys (by the planner's estimate, then by count).
func loadKeyFilter(ctx context.Context, tx pgx.Tx, table, cols string) (*keyFilter, error) {
	var estimate int64
	if err := tx.QueryRow(ctx, `SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass`, table).Scan(&estimate); err != nil {
		return nil, err
	}
	if estimate > maxFilterKeys {
		return nil, nil
	}
	seed := maphash.MakeSeed()
	probe := &keyFilter{seed: seed}
	rows, err := tx.Query(ctx, `SELECT `+cols+` FROM `+table+` LIMIT $1`, maxFilterKeys+1)
	if err != nil {
		return nil, err
	}
	var (
		hashes []uint64
		a, b   string
	)
	if _, err := pgx.ForEachRow(rows, []any{&a, &b}, func() error {
		hashes = append(hashes, probe.hash(a, b))
		return nil
	}); err != nil {
		return nil, err
	}
	if len(hashes) > maxFilterKeys {
		return nil, nil
	}
	f := newKeyFilter(seed, max(minFilterKeys, 2*len(hashes)))
	for _, h := range hashes {
		f.addHash(h)
	}
	return f, nil
}

// hash is the hash of the key (a, b) under the filter's seed.
func (f *keyFilter) hash(a, b string) uint64 {
	var h maphash.Hash
	h.SetSeed(f.seed)
	h.WriteString(a)
	h.WriteByte(0)
	h.WriteString(b)
	return h.Sum64()
}

func (f *keyFilter) add(a, b string) { f.addHash(f.hash(a, b)) }

func (f *keyFilter) addHash(x uint64) {
	h1, h2 := x, (x>>32|x<<32)|1
	for i := range uint64(filterProbes) {
		bit := (h1 + i*h2) & f.mask
		f.words[bit/64] |= 1 << (bit % 64)
	}
	f.n++
}

func (f *keyFilter) mayHave(a, b string) bool {
	x := f.hash(a, b)
	h1, h2 := x, (x>>32|x<<32)|1
	for i := range uint64(filterProbes) {
		bit := (h1 + i*h2) & f.mask
		if f.words[bit/64]&(1<<(bit%64)) == 0 {
			return false
		}
	}
	return true
}

// full reports whether the filter holds more keys than it was sized for
// (its false positives grow past the design rate).
func (f *keyFilter) full() bool { return f.n > f.cap }
