package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"time"

	"github.com/google/uuid"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/retention"
)

// retentionFlags are the flags every retention verb shares.
type retentionFlags struct {
	Package string        `help:"Package name." required:"" placeholder:"NAME"`
	Actor   string        `help:"Who asks, recorded as the event's actor (default: <user>@<host>)." placeholder:"NAME"`
	Timeout time.Duration `help:"How long to wait for the reply of a running 'artifactstore reap' (or 'run')." default:"1m"`
}

// holdCmd sets a legal hold.
type holdCmd struct {
	retentionFlags
	Reason string `help:"Why the package is held (required; recorded in the event)." required:""`
}

// releaseCmd releases a legal hold.
type releaseCmd struct {
	retentionFlags
	Reason string `help:"Why the hold is released (recorded in the event)."`
}

// retainCmd changes a package's retention class or retain-until.
type retainCmd struct {
	retentionFlags
	Class  string    `help:"New retention class (transient, raw-evidence, summary-evidence, release-evidence, permanent-record); the retain-until becomes the package's creation plus the class's duration." placeholder:"CLASS"`
	Until  time.Time `help:"New retain-until (RFC 3339), instead of or besides the class's. For release-evidence and permanent-record it may be lengthened, never shortened." placeholder:"TIME"`
	Reason string    `help:"Why the retention changes (recorded in the event)."`
}

func (c holdCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	return c.send(ctx, g, s, commands.Retention{Action: commands.ActionHold, Reason: c.Reason})
}

func (c releaseCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	return c.send(ctx, g, s, commands.Retention{Action: commands.ActionRelease, Reason: c.Reason})
}

func (c retainCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if c.Class == "" && c.Until.IsZero() {
		return fmt.Errorf("give --class or --until (or both)")
	}
	cmd := commands.Retention{Action: commands.ActionRetain, Class: c.Class, Reason: c.Reason}
	if !c.Until.IsZero() {
		u := c.Until
		cmd.RetainUntil = &u
	}
	return c.send(ctx, g, s, cmd)
}

// send fills in the shared fields, publishes the command, waits for the
// reply and prints it. A refusal is an error (exit status 1) that carries
// the handler's reason.
func (f retentionFlags) send(ctx context.Context, g *Globals, s *ioStreams, cmd commands.Retention) error {
	cmd.V = commands.Version
	cmd.CommandID = uuid.NewString()
	cmd.Package = f.Package
	cmd.Actor = f.Actor
	if cmd.Actor == "" {
		cmd.Actor = defaultActor()
	}
	codec := events.NewCodec()
	if _, err := commands.EncodeRetention(codec, cmd, false); err != nil {
		return err
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	req, js, closeReq, err := g.requester(ctx, cmd.Action, lg)
	if err != nil {
		return err
	}
	defer closeReq()
	warnIfNoWorker(ctx, js, bus.DefaultTopology().RetentionConsumer, "reaper ('artifactstore reap' or 'run')", f.Timeout, s)
	wctx, cancel := context.WithTimeoutCause(ctx, f.Timeout,
		fmt.Errorf("no reply within --timeout %s; is 'artifactstore reap' (or 'run') running? The command stays queued and is applied when it starts", f.Timeout))
	defer cancel()
	rep, err := retention.Request(wctx, req, codec, bus.DefaultTopology().Subject(bus.CmdRetention), cmd)
	if err != nil {
		return err
	}
	if err := rep.Err(); err != nil {
		if errors.Is(err, commands.ErrFailed) {
			return fmt.Errorf("%s of package %q failed, nothing was changed: %w", cmd.Action, cmd.Package, err)
		}
		return fmt.Errorf("%s of package %q refused (recorded as event %d): %w", cmd.Action, cmd.Package, rep.Sequence, err)
	}
	until := "never expires"
	if rep.RetainUntil != nil {
		until = "retained until " + rep.RetainUntil.UTC().Format(time.RFC3339)
	}
	hold := "no legal hold"
	if rep.LegalHold {
		hold = "on legal hold"
	}
	what := "changed"
	if rep.Status == commands.StatusUnchanged {
		what = "unchanged (it already was so)"
	}
	fmt.Fprintf(s.out, "package %s: %s; class %s, %s, %s", rep.Package, what, rep.Class, until, hold)
	if rep.Sequence > 0 {
		fmt.Fprintf(s.out, " (event %d, actor %s)", rep.Sequence, cmd.Actor)
	}
	fmt.Fprintln(s.out)
	if rep.Note != "" {
		fmt.Fprintln(s.out, "note:", rep.Note)
	}
	return nil
}

// defaultActor is <user>@<host>, the person at the terminal.
func defaultActor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return name + "@" + host
}
