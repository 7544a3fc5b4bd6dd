package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/explain"
)

// explainCmd tells from the event log why an object or a package is still
// there, or why it was deleted.
type explainCmd struct {
	Subject string `arg:"" help:"A content address (blake3:<hex> or sha256:<hex>) or a package name." placeholder:"ADDR|PACKAGE"`
	Package bool   `help:"Treat SUBJECT as a package name even if it looks like a content address."`
	JSON    bool   `name:"json" help:"Print the report as JSON."`
}

func (c explainCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	x := explain.New(pool, events.NewCodec(), nil)

	var (
		rep     any
		text    func() error
		addrErr error
	)
	looksLikeAddr := strings.HasPrefix(c.Subject, "blake3:") || strings.HasPrefix(c.Subject, "sha256:")
	if looksLikeAddr && !c.Package {
		addr, perr := digest.Parse(c.Subject)
		if perr == nil {
			r, err := x.Object(ctx, addr)
			if err != nil {
				return explainErr(err)
			}
			rep, text = r, func() error { return r.WriteText(s.out) }
		} else {
			addrErr = perr
		}
	}
	if rep == nil {
		r, err := x.Package(ctx, c.Subject)
		if err != nil {
			if addrErr != nil && errors.Is(err, explain.ErrNotFound) {
				return fmt.Errorf("%q is neither a valid content address (%v) nor a known package", c.Subject, addrErr)
			}
			return explainErr(err)
		}
		rep, text = r, func() error { return r.WriteText(s.out) }
	}
	if c.JSON {
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return text()
}

func explainErr(err error) error {
	if errors.Is(err, explain.ErrNotFound) {
		return &exitError{code: 4, err: fmt.Errorf("%w; check the spelling, or run 'artifactstore project --status' if it was stored just now", err)}
	}
	return err
}
