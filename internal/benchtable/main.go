// Command benchtable reads `go test -bench` output on standard input and
// prints one table per benchmark group, with each row's throughput as a
// ratio against the group's baseline measured in the same run.
//
// Convention: a sub-benchmark whose last name element starts with
// "baseline" is a baseline of its siblings (the rows with the same parent,
// e.g. BenchmarkIngest/256MiB/baseline_objectstore for
// BenchmarkIngest/256MiB/put_reply); every other sibling gets its ratio
// against each baseline. Throughput is MB/s when the benchmark sets bytes,
// else the first custom metric ending in "/s", else the first other custom
// metric (a measure such as MiB-peak-RSS), else operations per second
// from ns/op.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

type row struct {
	pkg, group, name string
	nsPerOp          float64
	metrics          map[string]float64
	order            []string
}

// throughput returns the row's rate and its unit: MB/s, else the first
// custom rate ("…/s"), else the first custom metric that is not a rate
// (a measure such as "MiB-peak-RSS", whose ratio is against the
// baseline's measure in the same unit), else operations per second.
func (r row) throughput() (float64, string) {
	if v, ok := r.metrics["MB/s"]; ok {
		return v, "MB/s"
	}
	for _, u := range r.order {
		if strings.HasSuffix(u, "/s") {
			return r.metrics[u], u
		}
	}
	for _, u := range r.order {
		if u != "B/op" && u != "allocs/op" {
			return r.metrics[u], u
		}
	}
	if r.nsPerOp > 0 {
		return 1e9 / r.nsPerOp, "ops/s"
	}
	return 0, ""
}

func parse(in io.Reader) ([]row, error) {
	var rows []row
	pkg := ""
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "pkg: ") {
			pkg = strings.TrimPrefix(line, "pkg: ")
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		full := f[0]
		if i := strings.LastIndex(full, "-"); i > 0 {
			if _, err := strconv.Atoi(full[i+1:]); err == nil {
				full = full[:i]
			}
		}
		group, name := full, ""
		if i := strings.LastIndex(full, "/"); i > 0 {
			group, name = full[:i], full[i+1:]
		}
		r := row{pkg: pkg, group: strings.TrimPrefix(group, "Benchmark"), name: name, metrics: map[string]float64{}}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			unit := f[i+1]
			if unit == "ns/op" {
				r.nsPerOp = v
				continue
			}
			r.metrics[unit] = v
			r.order = append(r.order, unit)
		}
		rows = append(rows, r)
	}
	return rows, sc.Err()
}

func render(w io.Writer, rows []row) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintln(tw, "benchmark\tcase\tthroughput\tunit\tvs baseline\t")
	for i := 0; i < len(rows); {
		j := i
		for j < len(rows) && rows[j].pkg == rows[i].pkg && rows[j].group == rows[i].group {
			j++
		}
		type baseline struct {
			name string
			v    float64
			unit string
		}
		var bases []baseline
		for _, r := range rows[i:j] {
			if strings.HasPrefix(r.name, "baseline") {
				v, unit := r.throughput()
				bases = append(bases, baseline{r.name, v, unit})
			}
		}
		for _, r := range rows[i:j] {
			v, unit := r.throughput()
			var ratios []string
			if strings.HasPrefix(r.name, "baseline") {
				ratios = append(ratios, "(baseline)")
			} else {
				for _, bl := range bases {
					if bl.v > 0 && bl.unit == unit {
						ratios = append(ratios, fmt.Sprintf("%.2fx %s", v/bl.v, strings.TrimPrefix(strings.TrimPrefix(bl.name, "baseline"), "_")))
					}
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%.4g\t%s\t%s\t\n", r.group, r.name, v, unit, strings.Join(ratios, ", "))
		}
		i = j
	}
	return tw.Flush()
}

func main() {
	rows, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	if len(rows) == 0 {
		fmt.Fprintln(os.Stderr, "benchtable: no benchmark lines on standard input (pipe `go test -bench` output in)")
		os.Exit(1)
	}
	if err := render(os.Stdout, rows); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}
