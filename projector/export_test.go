package projector

// WithoutMemo makes p query every row of every batch and find the reap
// rule's candidates with queries, remembering nothing between batches:
// the reference the memo's path is compared with.
func WithoutMemo(p *Projector) *Projector {
	p.noMemo = true
	return p
}
