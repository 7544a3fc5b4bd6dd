package status

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Render writes the report as one human-readable screen.
func Render(w io.Writer, r Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	verdict := "HEALTHY"
	if !r.Healthy {
		verdict = "NEEDS ATTENTION"
	}
	fmt.Fprintf(tw, "artifactstore status at %s: %s\n", r.At.Format(time.RFC3339), verdict)
	for _, p := range r.Problems {
		fmt.Fprintf(tw, "  ! %s\n", p)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(tw, "  - %s\n", n)
	}
	fmt.Fprintln(tw)

	fmt.Fprintln(tw, "COMMANDS\tpending\tin flight\tredelivered\t")
	if r.NATSError != "" {
		fmt.Fprintf(tw, "  NATS unreachable: %s\t\t\t\t\n", r.NATSError)
	}
	for _, c := range r.Consumers {
		name := c.Name
		if c.Kind == "events" {
			name += " (events)"
		}
		if c.Absent {
			fmt.Fprintf(tw, "  %s\t-\t-\t-\t(absent: no replicator deployed)\n", name)
			continue
		}
		if c.Error != "" {
			fmt.Fprintf(tw, "  %s\t?\t?\t?\t(%s)\n", name, c.Error)
			continue
		}
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t\n", name, c.Pending, c.AckPending, c.Redelivered)
	}
	fmt.Fprintf(tw, "  dead letters\t%d\t\t\t\n", r.DeadLetters)
	for _, d := range r.RecentDeadLetters {
		fmt.Fprintf(tw, "    %s, recent\t%d failed\t%d refused\t\t\n", d.Consumer, d.Failed, d.Refused)
	}
	fmt.Fprintf(tw, "  staged uploads\t%d (%s)\t%d abandoned (%s)\t\t\n\n", r.Staged.Uploads, humanBytes(r.Staged.Bytes),
		r.AbandonedStaged.Uploads, humanBytes(r.AbandonedStaged.Bytes))

	if len(r.Leaders) > 0 {
		fmt.Fprintln(tw, "LEADERS\tprocess\tpostgres pid\tsince\t")
		for _, l := range r.Leaders {
			if l.Holder == "" {
				fmt.Fprintf(tw, "  %s\t(nobody)\t\t\t\n", l.Role)
				continue
			}
			since := ""
			if l.Since != nil {
				since = l.Since.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d (%s)\t%s\t\n", l.Role, l.Holder, l.PID, l.Client, since)
		}
		fmt.Fprintln(tw)
	}
	if len(r.Backends) > 0 {
		fmt.Fprintln(tw, "STORAGE\tfree\tused\t\t")
		for _, b := range r.Backends {
			state := ""
			if !b.Healthy {
				state = "UNHEALTHY: " + b.Detail
			}
			free, used := fmt.Sprintf("%s (%.1f%%)", humanBytes(int64(b.FreeBytes)), b.FreePct), humanBytes(int64(b.UsedBytes))
			if b.FreeBytes+b.UsedBytes == 0 {
				free, used = "unknown", "unknown" // an object store reports no capacity
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t\n", b.ID, free, used, state)
		}
		fmt.Fprintln(tw)
	}

	fmt.Fprintln(tw, "EVENT LOG\tsequence\tlag\t\t")
	fmt.Fprintf(tw, "  head\t%d\t\t\t\n", r.LogHead)
	fmt.Fprintf(tw, "  projector\t%d\t%d events, %.1fs\t%s\t\n", r.ProjectorCheckpt, r.ProjectorLagEvents, r.ProjectorLagSecs, projectorState(r))
	fmt.Fprintf(tw, "  events relay\t%d\t%d events\t\t\n", r.RelayCheckpoint, r.LogHead-r.RelayCheckpoint)
	if c := r.LastCheckpoint; c != nil {
		fmt.Fprintf(tw, "  signed checkpoint\t%d\t%d events\tsigned %s\t\n\n", c.Sequence, r.LogHead-c.Sequence, c.SignedAt.UTC().Format(time.RFC3339))
	} else {
		fmt.Fprintf(tw, "  signed checkpoint\tnone\t\t\t\n\n")
	}

	fmt.Fprintf(tw, "OBJECTS\t%s stored\t\t\t\n", humanBytes(r.BytesStored))
	for _, k := range sortedKeys(r.ObjectsByState) {
		fmt.Fprintf(tw, "  %s\t%d\t\t\t\n", k, r.ObjectsByState[k])
	}
	fmt.Fprintln(tw, "PACKAGES\t\t\t\t")
	for _, k := range sortedKeys(r.PackagesByState) {
		fmt.Fprintf(tw, "  %s\t%d\t\t\t\n", k, r.PackagesByState[k])
	}
	fmt.Fprintf(tw, "  on legal hold\t%d\t\t\t\n\n", r.LegalHolds)

	fmt.Fprintln(tw, "NEXT EXPIRIES\tclass\tretain until\t\t")
	if len(r.NextExpiries) == 0 {
		fmt.Fprintln(tw, "  (none due)\t\t\t\t")
	}
	for _, e := range r.NextExpiries {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t\t\n", e.Package, e.Class, e.RetainUntil.UTC().Format(time.RFC3339))
	}
	fmt.Fprintln(tw)

	last := "never"
	if r.LastVerification != nil {
		last = r.LastVerification.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(tw, "SCRUB\tinterval %s\t\t\t\n", r.ScrubInterval)
	fmt.Fprintf(tw, "  verified within interval\t%d (%.1f%%)\t\t\t\n", r.ScrubbedInInterval, r.ScrubCoveragePct)
	fmt.Fprintf(tw, "  never verified\t%d\t\t\t\n", r.NeverVerified)
	fmt.Fprintf(tw, "  last verification\t%s\t\t\t\n", last)
	return tw.Flush()
}

func projectorState(r Report) string {
	if r.ProjectorStop != nil {
		return "STOPPED (" + r.ProjectorStop.Reason + ")"
	}
	return ""
}

func sortedKeys[K ~string](m map[K]int64) []K {
	return slices.Sorted(maps.Keys(m))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), strings.ToUpper("kmgtpe")[exp])
}
