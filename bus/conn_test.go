package bus_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/bus"
	"github.com/artifactstore/artifactstore/internal/natstest"
)

func TestConnectUnreachableSaysHowToStart(t *testing.T) {
	t.Parallel()
	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err = bus.Connect(ctx, bus.ConnConfig{URL: "nats://" + addr, Name: "test"}, zerolog.New(zerolog.NewTestWriter(t)))
	if err == nil || !strings.Contains(err.Error(), "start-stop-daemon") || !strings.Contains(err.Error(), "embedded") {
		t.Fatalf("Connect to nothing: %v", err)
	}
	if _, err := bus.Connect(ctx, bus.ConnConfig{}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "ARTIFACTSTORE_NATS_URL") {
		t.Fatalf("Connect without URL: %v", err)
	}
	if _, err := bus.Connect(ctx, bus.ConnConfig{URL: "nats://" + addr, TLSCertFile: "x.pem"}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "key") {
		t.Fatalf("Connect with a cert and no key: %v", err)
	}
}

func TestConnectToServer(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	nc, err := bus.Connect(t.Context(), bus.ConnConfig{URL: ns.URL(), Name: "artifactstore-test"}, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.IsConnected() {
		t.Fatal("not connected")
	}
}

// TestEmbeddedServerKeepsCommandsAcrossRestart starts the zero-setup server,
// stores a command, restarts it on the same store and finds the command.
func TestEmbeddedServerKeepsCommandsAcrossRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	top := bus.DefaultTopology()

	srv, err := bus.StartEmbedded(t.Context(), dir, "127.0.0.1", -1, log)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := bus.Connect(t.Context(), bus.ConnConfig{URL: srv.ClientURL()}, log)
	if err != nil {
		srv.Shutdown()
		t.Fatal(err)
	}
	if got := nc.MaxPayload(); got != bus.EmbeddedMaxPayload {
		t.Errorf("embedded max_payload %d", got)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureTopology(t.Context(), js, top); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.PublishCommand(t.Context(), js, top.Subject(bus.CmdIngest), "kept", make([]byte, 2<<20), "", ""); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	srv.Shutdown()
	srv.Shutdown()

	srv, err = bus.StartEmbedded(t.Context(), dir, "127.0.0.1", -1, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err = bus.Connect(t.Context(), bus.ConnConfig{URL: srv.ClientURL()}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err = jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), top.CommandsStream)
	if err != nil {
		t.Fatalf("commands stream after restart: %v", err)
	}
	m, err := s.GetMsg(t.Context(), 1)
	if err != nil || m.Header.Get(bus.HeaderMsgID) != "kept" || len(m.Data) != 2<<20 {
		t.Fatalf("command after restart: %v", err)
	}
}
