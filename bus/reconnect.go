package bus

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"
)

// ErrConnectionLost is the cause with which a context of [WhileConnected]
// is cancelled when its connection to the server was lost.
var ErrConnectionLost = errors.New("bus: the NATS connection was lost while waiting for an answer")

// WhileConnected returns a copy of ctx that is cancelled, with cause
// [ErrConnectionLost], when nc is not connected to a server or stops being
// connected. A request in flight when its connection drops is never
// answered (the server that would answer it is gone, or never received
// it), and nats.go waits for its reply until the request's deadline; a
// request made with this context fails at once instead, and can be made
// again on the new connection ([RetryAcrossReconnects]). Call cancel to
// release the context when the call is done.
func WhileConnected(ctx context.Context, nc *nats.Conn) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithCancelCause(ctx)
	// Listen before looking: a drop between the look and the listen would
	// go unnoticed otherwise.
	ch := nc.StatusChanged(nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	if !nc.IsConnected() {
		cancel(ErrConnectionLost)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case _, ok := <-ch:
			if ok {
				cancel(ErrConnectionLost)
			}
		case <-cctx.Done():
		}
	}()
	return cctx, func() {
		cancel(context.Canceled)
		nc.RemoveStatusListener(ch)
		<-done
	}
}

// RetryAcrossReconnects calls op with a context of [WhileConnected], and
// when nc lost its connection during the call, waits until nc is connected
// again and calls op again; it returns op's result once a call ran on one
// connection from start to end, or ctx's error when ctx is done first. op
// must be safe to repeat: a call cut short may have taken effect on the
// server. Bound ctx: a connection that keeps dropping is retried until
// then.
func RetryAcrossReconnects(ctx context.Context, nc *nats.Conn, op func(ctx context.Context) error) error {
	for {
		if err := waitConnected(ctx, nc); err != nil {
			return err
		}
		cctx, cancel := WhileConnected(ctx, nc)
		err := op(cctx)
		lost := errors.Is(context.Cause(cctx), ErrConnectionLost)
		cancel()
		if err == nil || !lost || ctx.Err() != nil {
			return err
		}
	}
}

// waitConnected returns once nc is connected, or with an error when nc is
// closed or ctx is done first.
func waitConnected(ctx context.Context, nc *nats.Conn) error {
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	for !nc.IsConnected() {
		if nc.IsClosed() {
			return nats.ErrConnectionClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}
