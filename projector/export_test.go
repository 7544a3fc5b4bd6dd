package projector

// WithoutReapIndex makes p find the reap rule's candidates with queries in
// every batch, as if it had no reap index: the reference the indexed path
// is compared with.
func WithoutReapIndex(p *Projector) *Projector {
	p.noReapIndex = true
	return p
}
