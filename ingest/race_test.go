//go:build race

package ingest_test

// raceEnabled: the race detector's shadow memory multiplies a process's
// RSS, so memory bounds measured under -race are looser.
const raceEnabled = true
