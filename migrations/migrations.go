// Package migrations holds the PostgreSQL schema as numbered golang-migrate
// files (NNNNNN_name.up.sql / .down.sql) embedded in the binary. The files
// are plain SQL, so the standard `migrate` CLI runs them too:
//
//	migrate -path migrations -database "$ARTIFACTSTORE_DATABASE_URL" up
package migrations

import "embed"

// FS holds every migration file, at the root of the file system.
//
//go:embed *.sql
var FS embed.FS
