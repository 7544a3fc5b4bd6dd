package ingest

import "time"

// SetUploadTicks makes the progress rule of staged uploads in progress
// tick on ticks instead of every UploadIdle, so that a test decides when
// an idle period has passed.
func SetUploadTicks(c *Config, ticks <-chan time.Time) { c.uploadTicks = ticks }
