package ingest

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/commands"
	"github.com/artifactstore/artifactstore/digest"
	"github.com/artifactstore/artifactstore/events"
	"github.com/artifactstore/artifactstore/pkgstate"
	"github.com/artifactstore/artifactstore/storage"
	"github.com/artifactstore/artifactstore/storage/dataplane"
)

// jobKind says what a job asks the committer to decide.
type jobKind int

const (
	jobIngest jobKind = iota + 1
	jobSeal
	jobReject
)

// job is one command waiting for its commit.
type job struct {
	kind      jobKind
	commandID string
	actor     string

	ingest commands.Ingest        // jobIngest
	stored dataplane.IngestResult // jobIngest: the durable object
	seal   commands.Seal          // jobSeal
	reject *commands.Error        // jobReject
	pkg    string                 // package of any job (for the rejection event)
	path   string                 // path of an ingest (for the rejection event)

	submitted time.Time
	done      chan outcome
}

// outcome is a committed decision, or a failure to commit.
type outcome struct {
	reply    commands.Reply
	rejected *commands.Error // set when reply.Status is StatusRejected
	err      error           // the commit failed; nothing was decided
}

// state is what a group's decisions read and change.
type state struct {
	cfg   *config
	now   time.Time
	pkgs  map[string]*pkgstate.Package
	files map[pkgstate.FileKey]string
}

// queueState queues on b the reads of the state of every package and
// path the jobs name; the returned state holds them once the batch ran
// (its cfg is set by the caller).
func queueState(b *pgx.Batch, now time.Time, jobs []*job) *state {
	st := &state{now: now, pkgs: map[string]*pkgstate.Package{}, files: map[pkgstate.FileKey]string{}}
	var (
		names []string
		files []pkgstate.FileKey
	)
	seen := map[string]bool{}
	for _, j := range jobs {
		if j.pkg != "" && !seen[j.pkg] {
			seen[j.pkg] = true
			names = append(names, j.pkg)
		}
		if j.kind == jobIngest {
			files = append(files, pkgstate.FileKey{Package: j.pkg, Path: j.path})
		}
	}
	if len(names) == 0 {
		return st
	}
	pkgstate.QueuePackages(b, names, st.pkgs)
	if len(files) > 0 {
		pkgstate.QueueFiles(b, files, st.files)
	}
	return st
}

// precheck refuses, before any byte is stored, an ingest that the commit
// would refuse anyway. The commit decides again under the lock.
func (st *state) precheck(c commands.Ingest) *commands.Error {
	ps := st.pkgs[c.Package]
	if ps == nil {
		class := classOrDefault(c.RetentionClass)
		if _, rej := st.cfg.checkClass(class); rej != nil {
			return rej
		}
		return st.cfg.checkMetadata(class, c.Metadata)
	}
	if rej := conflicts(ps, c); rej != nil {
		return rej
	}
	if ps.Expired {
		return expiredRejection(c.Package)
	}
	if _, has := st.files[pkgstate.FileKey{Package: c.Package, Path: c.Path}]; ps.Sealed && !has {
		return sealedRejection(c.Package, c.Path)
	}
	return nil
}

func classOrDefault(c string) string {
	if c == "" {
		return commands.DefaultRetentionClass
	}
	return c
}

// conflicts refuses an ingest whose class or metadata differ from those
// of its existing package ps.
func conflicts(ps *pkgstate.Package, c commands.Ingest) *commands.Error {
	if c.RetentionClass != "" && c.RetentionClass != ps.Class {
		return commands.Rejectf(commands.CodeClassConflict,
			"package %q has retention class %q, the command says %q; leave the class out or use %q (change a package's retention with a retention command)",
			c.Package, ps.Class, c.RetentionClass, ps.Class)
	}
	if len(c.Metadata) > 0 && !maps.Equal(c.Metadata, ps.Metadata) && !(len(ps.Metadata) == 0 && len(c.Metadata) == 0) {
		return commands.Rejectf(commands.CodeMetadataConflict,
			"package %q already exists with other metadata; metadata is set when a package is created: send the same metadata or none",
			c.Package)
	}
	return nil
}

// expiredRejection refuses an ingest into a package whose retention
// expired: the reaper is deleting what only it references, so a "stored"
// reply would be a promise nobody keeps.
func expiredRejection(pkg string) *commands.Error {
	return commands.Rejectf(commands.CodePackageExpired,
		"package %q has expired under its retention class; its bytes are being reaped: ingest into a new package", pkg)
}

func sealedRejection(pkg, path string) *commands.Error {
	return commands.Rejectf(commands.CodePackageSealed,
		"package %q is sealed; no file can be added (path %q); ingest into a new package", pkg, path)
}

// decided is the effect of one job on the log and on the state tables.
type decided struct {
	events   []events.Draft
	rejected *commands.Error
	reply    commands.Reply
	// state writes, applied after the append with the batch's sequences
	newPkg   *pkgstate.NewPackage
	file     *pkgstate.FileKey
	address  string
	sealPkg  string
	noEvents bool // nothing to append (a seal of a sealed package)
}

// decide takes the decision of one job against st and updates st as if it
// were committed, so that later jobs of the group see its effects.
func (st *state) decide(j *job) decided {
	switch j.kind {
	case jobReject:
		return st.rejection(j, j.reject)
	case jobSeal:
		return st.decideSeal(j)
	default:
		return st.decideIngest(j)
	}
}

func (st *state) rejection(j *job, rej *commands.Error) decided {
	return decided{
		rejected: rej,
		events: []events.Draft{{
			SubjectKind: events.SubjectCommand, SubjectID: j.commandID, Actor: j.actor,
			Payload: events.IngestRejectedV1{CommandID: j.commandID, Package: j.pkg, Path: j.path, Code: rej.Code, Reason: rej.Reason},
		}},
		reply: commands.Reply{V: commands.Version, CommandID: j.commandID, Status: commands.StatusRejected,
			Code: rej.Code, Reason: rej.Reason, Package: j.pkg, Path: j.path},
	}
}

func (st *state) decideSeal(j *job) decided {
	ps := st.pkgs[j.pkg]
	if ps == nil {
		return st.rejection(j, commands.Rejectf(commands.CodeUnknownPackage,
			"package %q does not exist; seal a package after the replies to its ingests arrived", j.pkg))
	}
	reply := commands.Reply{V: commands.Version, CommandID: j.commandID, Status: commands.StatusSealed, Package: j.pkg}
	if ps.Sealed {
		reply.Sequence = ps.SealedSeq
		return decided{noEvents: true, reply: reply}
	}
	ps.Sealed = true
	return decided{
		events: []events.Draft{{SubjectKind: events.SubjectPackage, SubjectID: j.pkg, Actor: j.actor,
			Payload: events.PackageSealedV1{Name: j.pkg}}},
		reply:   reply,
		sealPkg: j.pkg,
	}
}

func (st *state) decideIngest(j *job) decided {
	c := j.ingest
	res := j.stored
	var d decided
	ps := st.pkgs[c.Package]
	if ps == nil {
		class := classOrDefault(c.RetentionClass)
		rc, rej := st.cfg.checkClass(class)
		if rej != nil {
			return st.rejection(j, rej)
		}
		if rej := st.cfg.checkMetadata(class, c.Metadata); rej != nil {
			return st.rejection(j, rej)
		}
		until := rc.RetainUntil(st.now)
		d.newPkg = &pkgstate.NewPackage{Name: c.Package, Class: class, Metadata: c.Metadata, RetainUntil: until}
		d.events = append(d.events,
			events.Draft{SubjectKind: events.SubjectPackage, SubjectID: c.Package, Actor: j.actor,
				Payload: events.PackageCreatedV1{Name: c.Package, RetentionClass: class, Metadata: c.Metadata}},
			events.Draft{SubjectKind: events.SubjectPackage, SubjectID: c.Package, Actor: j.actor,
				Payload: events.RetentionAssignedV1{Package: c.Package, Class: class, RetainUntil: until}},
		)
		ps = &pkgstate.Package{Class: class, Metadata: c.Metadata}
	} else if rej := conflicts(ps, c); rej != nil {
		return st.rejection(j, rej)
	} else if ps.Expired {
		return st.rejection(j, expiredRejection(c.Package))
	}

	addr := res.Address.String()
	key := pkgstate.FileKey{Package: c.Package, Path: c.Path}
	cur, has := st.files[key]
	if ps.Sealed {
		if !has {
			return st.rejection(j, sealedRejection(c.Package, c.Path))
		}
		if cur != addr {
			return st.rejection(j, commands.Rejectf(commands.CodePathConflict,
				"package %q is sealed and its path %q holds %s, not %s; a sealed package's files never change",
				c.Package, c.Path, cur, addr))
		}
	}
	dg := res.Digests
	if r := res.Receipt.Repaired; r != nil {
		// The stored copy was damaged or lost and the blob replaced it: the
		// repair is the object's event (a store would leave a corrupt or
		// missing location as it is).
		d.events = append(d.events, events.Draft{SubjectKind: events.SubjectObject, SubjectID: addr, Actor: j.actor,
			Payload: events.ObjectRepairedV1{Address: res.Address, BLAKE3: dg.BLAKE3[:], SHA256: dg.SHA256[:], Size: dg.Size,
				BackendID: res.Receipt.BackendID, Was: r.Was, Detail: r.Detail, Source: events.RepairSourceReupload, CommandID: j.commandID}})
	} else {
		d.events = append(d.events, events.Draft{SubjectKind: events.SubjectObject, SubjectID: addr, Actor: j.actor,
			Payload: events.ObjectStoredV1{Address: res.Address, BLAKE3: dg.BLAKE3[:], SHA256: dg.SHA256[:], Size: dg.Size,
				BackendID: res.Receipt.BackendID, Deduplicated: res.Receipt.Deduplicated}})
	}
	if !has || cur != addr {
		d.events = append(d.events, events.Draft{SubjectKind: events.SubjectPackage, SubjectID: c.Package, Actor: j.actor,
			Payload: events.FileAddedV1{Package: c.Package, Path: c.Path, Address: res.Address, BLAKE3: dg.BLAKE3[:],
				SHA256: dg.SHA256[:], Size: dg.Size, MediaType: c.MediaType}})
		d.file, d.address = &key, addr
		st.files[key] = addr
	}
	st.pkgs[c.Package] = ps
	d.reply = storedReply(j.commandID, c.Package, c.Path, res.Address, dg, res.Receipt.Deduplicated)
	if r := res.Receipt.Repaired; r != nil {
		d.reply.Status, d.reply.Repaired = commands.StatusRepaired, r.Was
	}
	return d
}

func storedReply(cmdID, pkg, path string, addr digest.Address, dg digest.Digests, dedup bool) commands.Reply {
	return commands.Reply{
		V: commands.Version, CommandID: cmdID, Status: commands.StatusStored, Package: pkg, Path: path,
		Address: addr.String(),
		BLAKE3:  digest.New(digest.BLAKE3, dg.BLAKE3).Hex(), SHA256: digest.New(digest.SHA256, dg.SHA256).Hex(),
		Size: dg.Size, Deduplicated: dedup,
	}
}

// reapedNotLost takes back the repair of a copy the put found missing when
// the object's gc row, read under its lock, is not live: the reaper
// deleted the bytes (or is about to) because nothing referenced them, so
// they were not lost, and this ingest stored them anew like any new
// content (keepObjects makes the row live again).
func reapedNotLost(group []*job, states map[pkgstate.ObjectKey]pkgstate.ObjectState) {
	for _, j := range group {
		r := j.stored.Receipt.Repaired
		if j.kind != jobIngest || r == nil || r.Was != storage.DamageMissing {
			continue
		}
		if states[objectKey(j)] != pkgstate.ObjectLive {
			j.stored.Receipt.Repaired = nil
		}
	}
}

// queueWrites queues on b the state changes of the decided jobs (seqs
// holds the first sequence of each job's batch) and sets the gc_objects
// rows of keep live.
func queueWrites(b *pgx.Batch, ds []decided, seqs []int64, keep []pkgstate.Sized, now time.Time) error {
	if len(keep) > 0 {
		pkgstate.QueueKeepLive(b, keep, now)
	}
	for i, d := range ds {
		if d.rejected != nil || d.noEvents {
			continue
		}
		if p := d.newPkg; p != nil {
			p.Seq = seqs[i]
			if err := pkgstate.QueueCreate(b, *p); err != nil {
				return err
			}
		}
		if d.file != nil {
			pkgstate.QueueSetFile(b, *d.file, d.address, seqs[i])
		}
		if d.sealPkg != "" {
			pkgstate.QueueSeal(b, d.sealPkg, now, seqs[i])
		}
	}
	return nil
}

// replyFromEvents rebuilds the reply of a command from the events it
// appended the first time (a redelivery or a re-send of the command id).
func replyFromEvents(codec *events.Codec, cmdID string, evs []events.Event) (commands.Reply, *commands.Error, error) {
	r := commands.Reply{V: commands.Version, CommandID: cmdID, Duplicate: true}
	if len(evs) == 0 {
		return r, nil, fmt.Errorf("command %s has no events", cmdID)
	}
	r.Sequence = evs[len(evs)-1].Sequence
	var (
		stored   *events.ObjectStoredV1
		repaired *events.ObjectRepairedV1
	)
	for _, e := range evs {
		p, err := codec.DecodeEvent(e)
		if err != nil {
			return r, nil, err
		}
		switch p := p.(type) {
		case events.IngestRejectedV1:
			r.Status, r.Code, r.Reason, r.Package, r.Path = commands.StatusRejected, p.Code, p.Reason, p.Package, p.Path
			return r, &commands.Error{Code: p.Code, Reason: p.Reason}, nil
		case events.PackageSealedV1:
			r.Status, r.Package = commands.StatusSealed, p.Name
		case events.ObjectStoredV1:
			stored = &p
		case events.ObjectRepairedV1:
			repaired = &p
			stored = &events.ObjectStoredV1{Address: p.Address, BLAKE3: p.BLAKE3, SHA256: p.SHA256, Size: p.Size, BackendID: p.BackendID}
		case events.FileAddedV1:
			r.Package, r.Path = p.Package, p.Path
		case events.PackageCreatedV1:
			r.Package = p.Name
		}
	}
	if stored != nil {
		var dg digest.Digests
		copy(dg.BLAKE3[:], stored.BLAKE3)
		copy(dg.SHA256[:], stored.SHA256)
		dg.Size = stored.Size
		rep := storedReply(cmdID, r.Package, r.Path, stored.Address, dg, stored.Deduplicated)
		rep.Duplicate, rep.Sequence = true, r.Sequence
		if repaired != nil {
			rep.Status, rep.Repaired = commands.StatusRepaired, repaired.Was
		}
		return rep, nil, nil
	}
	return r, nil, nil
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}
