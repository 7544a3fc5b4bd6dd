package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/rs/zerolog"

	"github.com/artifactstore/artifactstore/reaper"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
	"github.com/artifactstore/artifactstore/storage/local"
	"github.com/artifactstore/artifactstore/storage/s3"
)

// storageFlags say where object bytes live.
type storageFlags struct {
	Storage []string `name:"storage" help:"Where object bytes live, as a URL; repeat it (or separate URLs with commas) for several backends, the first taking new writes: file:///var/lib/artifactstore/objects, or s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true. Each backend's id is ?id=, else 'local' (file) or 's3'. S3 credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the shared config and credentials files (?profile=), instance or container roles, or --s3-access-key-id. Default: the local backend under --data-dir." placeholder:"URL"`

	S3AccessKeyID     string `name:"s3-access-key-id" env:"ARTIFACTSTORE_S3_ACCESS_KEY_ID" help:"Access key id for every s3:// backend, instead of the AWS SDK's standard places (needs --s3-secret-access-key)." placeholder:"ID"`
	S3SecretAccessKey string `name:"s3-secret-access-key" env:"ARTIFACTSTORE_S3_SECRET_ACCESS_KEY" help:"Secret access key for --s3-access-key-id; prefer its environment variable to the command line, which others can read." placeholder:"SECRET"`
}

// backends are the storage backends of a process, opened from --storage.
type backends struct {
	list   []storage.Backend
	closes []func() error
}

// Close releases every backend.
func (bs *backends) Close() error {
	var errs []error
	for _, c := range bs.closes {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// reaperStores are the backends the reaper's orphan scan walks, with what
// each can do besides listing.
func (bs *backends) reaperStores() []reaper.Store { return reaperStores(bs.list) }

// reaperStores are the backends of list that the reaper's orphan scan can
// walk, with what each can do besides listing: quarantine by address, and
// (S3) clean what interrupted writes left.
func reaperStores(list []storage.Backend) []reaper.Store {
	var stores []reaper.Store
	for _, b := range list {
		l, ok := b.(storage.Lister)
		if !ok {
			continue
		}
		s := reaper.Store{BackendID: b.ID(), Lister: l}
		if q, ok := b.(reaper.Quarantiner); ok {
			s.Quarantiner = q
		}
		if sb, ok := b.(*s3.Backend); ok {
			s.CleanAbandoned = func(ctx context.Context, olderThan time.Duration) (int, error) {
				c, err := sb.CleanAbandoned(ctx, olderThan)
				return c.Uploads + c.TempObjects, err
			}
		}
		stores = append(stores, s)
	}
	return stores
}

// openBackends opens the backends of --storage, or the local backend under
// --data-dir when none is given. This is the only place that knows
// concrete backends.
func (g *Globals) openBackends(ctx context.Context, logger zerolog.Logger) (*backends, error) {
	bs := &backends{}
	add := func(b storage.Backend, closeFn func() error) error {
		for _, o := range bs.list {
			if o.ID() == b.ID() {
				return fmt.Errorf("two storage backends have the id %q; give one another id with ?id=name in its --storage URL", b.ID())
			}
		}
		bs.list = append(bs.list, b)
		bs.closes = append(bs.closes, closeFn)
		return nil
	}
	fail := func(err error) (*backends, error) {
		bs.Close()
		return nil, err
	}
	if len(g.Storage) == 0 {
		b, err := g.openLocal(logger, g.objectsDir(), local.DefaultID, "--data-dir "+g.DataDir)
		if err != nil {
			return nil, err
		}
		_ = add(b, b.Close)
		return bs, nil
	}
	for _, raw := range g.Storage {
		raw = strings.TrimSpace(raw)
		scheme, _, _ := strings.Cut(raw, ":")
		switch scheme {
		case "file":
			dir, id, err := parseFileURL(raw)
			if err != nil {
				return fail(err)
			}
			b, err := g.openLocal(logger, dir, id, "--storage "+raw)
			if err != nil {
				return fail(err)
			}
			if err := add(b, b.Close); err != nil {
				b.Close()
				return fail(err)
			}
		case "s3":
			b, err := g.openS3(ctx, logger, raw)
			if err != nil {
				return fail(err)
			}
			if err := add(b, func() error { return nil }); err != nil {
				return fail(err)
			}
		default:
			return fail(fmt.Errorf("--storage %q: unknown kind of storage %q; use file:///path or s3://bucket/prefix", raw, scheme))
		}
	}
	return bs, nil
}

func (g *Globals) openLocal(logger zerolog.Logger, dir, id, what string) (*local.Backend, error) {
	b, err := local.Open(dir, local.WithID(id))
	if err != nil {
		return nil, fmt.Errorf("open object storage of %s: %w", what, err)
	}
	if n := b.CleanedTemp(); n > 0 {
		logger.Info().Int("files", n).Str("dir", dir).Msg("removed temp files of interrupted writes")
	}
	return b, nil
}

// parseFileURL reads file:///abs/path or file:relative/path, with an
// optional ?id=.
func parseFileURL(raw string) (dir, id string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("--storage %q: %w", raw, err)
	}
	id = local.DefaultID
	for k, vs := range u.Query() {
		if k != "id" {
			return "", "", fmt.Errorf("--storage %q: unknown parameter %q; a file URL takes only id", raw, k)
		}
		id = vs[len(vs)-1]
	}
	switch {
	case u.Opaque != "":
		dir = u.Opaque
	case u.Host == "" || u.Host == "localhost":
		dir = u.Path
	default:
		return "", "", fmt.Errorf("--storage %q: a file URL names a local path: file:///absolute/path or file:relative/path", raw)
	}
	if dir == "" {
		return "", "", fmt.Errorf("--storage %q names no directory", raw)
	}
	return dir, id, nil
}

// s3Backend opens the S3 backend of an s3:// URL of --storage, with the
// credentials of the --s3-* flags when they are given.
func (g *Globals) s3Backend(ctx context.Context, raw string) (*s3.Backend, error) {
	cfg, err := s3.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("--storage: %w", err)
	}
	switch {
	case g.S3AccessKeyID != "" && g.S3SecretAccessKey != "":
		cfg.Credentials = credentials.NewStaticCredentialsProvider(g.S3AccessKeyID, g.S3SecretAccessKey, "")
	case g.S3AccessKeyID != "" || g.S3SecretAccessKey != "":
		return nil, errors.New("--s3-access-key-id and --s3-secret-access-key go together; give both, or neither to use the AWS SDK's standard places")
	}
	return s3.Open(ctx, cfg)
}

func (g *Globals) openS3(ctx context.Context, logger zerolog.Logger, raw string) (*s3.Backend, error) {
	b, err := g.s3Backend(ctx, raw)
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ev := logger.Info()
	h := b.Health(hctx)
	if !h.Healthy {
		// Not fatal: the store may come back; /readyz says it meanwhile.
		ev = logger.Warn()
	}
	ev.Str("backend", b.ID()).Str("where", b.String()).Str("health", h.Detail).Msg("S3 storage backend")
	return b, nil
}

// dataPlane opens the storage backends and returns the data plane over
// them; the backends stay open for the process's life.
func (g *Globals) dataPlane(ctx context.Context, logger zerolog.Logger, opts ...dataplane.Option) (*dataplane.DataPlane, error) {
	dp, _, err := g.storage(ctx, logger, opts...)
	return dp, err
}

// storage opens the storage backends (--storage, else the local backend
// under --data-dir) and returns the data plane over them, new writes going
// to the first, and the backends themselves (the reaper walks and
// quarantines through them). The caller closes the backends.
func (g *Globals) storage(ctx context.Context, logger zerolog.Logger, opts ...dataplane.Option) (*dataplane.DataPlane, *backends, error) {
	bs, err := g.openBackends(ctx, logger)
	if err != nil {
		return nil, nil, err
	}
	reg := storage.NewRegistry()
	for _, b := range bs.list {
		if err := reg.Register(b); err != nil {
			bs.Close()
			return nil, nil, err
		}
	}
	// A very large object's tree spills its nodes next to the objects of
	// a local backend (an unlinked file in its temp directory), not into a
	// /tmp that may be memory.
	var popts []storage.PutterOption
	for _, b := range bs.list {
		if lb, ok := b.(*local.Backend); ok {
			popts = append(popts, storage.WithSpillDir(filepath.Join(lb.Root(), ".tmp")))
			break
		}
	}
	dp, err := dataplane.New(reg, bs.list[0].ID(), append([]dataplane.Option{dataplane.WithPutter(storage.NewPutter(popts...))}, opts...)...)
	if err != nil {
		bs.Close()
		return nil, nil, err
	}
	return dp, bs, nil
}
