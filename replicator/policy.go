package replicator

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Policy says where copies of an object go. New writes go to the first
// backend of Backends (the ingesters' default); a retention class listed
// in Copies gets that many further copies, on the next backends in
// Backends order. A class not listed gets none. An object referenced by
// packages of several classes gets the most copies any of them asks
// for.
type Policy struct {
	// Backends are the backend ids in placement order (the order of
	// --storage): the first takes new writes.
	Backends []string
	// Copies is the number of further copies per retention class.
	Copies map[string]int
}

// ParseCopies parses the --replicas setting: comma-separated
// class=N pairs, N further copies for objects of that class, e.g.
// "release-evidence=1,permanent-record=1". Empty means no replicas.
func ParseCopies(spec string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		class, n, ok := strings.Cut(part, "=")
		class = strings.TrimSpace(class)
		if !ok || class == "" {
			return nil, fmt.Errorf("replicas %q: want CLASS=N (further copies for that retention class), e.g. release-evidence=1", part)
		}
		k, err := strconv.Atoi(strings.TrimSpace(n))
		if err != nil || k < 0 {
			return nil, fmt.Errorf("replicas %q: N must be a whole number of further copies (0 or more)", part)
		}
		if _, dup := out[class]; dup {
			return nil, fmt.Errorf("replicas: class %q is given twice", class)
		}
		out[class] = k
	}
	return out, nil
}

// Validate reports a policy that cannot be met: a class asking for more
// further copies than there are other backends.
func (p Policy) Validate() error {
	if len(p.Backends) == 0 {
		return errors.New("replicator: the policy names no backend; give --storage")
	}
	seen := map[string]bool{}
	for _, b := range p.Backends {
		if seen[b] {
			return fmt.Errorf("replicator: backend %q is listed twice", b)
		}
		seen[b] = true
	}
	var errs []error
	for _, class := range p.classes() {
		if n := p.Copies[class]; n > len(p.Backends)-1 {
			errs = append(errs, fmt.Errorf("class %s asks for %d further copies but only %d other backend(s) are configured (%s); add --storage URLs or lower --replicas",
				class, n, len(p.Backends)-1, strings.Join(p.Backends, ", ")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("replicator: %w", err)
	}
	return nil
}

func (p Policy) classes() []string {
	out := make([]string, 0, len(p.Copies))
	for c := range p.Copies {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// Want returns how many further copies an object referenced by packages
// of classes gets, and the rule that decided it in words ("" when none).
func (p Policy) Want(classes []string) (int, string) {
	n, why := 0, ""
	for _, c := range classes {
		if k := p.Copies[c]; k > n {
			n, why = k, fmt.Sprintf("class %s asks for %d further cop%s", c, k, plural(k, "y", "ies"))
		}
	}
	return n, why
}

// Targets returns the backends that should hold the further copies of an
// object whose copy is on source, for packages of classes: the first
// Want(classes) backends in placement order other than source.
func (p Policy) Targets(source string, classes []string) ([]string, string) {
	n, why := p.Want(classes)
	var out []string
	for _, b := range p.Backends {
		if len(out) == n {
			break
		}
		if b != source {
			out = append(out, b)
		}
	}
	return out, why
}

// String describes the policy for logs.
func (p Policy) String() string {
	var parts []string
	for _, c := range p.classes() {
		parts = append(parts, fmt.Sprintf("%s=%d", c, p.Copies[c]))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	return fmt.Sprintf("writes to %s; further copies: %s (backends in order: %s)",
		p.Backends[0], strings.Join(parts, ","), strings.Join(p.Backends, ", "))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
