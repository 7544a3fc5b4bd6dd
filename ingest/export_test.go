package ingest

import (
	"time"

	"github.com/artifactstore/artifactstore/bus"
)

// SetUploadTicks makes the progress rule of staged uploads in progress
// tick on ticks instead of every UploadIdle, so that a test decides when
// an idle period has passed.
func SetUploadTicks(c *Config, ticks <-chan time.Time) { c.uploadTicks = ticks }

// SetLoseReply makes the ingester lose the reply of a command (not send
// it, as if the node that took it died) when lose returns true.
func SetLoseReply(c *Config, lose func(commandID string, m bus.Message) bool) { c.loseReply = lose }
