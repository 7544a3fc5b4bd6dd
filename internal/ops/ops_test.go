package ops

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/internal/service"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	s := New(zerolog.New(zerolog.NewTestWriter(t)), "127.0.0.1:0")
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "artifactstore_test_total", Help: "test"})
	s.Registry.MustRegister(c)
	c.Add(3)
	var unhealthy atomic.Bool
	s.AddCheck("postgres", func(context.Context) error { return nil })
	s.AddCheck("nats", func(context.Context) error {
		if !unhealthy.Load() {
			return nil
		}
		return errors.New("connection refused")
	})
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	base := "http://" + s.Addr()

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	if code, body := get(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "artifactstore_test_total 3") {
		t.Fatalf("/metrics = %d, lacks the counter:\n%s", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusOK || !strings.Contains(body, `"ready":true`) {
		t.Fatalf("/readyz = %d %s, want ready", code, body)
	}
	unhealthy.Store(true)
	code, body := get(t, base+"/readyz")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with a failing check = %d, want 503", code)
	}
	var parsed struct {
		Ready  bool
		Checks []struct {
			Name  string
			Ready bool
			Error string
		}
	}
	if err := json.Unmarshal([]byte(body), &parsed); err != nil {
		t.Fatal(err)
	}
	if parsed.Ready || len(parsed.Checks) != 2 || parsed.Checks[0].Name != "nats" || parsed.Checks[0].Error != "connection refused" {
		t.Fatalf("/readyz body = %+v", parsed)
	}
}

// TestStopBeforeStartAndTwice: Stop before Start is safe and makes Start
// fail (a service runs once); Stop twice is safe.
func TestStopBeforeStartAndTwice(t *testing.T) {
	t.Parallel()
	early := New(zerolog.Nop(), "127.0.0.1:0")
	if err := early.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := early.Start(t.Context()); !errors.Is(err, service.ErrStopped) {
		t.Fatalf("Start after Stop = %v, want service.ErrStopped", err)
	}
	s := New(zerolog.Nop(), "127.0.0.1:0")
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestFrontSeesRequestsBeforeTheMux: a handler put in front gets a path
// with dot segments as it was sent (the mux would redirect it), and passes
// the rest on to the mux.
func TestFrontSeesRequestsBeforeTheMux(t *testing.T) {
	t.Parallel()
	s := New(zerolog.New(zerolog.NewTestWriter(t)), "127.0.0.1:0")
	s.Front(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/front/") {
				w.WriteHeader(http.StatusTeapot)
				_, _ = io.WriteString(w, r.URL.EscapedPath())
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	base := "http://" + s.Addr()
	if code, body := get(t, base+"/front/a/../b"); code != http.StatusTeapot || body != "/front/a/../b" {
		t.Fatalf("front: %d %q, want 418 with the path as sent", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz through the front = %d", code)
	}
}
