package main

import (
	"strings"
	"testing"
)

const sample = `goos: linux
pkg: github.com/artifactstore/artifactstore/digest
BenchmarkHash/baseline_sha256-2   20   59703685 ns/op   1000.00 MB/s   128 B/op   1 allocs/op
BenchmarkHash/dual-2              20   44161184 ns/op    950.00 MB/s   704048 B/op   10760 allocs/op
pkg: github.com/artifactstore/artifactstore/projector
BenchmarkCatchUp/baseline_copyfrom-2   1   2000000000 ns/op   500000 rows/s
BenchmarkCatchUp/project-2             1   4000000000 ns/op   60000 rows/s
pkg: github.com/artifactstore/artifactstore/ingest
BenchmarkIngest/256MiB/baseline_objectstore-2   1   100 ns/op   200.00 MB/s
BenchmarkIngest/256MiB/baseline_dualhash-2      1   100 ns/op   800.00 MB/s
BenchmarkIngest/256MiB/put_reply-2              1   100 ns/op   160.00 MB/s
BenchmarkIngestPeakRSS/baseline_1MiB-2          1   100 ns/op   20.00 MiB-peak-RSS
BenchmarkIngestPeakRSS/1GiB-2                   1   100 ns/op   40.00 MiB-peak-RSS
`

func TestRatiosAgainstBaseline(t *testing.T) {
	rows, err := parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 9 {
		t.Fatalf("parsed %d rows, want 9", len(rows))
	}
	var out strings.Builder
	if err := render(&out, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0.95x sha256", "0.12x copyfrom", "(baseline)", "0.80x objectstore, 0.20x dualhash", "Ingest/256MiB", "MiB-peak-RSS", "2.00x 1MiB"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
