// Command benchtable reads `go test -bench` output on standard input and
// prints one table per benchmark group, with each row's throughput as a
// ratio against the group's baseline measured in the same run.
//
// Convention: within a benchmark (BenchmarkX/...), a sub-benchmark whose
// name starts with "baseline" is the baseline of its siblings. Throughput is
// MB/s when the benchmark sets bytes, else the first custom metric ending in
// "/s", else operations per second from ns/op.
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

// throughput returns the row's rate and its unit.
func (r row) throughput() (float64, string) {
	if v, ok := r.metrics["MB/s"]; ok {
		return v, "MB/s"
	}
	for _, u := range r.order {
		if strings.HasSuffix(u, "/s") {
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
		if i := strings.Index(full, "/"); i > 0 {
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
		var base float64
		var baseUnit, baseName string
		for _, r := range rows[i:j] {
			if strings.HasPrefix(r.name, "baseline") {
				base, baseUnit = r.throughput()
				baseName = r.name
				break
			}
		}
		for _, r := range rows[i:j] {
			v, unit := r.throughput()
			ratio := ""
			switch {
			case r.name == baseName && base > 0:
				ratio = "1.00 (baseline)"
			case base > 0 && unit == baseUnit:
				ratio = fmt.Sprintf("%.2fx", v/base)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.4g\t%s\t%s\t\n", r.group, r.name, v, unit, ratio)
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
