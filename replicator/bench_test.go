package replicator_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/artifactstore/artifactstore/storage"
)

// BenchmarkReplicate copies objects from the local primary to an S3
// mirror (versitygw on loopback): "replicate" through Replicator.Replicate
// (the policy's look-up of the classes, a proven read, a verifying put
// with its tree, the gc row and object.replicated in one transaction),
// against "baseline_copy", a plain copy loop over the same two backends
// and the same S3 client (Get into Create, Commit without a tree), in the
// same run. Both run 4 copies at once, as a replicator's consumer does by
// default. Every op copies every object again (the mirror is emptied
// between ops, off the clock).
func BenchmarkReplicate(b *testing.B) {
	for _, tc := range []struct {
		name  string
		n     int
		size  int64
		class string
	}{
		{"64KiBx1000", 1000, 64 << 10, "release-evidence"},
		{"256MiBx4", 4, 256 << 20, "release-evidence"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, "s3", releasePolicy)
			objs := make([]stored, tc.n)
			for i := range objs {
				objs[i] = e.ingestFrom(fmt.Sprintf("bench/%d", i), tc.class, io.LimitReader(rand.NewChaCha8(seed(i)), tc.size))
			}
			run := func(b *testing.B, copyOne func(ctx context.Context, i, iter int) error) {
				b.SetBytes(int64(tc.n) * tc.size)
				b.ResetTimer()
				for iter := range b.N {
					b.StopTimer()
					for _, o := range objs {
						if _, err := e.mirror.Delete(e.ctx, o.Address); err != nil {
							b.Fatal(err)
						}
					}
					b.StartTimer()
					var (
						next atomic.Int64
						wg   sync.WaitGroup
						errs = make(chan error, 4)
					)
					for range 4 {
						wg.Go(func() {
							for i := int(next.Add(1) - 1); i < tc.n; i = int(next.Add(1) - 1) {
								if err := copyOne(e.ctx, i, iter); err != nil {
									errs <- err
									return
								}
							}
						})
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*tc.n)/b.Elapsed().Seconds(), "objects/s")
			}
			b.Run("replicate", func(b *testing.B) {
				run(b, func(ctx context.Context, i, iter int) error {
					// A fresh sequence per op: each op records its copies.
					cs, err := e.rep.Replicate(ctx, objs[i].Stored, objs[i].seq+int64(iter+1)<<32)
					if err == nil && (len(cs) != 1 || cs[0].Deduplicated) {
						err = fmt.Errorf("copies of object %d: %+v", i, cs)
					}
					return err
				})
			})
			b.Run("baseline_copy", func(b *testing.B) {
				run(b, func(ctx context.Context, i, _ int) error { return plainCopy(ctx, e.primary, e.mirror, objs[i]) })
			})
		})
	}
}

func seed(i int) [32]byte {
	var s [32]byte
	s[0], s[1] = byte(i), byte(i>>8)
	return s
}

// plainCopy copies o from src to dst as a plain loop would: no proof, no
// hash, no tree.
func plainCopy(ctx context.Context, src, dst storage.Backend, o stored) error {
	rc, err := src.Get(ctx, o.Address, nil)
	if err != nil {
		return err
	}
	defer rc.Close()
	w, err := dst.Create(ctx, storage.CreateOptions{Claimed: o.Address, Size: o.Size})
	if err != nil {
		return err
	}
	defer w.Abort()
	if _, err := io.CopyBuffer(w, rc, make([]byte, 1<<20)); err != nil {
		return err
	}
	_, err = w.Commit(ctx, o.Address, nil, storage.CommitReplace)
	return err
}
