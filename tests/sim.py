"""A deterministic simulated cluster on the real RaftNode core.

Every node is a real raft.RaftNode on in-memory storage, driven through the
same raft.persist_send_apply() cycle as the UDP runtime. The network is a list
of in-flight messages, each with a delivery tick; a seeded random.Random
decides drops, duplicates and delays (so messages also reorder), and one seed
replays exactly.

After every cycle of every node (that is, after every delivered message, tick
and client request) the checker verifies Raft's safety properties (paper
Figure 3) on the node that ran, incrementally so that it stays cheap:

  Election Safety       at most one leader per term
  Leader Append-Only    a leader never overwrites or deletes its own entries
  Log Matching          an (index, term) pair names one entry, with one
                        predecessor term, in every log at every moment;
                        checked once per log write
  Leader Completeness   an entry committed in term T is in the log of every
                        leader of a term after T; checked when a leader is
                        first seen and when an index is first seen committed
  State Machine Safety  no two nodes apply (or commit) different entries at
                        the same index

and two durability rules: PERSIST (no message leaves a node while it has
unsynced writes, so a crash can never take back what a message promised), and
the durable vote (a node's synced term never falls, and its synced vote never
changes within a term).

A violation raises SafetyViolation naming the property, the seed, the tick,
the command that reruns the case (the test's rerun hint, or the SimCluster
call that rebuilds it) and the recent events.

crash() is a power cut. Between two cycles a node has synced everything, so
crash(node_id, mid_cycle=True) also cuts the power inside a cycle: after the
node has taken in its messages and a tick, before its sync has finished, so
each file keeps only part of what was written and nothing is sent.

SimClient plays raft.RaftClient: one request at a time, retries that reuse
the sequence number, not_leader redirects, timeouts that back off.
"""

import collections
import dataclasses
import heapq
import math
import os
import random

import raft
import kv


class SafetyViolation(AssertionError):
    pass


@dataclasses.dataclass
class Faults:
    """What the network does to each message, drawn from the seed.

    One tick is 10 ms (raft.TICK_MS), so MIT_UNRELIABLE below is the MIT
    6.5840 lab's unreliable network: 10% of requests and 10% of replies
    lost, 0-26 ms of jitter, and (its "long reordering") two thirds of
    replies held back 200-2200 ms, far behind messages sent after them.
    """
    drop: float = 0.0          # probability a request (RequestVote, AppendEntries) is lost
    duplicate: float = 0.0     # probability a message is delivered twice
    delay: tuple = (1, 1)      # delivery delay in ticks, uniform in the range
    drop_reply: float | None = None    # probability a reply is lost; None: same as drop
    long_delay: float = 0.0    # probability a reply is held back long_delay_ticks
    long_delay_ticks: tuple = (20, 220)

    def drops(self, message):
        is_reply = isinstance(message, REPLIES)
        return self.drop_reply if is_reply and self.drop_reply is not None else self.drop


REPLIES = (raft.RequestVoteReply, raft.AppendEntriesReply, raft.InstallSnapshotReply)
MIT_UNRELIABLE = Faults(drop=0.1, delay=(1, 3))
MIT_LONG_REORDERING = Faults(drop=0.1, delay=(1, 3), long_delay=2 / 3)


class SimStorage(raft.MemoryStorage):
    """MemoryStorage that remembers the lowest log index written since the
    checker last looked (so Log Matching is checked once per write), and can
    crash part-way through a sync."""

    def __init__(self):
        super().__init__()
        self.changed_from = math.inf

    def write_entries(self, first_index, entries):
        super().write_entries(first_index, entries)
        self.changed_from = min(self.changed_from, first_index)

    def save_snapshot(self, text, index, term, entries_after):
        super().save_snapshot(text, index, term, entries_after)
        if self.changed_from <= index:       # the checker never needs to look
            self.changed_from = index + 1    # at compacted entries again

    def crash(self, rng=None):
        """Lose the unsynced writes. With rng, a power cut during the sync:
        each file keeps a random prefix of its unsynced writes, the last one
        perhaps torn to a prefix of its lines, as in the two JSON-lines files."""
        if rng is not None:
            states = [w for w in self.pending if w[0] == "state"]
            logs = [w for w in self.pending if w[0] == "entries"]
            states = states[:rng.randint(0, len(states))]
            logs = logs[:rng.randint(0, len(logs))]
            if logs and rng.random() < 0.5:
                kind, first_index, entries = logs[-1]
                logs[-1] = (kind, first_index, entries[:rng.randint(1, len(entries))])
            self.pending = states + logs
            raft.MemoryStorage.sync(self)
        super().crash()


class PowerCut(Exception):
    """The power went in the middle of a sync (see SimCluster.crash)."""


class SimCluster:
    def __init__(self, size=3, seed=0, faults=None, config=None, machine=kv.KeyValueStore,
                 rerun=None, tick_rates=None, founders=None):
        self.seed = seed
        self.rerun = rerun               # how to rerun this case, shown on failure
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.config = config or raft.Config()
        self.machine_factory = machine
        self.ids = [f"n{i + 1}" for i in range(size)]
        # The first configuration: founders (default all). The other nodes
        # start empty, like `raft.py --join`, until a leader adds them.
        self.founders = list(self.ids[:founders] if founders else self.ids)
        self.storage = {i: SimStorage() for i in self.ids}
        self.nodes = {}
        self.down = set()
        self.cut = set()                 # (sender, receiver) links that lose everything
        # A node whose clock runs at rate r ticks r times per cluster tick on
        # average (0.5: half as fast). Raft's safety must not depend on clocks.
        self.tick_rates = dict(tick_rates or {})
        self.clock_credit = {i: 0.0 for i in self.ids}
        self.deliveries = 0              # messages delivered so far, all nodes
        # RAFT_SIM_TRUST_SENDS=1 turns off the PERSIST check, to watch what
        # sending before syncing breaks later (docs/exercises.md).
        self.check_persist = os.environ.get("RAFT_SIM_TRUST_SENDS") != "1"
        self.in_flight = []              # heap of (deliver_tick, order, destination, message)
        self.order = 0
        self.now = 0
        self.events = collections.deque(maxlen=40)
        self.answers = {}
        self.observers = []              # callables (destination, message) per delivery
        self.delivered = collections.Counter()   # (destination, message type) -> count
        self.leaders_by_term = {}
        self.commits = {}                # index -> the entry committed there
        self.commit_terms = {}           # index -> a term no earlier than its commit
        self.commit_seen = {}            # node -> commit_index already checked
        self.entry_ids = {}              # (index, term) -> (command, previous term)
        self.applied_entries = {}        # index -> the entry applied there
        self.first_applied = {}          # (client, seq) -> tick it first took effect
        self.leader_view = {}            # node -> (term, last_index) while it leads
        self.last_state = {}
        for node_id in self.ids:
            self.start(node_id)

    # -- running nodes ----------------------------------------------------------
    def start(self, node_id):
        members = self.founders if node_id in self.founders else []
        node = raft.RaftNode(node_id, members, self.storage[node_id],
                             self.machine_factory(), random.Random(self.rng.random()),
                             self.config)
        node.on_apply = lambda index, entry: self.note_applied(node_id, index, entry)
        self.nodes[node_id] = node
        self.commit_seen[node_id] = 0
        self.leader_view.pop(node_id, None)
        self.storage[node_id].changed_from = 1      # check the reloaded log too
        self.down.discard(node_id)
        self.cycle(node_id)

    def crash(self, node_id, mid_cycle=False):
        """Power cut: everything not yet synced is lost.

        Between cycles a node has nothing unsynced. With mid_cycle, the power
        goes in the middle of one: the node takes in every message on its way
        to it and a tick, and runs persist_send_apply, whose sync never
        completes: a random part of what it wrote reaches the disk. If the
        cycle sent anything before syncing (breaking PERSIST), those messages
        are out, promising what the disk no longer holds.
        """
        node = self.nodes.get(node_id)
        if mid_cycle and node is not None:
            mine = [m for m in self.in_flight if m[2] == node_id]
            self.in_flight = [m for m in self.in_flight if m[2] != node_id]
            heapq.heapify(self.in_flight)
            for _when, _order, _destination, message in sorted(mine, key=lambda m: m[:2]):
                node.step(message)
            node.tick()
            storage = self.storage[node_id]
            self.log_event(f"{node_id} crashes mid-cycle ({len(mine)} messages in)")

            def sync_until_the_power_goes():
                storage.crash(self.rng)
                raise PowerCut()
            # The real cycle, whose sync never completes: whatever it would
            # have done before syncing (nothing, if PERSIST holds) still happens.
            storage.sync = sync_until_the_power_goes
            try:
                raft.persist_send_apply(
                    node, lambda destination, message: self.transmit(node_id, destination,
                                                                     message),
                    lambda request_id, answer: None)
            except PowerCut:
                pass
            del storage.sync
        else:
            self.log_event(f"{node_id} crashes")
            self.storage[node_id].crash()
        self.down.add(node_id)
        self.nodes.pop(node_id, None)

    def time_out_now(self, node_id):
        """node_id's election timer runs out at its next tick, as if its
        random timeout had come out at one tick: how a story picks its
        candidate (the next timeout is random again)."""
        self.log_event(f"{node_id}'s election timer is set to run out")
        self.nodes[node_id].election_timeout = 1

    def restart(self, node_id):
        self.log_event(f"{node_id} restarts")
        self.start(node_id)

    def cycle(self, node_id):
        node = self.nodes[node_id]
        raft.persist_send_apply(
            node, lambda destination, message: self.transmit(node_id, destination, message),
            lambda request_id, answer: self.answers.__setitem__(request_id, answer))
        self.record_applied(node)
        self.check_node(node)

    def transmit(self, sender, destination, message):
        storage = self.storage[sender]
        if storage.pending and self.check_persist:
            self.fail("PERSIST", f"{sender} sends {type(message).__name__} with "
                      f"{len(storage.pending)} unsynced write(s): {storage.pending[:3]}")
        faults = self.faults
        if (sender, destination) in self.cut or self.rng.random() < faults.drops(message):
            return
        copies = 2 if self.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            self.order += 1
            delay = self.rng.randint(*faults.delay)
            if (faults.long_delay and isinstance(message, REPLIES)
                    and self.rng.random() < faults.long_delay):
                delay = self.rng.randint(*faults.long_delay_ticks)
            heapq.heappush(self.in_flight, (self.now + delay, self.order, destination, message))

    # -- time -------------------------------------------------------------------
    def tick(self, ticks=1):
        for _ in range(ticks):
            self.now += 1
            due = []
            while self.in_flight and self.in_flight[0][0] <= self.now:
                due.append(heapq.heappop(self.in_flight))
            for _when, _order, destination, message in due:
                if destination in self.nodes:
                    self.log_event("%s <- %r", destination, message)
                    self.delivered[destination, type(message).__name__] += 1
                    self.deliveries += 1
                    for observe in self.observers:
                        observe(destination, message)
                    self.nodes[destination].step(message)
                    self.cycle(destination)
            for node_id in list(self.nodes):
                node = self.nodes[node_id]
                for _ in range(self.clock_ticks(node_id)):
                    node.tick()
                    if not self.is_idle_follower(node):
                        self.cycle(node_id)

    def is_idle_follower(self, node):
        """A follower whose tick only advanced its election timer: its cycle
        would send, sync, apply and answer nothing, so it is skipped (most
        ticks are these; skipping them makes the simulator much faster)."""
        return (node.role is raft.Role.FOLLOWER and not node.outbox and not node.answers
                and not self.storage[node.id].pending)

    def clock_ticks(self, node_id):
        """How many ticks this node's own clock gives it this cluster tick."""
        rate = self.tick_rates.get(node_id)
        if rate is None:
            return 1
        self.clock_credit[node_id] += rate
        ticks = int(self.clock_credit[node_id])
        self.clock_credit[node_id] -= ticks
        return ticks

    def run_until(self, predicate, max_ticks=2000):
        for _ in range(max_ticks):
            if predicate():
                return True
            self.tick()
        return predicate()

    # -- network shapes ------------------------------------------------------------
    def partition(self, *groups):
        """Only nodes in the same group can talk (a node in no group talks to
        no one)."""
        group_of = {n: i for i, group in enumerate(groups) for n in group}
        self.cut = {(a, b) for a in self.ids for b in self.ids
                    if a != b and group_of.get(a) != group_of.get(b)}
        self.log_event(f"partition {groups}")

    def random_split(self, rng):
        """Two groups, of random sizes and members, that cannot talk."""
        ids = self.ids[:]
        rng.shuffle(ids)
        cut = rng.randint(1, len(ids) - 1)
        self.partition(ids[:cut], ids[cut:])

    def isolate(self, node_id):
        """Cut one node off from everyone, both ways."""
        self.partition([node_id], [n for n in self.ids if n != node_id])

    def cut_one_way(self, sender, receiver):
        """An asymmetric fault: receiver stops hearing sender, while sender
        still hears receiver (a half-broken link, a one-way firewall rule)."""
        self.cut.add((sender, receiver))
        self.log_event(f"cut {sender} -> {receiver} (one way)")

    def bridge(self, middle, left, right):
        """middle talks to both sides; left and right cannot talk to each
        other (the non-transitive partition that can keep elections going)."""
        self.cut = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
        self.log_event(f"bridge {left} <-> {middle} <-> {right}")

    def heal(self):
        self.cut = set()
        self.log_event("heal")

    # -- clients ----------------------------------------------------------------
    def leader(self):
        leaders = [n for n in self.nodes.values() if n.role is raft.Role.LEADER]
        return max(leaders, key=lambda n: n.current_term) if leaders else None

    def propose(self, node_id, request_id, client_id, seq, op):
        self.log_event(f"{node_id} <- propose {client_id}/{seq} {op}")
        self.nodes[node_id].propose(request_id, client_id, seq, op)
        self.cycle(node_id)

    def read(self, node_id, request_id, op):
        self.log_event(f"{node_id} <- read {op}")
        self.nodes[node_id].read(request_id, op)
        self.cycle(node_id)

    def change_membership(self, node_id, request_id, action, server):
        self.log_event(f"{node_id} <- {action} {server}")
        self.nodes[node_id].change_membership(request_id, action, server)
        self.cycle(node_id)

    def transfer_leadership(self, node_id, request_id, target=None):
        self.log_event(f"{node_id} <- transfer to {target}")
        self.nodes[node_id].transfer_leadership(request_id, target)
        self.cycle(node_id)

    def take_snapshot(self, node_id):
        self.log_event(f"{node_id} <- snapshot")
        self.nodes[node_id].take_snapshot()
        self.cycle(node_id)

    # -- checking ----------------------------------------------------------------
    def log_event(self, text, *args):
        """Recent events, formatted only if a failure needs them."""
        self.events.append((self.now, text, args))

    def rerun_hint(self):
        return self.rerun or (f"sim.SimCluster(size={len(self.ids)}, seed={self.seed}, "
                              f"faults={self.faults!r}, config={self.config!r})")

    def fail(self, prop, detail):
        lines = []
        for now, text, args in self.events:
            line = f"t={now} " + (text % args if args else text)
            lines.append(line if len(line) <= 300 else line[:297] + "...")
        timeline = "\n  ".join(lines)
        raise SafetyViolation(
            f"{prop} violated at tick {self.now} (seed {self.seed}): {detail}\n"
            f"rerun: {self.rerun_hint()}\n"
            f"last events:\n  {timeline}")

    def record_applied(self, node):
        """Applies are recorded as they happen (note_applied); a node that
        installs a snapshot jumps past entries it never applies one by one."""

    def note_applied(self, node_id, index, entry):
        # State Machine Safety: one entry per index across all nodes' applies.
        first = self.applied_entries.setdefault(index, entry)
        if entry.command is not None and "client" in entry.command:
            self.first_applied.setdefault(
                (entry.command["client"], entry.command["seq"]), self.now)
        if first != entry:
            self.fail("State Machine Safety",
                      f"index {index}: {first} vs {entry} applied on {node_id}")

    def check_safety(self):
        for node in self.nodes.values():
            self.check_node(node)

    def check_node(self, node):
        """Check what one node's cycle may have changed. A cycle changes only
        its own node, and every check below compares the node with what the
        checker remembers of all the others, so checking the node that just
        ran is as strong as checking them all, and much cheaper."""
        self.check_leader(node)
        self.check_durable_vote(node)
        self.check_log_matching(node)
        self.check_commits(node)

    def check_leader(self, node):
        view = self.leader_view.get(node.id)
        if node.role is not raft.Role.LEADER:
            self.leader_view.pop(node.id, None)
            return
        term = node.current_term
        # Election Safety: at most one leader per term.
        other = self.leaders_by_term.setdefault(term, node.id)
        if other != node.id:
            self.fail("Election Safety", f"{other} and {node.id} both lead term {term}")
        if view is not None and view[0] == term:
            # Leader Append-Only: nothing at or below what it had was rewritten.
            changed_from = self.storage[node.id].changed_from
            if changed_from <= view[1]:
                self.fail("Leader Append-Only", f"{node.id} (leader of term {term}) "
                          f"rewrote its log from index {changed_from} (had {view[1]})")
        else:
            # Leader Completeness: a new leader holds every entry committed earlier.
            for index, committed_term in self.commit_terms.items():
                if committed_term < term:
                    self.check_has_committed(node, index)
        self.leader_view[node.id] = (term, node.log.last_index)

    def check_has_committed(self, leader, index):
        if index <= leader.log.snapshot_index:
            return          # compacted: its snapshot holds what it applied there
        has = leader.log.entry(index) if leader.log.term_at(index) is not None else None
        if has != self.commits[index]:
            self.fail("Leader Completeness",
                      f"{leader.id}, leader of term {leader.current_term}, lacks index "
                      f"{index} = {self.commits[index]} committed by term "
                      f"{self.commit_terms[index]}; it has {has}")

    def check_durable_vote(self, node):
        # Persisted term and vote never go backwards within a term.
        storage = self.storage[node.id]
        previous = self.last_state.get(node.id, (0, None))
        if storage.term < previous[0] or (
                storage.term == previous[0] and previous[1] is not None
                and storage.voted_for != previous[1]):
            self.fail("durable vote", f"{node.id} went from {previous} to "
                      f"{(storage.term, storage.voted_for)}")
        self.last_state[node.id] = (storage.term, storage.voted_for)

    def check_log_matching(self, node):
        # Log Matching, by induction: if every (index, term) pair names one
        # command and one predecessor term everywhere, two logs that share an
        # (index, term) pair agree on every entry up to it.
        storage = self.storage[node.id]
        log = node.log
        if storage.changed_from > log.last_index:
            storage.changed_from = math.inf
            return
        for index in range(max(storage.changed_from, log.snapshot_index + 1),
                           log.last_index + 1):
            entry = log.entry(index)
            seen = (entry.command, log.term_at(index - 1))
            known = self.entry_ids.setdefault((index, entry.term), seen)
            if known != seen:
                self.fail("Log Matching",
                          f"{node.id} holds index {index} term {entry.term} as "
                          f"(command, previous term) {seen}; elsewhere it is {known}")
        storage.changed_from = math.inf

    def check_commits(self, node):
        seen = self.commit_seen[node.id]
        if node.commit_index < seen or node.commit_index > node.log.last_index:
            self.fail("commit index", f"{node.id} commit_index {node.commit_index} "
                      f"(was {seen}, last log index {node.log.last_index})")
        if node.commit_index == seen:
            return
        leaders = [n for n in self.nodes.values() if n.role is raft.Role.LEADER]
        for index in range(max(seen, node.log.snapshot_index) + 1, node.commit_index + 1):
            entry = node.log.entry(index)
            first = self.commits.setdefault(index, entry)
            if first != entry:
                self.fail("State Machine Safety",
                          f"index {index} committed as {first}, but {node.id} commits {entry}")
            # The node's term bounds the term the entry was committed in from
            # above; checking only leaders of later terms keeps this sound.
            term = min(self.commit_terms.get(index, math.inf), node.current_term)
            self.commit_terms[index] = term
            for leader in leaders:
                if leader.current_term > term:
                    self.check_has_committed(leader, index)
        self.commit_seen[node.id] = node.commit_index


class SimClient:
    """A client in the simulation that behaves like raft.RaftClient: one
    request at a time; each request takes the next sequence number (reads
    too), and every retry, to the same node or another, reuses it. It follows
    a not_leader hint at once; with no hint it tries the next node two ticks
    later. A silent node gets FIRST_ATTEMPT_TICKS, then twice that, up to
    MAX_ATTEMPT_TICKS, before the client moves on to the next node.

    Requests and answers travel instantly; a request sent to a crashed node
    is lost, so the client waits for that attempt to time out. With lossy,
    requests and answers are also lost at the network's drop rate. With
    give_up_ticks, the client abandons a request that has not been answered
    after that long, as RaftClient raises ClusterUnavailable after its
    timeout: the request's outcome is then unknown (it may still commit).
    Call poll() once per tick.

    history records every request for the linearizability checker: dicts
    with client, seq, op, call, ret (None: abandoned, outcome unknown),
    result, error (the cluster's error answer, e.g. incr of a non-integer).
    """
    FIRST_ATTEMPT_TICKS = 10
    MAX_ATTEMPT_TICKS = 100
    EXPECTED_ERRORS = ("not an integer", "outside the 64-bit range")

    def __init__(self, cluster, client_id, first_node=0, give_up_ticks=None, lossy=False):
        self.cluster, self.id = cluster, client_id
        self.give_up_ticks, self.lossy = give_up_ticks, lossy
        self.seq = 0
        self.leader = None
        self.rotation = first_node
        self.op = None                  # the request under way, if any
        self.attempt_ids = []
        self.attempts = 0
        self.silences = 0
        self.deadline = 0               # when the current attempt times out
        self.resend_at = None           # when to send again; None: waiting
        self.completed = []             # (seq, op, result), in answer order
        self.history = []               # see the class docstring
        self.abandoned = 0

    @property
    def busy(self):
        return self.op is not None

    def submit(self, op):
        assert self.op is None, "one request at a time"
        self.seq += 1
        self.op, self.attempt_ids, self.silences = op, [], 0
        self.history.append({"client": self.id, "seq": self.seq, "op": op,
                             "call": self.cluster.now, "ret": None, "result": None,
                             "error": None})
        self.send()

    def finish(self, result=None, error=None):
        record = self.history[-1]
        record.update(ret=self.cluster.now, result=result, error=error)
        if error is None:
            self.completed.append((self.seq, self.op, result))
        self.op = None

    def poll(self):
        if self.op is None:
            return
        cluster = self.cluster
        for request_id in self.attempt_ids:
            answer = cluster.answers.pop(request_id, None)
            if answer is None or self.lost():
                continue
            if answer.get("ok"):
                self.finish(result=answer.get("result"))
                return
            error = answer.get("error")
            if error != "not_leader":
                if not any(expected in str(error) for expected in self.EXPECTED_ERRORS):
                    raise AssertionError(
                        f"client {self.id} request {self.seq} {self.op} answered {answer} "
                        f"at tick {cluster.now} (seed {cluster.seed}); "
                        f"rerun: {cluster.rerun_hint()}")
                self.finish(error=error)
                return
            hint, target = answer.get("leader"), request_id[3]
            self.leader = hint if hint and hint != target else None
            if self.leader is None:
                self.rotation += 1
            self.resend_at = cluster.now + (1 if self.leader else 2)
        if (self.give_up_ticks is not None
                and cluster.now - self.history[-1]["call"] >= self.give_up_ticks):
            self.abandoned += 1         # unknown outcome: ret stays None
            self.op = None
            return
        if self.resend_at is None and cluster.now >= self.deadline:
            self.leader = None          # silence: that node is down or cut off
            self.rotation += 1
            self.silences += 1
            self.resend_at = cluster.now
        if self.resend_at is not None and cluster.now >= self.resend_at:
            self.send()

    def lost(self):
        return self.lossy and self.cluster.rng.random() < self.cluster.faults.drop

    def send(self):
        cluster = self.cluster
        target = self.leader or cluster.ids[self.rotation % len(cluster.ids)]
        self.attempts += 1
        request_id = ("client", self.id, self.seq, target, self.attempts)
        self.attempt_ids.append(request_id)
        wait = min(self.MAX_ATTEMPT_TICKS, self.FIRST_ATTEMPT_TICKS * 2 ** self.silences)
        self.deadline, self.resend_at = cluster.now + wait, None
        if target not in cluster.nodes or self.lost():
            return                      # lost: the node is down, or the network
        if cluster.nodes[target].machine.is_read(self.op):
            cluster.read(target, request_id, self.op)
        else:
            cluster.propose(target, request_id, self.id, self.seq, self.op)
