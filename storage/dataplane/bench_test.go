package dataplane_test

import (
	"context"
	"io"
	"testing"

	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// BenchmarkServe streams a whole 256 MiB object out of the data plane into
// io.Discard: proven (every chunk group checked against the tree) next to
// the backend's bytes unchecked, read through a 1 MiB buffer. It isolates
// the cost of the proof from HTTP.
func BenchmarkServe(b *testing.B) {
	const size = 256 << 20
	f := newFixture(b)
	res, err := f.dp.Ingest(context.Background(), &patternReader{block: randomBytes(b, 64<<10+7), n: size}, noClaims)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("proven", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			o, err := f.dp.Serve(context.Background(), "", res.Address, nil, dataplane.Expected{Size: size})
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.Copy(io.Discard, o); err != nil || n != size {
				b.Fatal(n, err)
			}
			o.Close()
		}
	})
	b.Run("baseline_unchecked", func(b *testing.B) {
		b.SetBytes(size)
		buf := make([]byte, 1<<20)
		for b.Loop() {
			rc, err := f.local.Get(context.Background(), res.Address, &storage.Range{Start: 0, End: size - 1})
			if err != nil {
				b.Fatal(err)
			}
			if n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{rc}, buf); err != nil || n != size {
				b.Fatal(n, err)
			}
			rc.Close()
		}
	})
}
