package local

import (
	"hash/fnv"
	"sync"
)

// dirSyncer shares directory fsyncs between concurrent puts: every put
// that linked an entry into a directory needs one fsync of it that starts
// after its link; puts that ask while an fsync of that directory runs all
// wait for the next one, which one of them runs for all. So the objects of
// a group stored together that land in the same directory (the parent of
// new shard directories, above all) cost one fsync of it, not one each,
// and no put is answered by an fsync that began before its entry existed.
// A failed fsync fails every put that waited for it.
type dirSyncer struct {
	// shards spread the directories over several locks: every put of a
	// group asks at once, and one lock for all made them queue.
	shards [dirSyncShards]dirSyncShard
}

// dirSyncShards is the number of shards of a dirSyncer.
const dirSyncShards = 64

// dirSyncShard is the state of the directories whose name hashes to it.
type dirSyncShard struct {
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

func newDirSyncer() *dirSyncer {
	s := &dirSyncer{}
	for i := range s.shards {
		s.shards[i].dirs = map[dirKey]*dirSync{}
	}
	return s
}

// shard returns the shard of k.
func (s *dirSyncer) shard(k dirKey) *dirSyncShard {
	h := fnv.New32a()
	_, _ = h.Write([]byte(k.dir))
	return &s.shards[h.Sum32()%dirSyncShards]
}

// sync runs fsync for the directory k, or waits for a round that another
// caller starts after this call began, and returns that round's error.
func (s *dirSyncer) sync(k dirKey, fsync func() error) error {
	sh := s.shard(k)
	sh.mu.Lock()
	ds := sh.dirs[k]
	if ds == nil {
		ds = &dirSync{}
		sh.dirs[k] = ds
	}
	if ds.next == nil {
		ds.next = &syncRound{done: make(chan struct{})}
	}
	r := ds.next
	r.waiters++
	for {
		if r.started {
			sh.mu.Unlock()
			<-r.done
			return r.err
		}
		if ds.running == nil {
			// Lead the round: it starts now, after every waiter's entry.
			r.started, ds.running, ds.next = true, r, nil
			sh.mu.Unlock()
			err := fsync()
			sh.mu.Lock()
			r.err = err
			close(r.done)
			ds.running = nil
			if ds.next == nil {
				delete(sh.dirs, k)
			}
			sh.mu.Unlock()
			return err
		}
		// A round that may have begun before our entry is running: wait
		// for it to end, then lead ours unless another waiter did.
		running := ds.running
		sh.mu.Unlock()
		<-running.done
		sh.mu.Lock()
	}
}

// waiting reports how many callers wait for the next round of k (tests).
func (s *dirSyncer) waiting(k dirKey) int {
	sh := s.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if ds := sh.dirs[k]; ds != nil && ds.next != nil {
		return ds.next.waiters
	}
	return 0
}

// pending reports how many directories have state (tests).
func (s *dirSyncer) pending() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.dirs)
		sh.mu.Unlock()
	}
	return n
}
