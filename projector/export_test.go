package projector

// WithoutMemo makes p query every row of every batch and find the reap
// rule's candidates with queries, remembering nothing between batches:
// the reference the memo's path is compared with.
func WithoutMemo(p *Projector) *Projector {
	p.noMemo = true
	return p
}

// Stage names a point of a batch at which a hook runs.
type Stage = stage

// BatchPoint is where a batch is when a hook runs.
type BatchPoint = batchPoint

// The points of a batch, in order, and of a rebuild's swap.
const (
	AtLocked    = stageLocked
	AtRead      = stageRead
	AtFolded    = stageFolded
	AtWritten   = stageWritten
	AtCommitted = stageCommitted
	AtSwapped   = stageSwapped
)

// BatchStages returns the points of every batch that applies events, in order.
func BatchStages() []Stage { return []Stage{AtLocked, AtRead, AtFolded, AtWritten, AtCommitted} }

// SetHook makes p call hook synchronously at each point of each batch (and
// of a rebuild's swap); an error from hook stops the batch there. Set it
// before p runs.
func SetHook(p *Projector, hook func(BatchPoint) error) *Projector {
	p.hook = hook
	return p
}

// LookupByKeySQL is the statements that read the live file and location
// rows of a batch's keys.
func LookupByKeySQL() map[string]string {
	return map[string]string{"files": liveTables.filesByKeySQL(), "locations": liveTables.locationsByKeySQL()}
}
