//go:build !testcontainers

package pgtest

import "errors"

// fallbackURL would start a PostgreSQL container; this build has none.
func fallbackURL() (string, error) {
	return "", errors.New("no container fallback in this build (run the tests with -tags testcontainers to start PostgreSQL in Docker when no server answers)")
}
