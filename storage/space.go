package storage

import (
	"errors"
	"fmt"
)

// ErrInsufficientStorage: the backend has no room for the object (its
// disk or quota is full). Backends wrap it around their own out-of-space
// error; callers test with errors.Is.
var ErrInsufficientStorage = errors.New("insufficient storage")

// InsufficientStorageError says how much room an object needs and how
// much a backend has; it wraps ErrInsufficientStorage.
type InsufficientStorageError struct {
	// BackendID names the backend.
	BackendID string
	// Need is the object's size in bytes.
	Need int64
	// Free is the backend's free space in bytes, Reserve the part of it
	// kept free on purpose (so that the disk never fills up completely).
	Free, Reserve uint64
}

// Error gives the bytes needed and free, and what to do.
func (e *InsufficientStorageError) Error() string {
	return fmt.Sprintf("backend %q has no room for %d bytes: %d bytes free, of which %d are kept in reserve; free space (expired packages are reaped, or enlarge the disk) and send it again",
		e.BackendID, e.Need, e.Free, e.Reserve)
}

// Unwrap returns ErrInsufficientStorage.
func (e *InsufficientStorageError) Unwrap() error { return ErrInsufficientStorage }
