package local

import "sync"

// dirSyncer shares directory fsyncs between concurrent puts: every put
// that linked an entry into a directory needs one fsync of it that starts
// after its link; puts that ask while an fsync of that directory runs all
// wait for the next one, which one of them runs for all. So the objects of
// a group stored together that land in the same directory (the parent of
// new shard directories, above all) cost one fsync of it, not one each,
// and no put is answered by an fsync that began before its entry existed.
// A failed fsync fails every put that waited for it.
type dirSyncer struct {
	mu   sync.Mutex
	dirs map[dirKey]*dirSync
}

// dirKey is a directory in a role: fsyncs are shared only within a role,
// so that a test that fails the fsyncs of one role sees exactly them.
type dirKey struct {
	kind syncKind
	dir  string
}

// dirSync is the state of one directory's fsyncs: the round running, if
// any, and the round its next askers join.
type dirSync struct {
	running *syncRound
	next    *syncRound
}

// syncRound is one fsync of a directory and everyone waiting for it.
type syncRound struct {
	started bool
	waiters int
	done    chan struct{}
	err     error
}

func newDirSyncer() *dirSyncer { return &dirSyncer{dirs: map[dirKey]*dirSync{}} }

// sync runs fsync for the directory k, or waits for a round that another
// caller starts after this call began, and returns that round's error.
func (s *dirSyncer) sync(k dirKey, fsync func() error) error {
	s.mu.Lock()
	ds := s.dirs[k]
	if ds == nil {
		ds = &dirSync{}
		s.dirs[k] = ds
	}
	if ds.next == nil {
		ds.next = &syncRound{done: make(chan struct{})}
	}
	r := ds.next
	r.waiters++
	for {
		if r.started {
			s.mu.Unlock()
			<-r.done
			return r.err
		}
		if ds.running == nil {
			// Lead the round: it starts now, after every waiter's entry.
			r.started, ds.running, ds.next = true, r, nil
			s.mu.Unlock()
			err := fsync()
			s.mu.Lock()
			r.err = err
			close(r.done)
			ds.running = nil
			if ds.next == nil {
				delete(s.dirs, k)
			}
			s.mu.Unlock()
			return err
		}
		// A round that may have begun before our entry is running: wait
		// for it to end, then lead ours unless another waiter did.
		running := ds.running
		s.mu.Unlock()
		<-running.done
		s.mu.Lock()
	}
}

// waiting reports how many callers wait for the next round of k (tests).
func (s *dirSyncer) waiting(k dirKey) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ds := s.dirs[k]; ds != nil && ds.next != nil {
		return ds.next.waiters
	}
	return 0
}
