package ingest

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/pkgstate"
)

// metadataSchema is one compiled row of metadata_schemas.
type metadataSchema struct {
	id    int64
	class string // "" applies to every class
	sch   *jsonschema.Schema
}

// config is a snapshot of the configuration tables the decisions read.
type config struct {
	classes map[string]pkgstate.Class
	schemas []metadataSchema
}

// configCache loads retention classes and metadata schemas, compiling each
// schema once (rows are immutable: `schema set` replaces a row by a new id).
type configCache struct {
	mu       sync.Mutex
	compiled map[int64]*jsonschema.Schema
	cached   *config
	loadedAt time.Time
	maxAge   time.Duration
	now      func() time.Time
}

func newConfigCache(maxAge time.Duration, now func() time.Time) *configCache {
	return &configCache{compiled: map[int64]*jsonschema.Schema{}, maxAge: maxAge, now: now}
}

// cachedRecent returns the cached snapshot when it is at most maxAge old.
func (c *configCache) cachedRecent() *config {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cached != nil && c.now().Sub(c.loadedAt) < c.maxAge {
		return c.cached
	}
	return nil
}

// queueLoad queues the reads of the configuration tables on b (inside the
// commit transaction, so that the decision sees the tables as of its own
// snapshot). Once the batch ran, the returned function builds the snapshot
// and caches it.
func (c *configCache) queueLoad(b *pgx.Batch) func() (*config, error) {
	cfg := &config{classes: map[string]pkgstate.Class{}}
	type row struct {
		id    int64
		class string
		doc   string
	}
	var raw []row
	pkgstate.QueueClasses(b, nil, cfg.classes)
	b.Queue(`SELECT id, coalesce(retention_class, ''), schema::text FROM metadata_schemas ORDER BY id`).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var r row
			if err := rows.Scan(&r.id, &r.class, &r.doc); err != nil {
				return fmt.Errorf("read metadata schemas: %w", err)
			}
			raw = append(raw, r)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read metadata schemas: %w", err)
		}
		return nil
	})
	return func() (*config, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range raw {
			sch, ok := c.compiled[r.id]
			if !ok {
				var err error
				sch, err = CompileSchema(r.id, []byte(r.doc))
				if err != nil {
					return nil, fmt.Errorf("metadata schema #%d (class %q) does not compile; fix it with `artifactstore schema set`: %w", r.id, r.class, err)
				}
				c.compiled[r.id] = sch
			}
			cfg.schemas = append(cfg.schemas, metadataSchema{id: r.id, class: r.class, sch: sch})
		}
		c.cached, c.loadedAt = cfg, c.now()
		return cfg, nil
	}
}

// CompileSchema compiles a JSON Schema document (any draft the library
// knows; 2020-12 when it names none). id only names it in messages.
func CompileSchema(id int64, doc []byte) (*jsonschema.Schema, error) {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(doc))
	if err != nil {
		return nil, fmt.Errorf("schema is not JSON: %w", err)
	}
	url := fmt.Sprintf("artifactstore:///metadata-schema/%d.json", id)
	c := jsonschema.NewCompiler()
	if err := c.AddResource(url, v); err != nil {
		return nil, err
	}
	return c.Compile(url)
}

// checkClass returns the retention class named, or a rejection.
func (cfg *config) checkClass(name string) (pkgstate.Class, *commands.Error) {
	rc, ok := cfg.classes[name]
	if !ok {
		known := make([]string, 0, len(cfg.classes))
		for n := range cfg.classes {
			known = append(known, n)
		}
		return pkgstate.Class{}, commands.Rejectf(commands.CodeUnknownClass,
			"retention class %q is unknown; use one of %s", name, strings.Join(sorted(known), ", "))
	}
	return rc, nil
}

// checkMetadata validates a new package's metadata against every schema
// that applies to its class (and every class-less schema).
func (cfg *config) checkMetadata(class string, md map[string]string) *commands.Error {
	inst := make(map[string]any, len(md))
	for k, v := range md {
		inst[k] = v
	}
	var msgs []string
	for _, s := range cfg.schemas {
		if s.class != "" && s.class != class {
			continue
		}
		if err := s.sch.Validate(inst); err != nil {
			msgs = append(msgs, fmt.Sprintf("schema #%d: %s", s.id, oneLine(err.Error())))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return commands.Rejectf(commands.CodeSchemaViolation,
		"metadata of a %s package does not satisfy its metadata schema: %s; add the missing or fix the wrong --meta entries",
		class, strings.Join(msgs, "; "))
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
