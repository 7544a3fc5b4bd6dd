package bus

import "strings"

// Names of the roles of [Topology.Roles]: one NATS user (or set of
// credentials) per kind of process.
const (
	RoleAdmin      = "admin"
	RoleProducer   = "producer"
	RoleOperator   = "operator"
	RoleIngester   = "ingester"
	RoleVerifier   = "verifier"
	RoleReaper     = "reaper"
	RoleRelay      = "relay"
	RoleStatus     = "status"
	RoleSubscriber = "subscriber"
	// RoleCheckpointer signs the chain head (`checkpoint sign`, and `run`).
	RoleCheckpointer = "checkpointer"
	// RoleAuditor reads the signed checkpoints and the events stream
	// (`audit --checkpoints`, `checkpoint verify`).
	RoleAuditor = "auditor"
	// RoleReplicator places further copies and repairs damaged ones
	// (`replicate`), fed by the events stream.
	RoleReplicator = "replicator"
)

// Grant is one subject a role may publish or subscribe to, with why it
// needs it.
type Grant struct {
	// Subject is a NATS subject, possibly with wildcards.
	Subject string `json:"subject"`
	// Why says which operation uses it.
	Why string `json:"why"`
}

// Role is one kind of NATS client of artifactstore: the commands that
// connect as it, the topology items it checks at start, and every subject
// it publishes or subscribes to, and no other. It is the one source of
// truth for least-privilege NATS permissions: the README's table and the
// permissions test's server configuration are generated from it.
type Role struct {
	// Name is the role's name (RoleAdmin, RoleIngester, ...).
	Name string `json:"name"`
	// Commands are the artifactstore commands that connect as this role.
	Commands string `json:"commands"`
	// Needs are the topology items the role checks at start
	// ([CheckTopology]); a missing one stops it with a clear error. A
	// consumer's check covers its stream.
	Needs []Item `json:"needs,omitempty"`
	// Publish and Subscribe are the subjects the role may use.
	Publish   []Grant `json:"publish"`
	Subscribe []Grant `json:"subscribe"`
	// Rare are the subjects of Publish used only when something went
	// wrong (a command the server gave up on, an abandoned upload, a
	// recent failure): an ordinary run never exercises them.
	Rare []string `json:"rare,omitempty"`
}

// Roles returns the NATS permissions of every role for topology t. A
// process that runs several roles (`artifactstore run`) needs the union;
// a role started with --apply-topology also needs the admin's grants.
func (t Topology) Roles() []Role {
	var (
		cs    = t.CommandsStream
		dl    = t.DeadLetterStream
		obj   = objectStoreStream(t.StagingBucket)
		o     = "$O." + t.StagingBucket
		api   = apiPrefix
		inbox = Grant{"_INBOX.>", "JetStream API responses, publish acks and command replies"}
		need  = func(kind ItemKind, name string) Item { it, _ := t.Item(kind, name); return it }
	)
	stagingRead := []Grant{
		{api + ".STREAM.INFO." + obj, "open the staging bucket"},
		{api + ".DIRECT.GET." + obj + "." + o + ".M.*", "read a staged object's metadata"},
	}
	// worker is the grants of a process that pulls from a durable consumer
	// of the commands stream, dead-letters what fails and replies.
	worker := func(durable, why string) []Grant {
		return []Grant{
			{api + ".CONSUMER.INFO." + cs + "." + durable, "check and bind the " + durable + " consumer"},
			{api + ".CONSUMER.MSG.NEXT." + cs + "." + durable, "pull " + why},
			{"$JS.ACK." + cs + "." + durable + ".>", "ack, nak, in-progress and term"},
			{api + ".STREAM.INFO." + dl, "check the dead-letter stream"},
			{t.DeadLetterSubjectPrefix() + "." + durable + ".*", "dead-letter a refused or failed command"},
			{api + ".STREAM.INFO." + cs, "find the stream of the commands the server may give up on"},
			{api + ".STREAM.MSG.GET." + cs, "read back a command the server gave up on (max-deliveries advisory)"},
			{"_INBOX.>", "reply to the command's sender (Artifactstore-Reply-To)"},
		}
	}
	rareWorker := api + ".STREAM.MSG.GET." + cs
	rareScan := []string{api + ".DIRECT.GET." + obj + "." + o + ".C.*", api + ".CONSUMER.INFO." + cs + "." + t.IngestConsumer,
		api + ".STREAM.INFO." + cs, api + ".STREAM.MSG.GET." + cs}
	// workerSub is what a worker of durable subscribes to.
	workerSub := func(durable string) []Grant {
		return []Grant{inbox, {MaxDeliveriesAdvisorySubject(cs, durable), "commands whose last delivery was never acknowledged, to answer them"}}
	}
	// stagingScan is what the staging janitor and status read to find
	// abandoned uploads (bus.AbandonedStaged).
	stagingScan := []Grant{
		{api + ".STREAM.INFO." + obj, "list the staged uploads (the bucket's subjects)"},
		{api + ".DIRECT.GET." + obj + "." + o + ".C.*", "date and size an unfinished upload by its last chunk"},
		{api + ".CONSUMER.INFO." + cs + "." + t.IngestConsumer, "is an ingest command waiting for an old upload?"},
		{api + ".STREAM.INFO." + cs, "the commands stream"},
		{api + ".STREAM.MSG.GET." + cs, "date the oldest waiting ingest command"},
	}

	var admin []Grant
	for _, it := range t.Items() {
		switch it.Kind {
		case KindConsumer:
			admin = append(admin,
				Grant{api + ".CONSUMER.INFO." + it.Stream + "." + it.Name, "check " + it.String()},
				Grant{api + ".CONSUMER.CREATE." + it.Stream + "." + it.Name + ".>", "create or update " + it.String()})
		default:
			admin = append(admin,
				Grant{api + ".STREAM.INFO." + it.Stream, "check " + it.String()},
				Grant{api + ".STREAM.CREATE." + it.Stream, "create " + it.String()},
				Grant{api + ".STREAM.UPDATE." + it.Stream, "update " + it.String()})
		}
	}

	return dedupe([]Role{
		{
			Name:      RoleAdmin,
			Commands:  "`topology apply`, `topology check`; a role's `--apply-topology`",
			Publish:   admin,
			Subscribe: []Grant{inbox},
		},
		{
			Name:     RoleProducer,
			Commands: "`put`, `seal`",
			Publish: append([]Grant{
				{t.Subject(CmdIngest), "send ingest commands"},
				{t.Subject(CmdSeal), "send seal commands"},
				{t.Subject(CmdIngestBatch), "send batches of small files"},
				{api + ".CONSUMER.INFO." + cs + "." + t.IngestConsumer, "warn when no ingester is pulling"},
			},
				Grant{api + ".STREAM.INFO." + obj, "open the staging bucket's stream"},
				Grant{o + ".C.*", "stage a blob's chunks"},
				Grant{o + ".M.*", "stage a blob's metadata"},
				Grant{api + ".STREAM.PURGE." + obj, "remove the chunks of an upload that failed half-way"},
			),
			Subscribe: []Grant{inbox},
		},
		{
			Name:     RoleOperator,
			Commands: "`hold`, `release`, `retain`, `verify --package/--object/--all`",
			Publish: []Grant{
				{t.Subject(CmdRetention), "send hold, release and retain commands"},
				{t.Subject(CmdVerify), "send verify requests"},
				{api + ".CONSUMER.INFO." + cs + "." + t.RetentionConsumer, "warn when no reaper is pulling"},
				{api + ".CONSUMER.INFO." + cs + "." + t.VerifyConsumer, "warn when no verifier is pulling"},
			},
			Subscribe: []Grant{inbox},
		},
		{
			Name:     RoleIngester,
			Commands: "`ingest`",
			Needs:    []Item{need(KindConsumer, t.IngestConsumer), need(KindStream, dl), need(KindObjectStore, t.StagingBucket)},
			Publish: append(worker(t.IngestConsumer, "ingest and seal commands"), append(append(stagingRead,
				Grant{api + ".CONSUMER.CREATE." + obj + ".*." + o + ".C.*", "read a staged object's chunks (ordered consumer)"},
				Grant{api + ".CONSUMER.MSG.NEXT." + obj + ".*", "pull a staged object's chunks"},
				Grant{o + ".M.*", "mark a staged object deleted after the ingest committed"},
				Grant{api + ".STREAM.PURGE." + obj, "remove a committed or abandoned staged object's chunks"},
				Grant{api + ".STREAM.MSG.GET." + obj, "ask the bucket's leader for a staged object a replica's direct get did not find (a cluster)"},
			), stagingScan...)...),
			Subscribe: workerSub(t.IngestConsumer),
			Rare:      []string{rareWorker, api + ".DIRECT.GET." + obj + "." + o + ".C.*", api + ".STREAM.MSG.GET." + obj},
		},
		{
			Name:      RoleVerifier,
			Commands:  "`verify` (worker and scrub scheduler)",
			Needs:     []Item{need(KindConsumer, t.VerifyConsumer), need(KindStream, dl)},
			Publish:   append(worker(t.VerifyConsumer, "verify requests"), Grant{t.Subject(CmdVerify), "queue scrub verifications"}),
			Subscribe: workerSub(t.VerifyConsumer),
			Rare:      []string{rareWorker},
		},
		{
			Name:      RoleReaper,
			Commands:  "`reap` (retention commands; `--no-retention` needs no NATS)",
			Needs:     []Item{need(KindConsumer, t.RetentionConsumer), need(KindStream, dl)},
			Publish:   worker(t.RetentionConsumer, "hold, release and retain commands"),
			Subscribe: workerSub(t.RetentionConsumer),
			Rare:      []string{rareWorker},
		},
		{
			Name:     RoleReplicator,
			Commands: "`replicate`",
			Needs:    []Item{need(KindConsumer, t.ReplicateConsumer), need(KindStream, dl)},
			Publish: []Grant{
				{api + ".CONSUMER.INFO." + t.EventsStream + "." + t.ReplicateConsumer, "check and bind the " + t.ReplicateConsumer + " consumer"},
				{api + ".CONSUMER.MSG.NEXT." + t.EventsStream + "." + t.ReplicateConsumer, "pull committed events"},
				{"$JS.ACK." + t.EventsStream + "." + t.ReplicateConsumer + ".>", "ack, nak, in-progress and term"},
				{api + ".STREAM.INFO." + dl, "check the dead-letter stream"},
				{t.DeadLetterSubjectPrefix() + "." + t.ReplicateConsumer + ".*", "dead-letter an event that cannot be handled"},
				{api + ".STREAM.INFO." + t.EventsStream, "find the stream of the events the server may give up on"},
				{api + ".STREAM.MSG.GET." + t.EventsStream, "read back an event the server gave up on (max-deliveries advisory)"},
			},
			Subscribe: []Grant{inbox, {MaxDeliveriesAdvisorySubject(t.EventsStream, t.ReplicateConsumer), "events whose last delivery was never acknowledged"}},
			Rare:      []string{t.DeadLetterSubjectPrefix() + "." + t.ReplicateConsumer + ".*", api + ".STREAM.MSG.GET." + t.EventsStream},
		},
		{
			Name:     RoleRelay,
			Commands: "`relay`",
			Needs:    []Item{need(KindStream, t.EventsStream)},
			Publish: []Grant{
				{api + ".STREAM.INFO." + t.EventsStream, "check the events stream, find where to resume"},
				{api + ".STREAM.MSG.GET." + t.EventsStream, "read the last published event"},
				{t.SubjectRoot + ".events.>", "publish committed events"},
			},
			Subscribe: []Grant{inbox},
		},
		{
			Name:     RoleCheckpointer,
			Commands: "`checkpoint sign`",
			Needs:    []Item{need(KindStream, t.CheckpointsStream)},
			Publish: []Grant{
				{api + ".STREAM.INFO." + t.CheckpointsStream, "check the checkpoints stream"},
				{api + ".STREAM.MSG.GET." + t.CheckpointsStream, "read the last checkpoint, which the next must extend"},
				{t.CheckpointsSubject(), "publish signed checkpoints"},
			},
			Subscribe: []Grant{inbox},
		},
		{
			Name:     RoleAuditor,
			Commands: "`audit --checkpoints`, `checkpoint verify`",
			// Both streams are read through ephemeral consumers that expire
			// on their own (bus.ReadStream): no consumer delete, which would
			// let the auditor delete other systems' durables.
			Publish: []Grant{
				{api + ".CONSUMER.CREATE." + t.CheckpointsStream + ".*." + t.CheckpointsSubject(), "read every checkpoint (ephemeral consumer)"},
				{api + ".CONSUMER.MSG.NEXT." + t.CheckpointsStream + ".*", "pull the checkpoints"},
				{api + ".CONSUMER.CREATE." + t.EventsStream + ".*." + t.SubjectRoot + ".events.>", "read the published events (`checkpoint verify --events-stream`; ephemeral consumer)"},
				{api + ".CONSUMER.MSG.NEXT." + t.EventsStream + ".*", "pull the published events"},
			},
			Subscribe: []Grant{inbox},
		},
		{
			Name:     RoleStatus,
			Commands: "`status`",
			Publish: append([]Grant{
				{api + ".CONSUMER.INFO." + cs + "." + t.IngestConsumer, "ingest backlog"},
				{api + ".CONSUMER.INFO." + cs + "." + t.RetentionConsumer, "retention backlog"},
				{api + ".CONSUMER.INFO." + cs + "." + t.VerifyConsumer, "verify backlog"},
				{api + ".CONSUMER.INFO." + t.EventsStream + "." + t.ReplicateConsumer, "replication backlog (absent without a replicator)"},
				{api + ".STREAM.INFO." + dl, "count dead letters"},
				{api + ".CONSUMER.CREATE." + dl + ".*." + t.DeadLetterSubjectPrefix() + ".*.*", "count recent dead letters by kind (ephemeral consumer)"},
				{api + ".CONSUMER.DELETE." + dl + ".*", "remove that consumer"},
				{api + ".STREAM.MSG.GET." + dl, "the cause of the latest failure"},
				{api + ".DIRECT.GET." + obj + "." + o + ".M.*", "read a staged object's metadata"},
			}, stagingScan...),
			Subscribe: []Grant{inbox},
			Rare:      append([]string{api + ".STREAM.MSG.GET." + dl}, rareScan...),
		},
		{
			Name:     RoleSubscriber,
			Commands: "other systems reading events",
			Publish: []Grant{
				{api + ".CONSUMER.CREATE." + t.EventsStream + ".*." + t.SubjectRoot + ".events.>", "replay events (ordered consumer filtered on the events subjects)"},
				{api + ".CONSUMER.MSG.NEXT." + t.EventsStream + ".*", "pull events"},
			},
			Subscribe: []Grant{
				{t.SubjectRoot + ".events.>", "live events, without JetStream"},
				inbox,
			},
		},
	})
}

// dedupe drops the grants of a role that repeat an earlier one (helper
// lists overlap).
func dedupe(roles []Role) []Role {
	for i, r := range roles {
		roles[i].Publish, roles[i].Subscribe = unique(r.Publish), unique(r.Subscribe)
	}
	return roles
}

func unique(grants []Grant) []Grant {
	seen := map[string]bool{}
	out := grants[:0:0]
	for _, g := range grants {
		if !seen[g.Subject] {
			seen[g.Subject] = true
			out = append(out, g)
		}
	}
	return out
}

// Role returns the role of t with the given name, and whether there is one.
func (t Topology) Role(name string) (Role, bool) {
	for _, r := range t.Roles() {
		if r.Name == name {
			return r, true
		}
	}
	return Role{}, false
}

// Subjects returns the subjects of grants.
func Subjects(grants []Grant) []string {
	s := make([]string, len(grants))
	for i, g := range grants {
		s[i] = g.Subject
	}
	return s
}

// SubjectMatches reports whether the literal subject matches pattern,
// whose tokens may be the wildcards '*' (one token) and '>' (one or more
// tokens, last only), as NATS permissions match.
func SubjectMatches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || tok != "*" && tok != s[i] {
			return false
		}
	}
	return len(p) == len(s)
}
