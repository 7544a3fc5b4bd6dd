package projector_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
)

// mix weighs the generator's operations.
type mix struct {
	newPkg, addFile, seal, verify, hold, change, expire, restore, repair, reject, dangling int
}

// coverageMix makes every event type and every state transition common.
var coverageMix = mix{newPkg: 8, addFile: 30, seal: 5, verify: 25, hold: 6, change: 4, expire: 8, restore: 4, repair: 4, reject: 3, dangling: 2}

// realisticMix is mostly ingest: stored + added per file, a package every
// few files, a scrub event per few files, a trickle of retention.
var realisticMix = mix{newPkg: 4, addFile: 60, seal: 3, verify: 25, hold: 1, change: 1, expire: 3, restore: 1, repair: 1, reject: 1, dangling: 0}

type genObject struct {
	addr   digest.Address
	b3, s2 []byte
	size   int64
	// locs: backend → live (stored and not deleted)
	locs map[string]bool
	// liveRefs counts the files of unexpired packages naming the object.
	liveRefs int
}

type genPkg struct {
	name    string
	class   string
	sealed  bool
	expired bool
	hold    bool
	files   map[string]*genObject
}

// gen produces a plausible random event stream: mostly consistent (as the
// ingester, verifier and reaper would write it), with a few events that
// name rows that do not exist.
type gen struct {
	r        *rand.Rand
	m        mix
	total    int
	pkgs     []*genPkg
	open     []*genPkg
	objects  []*genObject
	backends []string
	n        int
}

func newGen(seed uint64, m mix) *gen {
	g := &gen{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), m: m, backends: []string{"local", "s3"}}
	g.total = m.newPkg + m.addFile + m.seal + m.verify + m.hold + m.change + m.expire + m.restore + m.repair + m.reject + m.dangling
	return g
}

var classes = []string{"transient", "raw-evidence", "summary-evidence", "release-evidence", "permanent-record"}

func (g *gen) sum() []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(g.r.Uint32())
	}
	return b
}

func (g *gen) newObject() *genObject {
	b3, s2 := g.sum(), g.sum()
	alg, primary := digest.BLAKE3, b3
	if g.r.IntN(10) == 0 {
		alg, primary = digest.SHA256, s2
	}
	return &genObject{addr: digest.New(alg, [32]byte(primary)), b3: b3, s2: s2, size: g.r.Int64N(1 << 20), locs: map[string]bool{}}
}

func pkgDraft(name string, p events.Payload) events.Draft {
	return events.Draft{SubjectKind: events.SubjectPackage, SubjectID: name, Actor: "gen", Payload: p}
}

func objDraft(a digest.Address, p events.Payload) events.Draft {
	return events.Draft{SubjectKind: events.SubjectObject, SubjectID: a.String(), Actor: "gen", Payload: p}
}

func (g *gen) retainUntil() *time.Time {
	if g.r.IntN(5) == 0 {
		return nil
	}
	t := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(g.r.IntN(1000)) * time.Hour)
	return &t
}

// next returns the drafts of one operation (one or a few events).
func (g *gen) next() []events.Draft {
	g.n++
	x := g.r.IntN(g.total)
	pick := func(w int) bool {
		if x < w {
			return true
		}
		x -= w
		return false
	}
	switch {
	case pick(g.m.newPkg) || len(g.open) == 0:
		p := &genPkg{name: fmt.Sprintf("pkg-%d", g.n), class: classes[g.r.IntN(len(classes))], files: map[string]*genObject{}}
		g.pkgs = append(g.pkgs, p)
		g.open = append(g.open, p)
		var meta map[string]string
		if g.r.IntN(2) == 0 {
			meta = map[string]string{"ci.run": fmt.Sprint(g.n), "git.sha": fmt.Sprintf("%x", g.sum()[:6])}
		}
		return []events.Draft{
			pkgDraft(p.name, events.PackageCreatedV1{Name: p.name, RetentionClass: p.class, Metadata: meta}),
			pkgDraft(p.name, events.RetentionAssignedV1{Package: p.name, Class: p.class, RetainUntil: g.retainUntil()}),
		}
	case pick(g.m.addFile):
		p := g.open[len(g.open)-1-g.r.IntN(min(len(g.open), 4))]
		var o *genObject
		if len(g.objects) > 0 && g.r.IntN(5) == 0 {
			o = g.objects[g.r.IntN(len(g.objects))]
		} else {
			o = g.newObject()
			g.objects = append(g.objects, o)
		}
		path := fmt.Sprintf("dir/file-%d.txt", len(p.files))
		if len(p.files) > 0 && g.r.IntN(10) == 0 {
			path = "dir/file-0.txt" // replace
		}
		if old := p.files[path]; old != nil {
			old.liveRefs--
		}
		p.files[path] = o
		o.liveRefs++
		backend := g.backends[0]
		if g.r.IntN(8) == 0 {
			backend = g.backends[1]
		}
		dedup := o.locs[backend]
		o.locs[backend] = true
		mt := ""
		if g.r.IntN(2) == 0 {
			mt = "text/plain"
		}
		return []events.Draft{
			objDraft(o.addr, events.ObjectStoredV1{Address: o.addr, BLAKE3: o.b3, SHA256: o.s2, Size: o.size, BackendID: backend, Deduplicated: dedup}),
			pkgDraft(p.name, events.FileAddedV1{Package: p.name, Path: path, Address: o.addr, BLAKE3: o.b3, SHA256: o.s2, Size: o.size, MediaType: mt}),
		}
	case pick(g.m.seal) || len(g.open) > 50:
		i := g.r.IntN(len(g.open))
		p := g.open[i]
		p.sealed = true
		g.open = append(g.open[:i], g.open[i+1:]...)
		return []events.Draft{pkgDraft(p.name, events.PackageSealedV1{Name: p.name})}
	case pick(g.m.verify):
		o, backend := g.storedLocation()
		if o == nil {
			return nil
		}
		switch k := g.r.IntN(20); {
		case k < 17:
			return []events.Draft{objDraft(o.addr, events.ObjectVerifiedV1{Address: o.addr, BackendID: backend, Size: o.size})}
		case k < 19:
			return []events.Draft{objDraft(o.addr, events.ObjectCorruptV1{Address: o.addr, BackendID: backend, ActualBLAKE3: g.sum(), ActualSHA256: g.sum(), ActualSize: o.size, ExpectedSize: o.size})}
		default:
			return []events.Draft{objDraft(o.addr, events.ObjectMissingV1{Address: o.addr, BackendID: backend})}
		}
	case pick(g.m.hold):
		p := g.pkgs[g.r.IntN(len(g.pkgs))]
		if p.expired {
			return nil
		}
		p.hold = !p.hold
		if p.hold {
			return []events.Draft{pkgDraft(p.name, events.LegalHoldSetV1{Package: p.name, Reason: "case 42"})}
		}
		return []events.Draft{pkgDraft(p.name, events.LegalHoldReleasedV1{Package: p.name, Reason: "closed"})}
	case pick(g.m.change):
		p := g.pkgs[g.r.IntN(len(g.pkgs))]
		from := p.class
		p.class = classes[g.r.IntN(len(classes))]
		return []events.Draft{pkgDraft(p.name, events.RetentionChangedV1{Package: p.name, FromClass: from, Class: p.class, RetainUntil: g.retainUntil(), Reason: "policy"})}
	case pick(g.m.expire):
		return g.expire()
	case pick(g.m.restore):
		o, backend := g.storedLocation()
		if o == nil {
			return nil
		}
		if other := g.backends[g.r.IntN(len(g.backends))]; other != backend && g.r.IntN(2) == 0 {
			// A replica on another backend: a new location (or a
			// deleted one revived), like a store.
			o.locs[other] = true
			return []events.Draft{objDraft(o.addr, events.ObjectReplicatedV1{Address: o.addr, BLAKE3: o.b3, SHA256: o.s2, Size: o.size,
				BackendID: other, SourceBackendID: backend, Deduplicated: g.r.IntN(2) == 0, Reason: "policy"})}
		}
		return []events.Draft{objDraft(o.addr, events.ObjectStoredV1{Address: o.addr, BLAKE3: o.b3, SHA256: o.s2, Size: o.size, BackendID: backend, Deduplicated: g.r.IntN(2) == 0})}
	case pick(g.m.repair):
		// A re-upload (or, now and then, a replica) repairs a location
		// in any state; one of a location the log never stored records
		// it.
		o, backend := g.storedLocation()
		if o == nil || g.r.IntN(10) == 0 {
			o, backend = g.newObject(), g.backends[g.r.IntN(len(g.backends))]
			g.objects = append(g.objects, o)
		}
		o.locs[backend] = true
		was, source := events.RepairedCorrupt, events.RepairSourceReupload
		if g.r.IntN(3) == 0 {
			was = events.RepairedMissing
		}
		if g.r.IntN(4) == 0 {
			source = "replica:" + g.backends[0]
		}
		return []events.Draft{objDraft(o.addr, events.ObjectRepairedV1{Address: o.addr, BLAKE3: o.b3, SHA256: o.s2, Size: o.size,
			BackendID: backend, Was: was, Detail: "re-put found it " + was, Source: source, CommandID: fmt.Sprintf("cmd-%d", g.n)})}
	case pick(g.m.reject):
		id := fmt.Sprintf("cmd-%d", g.n)
		if g.r.IntN(2) == 0 {
			return []events.Draft{{SubjectKind: events.SubjectCommand, SubjectID: id, Actor: "gen",
				Payload: events.CommandRejectedV1{CommandID: id, Command: "retention.hold", Package: "p", Code: "unknown_package", Reason: "no such package"}}}
		}
		return []events.Draft{{SubjectKind: events.SubjectCommand, SubjectID: id, Actor: "gen",
			Payload: events.IngestRejectedV1{CommandID: id, Package: "p", Path: "x", Code: "digest_mismatch", Reason: "claimed digest differs"}}}
	default: // dangling: names rows that do not exist
		o := g.newObject()
		name := fmt.Sprintf("ghost-%d", g.n)
		switch g.r.IntN(4) {
		case 0:
			return []events.Draft{objDraft(o.addr, events.ObjectVerifiedV1{Address: o.addr, BackendID: "local", Size: 1})}
		case 1:
			return []events.Draft{objDraft(o.addr, events.ObjectDeletedV1{Address: o.addr, BackendID: "local", Size: 1, Reason: "x"})}
		case 2:
			return []events.Draft{pkgDraft(name, events.PackageSealedV1{Name: name})}
		default:
			return []events.Draft{pkgDraft(name, events.FileAddedV1{Package: name, Path: "a", Address: o.addr, BLAKE3: o.b3, SHA256: o.s2, Size: o.size})}
		}
	}
}

// storedLocation picks a location that was stored (live or not).
func (g *gen) storedLocation() (*genObject, string) {
	if len(g.objects) == 0 {
		return nil, ""
	}
	o := g.objects[len(g.objects)-1-g.r.IntN(min(len(g.objects), 200))]
	for b := range o.locs {
		return o, b
	}
	return nil, ""
}

// expire expires a package without a hold, then deletes every location of
// its objects that no unexpired package references, as the reaper would.
func (g *gen) expire() []events.Draft {
	var p *genPkg
	for range 5 {
		c := g.pkgs[g.r.IntN(len(g.pkgs))]
		if !c.expired && !c.hold && c.class != "permanent-record" {
			p = c
			break
		}
	}
	if p == nil {
		return nil
	}
	p.expired = true
	for i, q := range g.open {
		if q == p {
			g.open = append(g.open[:i], g.open[i+1:]...)
			break
		}
	}
	out := []events.Draft{pkgDraft(p.name, events.RetentionExpiredV1{Package: p.name, Class: p.class, RetainUntil: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})}
	for _, o := range p.files {
		if o.liveRefs--; o.liveRefs > 0 {
			continue
		}
		for b, live := range o.locs {
			if live {
				o.locs[b] = false
				out = append(out, objDraft(o.addr, events.ObjectDeletedV1{Address: o.addr, BackendID: b, Size: o.size, Reason: "retention expired"}))
			}
		}
	}
	return out
}

// drafts returns at least n drafts.
func (g *gen) drafts(n int) []events.Draft {
	out := make([]events.Draft, 0, n+8)
	for len(out) < n {
		out = append(out, g.next()...)
	}
	return out
}

// appendAll appends drafts in chunks of chunk events per transaction.
func appendAll(ctx context.Context, tb testing.TB, log *events.Log, ds []events.Draft, chunk int) {
	tb.Helper()
	for len(ds) > 0 {
		k := min(chunk, len(ds))
		if _, err := log.Append(ctx, events.Batch{Events: ds[:k]}); err != nil {
			tb.Fatalf("append %d events: %v", k, err)
		}
		ds = ds[k:]
	}
}
