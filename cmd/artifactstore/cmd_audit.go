package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/checkpoint"
	"github.com/artifactstore/artifactstore/events"
)

type auditCmd struct {
	Checkpoints bool   `help:"Also check the log against every signed checkpoint of the checkpoints stream and table: this catches a consistent rewrite of history (digests and head recomputed), which the chain alone cannot. Needs --checkpoint-public-key."`
	PublicKey   string `name:"checkpoint-public-key" help:"Public key file of the checkpoint signer (the .pub of 'checkpoint keygen'); keep it where the database's administrators cannot change it." type:"path" placeholder:"FILE"`
}

func (c auditCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	if c.Checkpoints && c.PublicKey == "" {
		return errors.New("--checkpoints needs --checkpoint-public-key FILE, the signer's public key (a key read from the database would prove nothing)")
	}
	if !c.Checkpoints {
		pool, err := g.pool(ctx)
		if err != nil {
			return err
		}
		defer pool.Close()
		rep, err := events.NewLog(pool, events.NewCodec()).Audit(ctx, events.AuditOptions{})
		if err != nil {
			return err
		}
		if err := printAudit(s, rep); err != nil {
			return err
		}
		_, err = fmt.Fprintln(s.out, "note: a consistent rewrite (digests and head recomputed) passes this check; --checkpoints compares the log with the signed checkpoints kept outside the database")
		return err
	}
	ver, err := checkpoint.LoadVerifier(c.PublicKey)
	if err != nil {
		return fmt.Errorf("--checkpoint-public-key: %w", err)
	}
	lg, err := g.logger(s.err)
	if err != nil {
		return err
	}
	sources, closeAll, err := g.checkpointSources(ctx, lg, s)
	if err != nil {
		return err
	}
	defer closeAll()
	got, err := checkpoint.Collect(ctx, ver, sources...)
	if err != nil {
		return err
	}
	if err := reportCheckpoints(s, ver, got); err != nil {
		return err
	}
	pool, err := g.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	return auditLog(ctx, s, events.NewLog(pool, events.NewCodec()), got)
}
