package commands_test

import (
	"testing"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

func TestRequestRoundTrip(t *testing.T) {
	t.Parallel()
	codec := events.NewCodec()
	r := commands.Verify{V: 1, RequestID: "r-1", Address: digest.New(digest.BLAKE3, [32]byte{7}), BackendID: "local", Origin: commands.OriginScrub}
	for _, asJSON := range []bool{false, true} {
		b, err := commands.EncodeVerify(codec, r, asJSON)
		if err != nil {
			t.Fatal(err)
		}
		got, err := commands.DecodeVerify(codec, b, asJSON, "")
		if err != nil || got != r {
			t.Fatalf("json=%v: round trip %+v, %v", asJSON, got, err)
		}
	}
	// The header id fills an empty request id.
	json := []byte(`{"v":1,"address":"` + r.Address.String() + `","backend_id":"local"}`)
	got, err := commands.DecodeVerify(codec, json, true, "from-header")
	if err != nil || got.RequestID != "from-header" {
		t.Fatalf("header id: %+v %v", got, err)
	}
	for name, bad := range map[string]string{
		"unknown field": `{"v":1,"request_id":"a","address":"` + r.Address.String() + `","backend_id":"local","x":1}`,
		"version":       `{"v":2,"request_id":"a","address":"` + r.Address.String() + `","backend_id":"local"}`,
		"bad address":   `{"v":1,"request_id":"a","address":"blake3:00","backend_id":"local"}`,
		"no backend":    `{"v":1,"request_id":"a","address":"` + r.Address.String() + `"}`,
		"bad id":        `{"v":1,"request_id":"a.b","address":"` + r.Address.String() + `","backend_id":"local"}`,
		"trailing":      `{"v":1,"request_id":"a","address":"` + r.Address.String() + `","backend_id":"local"} {}`,
	} {
		if _, err := commands.DecodeVerify(codec, []byte(bad), true, ""); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
