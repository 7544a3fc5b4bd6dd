package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestHogSpinsUntilCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan uint64, 1)
	go func() { done <- hog(ctx, 2) }()
	cancel()
	if n := <-done; n%1_000_000 > 2 { // each goroutine adds one bit of its state
		t.Fatalf("hog counted %d spins, not whole millions", n)
	}
}

func TestRunStopsAtItsLimit(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	if code := run([]string{"-procs", "1", "-for", "1ns"}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopped after") {
		t.Fatalf("stderr %q", stderr.String())
	}
	stderr.Reset()
	if code := run([]string{"-procs", "0"}, &stderr); code != 2 || !strings.Contains(stderr.String(), "-procs must be at least 1") {
		t.Fatalf("-procs 0: exit %d, %q", code, stderr.String())
	}
}
