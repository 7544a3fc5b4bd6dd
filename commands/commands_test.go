package commands

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

func validIngest() Ingest {
	size := int64(6)
	d, err := digest.Compute(bytes.NewReader([]byte("hello\n")), nil)
	if err != nil {
		panic(err)
	}
	return Ingest{
		V: Version, CommandID: "cmd-1", Package: "ci/run-42", Path: "logs/hello.txt",
		RetentionClass: "raw-evidence", Metadata: map[string]string{"git_commit": "4b825dc"},
		ExpectSize: &size, Inline: []byte("hello\n"),
		Expect: []digest.Address{d.Address(digest.SHA256)},
	}
}

func TestIngestRoundTripCBORAndJSON(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	dec := NewDecoder(codec)
	for _, isJSON := range []bool{false, true} {
		in := validIngest()
		b, err := Encode(codec, in, isJSON)
		if err != nil {
			t.Fatal(err)
		}
		out, err := dec.DecodeIngest(b, isJSON)
		if err != nil {
			t.Fatalf("json=%v: %v", isJSON, err)
		}
		if out.CommandID != in.CommandID || out.Path != in.Path || !bytes.Equal(out.Inline, in.Inline) ||
			*out.ExpectSize != 6 || out.Expect[0] != in.Expect[0] || out.Metadata["git_commit"] != "4b825dc" {
			t.Fatalf("json=%v: round trip changed the command: %+v", isJSON, out)
		}
	}
}

func TestEmptyInlineBlobIsNotStaged(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	dec := NewDecoder(codec)
	for _, isJSON := range []bool{false, true} {
		in := validIngest()
		in.Inline, in.Expect, in.ExpectSize = []byte{}, nil, nil
		b, err := Encode(codec, in, isJSON)
		if err != nil {
			t.Fatal(err)
		}
		out, err := dec.DecodeIngest(b, isJSON)
		if err != nil {
			t.Fatalf("json=%v: empty inline blob refused: %v", isJSON, err)
		}
		if out.Inline == nil || len(out.Inline) != 0 {
			t.Fatalf("json=%v: empty blob decoded as %#v", isJSON, out.Inline)
		}
	}
}

func TestJSONFromTheDocs(t *testing.T) {
	t.Parallel()
	doc := `{"v":1,"command_id":"0f8e3c1e-cli-demo-1","package":"ci/run-42",
	 "path":"logs/hello.txt","retention_class":"raw-evidence",
	 "metadata":{"git_commit":"4b825dc"},"expect_size":6,"inline":"aGVsbG8K"}`
	c, err := NewDecoder(events.NewCodec()).DecodeIngest([]byte(doc), true)
	if err != nil {
		t.Fatal(err)
	}
	if string(c.Inline) != "hello\n" {
		t.Fatalf("inline = %q", c.Inline)
	}
}

func TestRejections(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	dec := NewDecoder(codec)
	cases := map[string]struct {
		mut  func(*Ingest)
		code string
	}{
		"version":        {func(c *Ingest) { c.V = 2 }, CodeUnsupportedVersion},
		"no id":          {func(c *Ingest) { c.CommandID = "" }, CodeInvalidCommandID},
		"id with space":  {func(c *Ingest) { c.CommandID = "a b" }, CodeInvalidCommandID},
		"id with dot":    {func(c *Ingest) { c.CommandID = "a.b" }, CodeInvalidCommandID},
		"no package":     {func(c *Ingest) { c.Package = "" }, CodeInvalidPackage},
		"package dotdot": {func(c *Ingest) { c.Package = "../x" }, CodeInvalidPackage},
		"empty path":     {func(c *Ingest) { c.Path = "" }, CodeInvalidPath},
		"dotdot":         {func(c *Ingest) { c.Path = "a/../../etc/passwd" }, CodeInvalidPath},
		"dotdot only":    {func(c *Ingest) { c.Path = ".." }, CodeInvalidPath},
		"absolute":       {func(c *Ingest) { c.Path = "/etc/passwd" }, CodeInvalidPath},
		"nul":            {func(c *Ingest) { c.Path = "a\x00b" }, CodeInvalidPath},
		"dot":            {func(c *Ingest) { c.Path = "." }, CodeInvalidPath},
		"dot comp":       {func(c *Ingest) { c.Path = "a/./b" }, CodeInvalidPath},
		"double slash":   {func(c *Ingest) { c.Path = "a//b" }, CodeInvalidPath},
		"trailing slash": {func(c *Ingest) { c.Path = "a/" }, CodeInvalidPath},
		"backslash":      {func(c *Ingest) { c.Path = `a\..\b` }, CodeInvalidPath},
		"negative size":  {func(c *Ingest) { n := int64(-1); c.ExpectSize = &n }, CodeMalformed},
		"both":           {func(c *Ingest) { c.Staged = "x" }, CodeMalformed},
		"neither":        {func(c *Ingest) { c.Inline = nil }, CodeMalformed},
		"empty meta key": {func(c *Ingest) { c.Metadata = map[string]string{"": "x"} }, CodeInvalidMetadata},
		"nul package":    {func(c *Ingest) { c.Package = "ci\x00x" }, CodeInvalidPackage},
		"c1 path":        {func(c *Ingest) { c.Path = "a\u0085b" }, CodeInvalidPath},
		"tab path":       {func(c *Ingest) { c.Path = "a\tb" }, CodeInvalidPath},
		"nul meta key":   {func(c *Ingest) { c.Metadata = map[string]string{"a\x00": "x"} }, CodeInvalidMetadata},
		"nul meta value": {func(c *Ingest) { c.Metadata = map[string]string{"a": "x\x00y"} }, CodeInvalidMetadata},
		"bell meta":      {func(c *Ingest) { c.Metadata = map[string]string{"a": "x\ay"} }, CodeInvalidMetadata},
		"nul class":      {func(c *Ingest) { c.RetentionClass = "raw\x00" }, CodeMalformed},
		"nul media":      {func(c *Ingest) { c.MediaType = "text/plain\x00" }, CodeMalformed},
		"nul producer":   {func(c *Ingest) { c.Producer = "\x00" }, CodeMalformed},
		"nul staged":     {func(c *Ingest) { c.Inline, c.Staged = nil, "s\x00" }, CodeMalformed},
		"inline too big": {func(c *Ingest) { c.Inline = make([]byte, MaxInline+1) }, CodeTooLarge},
		// Both encodings name the first fault Validate finds, even when
		// the CBOR string cap refused the command first.
		"too big and bad path": {func(c *Ingest) { c.Inline, c.Path = make([]byte, MaxInline+1), "../x" }, CodeInvalidPath},
	}
	for name, tc := range cases {
		for _, isJSON := range []bool{false, true} {
			c := validIngest()
			tc.mut(&c)
			b, err := Encode(codec, c, isJSON)
			if err != nil {
				t.Fatal(err)
			}
			_, err = dec.DecodeIngest(b, isJSON)
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code || !errors.Is(err, ErrRejected) {
				t.Errorf("%s (json=%v): err = %v, want code %s", name, isJSON, err, tc.code)
			}
		}
	}
}

func TestCheckText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		s         string
		line, all bool // accepted as Line, as Lines
	}{
		{"", true, true},
		{"ci/run-42", true, true},
		{"Grüße ✓ \ufffd", true, true}, // a literal U+FFFD is text
		{"a\x00b", false, false},
		{"a\xffb", false, false},
		{"\xe2\x82", false, false}, // truncated sequence
		{"a\tb", false, true},
		{"a\r\nb", false, true},
		{"a\x7fb", false, false},
		{"a\u0085b", false, false},
		{"a\x1bb", false, false},
	} {
		if got := CheckText(tc.s, Line) == nil; got != tc.line {
			t.Errorf("CheckText(%q, Line) accepted=%v, want %v", tc.s, got, tc.line)
		}
		if got := CheckText(tc.s, Lines) == nil; got != tc.all {
			t.Errorf("CheckText(%q, Lines) accepted=%v, want %v", tc.s, got, tc.all)
		}
	}
	err := ValidateText(CodeInvalidPath, "path", "ab\x00", 0, Line)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeInvalidPath || !strings.Contains(e.Reason, "NUL byte at byte offset 2") {
		t.Fatalf("ValidateText: %v, want invalid_path naming the NUL and its offset", err)
	}
}

func TestRejectionEchoesOnlyRecordableText(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	for _, isJSON := range []bool{false, true} {
		c := validIngest()
		c.Package, c.Path = "ci\x00run", "logs/a.txt"
		b, _ := Encode(codec, c, isJSON)
		got, err := NewDecoder(codec).DecodeIngest(b, isJSON)
		if err == nil || got.Package != "" || got.Path != "logs/a.txt" || got.CommandID != "cmd-1" {
			t.Fatalf("json=%v: %+v, %v; want a rejection echoing the id and path but not the package", isJSON, got, err)
		}
		s, _ := Encode(codec, Seal{V: 1, CommandID: "s", Package: "x\x00"}, isJSON)
		seal, err := NewDecoder(codec).DecodeSeal(s, isJSON)
		if err == nil || seal.Package != "" || seal.CommandID != "s" {
			t.Fatalf("json=%v: seal %+v, %v", isJSON, seal, err)
		}
	}
}

func TestValidatePathUTF8(t *testing.T) {
	t.Parallel()
	var e *Error
	if err := ValidatePath("a\xff"); !errors.As(err, &e) || e.Code != CodeInvalidPath {
		t.Fatalf("invalid UTF-8 path: %v", err)
	}
}

func TestMalformedInput(t *testing.T) {
	t.Parallel()
	dec := NewDecoder(events.NewCodec())
	inputs := map[string]struct {
		b      []byte
		isJSON bool
	}{
		"garbage cbor":    {[]byte{0xff, 0x00}, false},
		"truncated cbor":  {[]byte{0xa3, 0x61}, false},
		"indefinite map":  {[]byte{0xbf, 0xff}, false},
		"huge":            {bytes.Repeat([]byte{0}, MaxCommandBytes+1), false},
		"json garbage":    {[]byte("{"), true},
		"json unknown":    {[]byte(`{"v":1,"command_id":"x","package":"p","path":"a","inline":"","extra":1}`), true},
		"json trailing":   {[]byte(`{"v":1,"command_id":"x","package":"p","path":"a","inline":""} {}`), true},
		"json bad digest": {[]byte(`{"v":1,"command_id":"x","package":"p","path":"a","inline":"","expect":["sha256:../../x"]}`), true},
		"cbor as json":    {[]byte{0xa0}, true},
	}
	for name, in := range inputs {
		_, err := dec.DecodeIngest(in.b, in.isJSON)
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeMalformed {
			t.Errorf("%s: err = %v, want code %s", name, err, CodeMalformed)
		}
	}
	// Duplicate keys in CBOR: {"v":1,"v":1}.
	dup := []byte{0xa2, 0x61, 'v', 0x01, 0x61, 'v', 0x01}
	if _, err := dec.DecodeIngest(dup, false); err == nil {
		t.Error("duplicate CBOR map keys accepted")
	}
	// Unknown field in CBOR.
	unknown := []byte{0xa1, 0x65, 'e', 'x', 't', 'r', 'a', 0x01}
	if _, err := dec.DecodeIngest(unknown, false); err == nil {
		t.Error("unknown CBOR field accepted")
	}
}

func TestInlineLimit(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	c := validIngest()
	c.Expect, c.ExpectSize = nil, nil
	c.Inline = bytes.Repeat([]byte("x"), MaxInline)
	b, err := Encode(codec, c, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewDecoder(codec).DecodeIngest(b, false); err != nil {
		t.Fatalf("inline blob of exactly MaxInline refused: %v", err)
	}
	c.Inline = append(c.Inline, 'x')
	for _, isJSON := range []bool{false, true} {
		b, _ = Encode(codec, c, isJSON)
		got, err := NewDecoder(codec).DecodeIngest(b, isJSON)
		var e *Error
		if !errors.As(err, &e) || e.Code != CodeTooLarge {
			t.Fatalf("json=%v: inline blob over MaxInline: err = %v, want %s", isJSON, err, CodeTooLarge)
		}
		if got.CommandID != c.CommandID || got.Package != c.Package {
			t.Fatalf("json=%v: the rejection does not name the command: %+v", isJSON, got)
		}
	}
}

func TestSeal(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	for _, isJSON := range []bool{false, true} {
		b, _ := Encode(codec, Seal{V: 1, CommandID: "s1", Package: "p"}, isJSON)
		s, err := NewDecoder(codec).DecodeSeal(b, isJSON)
		if err != nil || s.Package != "p" {
			t.Fatalf("seal: %+v %v", s, err)
		}
	}
	b, _ := Encode(codec, Seal{V: 1, CommandID: "s1", Package: ""}, false)
	if _, err := NewDecoder(codec).DecodeSeal(b, false); err == nil {
		t.Fatal("seal of an empty package name accepted")
	}
}

func TestReplyRoundTrip(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	in := Reply{V: 1, CommandID: "c", Status: StatusRejected, Code: CodeDigestMismatch, Reason: "r", Sequence: 9}
	for _, isJSON := range []bool{false, true} {
		b, err := Encode(codec, in, isJSON)
		if err != nil {
			t.Fatal(err)
		}
		out, err := DecodeReply(codec, b, isJSON)
		if err != nil || !reflect.DeepEqual(out, in) {
			t.Fatalf("json=%v: %+v %v", isJSON, out, err)
		}
		var e *Error
		if !errors.As(out.Err(), &e) || e.Code != CodeDigestMismatch {
			t.Fatalf("Err() = %v", out.Err())
		}
	}
	// A newer ingester's extra field is tolerated.
	b, _ := codec.Marshal(map[string]any{"v": 1, "command_id": "c", "status": "stored", "size": 3, "future": "x"})
	out, err := DecodeReply(codec, b, false)
	if err != nil || out.Status != StatusStored || out.Size != 3 {
		t.Fatalf("reply with an unknown field: %+v %v", out, err)
	}
}

func FuzzDecodeIngest(f *testing.F) {
	codec := events.NewCodec()
	b, _ := Encode(codec, validIngest(), false)
	f.Add(b, false)
	j, _ := Encode(codec, validIngest(), true)
	f.Add(j, true)
	dec := NewDecoder(codec)
	f.Fuzz(func(t *testing.T, b []byte, isJSON bool) {
		c, err := dec.DecodeIngest(b, isJSON)
		if err != nil {
			if !errors.Is(err, ErrRejected) {
				t.Fatalf("error is not a rejection: %v", err)
			}
			return
		}
		if ValidatePath(c.Path) != nil || strings.Contains("/"+c.Path+"/", "/../") || strings.HasPrefix(c.Path, "/") {
			t.Fatalf("accepted bad path %q", c.Path)
		}
		if len(c.Inline) > MaxInline {
			t.Fatalf("accepted inline blob of %d bytes", len(c.Inline))
		}
		texts := []string{c.Package, c.Path, c.RetentionClass, c.MediaType, c.Staged, c.Producer}
		for k, v := range c.Metadata {
			texts = append(texts, k, v)
		}
		for _, s := range texts {
			if CheckText(s, Lines) != nil {
				t.Fatalf("accepted text %q, which the database cannot hold", s)
			}
		}
	})
}
