package pgcluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/internal/pgcluster"
)

// TestStopAndStart: the cluster answers, refuses connections while
// stopped, and answers again with its data after a start.
func TestStopAndStart(t *testing.T) {
	t.Parallel()
	c := pgcluster.Start(t)
	url := c.CreateDB(t, "probe")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exec := func(sql string) error {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec(`CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	c.Stop(t)
	if err := exec(`SELECT 1`); err == nil {
		t.Fatal("a stopped cluster answered")
	}
	c.Start(t)
	if err := exec(`SELECT x FROM kept WHERE x = 1`); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
}
