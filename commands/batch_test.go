package commands

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/artifactstore/artifactstore/events"
)

func TestIngestBatchOneBadFileRefusesOnlyIt(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	good := validIngest()
	bad := validIngest()
	bad.CommandID, bad.Path = "c-bad", "../escape"
	staged := validIngest()
	staged.CommandID, staged.Inline, staged.Staged = "c-staged", nil, "obj"
	b := IngestBatch{V: Version, CommandID: "batch-1", Files: []Ingest{good, bad, staged}}
	for _, isJSON := range []bool{false, true} {
		data, err := Encode(codec, b, isJSON)
		if err != nil {
			t.Fatal(err)
		}
		id, files, err := NewDecoder(codec).DecodeIngestBatch(data, isJSON)
		if err != nil || id != "batch-1" || len(files) != 3 {
			t.Fatalf("json=%v: %q %d files, %v", isJSON, id, len(files), err)
		}
		if files[0].Err != nil || !reflect.DeepEqual(files[0].Ingest, good) {
			t.Fatalf("json=%v: good file %+v", isJSON, files[0])
		}
		if files[1].Err == nil || files[1].Err.Code != CodeInvalidPath || files[1].Ingest.CommandID != "c-bad" || !strings.Contains(files[1].Err.Reason, "file #1") {
			t.Fatalf("json=%v: bad file %+v", isJSON, files[1])
		}
		if files[2].Err == nil || files[2].Err.Code != CodeMalformed || !strings.Contains(files[2].Err.Reason, "inline files only") {
			t.Fatalf("json=%v: staged file %+v", isJSON, files[2])
		}
	}
}

func TestIngestBatchEnvelopeRefusedWhole(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	dec := NewDecoder(codec)
	for name, tc := range map[string]struct {
		body []byte
		code string
	}{
		"no files":     {[]byte(`{"v":1,"command_id":"b","files":[]}`), CodeMalformed},
		"version":      {[]byte(`{"v":2,"command_id":"b","files":[{}]}`), CodeUnsupportedVersion},
		"bad id":       {[]byte(`{"v":1,"command_id":"a b","files":[{}]}`), CodeInvalidCommandID},
		"unknown":      {[]byte(`{"v":1,"command_id":"b","files":[{}],"x":1}`), CodeMalformed},
		"too many":     {[]byte(`{"v":1,"command_id":"b","files":[` + strings.Repeat(`{},`, MaxBatchFiles) + `{}]}`), CodeTooLarge},
		"not an array": {[]byte(`{"v":1,"command_id":"b","files":{}}`), CodeMalformed},
	} {
		_, _, err := dec.DecodeIngestBatch(tc.body, true)
		var e *Error
		if !errors.As(err, &e) || e.Code != tc.code {
			t.Errorf("%s: %v, want code %s", name, err, tc.code)
		}
	}
	// A file that is not even an object refuses that file only.
	_, files, err := dec.DecodeIngestBatch([]byte(`{"v":1,"command_id":"b","files":[7]}`), true)
	if err != nil || len(files) != 1 || files[0].Err == nil || files[0].Err.Code != CodeMalformed {
		t.Fatalf("%+v %v", files, err)
	}
}

func TestBatchReplyRoundTrip(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	in := Reply{V: 1, CommandID: "b", Status: StatusBatch, Files: []Reply{
		{V: 1, CommandID: "c1", Status: StatusStored, Path: "a", Size: 3},
		{V: 1, CommandID: "c2", Status: StatusRejected, Code: CodeInvalidPath, Reason: "r"},
	}}
	for _, isJSON := range []bool{false, true} {
		b, err := Encode(codec, in, isJSON)
		if err != nil {
			t.Fatal(err)
		}
		out, err := DecodeReply(codec, b, isJSON)
		if err != nil || !reflect.DeepEqual(out, in) || out.Err() != nil || out.Files[1].Err() == nil {
			t.Fatalf("json=%v: %+v %v", isJSON, out, err)
		}
	}
}
