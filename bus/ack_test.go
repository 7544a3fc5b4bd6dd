package bus_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/bus"
)

// ackCutter is a TCP proxy in front of a NATS server that closes the
// client connection carrying the first JetStream ack (a write with a
// $JS.ACK. subject, or another marker) before forwarding it: the ack is
// lost with its connection, as when the server restarts while an ack is on
// its way.
type ackCutter struct {
	ln     net.Listener
	target string
	marker []byte
	cut    atomic.Bool
	done   chan struct{} // closed once an ack was cut

	mu    sync.Mutex
	conns []net.Conn
}

func startAckCutter(t *testing.T, serverURL string) *ackCutter {
	t.Helper()
	return startCutter(t, serverURL, "$JS.ACK.")
}

// startCutter is startAckCutter cutting at the first write that contains
// marker.
func startCutter(t *testing.T, serverURL, marker string) *ackCutter {
	t.Helper()
	u, err := url.Parse(serverURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackCutter{ln: ln, target: u.Host, marker: []byte(marker), done: make(chan struct{})}
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			_ = c.Close()
		}
	})
	return p
}

func (p *ackCutter) url() string { return "nats://" + p.ln.Addr().String() }

func (p *ackCutter) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		go func() {
			_, _ = io.Copy(client, server)
			_ = client.Close()
			_ = server.Close()
		}()
		go p.forward(client, server)
	}
}

// forward copies client to server, cutting both at the first write with
// the marker.
func (p *ackCutter) forward(client, server net.Conn) {
	defer client.Close()
	defer server.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if bytes.Contains(buf[:n], p.marker) && p.cut.CompareAndSwap(false, true) {
				close(p.done)
				return
			}
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestAckLostWithItsConnectionIsSentAgain loses a handled command's
// DoubleAck with its connection: the consume loop sends the ack again on
// the new connection, so the command leaves the work queue after one run
// of its handler, not after a redelivery at the end of the AckWait and a
// second run.
func TestAckLostWithItsConnectionIsSentAgain(t *testing.T) {
	t.Parallel()
	e := setup(t, nil) // the default AckWait, 30 s
	p := startAckCutter(t, e.ns.URL())
	nc, err := nats.Connect(p.url(), nats.Name(t.Name()), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	log, notConfirmed := logged(e.log, "ack not confirmed; the command may be redelivered (handlers are idempotent)")
	var calls atomic.Int32
	c, err := bus.NewConsumer(js, e.top.CommandsStream, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return nil
	}, bus.ConsumerOptions{Logger: log, DeadLetterSubjectPrefix: e.top.DeadLetterSubjectPrefix(), FetchWait: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hang)
		defer cancel()
		if err := c.Stop(ctx); err != nil && !errors.Is(err, bus.ErrStopDeadline) {
			t.Errorf("Stop: %v", err)
		}
	})

	e.publish(t, bus.CmdIngest, "c1", []byte("hello"))
	receive(t, p.done, "no ack was sent")
	eventually(t, "command acked after its ack was lost", func() bool {
		return e.streamMsgs(t, e.top.CommandsStream) == 0
	})
	select {
	case <-notConfirmed:
		t.Fatal("the consume loop gave up on the lost ack")
	default:
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times; want once (the ack sent again, no redelivery)", n)
	}
	if info := e.consumerInfo(t, e.top.IngestConsumer); info.NumAckPending != 0 || info.NumRedelivered != 0 {
		t.Fatalf("consumer after the ack: %d pending, %d redelivered", info.NumAckPending, info.NumRedelivered)
	}
}

// TestReplyLostWithItsConnectionIsSentAgain loses a handler's reply with
// its connection (the write that carries it never reaches the server, as
// when the server dies while it is on its way) and lets the connection
// come back before the ack: the reply must not be taken as sent, or the
// ack, sent again on the new connection, removes a command whose producer
// never hears of it. Reply waits until the server has the reply, so the
// handler fails, the command is redelivered, and the reply sent again.
func TestReplyLostWithItsConnectionIsSentAgain(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	req, err := bus.NewRequester(e.nc, e.js)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = req.Close() })
	p := startCutter(t, e.ns.URL(), req.ReplySubject("c1"))
	nc, err := nats.Connect(p.url(), nats.Name(t.Name()), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	c, err := bus.NewConsumer(js, e.top.CommandsStream, e.top.IngestConsumer, func(ctx context.Context, m bus.Message) error {
		calls.Add(1)
		return bus.Reply(nc, m.ReplyTo, []byte("done"), "")
	}, bus.ConsumerOptions{Logger: e.log, DeadLetterSubjectPrefix: e.top.DeadLetterSubjectPrefix(), FetchWait: 500 * time.Millisecond,
		Backoff: func(uint64) time.Duration { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), hang)
		defer cancel()
		if err := c.Stop(ctx); err != nil && !errors.Is(err, bus.ErrStopDeadline) {
			t.Errorf("Stop: %v", err)
		}
	})

	ctx, cancel := context.WithTimeout(t.Context(), hang)
	defer cancel()
	pend, err := req.Send(ctx, e.top.Subject(bus.CmdIngest), "c1", []byte("hello"), "")
	if err != nil {
		t.Fatal(err)
	}
	receive(t, p.done, "no reply was sent")
	// Acked: every reply the handler sent reached the server before the
	// ack, and the server passed it on to the requester's connection.
	eventually(t, "command acked after its reply was lost", func() bool {
		return e.streamMsgs(t, e.top.CommandsStream) == 0
	})
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	m, err := pend.Wait(ctx)
	if err != nil {
		t.Fatalf("the command was acked, its reply never came (handler ran %d times): %v", calls.Load(), err)
	}
	if string(m.Data) != "done" || calls.Load() < 2 {
		t.Fatalf("reply %q after %d runs of the handler; want \"done\" from a second run", m.Data, calls.Load())
	}
}
