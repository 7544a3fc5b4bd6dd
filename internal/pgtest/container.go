//go:build testcontainers

package pgtest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/testcontainers/testcontainers-go/modules/postgres"
)

// container is the PostgreSQL container of this test process, started at
// most once and removed by testcontainers' reaper when the process exits.
var container struct {
	once sync.Once
	url  string
	err  error
}

// fallbackURL starts (once per test process) a PostgreSQL 15 container in
// the Docker engine that testcontainers-go finds, and returns its URL.
func fallbackURL() (string, error) {
	container.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		c, err := postgres.Run(ctx, "postgres:15-alpine",
			postgres.WithDatabase("postgres"), postgres.WithUsername("postgres"), postgres.WithPassword("postgres"),
			postgres.BasicWaitStrategies())
		if err != nil {
			container.err = fmt.Errorf("start a PostgreSQL container with testcontainers-go (is a Docker engine reachable?): %w", err)
			return
		}
		container.url, container.err = c.ConnectionString(ctx, "sslmode=disable")
	})
	return container.url, container.err
}
