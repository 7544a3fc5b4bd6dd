package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/schollz/progressbar/v3"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/producer"
)

// putCmd stores files, waits for every reply: small files packed into
// batch commands (one grouped commit per batch), each larger one in an
// ingest command of its own (staged).
type putCmd struct {
	Package     string            `short:"p" help:"Package to add the files to. Default: a new package named put/<UTC time>-<random>."`
	Class       string            `short:"c" help:"Retention class of a new package (default on the server: raw-evidence): transient, raw-evidence, summary-evidence, release-evidence, permanent-record."`
	Meta        map[string]string `short:"m" help:"Package metadata entry KEY=VALUE (repeatable); recorded when the package is created." placeholder:"KEY=VALUE"`
	MediaType   string            `help:"Media type recorded for every file."`
	JSON        bool              `name:"json" help:"Print one JSON reply per line instead of text."`
	SendJSON    bool              `name:"send-json" help:"Send JSON commands instead of CBOR (for debugging)." hidden:""`
	Concurrency int               `help:"Files uploaded at once." default:"4" placeholder:"N"`
	Timeout     time.Duration     `help:"How long to wait for all replies." default:"30m"`
	Progress    string            `help:"Progress bar for large uploads: auto (on a terminal), always or never." default:"auto" enum:"auto,always,never"`
	Paths       []string          `arg:"" name:"FILE|DIR" help:"Files to store; a directory stores every regular file below it as <dir name>/<relative path>." type:"existingpath"`
}

// putFile is one file found on the command line.
type putFile struct {
	local string // path on this machine
	path  string // path inside the package
	size  int64
}

// putResult is the outcome of one file.
type putResult struct {
	file  putFile
	reply commands.Reply
	err   error
}

// progressThreshold is the total staged size above which a progress bar is
// shown on a terminal.
const progressThreshold = 8 << 20

func (c putCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if c.Concurrency < 1 {
		return fmt.Errorf("--concurrency %d must be at least 1", c.Concurrency)
	}
	files, err := collectFiles(c.Paths)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("no regular file found in the given paths; name files or directories that hold some")
	}
	pkg := c.Package
	if pkg == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		pkg = "put/" + time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
	}
	if err := commands.ValidatePackage(pkg); err != nil {
		return fmt.Errorf("--package: %w", err)
	}
	for _, f := range files {
		if err := commands.ValidatePath(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.local, err)
		}
	}
	lg, err := clientLogger(g, s)
	if err != nil {
		return err
	}
	nc, js, err := g.natsConn(ctx, "put", lg)
	if err != nil {
		return err
	}
	defer nc.Close()
	host, _ := os.Hostname()
	var outMu sync.Mutex
	client, err := producer.New(ctx, producer.Config{NATS: nc, JetStream: js, Topology: bus.DefaultTopology(), Producer: "put@" + host, JSON: c.SendJSON,
		OnRetry: func(name string, attempt int, err error, wait time.Duration) {
			outMu.Lock()
			defer outMu.Unlock()
			fmt.Fprintf(s.err, "staging: %v; uploading again in %s (attempt %d)\n", err, wait.Round(100*time.Millisecond), attempt+1)
		}})
	if err != nil {
		return err
	}
	defer client.Close()
	warnIfNoWorker(ctx, js, bus.DefaultTopology().IngestConsumer, "ingester ('artifactstore ingest' or 'run')", c.Timeout, s)

	var staged int64
	for _, f := range files {
		if f.size > int64(client.InlineMax()) {
			staged += f.size
		}
	}
	var bar *progressbar.ProgressBar
	if c.Progress == "always" || c.Progress == "auto" && staged >= progressThreshold && isTerminal(s.err) {
		bar = progressbar.NewOptions64(staged,
			progressbar.OptionSetWriter(s.err), progressbar.OptionShowBytes(true), progressbar.OptionShowCount(),
			progressbar.OptionSetDescription(fmt.Sprintf("staging %d file(s)", len(files))),
			progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
	}

	wctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	results := make([]putResult, len(files))
	pendings := make([]*producer.Pending, len(files))
	var wg sync.WaitGroup
	sem := make(chan struct{}, c.Concurrency)
	var small []int // files that go in batches
	for i, f := range files {
		results[i].file = f
		if f.size <= int64(client.InlineMax()) {
			small = append(small, i)
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pendings[i], results[i].err = c.send(wctx, client, pkg, f, bar)
		}()
	}
	for len(small) > 0 {
		chunk := small[:min(len(small), putBatchFiles)]
		small = small[len(chunk):]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c.sendBatch(wctx, client, pkg, files, chunk, pendings, results)
		}()
	}
	wg.Wait()
	if bar != nil {
		_ = bar.Finish()
	}
	for i, p := range pendings {
		if p == nil {
			continue
		}
		results[i].reply, results[i].err = p.Wait(wctx)
		if results[i].err != nil && wctx.Err() != nil && ctx.Err() == nil {
			results[i].err = noReply(ctx, js, bus.DefaultTopology().IngestConsumer, c.Timeout, p.CommandID)
		}
	}
	return c.report(s, pkg, results)
}

// noReply says precisely why a command has no reply after --timeout: where
// it stands in the queue and whether any worker pulls, and what to do.
func noReply(ctx context.Context, js jetstream.JetStream, durable string, timeout time.Duration, commandID string) error {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	where := "the queue could not be read"
	if cons, err := js.Consumer(ictx, bus.DefaultTopology().CommandsStream, durable); err == nil {
		if info, err := cons.Info(ictx); err == nil {
			pulling := "no worker is pulling"
			if info.NumWaiting > 0 {
				pulling = fmt.Sprintf("%d pull request(s) of workers are waiting", info.NumWaiting)
			}
			where = fmt.Sprintf("consumer %s holds %d command(s) not yet delivered and %d in progress; %s", durable, info.NumPending, info.NumAckPending, pulling)
		}
	}
	return fmt.Errorf("no reply to command %s within --timeout %s (%s): the command may still be handled later, or its reply was lost; "+
		"run put again to store the file (storing it twice is harmless), and check 'artifactstore status'", commandID, timeout, where)
}

func (c putCmd) send(ctx context.Context, client *producer.Client, pkg string, f putFile, bar *progressbar.ProgressBar) (*producer.Pending, error) {
	fh, err := os.Open(f.local)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var progress func(int64)
	if bar != nil && f.size > int64(client.InlineMax()) {
		var shown int64
		progress = func(sent int64) {
			_ = bar.Add64(sent - shown) // back to 0 when an upload restarts
			shown = sent
		}
	}
	// The file itself is the body, so that a staging upload that failed
	// for a passing reason can read it again.
	return client.Put(ctx, producer.Put{
		Package: pkg, Path: f.path, Class: c.Class, Metadata: c.Meta, MediaType: c.MediaType,
		Body: fh, Size: f.size, Progress: progress,
	})
}

// putBatchFiles is how many small files one goroutine of put reads and
// hands to the producer at once; the producer packs them into batch
// commands under the message size limit.
const putBatchFiles = 128

// sendBatch reads the small files at idx and sends them packed into batch
// commands, noting each file's pending reply, or its error.
func (c putCmd) sendBatch(ctx context.Context, client *producer.Client, pkg string, files []putFile, idx []int, pendings []*producer.Pending, results []putResult) {
	puts := make([]producer.Put, 0, len(idx))
	at := make([]int, 0, len(idx))
	for _, i := range idx {
		f := files[i]
		data, err := os.ReadFile(f.local)
		if err != nil {
			results[i].err = err
			continue
		}
		if int64(len(data)) > int64(client.InlineMax()) {
			// Grew since it was listed: send it on its own.
			pendings[i], results[i].err = c.send(ctx, client, pkg, f, nil)
			continue
		}
		puts = append(puts, producer.Put{Package: pkg, Path: f.path, Class: c.Class, Metadata: c.Meta, MediaType: c.MediaType,
			Body: bytes.NewReader(data), Size: int64(len(data))})
		at = append(at, i)
	}
	if len(puts) == 0 {
		return
	}
	ps, err := client.PutBatch(ctx, puts)
	for k, i := range at {
		if err != nil {
			results[i].err = err
			continue
		}
		pendings[i] = ps[k]
	}
}

// report prints one line per file and fails when any file was not stored.
func (c putCmd) report(s *ioStreams, pkg string, results []putResult) error {
	failed, repaired := 0, 0
	for _, r := range results {
		if r.err == nil {
			r.err = r.reply.Err()
		}
		if c.JSON {
			out := struct {
				File string `json:"file"`
				commands.Reply
				Error string `json:"error,omitempty"`
			}{File: r.file.local, Reply: r.reply}
			if r.err != nil {
				out.Error = r.err.Error()
			}
			b, _ := json.Marshal(out)
			fmt.Fprintln(s.out, string(b))
		}
		if r.err != nil {
			failed++
			fmt.Fprintf(s.err, "%s: not stored: %v\n", r.file.local, r.err)
			continue
		}
		if !c.JSON {
			// The address is one digest; print the other beside it.
			other := "sha256:" + r.reply.SHA256
			if strings.HasPrefix(r.reply.Address, "sha256:") {
				other = "blake3:" + r.reply.BLAKE3
			}
			line := fmt.Sprintf("%s  %s  %s  %d bytes", r.file.path, r.reply.Address, other, r.reply.Size)
			if r.reply.Status == commands.StatusRepaired {
				line += fmt.Sprintf("  repaired (the stored copy was %s; this upload replaced it)", r.reply.Repaired)
			}
			fmt.Fprintln(s.out, line)
		}
		if r.reply.Status == commands.StatusRepaired {
			repaired++
		}
	}
	if !c.JSON {
		msg := fmt.Sprintf("package %s: %d of %d file(s) stored", pkg, len(results)-failed, len(results))
		if repaired > 0 {
			msg += fmt.Sprintf(", %d of them repaired", repaired)
		}
		fmt.Fprintln(s.err, msg)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d file(s) were not stored (reasons above)", failed, len(results))
	}
	return nil
}

// collectFiles expands the command line into regular files with their
// paths inside the package.
func collectFiles(args []string) ([]putFile, error) {
	var files []putFile
	seen := map[string]string{}
	add := func(local, inPkg string, size int64) error {
		if prev, ok := seen[inPkg]; ok {
			return fmt.Errorf("%s and %s would both be stored as %q; put them in separate runs or packages", prev, local, inPkg)
		}
		seen[inPkg] = local
		files = append(files, putFile{local: local, path: inPkg, size: size})
		return nil
	}
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			if !st.Mode().IsRegular() {
				return nil, fmt.Errorf("%s is not a regular file", a)
			}
			if err := add(a, filepath.Base(a), st.Size()); err != nil {
				return nil, err
			}
			continue
		}
		base := filepath.Base(filepath.Clean(a))
		if base == "." || base == ".." || base == string(filepath.Separator) {
			base = ""
		}
		err = filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil // directories recurse; links and devices are skipped
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(a, p)
			if err != nil {
				return err
			}
			return add(p, path.Join(base, filepath.ToSlash(rel)), info.Size())
		})
		if err != nil {
			return nil, err
		}
	}
	return files, nil
}

// clientLogger is the logger of a client verb: its output is the result,
// so connection chatter is shown only when --log-level asks for it.
func clientLogger(g *Globals, s *ioStreams) (zerolog.Logger, error) {
	lg, err := g.logger(s.err)
	if err != nil {
		return lg, err
	}
	if g.LogLevel == "info" {
		lg = lg.Level(zerolog.ErrorLevel)
	}
	return lg, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}

// sealCmd seals a package: no file can be added after it.
type sealCmd struct {
	Package string        `short:"p" required:"" help:"Package to seal."`
	Timeout time.Duration `help:"How long to wait for the reply." default:"1m"`
	JSON    bool          `name:"json" help:"Print the reply as JSON."`
}

func (c sealCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if err := commands.ValidatePackage(c.Package); err != nil {
		return fmt.Errorf("--package: %w", err)
	}
	lg, err := clientLogger(g, s)
	if err != nil {
		return err
	}
	nc, js, err := g.natsConn(ctx, "seal", lg)
	if err != nil {
		return err
	}
	defer nc.Close()
	host, _ := os.Hostname()
	client, err := producer.New(ctx, producer.Config{NATS: nc, JetStream: js, Topology: bus.DefaultTopology(), Producer: "seal@" + host})
	if err != nil {
		return err
	}
	defer client.Close()
	wctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	p, err := client.Seal(wctx, c.Package)
	if err != nil {
		return err
	}
	r, err := p.Wait(wctx)
	if err != nil {
		return err
	}
	if c.JSON {
		b, _ := json.Marshal(r)
		fmt.Fprintln(s.out, string(b))
	}
	if err := r.Err(); err != nil {
		return err
	}
	if !c.JSON {
		fmt.Fprintf(s.out, "sealed %s (event sequence %d)\n", c.Package, r.Sequence)
	}
	return nil
}

// warnIfNoWorker tells the user early when no process pulls from the
// consumer their command goes to: the command stays queued and is handled
// when a worker starts, but the wait would otherwise be silent until the
// timeout.
func warnIfNoWorker(ctx context.Context, js jetstream.JetStream, durable, who string, timeout time.Duration, s *ioStreams) {
	ictx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cons, err := js.Consumer(ictx, bus.DefaultTopology().CommandsStream, durable)
	if err != nil {
		return // the topology is missing: the send reports it
	}
	info, err := cons.Info(ictx)
	if err != nil || info.NumWaiting > 0 || info.NumAckPending > 0 {
		return
	}
	fmt.Fprintf(s.err, "warning: no %s is pulling commands right now; they stay queued and are handled when one starts (waiting up to --timeout %s)\n", who, timeout)
}
