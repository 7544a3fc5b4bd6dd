package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/artifactstore/artifactstore/bus"
)

// topologyCmd manages the JetStream topology: the one place (besides
// 'run' and --apply-topology) that creates or changes it.
type topologyCmd struct {
	Apply       topologyApplyCmd       `cmd:"" help:"Create or update every JetStream stream, durable consumer and bucket (NATS credentials of the admin role). Run it once before the roles start, and after an upgrade."`
	Check       topologyCheckCmd       `cmd:"" help:"Check that every stream, consumer and bucket exists with the settings 'apply' would give it; change nothing. Exits 3 when something is missing or differs."`
	Show        topologyShowCmd        `cmd:"" help:"Print the configuration 'apply' gives every stream, consumer and bucket, as JSON (no NATS needed)."`
	Permissions topologyPermissionsCmd `cmd:"" help:"Print the least-privilege NATS permissions of every role: a Markdown table, a nats-server authorization block, or JSON (no NATS needed)."`
}

type topologyApplyCmd struct {
	replicasFlag `embed:""`
}

func (c topologyApplyCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	top, err := c.topology()
	if err != nil {
		return err
	}
	lg, err := clientLogger(g, s)
	if err != nil {
		return err
	}
	nc, js, err := g.natsConn(ctx, bus.RoleAdmin, lg)
	if err != nil {
		return err
	}
	defer nc.Close()
	changes, err := bus.ApplyTopology(ctx, js, top, bus.WaitForPlacement(placementWait))
	for _, ch := range changes {
		fmt.Fprintln(s.out, ch)
	}
	if errors.Is(err, bus.ErrNoPlacement) {
		return err
	}
	if err != nil {
		return fmt.Errorf("%w (does this NATS user have the admin role's permissions? see 'artifactstore topology permissions')", err)
	}
	return nil
}

type topologyCheckCmd struct {
	replicasFlag `embed:""`
}

func (c topologyCheckCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	top, err := c.topology()
	if err != nil {
		return err
	}
	lg, err := clientLogger(g, s)
	if err != nil {
		return err
	}
	nc, js, err := g.natsConn(ctx, bus.RoleAdmin, lg)
	if err != nil {
		return err
	}
	defer nc.Close()
	rep, err := bus.CheckTopology(ctx, js, top)
	if err != nil && !errors.Is(err, bus.ErrTopologyMissing) {
		return err
	}
	for _, it := range rep.Present {
		fmt.Fprintf(s.out, "%s: present\n", it)
	}
	for _, it := range rep.Missing {
		fmt.Fprintf(s.out, "%s: MISSING\n", it)
	}
	for _, d := range rep.Drift {
		fmt.Fprintln(s.out, d)
	}
	if len(rep.Missing) > 0 || len(rep.Drift) > 0 {
		return &exitError{code: 3, err: fmt.Errorf("%d item(s) missing, %d setting(s) differ; run 'artifactstore topology apply' (admin NATS credentials)", len(rep.Missing), len(rep.Drift))}
	}
	return nil
}

type topologyShowCmd struct {
	replicasFlag `embed:""`
}

func (c topologyShowCmd) Run(s *ioStreams) error {
	top, err := c.topology()
	if err != nil {
		return err
	}
	type item struct {
		Kind   bus.ItemKind `json:"kind"`
		Name   string       `json:"name"`
		Stream string       `json:"stream"`
		Config any          `json:"config"`
	}
	var out []item
	for _, it := range top.Items() {
		out = append(out, item{Kind: it.Kind, Name: it.Name, Stream: it.Stream, Config: it.Config()})
	}
	return encodeJSON(s.out, out)
}

type topologyPermissionsCmd struct {
	Format string `help:"Output format: markdown (the README's table), nats-server (an authorization block with one user per role, passwords from $NATS_PASSWORD_<ROLE> environment variables), or json (every grant with why it is needed)." default:"markdown" enum:"markdown,nats-server,json"`
}

func (c topologyPermissionsCmd) Run(s *ioStreams) error {
	roles := bus.DefaultTopology().Roles()
	switch c.Format {
	case "nats-server":
		return writeNATSAuthorization(s.out, roles, func(role string) string {
			return "$NATS_PASSWORD_" + strings.ToUpper(role)
		})
	case "json":
		return encodeJSON(s.out, roles)
	default:
		return writePermissionsTable(s.out, roles)
	}
}

// encodeJSON writes v as indented JSON, with subjects' '>' left as is.
func encodeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// writePermissionsTable writes the roles as the README's Markdown table.
func writePermissionsTable(w io.Writer, roles []bus.Role) error {
	var b strings.Builder
	b.WriteString("| role | commands | publish | subscribe |\n|---|---|---|---|\n")
	code := func(grants []bus.Grant) string {
		s := make([]string, len(grants))
		for i, g := range grants {
			s[i] = "`" + g.Subject + "`"
		}
		return strings.Join(s, "<br>")
	}
	for _, r := range roles {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Name, r.Commands, code(r.Publish), code(r.Subscribe))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeNATSAuthorization writes a nats-server authorization block with one
// user per role, named after the role, holding exactly the role's grants.
// password returns the password as written in the file: a $VARIABLE
// (nats-server reads it from the environment) or a quoted literal.
func writeNATSAuthorization(w io.Writer, roles []bus.Role, password func(role string) string) error {
	var b strings.Builder
	list := func(grants []bus.Grant) string {
		s := make([]string, len(grants))
		for i, g := range grants {
			s[i] = fmt.Sprintf("          %q # %s\n", g.Subject, g.Why)
		}
		return "[\n" + strings.Join(s, "") + "        ]"
	}
	b.WriteString("# Least-privilege NATS users of artifactstore, one per role\n" +
		"# (generated by 'artifactstore topology permissions --format nats-server').\n" +
		"authorization {\n  users = [\n")
	for _, r := range roles {
		fmt.Fprintf(&b, "    # %s\n", r.Commands)
		fmt.Fprintf(&b, "    {\n      user: %q\n      password: %s\n      permissions: {\n", r.Name, password(r.Name))
		fmt.Fprintf(&b, "        publish: { allow: %s }\n", list(r.Publish))
		fmt.Fprintf(&b, "        subscribe: { allow: %s }\n", list(r.Subscribe))
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	_, err := io.WriteString(w, b.String())
	return err
}
