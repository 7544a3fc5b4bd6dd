package api_test

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkObjectGet measures streaming one 64 MiB object through the API
// (re-digested with SHA-256 on the way); B/op shows that memory does not
// grow with the object.
func BenchmarkObjectGet(b *testing.B) {
	e := newEnv(b, "")
	data := pattern(64 << 20)
	addr := e.store(data, "ok")
	url := e.srv.URL + "/v1/objects/" + addr.String()
	for _, bc := range []struct {
		name, rng string
		status    int
	}{
		{"whole verified", "", http.StatusOK},
		// A range is not re-digested: the cost of the check is the
		// difference.
		{"range unverified", "bytes=0-", http.StatusPartialContent},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for range b.N {
				req, _ := http.NewRequest("GET", url, nil)
				if bc.rng != "" {
					req.Header.Set("Range", bc.rng)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || n != int64(len(data)) || resp.StatusCode != bc.status {
					b.Fatalf("status %d, %d bytes, %v", resp.StatusCode, n, err)
				}
			}
		})
	}
}
