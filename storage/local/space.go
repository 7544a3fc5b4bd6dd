package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/artifactstore/artifactstore/storage"
)

// Put implements storage.Backend. A full file system or quota (ENOSPC,
// EDQUOT) fails with an error matching storage.ErrInsufficientStorage, so
// that the ingester answers it as such rather than retrying it.
func (b *Backend) Put(ctx context.Context, r io.Reader, opts storage.PutOptions) (storage.Receipt, error) {
	rc, err := b.put(ctx, r, opts)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		err = fmt.Errorf("%w: %w", storage.ErrInsufficientStorage, err)
	}
	return rc, err
}
