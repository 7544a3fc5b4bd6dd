// Command artifactstore is the one binary of artifactstore: every worker
// role (ingest, project, verify, reap, serve), the all-in-one `run`, and the
// client verbs (put, seal, status, ...). It is the only package that reads
// flags and environment variables, builds loggers and pools, and wires the
// roles together.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kong"
)

// cli is the command-line grammar. Every flag also reads an
// ARTIFACTSTORE_<FLAG_NAME> environment variable (kong.DefaultEnvars).
type cli struct {
	Globals

	Run       runCmd       `cmd:"" group:"pipeline" help:"Run the whole pipeline in one process: every role, the API, and an embedded NATS server when --nats-url is empty. Creates and migrates the database at start."`
	Ingest    ingestCmd    `cmd:"" group:"pipeline" help:"Run an ingester: pull ingest and seal commands, store blobs, commit events, reply (several processes share the work)."`
	Project   projectCmd   `cmd:"" group:"pipeline" help:"Run the projector: keep the package, file, location and retention tables up to date from the event log (one active, others stand by)."`
	Verify    verifyCmd    `cmd:"" group:"pipeline" help:"Run the verifier (verify requests + scrub scheduler), or with --package/--object/--all verify those now and print a table; exits 3 when anything is corrupt or missing."`
	Reap      reapCmd      `cmd:"" group:"pipeline" help:"Run the reaper: expire packages whose retention passed and delete bytes no live package references (one active instance), and handle hold/release/retain commands. --dry-run prints what would go."`
	Relay     relayCmd     `cmd:"" group:"pipeline" help:"Run the events relay: publish every committed event to the JetStream events stream (artifacts.events.<type>, Nats-Msg-Id = sequence)."`
	Replicate replicateCmd `cmd:"" group:"pipeline" help:"Run a replicator: place the further copies --replicas asks for on the next --storage backends and repair damaged copies from verified ones (several processes share the work); --copy-all --to ID copies every object to one backend and exits."`
	Serve     serveCmd     `cmd:"" group:"pipeline" help:"Run the HTTP read API: objects by address (with ranges), packages, files, and packages as tar streams (stateless; run as many as needed)."`

	Put     putCmd     `cmd:"" group:"client" help:"Store files in a package through the ingesters and print each file's address and digests."`
	Seal    sealCmd    `cmd:"" group:"client" help:"Seal a package: no file can be added after it."`
	Hold    holdCmd    `cmd:"" group:"client" help:"Set a legal hold on a package: it does not expire until released."`
	Release releaseCmd `cmd:"" group:"client" help:"Release a package's legal hold."`
	Retain  retainCmd  `cmd:"" group:"client" help:"Change a package's retention class or retain-until (release-evidence and permanent-record may be lengthened, never shortened)."`
	Status  statusCmd  `cmd:"" group:"client" help:"One screen: is the pipeline healthy? Pending commands, dead letters, projector lag, objects by state, next expiries, scrub coverage. Exits 3 when it needs attention."`
	Get     getCmd     `cmd:"" group:"client" help:"Download an object or a package's file (whole or --range) from the read API, proving every byte against its content address; exits 3 on bytes that do not prove."`
	Explain explainCmd `cmd:"" group:"client" help:"Tell from the event log why an object or package is still there or why it was deleted: references, classes, holds, retain-until dates, verifications."`

	Migrate  migrateCmd  `cmd:"" group:"admin" help:"Apply, roll back or show the PostgreSQL schema migrations."`
	Topology topologyCmd `cmd:"" group:"admin" help:"Create, update or check the JetStream streams, consumers and bucket; print the NATS permissions of every role."`
	Audit    auditCmd    `cmd:"" group:"admin" help:"Walk the whole event log and check every column of every event against the hash chain; with --checkpoints, also against the signed checkpoints kept outside the database. Exits 3 when the log was altered."`
	Schema   schemaCmd   `cmd:"" group:"admin" help:"Set or list the JSON Schemas that package metadata must satisfy (per retention class)."`
	Docs     docsCmd     `cmd:"" group:"admin" hidden:"" help:"Print the configuration reference as Markdown."`
	Version  versionCmd  `cmd:"" group:"admin" help:"Print the version."`

	Checkpoint checkpointCmd `cmd:"" group:"admin" help:"Signed checkpoints of the log's chain head: keygen, sign (the signer role), verify (with only the public key)."`
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// exitError carries a process exit status other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// run parses args and runs the chosen command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	var c cli
	parser, err := kong.New(&c,
		kong.Name("artifactstore"),
		kong.Description("A content-addressed, event-sourced store for build, test and release evidence.\n\n"+
			"Producers publish blobs and commands on NATS JetStream; ingesters store the bytes under their\n"+
			"BLAKE3/SHA-256 content address and append events to PostgreSQL; a projector builds the tables;\n"+
			"a verifier scrubs stored bytes; a reaper applies retention classes.\n\n"+
			"Every flag can also be set with an ARTIFACTSTORE_* environment variable, shown as ($VAR)."),
		kong.DefaultEnvars("ARTIFACTSTORE"),
		kong.ExplicitGroups([]kong.Group{
			{Key: "pipeline", Title: "Pipeline roles (each also runs alone; 'run' runs them all):"},
			{Key: "client", Title: "Client commands:"},
			{Key: "admin", Title: "Administration:"},
		}),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true, Summary: true}),
		kong.Writers(stdout, stderr),
		// --help calls Exit; unwind to here instead of leaving the process.
		kong.Exit(func(c int) { panic(kongExit{c}) }),
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.Bind(&ioStreams{out: stdout, err: stderr}),
	)
	if err != nil {
		fmt.Fprintf(stderr, "artifactstore: %v\n", err)
		return 2
	}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(kongExit)
			if !ok {
				panic(r)
			}
			code = e.code
		}
	}()
	kctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintf(stderr, "artifactstore: %v\nRun 'artifactstore --help' for usage.\n", err)
		return 2
	}
	c.Globals.defaults(kctx.Command())
	if err := kctx.Run(&c.Globals); err != nil {
		fmt.Fprintf(stderr, "artifactstore %s: %v\n", kctx.Command(), err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

type kongExit struct{ code int }

// ioStreams is where commands print their results.
type ioStreams struct {
	out io.Writer
	err io.Writer
}

type versionCmd struct{}

func (versionCmd) Run(s *ioStreams) error {
	_, err := fmt.Fprintln(s.out, "artifactstore", version)
	return err
}
