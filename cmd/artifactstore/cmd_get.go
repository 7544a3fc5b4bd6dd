package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/fetch"
)

// getCmd downloads an object or a package's file from the read API and
// proves every byte against its address before writing it.
type getCmd struct {
	Address  string `arg:"" optional:"" help:"Content address of the object (blake3:… or sha256:…); or use --package and --path." placeholder:"ADDR"`
	Package  string `help:"Package of the file to get (with --path)." placeholder:"NAME"`
	Path     string `help:"Path of the file inside --package." placeholder:"PATH"`
	Range    string `help:"Only these bytes: FIRST-LAST (inclusive), FIRST- or -SUFFIX; proven with the tree nodes of the range alone." placeholder:"A-B"`
	Output   string `short:"o" help:"Write to FILE, atomically: a temp file next to it is renamed once every byte is proven (default: standard output, which receives only proven bytes)." type:"path" placeholder:"FILE"`
	APIURL   string `name:"api-url" help:"Base URL of the read API (default: http:// and --http-addr, where 'run' serves it)." placeholder:"URL"`
	APIToken string `name:"api-token" help:"Bearer token of the read API." placeholder:"TOKEN"`
}

func (c getCmd) Run(ctx context.Context, g *Globals, s *ioStreams) error {
	switch {
	case c.Address != "" && (c.Package != "" || c.Path != ""):
		return errors.New("give an address or --package and --path, not both")
	case c.Address == "" && (c.Package == "" || c.Path == ""):
		return errors.New("give the object's address, or --package NAME and --path PATH of a file")
	}
	var rng *fetch.Range
	if c.Range != "" {
		r, err := fetch.ParseRange(c.Range)
		if err != nil {
			return fmt.Errorf("--range: %w", err)
		}
		rng = &r
	}
	base := c.APIURL
	if base == "" {
		base = "http://" + g.HTTPAddr
	}
	cl := &fetch.Client{BaseURL: base, Token: c.APIToken}
	var t fetch.Target
	if c.Address != "" {
		a, err := digest.Parse(c.Address)
		if err != nil {
			return err
		}
		t = fetch.Target{Address: a, Size: -1}
	} else {
		var err error
		if t, err = cl.ResolveFile(ctx, c.Package, c.Path); err != nil {
			return tampered(err)
		}
	}
	if c.Output == "" {
		_, err := cl.Get(ctx, t, rng, s.out)
		return tampered(err)
	}
	return tampered(writeAtomically(c.Output, func(w io.Writer) error {
		_, err := cl.Get(ctx, t, rng, w)
		return err
	}))
}

// tampered gives a failed proof its own exit status, 3, like a corrupt
// verification.
func tampered(err error) error {
	if errors.Is(err, fetch.ErrTampered) {
		return &exitError{code: 3, err: err}
	}
	return err
}

// writeAtomically runs write into a temp file next to path and renames it
// to path only when write succeeded and the file is on disk; otherwise
// nothing is left at path.
func writeAtomically(path string, write func(io.Writer) error) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".partial-*")
	if err != nil {
		return fmt.Errorf("-o %s: create a temp file in %s: %w", path, dir, err)
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("%w; nothing was written to %s", err, path)
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("-o %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("-o %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("-o %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("-o %s: %w", path, err)
	}
	done = true
	return nil
}
