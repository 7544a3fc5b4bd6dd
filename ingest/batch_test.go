package ingest_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/producer"
)

// TestBatchStoresEachFileOnItsOwn sends a directory's worth of small files
// through PutBatch (CBOR and JSON): every file gets its own reply line and
// its own events, and a bad file (a wrong size claim) is rejected alone.
func TestBatchStoresEachFileOnItsOwn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	for _, isJSON := range []bool{false, true} {
		c := e.newClient(isJSON)
		pkg := fmt.Sprintf("dir-json-%v", isJSON)
		var puts []producer.Put
		for i := range 40 {
			data := randomBytes(t, 1<<10)
			p := blob(producer.Put{Package: pkg, Path: fmt.Sprintf("f/%02d", i)}, data)
			if i == 7 {
				p.Size = 5 // a wrong claim: this file only is refused
			}
			puts = append(puts, p)
		}
		ctx, cancel := context.WithTimeout(context.Background(), hang)
		defer cancel()
		pends, err := c.PutBatch(ctx, puts)
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range pends {
			r, err := p.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if r.CommandID != p.CommandID || r.Path != puts[i].Path {
				t.Fatalf("file %d: reply %+v for command %s", i, r, p.CommandID)
			}
			want := []string{"object.stored", "file.added"}
			if i == 0 {
				want = []string{"package.created", "retention.assigned", "object.stored", "file.added"}
			}
			if i == 7 {
				if r.Status != commands.StatusRejected || r.Code != commands.CodeSizeMismatch {
					t.Fatalf("bad file: %+v", r)
				}
				want = []string{"ingest.rejected"}
			} else if r.Status != commands.StatusStored || r.Size != 1<<10 {
				t.Fatalf("file %d: %+v", i, r)
			}
			if got := types(e.eventsOf(p.CommandID)); !slices.Equal(got, want) {
				t.Fatalf("file %d appended %v, want %v", i, got, want)
			}
		}
	}
	if n := len(e.objectFiles()); n != 78 {
		t.Fatalf("%d object files, want 78", n)
	}
	e.checkOneSetPerCommand()
	e.waitSettled()
	if n := e.deadLetters(); n != 0 {
		t.Fatalf("%d dead letters: a batch with a rejected file is answered, not dead-lettered", n)
	}
}

// TestRedeliveredBatchHasOneEffectPerFile sends the same batch twice
// without Nats-Msg-Id, as a redelivery would: the second answers every
// file from the log, appends nothing and stores nothing.
func TestRedeliveredBatchHasOneEffectPerFile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	b := commands.IngestBatch{V: 1, CommandID: "batch-dup"}
	for i := range 5 {
		b.Files = append(b.Files, commands.Ingest{V: 1, CommandID: fmt.Sprintf("bf-%d", i), Package: "p", Path: fmt.Sprintf("f%d", i), Inline: []byte(fmt.Sprintf("bytes %d", i))})
	}
	b.Files = append(b.Files, commands.Ingest{V: 1, CommandID: "bf-bad", Package: "p", Path: "a//b", Inline: []byte("x")})
	body, err := commands.Encode(e.codec, b, false)
	if err != nil {
		t.Fatal(err)
	}
	r1 := e.request(bus.CmdIngestBatch, body, "", "")
	head1, _ := e.log.Head(context.Background())
	r2 := e.request(bus.CmdIngestBatch, body, "", "")
	head2, _ := e.log.Head(context.Background())
	if r1.Status != commands.StatusBatch || r2.Status != commands.StatusBatch || len(r1.Files) != 6 || len(r2.Files) != 6 {
		t.Fatalf("replies %+v / %+v", r1, r2)
	}
	for i := range r1.Files {
		a, b := r1.Files[i], r2.Files[i]
		if a.Duplicate || !b.Duplicate || a.Status != b.Status || a.Sequence != b.Sequence || a.Address != b.Address || a.Code != b.Code {
			t.Fatalf("file %d: first %+v, again %+v", i, a, b)
		}
	}
	if r1.Files[5].Code != commands.CodeInvalidPath || r1.Files[0].Status != commands.StatusStored {
		t.Fatalf("first reply %+v", r1)
	}
	if head2 != head1 {
		t.Fatalf("log head %d after the redelivery, was %d", head2, head1)
	}
	if n := len(e.objectFiles()); n != 5 {
		t.Fatalf("%d object files, want 5", n)
	}
	e.checkOneSetPerCommand()
	e.waitSettled()
}

// TestMalformedBatchIsRejectedWhole: a batch that does not decode has no
// files to answer; it is rejected under its id like any command.
func TestMalformedBatchIsRejectedWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.startIngester(nil)
	r := e.request(bus.CmdIngestBatch, []byte(`{"v":1,"command_id":"bb-1","files":[]}`), "application/json", "")
	if r.Status != commands.StatusRejected || r.Code != commands.CodeMalformed || r.CommandID != "bb-1" || len(r.Files) != 0 {
		t.Fatalf("reply %+v", r)
	}
	if got := types(e.eventsOf("bb-1")); !slices.Equal(got, []string{"ingest.rejected"}) {
		t.Fatalf("events %v", got)
	}
}

// TestBatchSettingAPathTwiceKeepsTheLater: a batch (committed in one
// group) that gives one path of an open package twice, with other bytes
// the second time, replaces it within the group: the path names the
// later file, from the later file's event on. The group writes its files
// in one statement, which cannot change a row twice; the group must still
// commit whole, not fail and fall back to one commit per file.
func TestBatchSettingAPathTwiceKeepsTheLater(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	logs := &lockedBuffer{}
	e.startIngester(func(c *ingest.Config) {
		c.Logger = zerolog.New(io.MultiWriter(logs, zerolog.NewTestWriter(t))).Level(zerolog.WarnLevel)
	})
	b := commands.IngestBatch{V: 1, CommandID: "batch-twice"}
	for i, path := range []string{"f", "g", "f"} {
		b.Files = append(b.Files, commands.Ingest{V: 1, CommandID: fmt.Sprintf("bt-%d", i), Package: "p", Path: path, Inline: []byte(fmt.Sprintf("bytes %d", i))})
	}
	body, err := commands.Encode(e.codec, b, false)
	if err != nil {
		t.Fatal(err)
	}
	r := e.request(bus.CmdIngestBatch, body, "", "")
	if r.Status != commands.StatusBatch || len(r.Files) != 3 {
		t.Fatalf("reply %+v", r)
	}
	for i, f := range r.Files {
		if f.Status != commands.StatusStored {
			t.Fatalf("file %d: %+v", i, f)
		}
	}
	if got := types(e.eventsOf("bt-2")); !slices.Equal(got, []string{"object.stored", "file.added"}) {
		t.Fatalf("the second file at path f appended %v, want it added in place of the first", got)
	}
	if strings.Contains(logs.String(), "group commit failed") {
		t.Fatalf("the batch's group failed and was committed file by file:\n%s", logs.String())
	}
	var addr string
	var seq int64
	if err := e.pool.QueryRow(context.Background(), `SELECT content_address, added_seq FROM ingest_files WHERE package = 'p' AND path = 'f'`).Scan(&addr, &seq); err != nil {
		t.Fatal(err)
	}
	if first := e.eventsOf("bt-2")[0].Sequence; addr != r.Files[2].Address || seq != first {
		t.Fatalf("path f names %s from event %d, want %s from event %d (the later file)", addr, seq, r.Files[2].Address, first)
	}
	e.checkOneSetPerCommand()
	e.waitSettled()
}

// lockedBuffer is a bytes.Buffer that log lines may be written to from
// several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
