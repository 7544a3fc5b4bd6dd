package storage

import (
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Registry finds backends by id. It is safe for concurrent use; the zero
// value is not usable, call NewRegistry.
type Registry struct {
	mu       sync.RWMutex
	backends map[string]Backend
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{backends: make(map[string]Backend)}
}

// Register adds b under b.ID(). An empty id or an id already registered is
// an error.
func (r *Registry) Register(b Backend) error {
	if b == nil {
		return errors.New("storage: register a nil backend")
	}
	id := b.ID()
	if id == "" {
		return errors.New("storage: register a backend with an empty id; give it an id")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.backends[id]; ok {
		return fmt.Errorf("storage: backend id %q is already registered; give each backend its own id", id)
	}
	r.backends[id] = b
	return nil
}

// Get returns the backend registered under id, or an error wrapping
// ErrUnknownBackend.
func (r *Registry) Get(id string) (Backend, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	b, ok := r.backends[id]
	if !ok {
		return nil, fmt.Errorf("%w %q; registered: %v", ErrUnknownBackend, id, r.idsLocked())
	}
	return b, nil
}

// IDs returns the registered ids, sorted.
func (r *Registry) IDs() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.idsLocked()
}

func (r *Registry) idsLocked() []string {
	ids := make([]string, 0, len(r.backends))
	for id := range r.backends {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
