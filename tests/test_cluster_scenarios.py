"""Story tests for log compaction and cluster changes, on the simulator.

Part 1 ports the MIT 6.5840 Raft lab's 3D tests (snapshots; see
research/anchors.md §3 and tests/test_scenarios.py, whose Lab tester this
reuses) onto sim.SimCluster. Part 2 tells the stories of the features
beyond Figure 2, each naming the section of Ongaro's dissertation it
follows: membership changes one server at a time (§4.1-4.3), leadership
transfer (§3.10), pre-vote (§9.6), check-quorum and the leader lease
(§4.2.3, §6.2), and a new server brought in by InstallSnapshot (§4.2.1,
ch. 5).

The simulator checks Raft's safety properties after every delivered
message throughout (sim.py); the tests assert what each story is about.
One tick is 10 ms; the election timeout is 15-30 ticks, heartbeats every 5.
Every test is deterministic; a failure prints its seed and how to rerun it.
"""

import random

import pytest

import kv
import linearizability
import raft
import sim
from sim import Faults, SimClient, SimCluster
from test_faults import history_of
from test_scenarios import Lab
from test_simulation import step_clients, why

TICKS_PER_SECOND = 1000 // raft.TICK_MS
ELECTION_HIGH = raft.Config().election_timeout_ticks[1]
HEARTBEAT_TICKS = raft.Config().heartbeat_ticks

RELIABLE = Faults(delay=(1, 2))        # the lab's reliable network, a little reordering

# The lab's service snapshots every 10 applied entries (SnapShotInterval).
SNAPSHOT_EVERY = 10
# Small datagrams: a snapshot goes in many InstallSnapshot chunks, and a
# lagging log in many small AppendEntries. The lab has no client sessions;
# ours would make each of its one-command "clients" a line of every
# snapshot, so the session table is kept small. (A lab command retried
# after its session was evicted would apply twice: harmless, it only sets
# a key of its own again.)
SNAPSHOT_CONFIG = raft.Config(snapshot_every=SNAPSHOT_EVERY, max_append_bytes=300,
                              max_sessions=24)
# The lab fails a test whose persisted Raft state passes 2000 bytes
# (MAXLOGSIZE). Ours: no log holds more than a snapshot interval of applied
# entries, plus what is not yet applied; in these tests, never more than this.
MAX_LOG_ENTRIES = 2 * SNAPSHOT_EVERY + 15
# SnapshotBasic: whole datagrams, so a follower takes a burst of commands
# in one AppendEntries and keeps up without snapshots (the lab's intent).
BASIC_CONFIG = raft.Config(snapshot_every=SNAPSHOT_EVERY, max_sessions=24)


@pytest.fixture
def new_cluster(request):
    """SimCluster(...) whose failures say how to rerun this test."""
    def make(size, seed=0, faults=RELIABLE, config=None, founders=None):
        return SimCluster(size, seed, faults, config, founders=founders,
                          rerun=f"python -m pytest '{request.node.nodeid}'")
    return make


# -- helpers ---------------------------------------------------------------------------

def stable_leader(cluster):
    """The leader a majority of its own configuration's voters follows."""
    leader = cluster.leader()
    if leader is None:
        return None
    followers = [n for n in cluster.nodes.values() if n.id in leader.members
                 and n.current_term == leader.current_term and n.leader_id == leader.id]
    return leader if len(followers) > len(leader.members) // 2 else None


def caught_up(cluster, node_ids=None):
    """A stable leader, and every running node named (default: all) holds
    the leader's log up to its last entry and has applied all of it. Logs
    compacted at different points are compared by their ends."""
    leader = stable_leader(cluster)
    if leader is None:
        return False
    nodes = [cluster.nodes[n] for n in (node_ids or cluster.ids) if n in cluster.nodes]
    return all((n.log.last_index, n.log.last_term, n.last_applied)
               == (leader.log.last_index, leader.log.last_term, leader.log.last_index)
               for n in nodes)


def states(cluster, node_ids=None):
    return {n: cluster.nodes[n].machine.snapshot() for n in (node_ids or cluster.ids)
            if n in cluster.nodes}


def assert_same_state(cluster, node_ids=None):
    found = states(cluster, node_ids)
    assert len({repr(state) for state in found.values()}) == 1, \
        why(cluster, f"state machines differ: {found}")


def check_log_sizes(cluster, every):
    """Compaction keeps up: every running node has applied fewer than
    `every` entries since its snapshot (it snapshots in the cycle that
    reaches `every`), so its log holds that plus what it has not applied.
    The one exception is by design: a leader holds off compaction while a
    follower it hears from is being sent a snapshot or catching up from far
    behind (RaftNode.a_follower_still_needs_the_log), and only then."""
    for node in cluster.nodes.values():
        if node.a_follower_still_needs_the_log():
            continue
        assert node.last_applied - node.log.snapshot_index < every, \
            why(cluster, f"{node.id} applied {node.last_applied}, snapshot at "
                         f"{node.log.snapshot_index}: compaction fell behind")
        assert len(node.log.entries) <= MAX_LOG_ENTRIES, \
            why(cluster, f"{node.id} holds {len(node.log.entries)} log entries")


def last_index_on_disk(cluster, node_id):
    storage = cluster.storage[node_id]
    return storage.snapshot_index + len(storage.entries)


class SnapLab(Lab):
    """The lab's tester (test_scenarios.Lab) on compacted logs: a committed
    index may be gone from every log, so which command sits there is read
    from what the simulator saw applied (State Machine Safety makes that
    one command for every node)."""

    def n_committed(self, index):
        nodes = [n for n in self.cluster.nodes.values() if n.last_applied >= index]
        if not nodes:
            return 0, None
        entry = self.cluster.applied_entries.get(index)
        command = entry.command if entry is not None else None
        return len(nodes), command and command.get("client")

    def start_command(self, node_id, value, op=None):
        node = self.cluster.nodes.get(node_id)
        if node is None or node.role is not raft.Role.LEADER:
            return None
        client = self.client(value)
        self.cluster.propose(node_id, ("lab", client, node_id, self.cluster.now), client, 1,
                             op or ["set", "lab", str(value)])
        for index in range(node.log.last_index, node.log.snapshot_index, -1):
            command = node.log.entry(index).command
            if command is not None and command.get("client") == client:
                return index
        return None


class CounterClient:
    """A SimClient that, alongside the lab's commands, increments one key,
    one request every `pace` ticks (or when the last is answered, if later)
    for as long as `running`: its answers must come back 1, 2, 3, ...
    however the logs are compacted and snapshots installed (a lost or
    doubled increment shows). It runs inside cluster.tick, so the lab's own
    waiting loops drive it too. (Paced: under back-to-back writes a snapshot
    transfer never finishes; see the xfail story in Part 2.)"""

    def __init__(self, cluster, key="count", pace=10):
        self.client = SimClient(cluster, "counter")
        self.key, self.running, self.pace, self.next_at = key, True, pace, 0
        plain_tick = cluster.tick

        def tick(ticks=1):
            for _ in range(ticks):
                if self.running and not self.client.busy and cluster.now >= self.next_at:
                    self.next_at = cluster.now + self.pace
                    self.client.submit(["incr", self.key, 1])
                plain_tick()
                self.client.poll()
        cluster.tick = tick

    def finish(self, cluster, max_ticks=2000):
        self.running = False
        assert cluster.run_until(lambda: not self.client.busy, max_ticks), \
            why(cluster, "the counter client's last request was never answered")
        results = [result for _seq, _op, result in self.client.completed]
        assert results == list(range(1, len(results) + 1)), \
            f"increments answered {results}: one lost or applied twice"
        return len(results)


# ======================================================================================
# Part 1: the MIT 6.5840 lab's 3D tests (snapshots)
# ======================================================================================

def snapcommon(lab, seed, disconnect, crash, iterations=30):
    """The lab's snapcommon(): `iterations` rounds on three servers. Each
    round a victim (a follower; every third round the leader) is
    disconnected or crashed while a command commits on the other two; a
    sender (the leader, or in those rounds the next server) is handed 5-14
    commands at once, then one more command commits, so the others snapshot
    past what the victim has; the victim comes back (restarted from its
    disk, if crashed) and must catch up: by InstallSnapshot whenever its
    log ends before every other server's snapshot. Logs stay short all
    along. A counter client increments throughout (CounterClient)."""
    cluster = lab.cluster
    servers = len(cluster.ids)
    rng = random.Random(f"snapcommon-{seed}")
    counter = CounterClient(cluster)
    values = iter(range(1, 1_000_000))
    lab.one(next(values), servers)
    leader1 = lab.check_one_leader().id
    needed = 0
    for i in range(iterations):
        victim, sender = lab.after(leader1, 1), leader1
        if i % 3 == 1:
            victim, sender = leader1, lab.after(leader1, 1)
        if disconnect:
            lab.disconnect(victim)
            lab.one(next(values), servers - 1)
        if crash:
            lab.crash(victim, mid_cycle=rng.random() < 0.5)
            lab.one(next(values), servers - 1)
        for _ in range(SNAPSHOT_EVERY // 2 + rng.randrange(SNAPSHOT_EVERY)):
            lab.start_command(sender, next(values))
        lab.one(next(values), servers if not (disconnect or crash) else servers - 1)
        check_log_sizes(cluster, SNAPSHOT_EVERY)
        if disconnect or crash:
            victim_end = (cluster.nodes[victim].log.last_index if victim in cluster.nodes
                          else last_index_on_disk(cluster, victim))
            others = [cluster.nodes[n] for n in cluster.ids if n != victim]
            behind = victim_end < min(n.log.snapshot_index for n in others)
            installs = cluster.delivered[victim, "InstallSnapshot"]
            if crash:
                lab.start(victim)
            lab.connect(victim)
            lab.one(next(values), servers)
            if behind:
                needed += 1
                assert cluster.delivered[victim, "InstallSnapshot"] > installs, \
                    why(cluster, f"round {i}: {victim} ended at {victim_end}, before every "
                                 f"snapshot, yet caught up without InstallSnapshot")
            check_log_sizes(cluster, SNAPSHOT_EVERY)
            leader1 = lab.check_one_leader().id
    if disconnect or crash:
        assert needed >= iterations // 3, f"only {needed} rounds needed InstallSnapshot"
    count = counter.finish(cluster)
    assert cluster.run_until(lambda: caught_up(cluster), 10 * TICKS_PER_SECOND), \
        why(cluster, "the servers did not converge")
    assert_same_state(cluster)
    assert all(n.log.snapshot_index > 0 for n in cluster.nodes.values())
    assert count > 0 and data(stable_leader(cluster))["count"] == count
    return needed


def data(node):
    """A kv node's keys and values."""
    return node.machine.snapshot()["data"]


@pytest.fixture
def new_snap_lab(new_cluster):
    def make(seed=0, faults=RELIABLE, config=SNAPSHOT_CONFIG):
        return SnapLab(new_cluster(3, seed, faults, config))
    return make


def test_mit_3d_snapshot_basic(new_snap_lab):
    """TestSnapshotBasic3D: thirty rounds of 5-14 commands at once plus one
    that commits on all three servers: every log is compacted every ten
    applied entries, never grows past MAX_LOG_ENTRIES, and all servers end
    with one state. Followers keep up by AppendEntries: a snapshot is sent
    only when the leader compacts past a follower a round trip behind (it
    keeps no entries after its snapshot), a few times at most (seeds
    200-214: 0-2 per run)."""
    lab = new_snap_lab(seed=30, config=BASIC_CONFIG)
    snapcommon(lab, 30, disconnect=False, crash=False)
    snapshots_sent = sum(count for (_node, kind), count in lab.cluster.delivered.items()
                         if kind == "InstallSnapshot")
    assert snapshots_sent <= 3


def test_mit_3d_snapshot_install(new_snap_lab):
    """TestSnapshotInstall3D: the victim is disconnected while the others
    commit and compact; reconnected, it catches up by InstallSnapshot, in
    many 150-byte chunks (max_append_bytes=300)."""
    lab = new_snap_lab(seed=31)
    snapcommon(lab, 31, disconnect=True, crash=False)
    cluster = lab.cluster
    for node_id in cluster.ids:
        assert cluster.nodes[node_id].log.snapshot_index > 0
    chunks = sum(cluster.delivered[n, "InstallSnapshot"] for n in cluster.ids)
    assert chunks > 3 * 10, f"only {chunks} InstallSnapshot chunks delivered"


def test_mit_3d_snapshot_install_unreliable(new_snap_lab):
    """TestSnapshotInstallUnreliable3D: the same on the lab's unreliable
    network (sim.MIT_UNRELIABLE: 10% of messages lost, 10-30 ms of jitter),
    so InstallSnapshot chunks and their answers get lost and reordered."""
    lab = new_snap_lab(seed=32, faults=sim.MIT_UNRELIABLE)
    snapcommon(lab, 32, disconnect=True, crash=False)


def test_mit_3d_snapshot_install_crash(new_snap_lab):
    """TestSnapshotInstallCrash3D: the victim crashes (half the time in the
    middle of a sync) instead of being disconnected, and restarts from its
    own snapshot and log on disk before catching up by InstallSnapshot."""
    lab = new_snap_lab(seed=33)
    snapcommon(lab, 33, disconnect=False, crash=True)


def test_mit_3d_snapshot_install_uncrash(new_snap_lab):
    """TestSnapshotInstallUnCrash3D: crashes on the unreliable network."""
    lab = new_snap_lab(seed=34, faults=sim.MIT_UNRELIABLE)
    snapcommon(lab, 34, disconnect=False, crash=True)


def set_own_key(value):
    """The lab's command `value` as a write of a key of its own: the final
    state then shows whether any committed command was lost."""
    return ["set", f"v{value}", str(value)]


def crash_and_restart_all(lab):
    for node_id in lab.cluster.ids:
        lab.crash(node_id)
    for node_id in lab.cluster.ids:
        lab.start(node_id)
        node = lab.cluster.nodes[node_id]
        # A restarted server starts from its snapshot: state, sessions and
        # configuration as of its index, which is all it has applied.
        assert (node.last_applied, node.commit_index) == (node.log.snapshot_index,) * 2


def test_mit_3d_snapshot_all_crash(new_snap_lab):
    """TestSnapshotAllCrash3D: five times, 5-14 commands commit, all three
    servers crash and restart from their snapshots and logs; the next
    command must land after the last one committed (the index never goes
    back), and every command ever committed is still in the state."""
    lab = new_snap_lab(seed=35)
    rng = random.Random("all-crash")
    values = iter(range(1, 1_000_000))
    committed = []

    def one(servers=3):
        value = next(values)
        index = lab.one(value, servers, op=set_own_key(value))
        committed.append(value)
        return index

    one()
    for _ in range(5):
        for _ in range(SNAPSHOT_EVERY // 2 + rng.randrange(SNAPSHOT_EVERY)):
            one()
        index1 = one()
        check_log_sizes(lab.cluster, SNAPSHOT_EVERY)
        crash_and_restart_all(lab)
        index2 = one()
        assert index2 >= index1 + 1, f"index went from {index1} back to {index2}"
    cluster = lab.cluster
    assert cluster.run_until(lambda: caught_up(cluster), 1000), why(cluster, "no convergence")
    assert_same_state(cluster)
    state = data(stable_leader(cluster))
    assert all(state.get(f"v{value}") == str(value) for value in committed), \
        "a committed command is missing from the state"
    assert all(n.log.snapshot_index > 0 for n in cluster.nodes.values())


def test_mit_3d_snapshot_init(new_snap_lab):
    """TestSnapshotInit3D: eleven commands (a snapshot's worth), all three
    servers crash and restart from their snapshots; one command commits
    (written back to storage after the restart); all crash and restart
    again: the snapshot taken before the first crash must have survived the
    writes after it, and one more command commits, on the same state
    everywhere."""
    lab = new_snap_lab(seed=36)
    cluster = lab.cluster
    values = iter(range(1, 1_000_000))

    def one():
        value = next(values)
        lab.one(value, 3, op=set_own_key(value))
        return value

    one()
    for _ in range(SNAPSHOT_EVERY + 1):
        one()
    assert cluster.run_until(lambda: caught_up(cluster), 200)
    snapshots = {n: node.log.snapshot_index for n, node in cluster.nodes.items()}
    assert all(snapshots.values()), f"no snapshot after {SNAPSHOT_EVERY + 2} commands"
    before = states(cluster)
    crash_and_restart_all(lab)
    assert {n: node.log.snapshot_index for n, node in cluster.nodes.items()} == snapshots
    one()
    crash_and_restart_all(lab)
    for node_id, node in cluster.nodes.items():
        assert node.log.snapshot_index >= snapshots[node_id], f"{node_id} lost its snapshot"
    last = one()
    assert cluster.run_until(lambda: caught_up(cluster), 200)
    assert_same_state(cluster)
    state = data(stable_leader(cluster))
    assert all(state.get(key) == value for key, value in before["n1"]["data"].items())
    assert state[f"v{last}"] == str(last)


# ======================================================================================
# Part 2: stories of membership changes, transfer, pre-vote and check-quorum
# ======================================================================================

KEYS = ["x", "y", "z"]


def client_program(rng, count, keys=KEYS):
    """count requests that can only succeed: sets of numbers, increments
    and reads (so any error answer is a failure)."""
    program = []
    for _ in range(count):
        key, roll = rng.choice(keys), rng.random()
        if roll < 0.3:
            program.append(["get", key])
        elif roll < 0.7:
            program.append(["incr", key, rng.randint(1, 3)])
        else:
            program.append(["set", key, str(rng.randint(0, 99))])
    return program


class Clients:
    """Three SimClients working through programs of requests, one tick at
    a time (step()), whatever else the story does meanwhile."""

    def __init__(self, cluster, seed, count=40, keys=KEYS):
        rng = random.Random(f"clients-{seed}")
        self.cluster = cluster
        self.clients = [SimClient(cluster, name, first_node=i) for i, name in enumerate("abc")]
        self.programs = {c.id: client_program(rng, count, keys) for c in self.clients}

    def step(self):
        step_clients(self.cluster, self.clients, self.programs)

    @property
    def done(self):
        return not any(c.busy or self.programs[c.id] for c in self.clients)

    def finish(self, max_ticks=3000):
        for _ in range(max_ticks):
            if self.done:
                break
            self.step()
        assert self.done, why(self.cluster, f"clients still waiting: "
                                            f"{[c.op for c in self.clients if c.busy]}")

    def check(self):
        """Every request was answered, none with an error, and the history
        is linearizable."""
        records = [r for c in self.clients for r in c.history]
        assert all(r["ret"] is not None and r["error"] is None for r in records), \
            [r for r in records if r["ret"] is None or r["error"] is not None]
        verdict = linearizability.check(history_of(self.cluster, self.clients),
                                        machine=kv.KeyValueStore)
        assert verdict.ok, why(self.cluster, f"not linearizable:\n{verdict.explanation}")
        return len(records)


def wait(cluster, predicate, max_ticks, step=None, what="condition"):
    """Tick (or step the clients) until predicate holds, at most max_ticks."""
    for _ in range(max_ticks):
        if predicate():
            return cluster.now
        (step or cluster.tick)()
    assert predicate(), why(cluster, f"{what}: not within {max_ticks} ticks")
    return cluster.now


def ask_leader(cluster, call, name, step=None, max_ticks=2000):
    """An admin request as raft.RaftClient makes it: to whoever leads; a
    not_leader answer, or none within 100 ticks, and it goes again (to the
    leader of the moment). call(leader_id, request_id). The first answer
    that is not not_leader."""
    step = step or cluster.tick
    attempt, pending, sent_at = 0, None, 0
    for _ in range(max_ticks):
        if pending is not None and pending in cluster.answers:
            answer = cluster.answers.pop(pending)
            if answer.get("error") != "not_leader":
                return answer
            pending = None
        if pending is None or cluster.now - sent_at > 100:
            leader = stable_leader(cluster)
            if leader is not None:
                attempt += 1
                pending, sent_at = ("admin", name, attempt), cluster.now
                call(leader.id, pending)
        step()
    raise AssertionError(why(cluster, f"{name}: no answer within {max_ticks} ticks"))


def change(cluster, action, server, step=None, max_ticks=2000):
    answer = ask_leader(cluster, lambda leader, rid: cluster.change_membership(
        leader, rid, action, server), f"{action} {server}", step, max_ticks)
    assert answer.get("ok"), why(cluster, f"{action} {server}: {answer}")
    return answer


def test_grow_three_to_five_with_clients_running(new_cluster):
    """§4.1-4.2.1, one server at a time. Three founders of five serve
    clients; n4 and n5 start empty (like `raft.py --join`) and stand for
    nothing. Each is added as a learner first (§4.2.1: it catches up before
    its vote counts, so adding it cannot stall commits), then promoted to
    voter by the leader once a catch-up round is short. Afterwards two
    founders crash and the remaining three, two of them new, still elect
    and commit: the new servers' votes count. The clients' history stays
    linearizable throughout."""
    cluster = new_cluster(5, seed=40, founders=3)
    clients = Clients(cluster, 40, count=60)
    n4, n5 = cluster.nodes["n4"], cluster.nodes["n5"]
    assert n4.members == [] and n5.members == []
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, clients.step, "a leader")
    assert stable_leader(cluster).members == ["n1", "n2", "n3"]
    was_learner = set()

    def step():
        clients.step()
        leader = cluster.leader()
        if leader is not None:
            was_learner.update(leader.learners)
            assert set(leader.members) <= {"n1", "n2", "n3", *was_learner}, \
                "a server became a voter without being a learner first"

    for _ in range(30):
        step()
    assert [(n.current_term, n.log.last_index) for n in (n4, n5)] == [(0, 0), (0, 0)]
    change(cluster, "add", "n4", step)
    change(cluster, "add", "n5", step)
    assert was_learner == {"n4", "n5"}
    wait(cluster, lambda: all(n.members == cluster.ids and n.learners == []
                              for n in cluster.nodes.values()), 200, step,
         "every server knows the five voters")

    for node_id in ("n1", "n2"):
        if node_id in cluster.nodes:
            cluster.crash(node_id)
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, step,
         "n3, n4 and n5 elect a leader")
    clients.finish()
    for node_id in ("n1", "n2"):
        cluster.restart(node_id)
    wait(cluster, lambda: caught_up(cluster), 500, what="convergence")
    assert_same_state(cluster)
    assert clients.check() == 180


@pytest.mark.parametrize("load", [
    pytest.param(False, id="requests-paused-during-the-change"),
    pytest.param(True, id="under-load"),
])
def test_shrink_five_to_three_removing_the_leader(load, new_cluster):
    """§4.2.2: the leader is removed. It goes on leading (replicating and
    committing, without counting its own vote) until the configuration
    without it is committed; then it hands over (§3.10: no more writes, the
    most up-to-date voter brought up to date, TimeoutNow) and steps down,
    and that voter leads within a few ticks instead of an election timeout.
    A second removal leaves three voters. Every client request is answered;
    the history is linearizable. (With load, the clients keep sending while
    C_new commits, so the chosen voter usually lacks the last entry then.)"""
    cluster = new_cluster(5, seed=41)
    clients = Clients(cluster, 41, count=60)
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, clients.step, "a leader")
    for _ in range(30):
        clients.step()
    old = stable_leader(cluster)
    term = old.current_term
    cluster.change_membership(old.id, ("remove", old.id), "remove", old.id)
    config_index = old.configs[-1][0]
    assert old.id not in old.members and old.role is raft.Role.LEADER

    def committed():
        if old.commit_index < config_index:
            assert old.role is raft.Role.LEADER, why(cluster, "stepped down too early")
            return False
        return True

    during_change = clients.step if load else cluster.tick
    committed_at = wait(cluster, committed, 100, during_change, "C_new commits")
    assert cluster.answers.pop(("remove", old.id)) == {"ok": True, "result": None}
    new_leader_at = wait(cluster, lambda: stable_leader(cluster) not in (None, old),
                         ELECTION_HIGH * 3, during_change, "a new leader")
    new = stable_leader(cluster)
    assert old.role is raft.Role.FOLLOWER
    timeout_now = cluster.delivered[new.id, "TimeoutNow"]

    follower = next(n for n in new.members if n != new.id)
    change(cluster, "remove", follower, clients.step)
    clients.finish()
    remaining = [n for n in cluster.ids if n not in (old.id, follower)]
    wait(cluster, lambda: caught_up(cluster, remaining), 500, what="convergence")
    assert all(cluster.nodes[n].members == remaining for n in remaining)
    assert_same_state(cluster, remaining)
    assert clients.check() == 180
    assert old.current_term == term     # the removed leader stands for nothing

    # The handover: TimeoutNow, one election, a leader within a few ticks.
    assert (timeout_now, new.current_term) == (1, term + 1), \
        why(cluster, f"{timeout_now} TimeoutNow delivered; new term {new.current_term}")
    assert new_leader_at - committed_at <= 3 * HEARTBEAT_TICKS, \
        f"a new leader {new_leader_at - committed_at} ticks after C_new committed"


def watch_vote_requests(cluster, sender):
    """Counts of the RequestVotes (pre-votes apart) sender gets delivered."""
    counts = {"pre-vote": 0, "vote": 0}

    def observe(_destination, message):
        if isinstance(message, raft.RequestVote) and message.candidate_id == sender:
            counts["pre-vote" if message.pre_vote else "vote"] += 1

    cluster.observers.append(observe)
    return counts


@pytest.mark.parametrize("pre_vote, check_quorum, disrupts", [
    pytest.param(True, True, False, id="pre-vote-and-lease"),
    pytest.param(False, True, False, id="lease-alone"),
    pytest.param(False, False, True, id="neither-the-term-jumps"),
])
def test_a_removed_server_that_keeps_running_never_raises_the_term(
        pre_vote, check_quorum, disrupts, new_cluster):
    """§4.2.3, disruptive servers. A follower is removed; the leader stops
    sending to it the moment C_new is in its own log, so the removed server
    never learns of its removal: it times out again and again and asks the
    servers of its old configuration for votes. With pre-vote (§9.6) it
    never even raises its own term; with the lease alone (check_quorum: a
    server that hears a leader ignores vote requests) its term climbs but
    the cluster's does not. Over 2000 ticks of light client load the leader
    and term never change. With neither, the contrast that motivates them:
    its higher term deposes the working leader again and again."""
    config = raft.Config(pre_vote=pre_vote, check_quorum=check_quorum)
    cluster = new_cluster(5, seed=42, config=config)
    clients = Clients(cluster, 42, count=100)
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, clients.step, "a leader")
    leader = stable_leader(cluster)
    removed = next(n for n in cluster.ids if n != leader.id)
    change(cluster, "remove", removed, clients.step)
    assert removed in cluster.nodes[removed].members        # it does not know
    term = leader.current_term
    requests = watch_vote_requests(cluster, removed)
    members = [n for n in cluster.ids if n != removed]
    highest = term
    for tick in range(2000):
        if tick % 10 == 0:
            clients.step()
        else:
            cluster.tick()
            for client in clients.clients:
                client.poll()
        highest = max(highest, *(cluster.nodes[n].current_term for n in members))
        if not disrupts:
            assert stable_leader(cluster) is leader and leader.current_term == term, \
                why(cluster, f"the removed {removed} disrupted the cluster")
    asked = requests["pre-vote"] + requests["vote"]
    assert asked > 20, f"the removed server asked for votes only {asked} times"
    if disrupts:
        assert highest > term + 10, f"the term only went from {term} to {highest}"
        return
    assert requests["vote" if pre_vote else "pre-vote"] == 0
    assert cluster.nodes[removed].current_term == term if pre_vote else \
        cluster.nodes[removed].current_term > term + 10
    clients.finish()
    assert clients.check() == 300


@pytest.mark.parametrize("pre_vote, check_quorum, disrupts", [
    pytest.param(True, True, False, id="with-pre-vote-and-check-quorum"),
    pytest.param(False, False, True, id="without-them-the-term-jumps"),
])
def test_a_node_partitioned_for_long_rejoins_without_deposing_the_leader(
        pre_vote, check_quorum, disrupts, new_cluster):
    """§9.6, pre-vote. A follower is cut off for 1000 ticks (ten seconds)
    while clients write. It keeps timing out; with pre-vote it asks "would
    you vote for me?" and, getting no majority, never raises its term. Healed,
    it simply follows the leader again: same leader, same term. Without
    pre-vote (nor check-quorum) it comes back with a term some forty
    elections higher, which deposes the leader [ALL-2]; it cannot win (its
    log lacks what was committed meanwhile), but the cluster's term jumps and
    it goes through a needless election."""
    config = raft.Config(pre_vote=pre_vote, check_quorum=check_quorum)
    cluster = new_cluster(5, seed=43, config=config)
    clients = Clients(cluster, 43, count=150)
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, clients.step, "a leader")
    leader = stable_leader(cluster)
    term = leader.current_term
    lonely = next(n for n in cluster.ids if n != leader.id)
    cluster.isolate(lonely)
    for _ in range(1000):
        clients.step()
    isolated_term = cluster.nodes[lonely].current_term
    cluster.heal()
    deposed = False
    for _ in range(300):
        clients.step()
        deposed = deposed or leader.role is not raft.Role.LEADER
    if disrupts:
        assert isolated_term > term + 20 and deposed
        assert max(n.current_term for n in cluster.nodes.values()) > term + 20
        return
    assert isolated_term == term and not deposed
    assert stable_leader(cluster) is leader and leader.current_term == term
    clients.finish()
    wait(cluster, lambda: caught_up(cluster), 300, what="the healed node catches up")
    assert all(n.current_term == term for n in cluster.nodes.values())
    assert_same_state(cluster)
    clients.check()


def isolate_the_leader(new_cluster, seed):
    """A five-node cluster whose leader is cut off at a random moment of
    its heartbeat cycle. (leader, tick it stepped down, tick the majority
    had a new leader), both counted from the cut."""
    cluster = new_cluster(5, seed=seed)
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, what="a leader")
    cluster.tick(random.Random(f"isolate-{seed}").randrange(2 * ELECTION_HIGH))
    old = stable_leader(cluster)
    cluster.isolate(old.id)
    cut = cluster.now
    stepped_down = new_leader = None
    for _ in range(4 * ELECTION_HIGH):
        cluster.tick()
        if stepped_down is None and old.role is not raft.Role.LEADER:
            stepped_down = cluster.now - cut
        if new_leader is None and any(n.role is raft.Role.LEADER for n in
                                      cluster.nodes.values() if n is not old):
            new_leader = cluster.now - cut
    assert stepped_down is not None and new_leader is not None, \
        why(cluster, f"{old.id} stepped down after {stepped_down}, new leader {new_leader}")
    return cluster, old, stepped_down, new_leader


CHECK_QUORUM_SEEDS = range(10)


def test_check_quorum_an_isolated_leader_steps_down_and_the_majority_elects(new_cluster):
    """§6.2 (check-quorum): a leader cut off from the majority steps down by
    itself, so its clients go and find the new leader rather than wait on
    one that can commit nothing; meanwhile the majority elects a new leader
    within about an election timeout. A pending request at the old leader
    is answered not_leader when it steps down. Ten cuts at random moments.
    (The bound here is two election timeouts: see the next test.)"""
    for seed in CHECK_QUORUM_SEEDS:
        cluster, old, stepped_down, new_leader = isolate_the_leader(new_cluster, 50 + seed)
        assert stepped_down <= 2 * ELECTION_HIGH + HEARTBEAT_TICKS, (seed, stepped_down)
        assert new_leader <= 2 * ELECTION_HIGH, (seed, new_leader)
        assert old.role is raft.Role.FOLLOWER and old.leader_id is None
    cluster = new_cluster(5, seed=60)
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, what="a leader")
    old = stable_leader(cluster)
    cluster.isolate(old.id)
    cluster.propose(old.id, "stranded", "s", 1, ["set", "x", "1"])
    wait(cluster, lambda: "stranded" in cluster.answers, 3 * ELECTION_HIGH,
         what="the stranded request is answered")
    assert cluster.answers["stranded"]["error"] == "not_leader"


def test_check_quorum_steps_down_within_one_election_timeout_of_the_last_heartbeat_round(
        new_cluster):
    """§6.2, exactly: the isolated leader's last successful round of
    heartbeats is at most a heartbeat interval before the cut, so it must
    step down within election_timeout_ticks[1] + a heartbeat of the cut."""
    worst = max(isolate_the_leader(new_cluster, 50 + seed)[2] for seed in CHECK_QUORUM_SEEDS)
    assert worst <= ELECTION_HIGH + HEARTBEAT_TICKS, f"stepped down {worst} ticks after the cut"


def test_transfer_leadership_to_a_chosen_follower_under_load(new_cluster):
    """§3.10, leadership transfer. Under client load the leader is asked to
    hand over to a chosen follower: it stops taking writes (clients are
    told not_leader and retry), brings the target's log up to date, and
    sends it TimeoutNow; the target stands at once and wins (its
    RequestVote says `transfer`, so the lease does not hold it off). The
    target leads within a few heartbeats, no election timeout is waited
    out, and no client request fails. Three transfers in a row, each to
    another server."""
    cluster = new_cluster(5, seed=44)
    clients = Clients(cluster, 44, count=80)
    wait(cluster, lambda: stable_leader(cluster) is not None, 500, clients.step, "a leader")
    targets = []
    for round_number in range(3):
        for _ in range(20):
            clients.step()
        leader = stable_leader(cluster)
        target = [n for n in cluster.ids if n != leader.id][round_number]
        term = leader.current_term
        rid = ("transfer", round_number)
        cluster.transfer_leadership(leader.id, rid, target)
        started = cluster.now
        wait(cluster, lambda: stable_leader(cluster) is cluster.nodes[target],
             4 * HEARTBEAT_TICKS, clients.step, f"{target} leads")
        assert cluster.answers.pop(rid) == {"ok": True, "result": target}
        assert cluster.nodes[target].current_term == term + 1
        assert cluster.now - started <= 4 * HEARTBEAT_TICKS
        targets.append(target)
    assert len(set(targets)) == 3
    clients.finish()
    wait(cluster, lambda: caught_up(cluster), 300, what="convergence")
    assert_same_state(cluster)
    assert clients.check() == 240


def write_program(rng, count, keys):
    """Writes of 30-character values (they make the snapshot big) and reads."""
    return [["get", rng.choice(keys)] if rng.random() < 0.2 else
            ["set", rng.choice(keys), f"{rng.randrange(10**6):06d}" * 5]
            for _ in range(count)]


def test_a_joining_server_far_behind_gets_a_snapshot_as_a_learner_then_votes(new_cluster):
    """§4.2.1 with chapter 5. Three founders serve 150 writes over 60 keys,
    compacting every 5 entries, so no log holds more than a few entries. n4
    starts empty and is added: as a learner (no vote yet), it needs entries
    the leader no longer has, so the leader sends its snapshot, in many
    InstallSnapshot chunks of 150 bytes (max_append_bytes=300), then the
    entries after it; caught up, n4 is promoted to voter. Then the clients
    write on, and n4's state is the others'."""
    config = raft.Config(snapshot_every=5, max_append_bytes=300)
    cluster = new_cluster(4, seed=45, config=config, founders=3)
    keys = [f"k{i}" for i in range(60)]
    clients = Clients(cluster, 45)
    rng = random.Random("joiner")
    clients.programs = {c.id: write_program(rng, 50, keys) for c in clients.clients}
    clients.finish()
    leader = stable_leader(cluster)
    assert leader.log.snapshot_index > 90 and len(leader.log.entries) < 30
    n4 = cluster.nodes["n4"]
    assert (n4.current_term, n4.log.last_index, n4.members) == (0, 0, [])
    roles = []

    def step():
        cluster.tick()
        leader = cluster.leader()
        if leader is not None:
            roles.append("learner" if "n4" in leader.learners else
                         "voter" if "n4" in leader.members else "out")

    change(cluster, "add", "n4", step)
    chunks = cluster.delivered["n4", "InstallSnapshot"]
    assert chunks > 10, f"{chunks} InstallSnapshot chunks"
    assert n4.log.snapshot_index > 90
    assert roles[0] == "learner" and roles[-1] == "voter"
    assert roles.count("learner") > chunks, "n4 got a vote before it had the snapshot"
    clients.programs = {c.id: write_program(rng, 10, keys) for c in clients.clients}
    clients.finish()
    wait(cluster, lambda: caught_up(cluster), 300, what="convergence")
    assert all(n.members == cluster.ids for n in cluster.nodes.values())
    assert_same_state(cluster)
    clients.check()


@pytest.mark.parametrize("load", [
    pytest.param(False, id="writes-pause"),
    # Once a liveness bug: a new snapshot restarted the transfer under way,
    # so under steady writes the follower never caught up (seed 46: 1703
    # chunks, nothing installed). The leader now holds off compaction while
    # a follower it hears from is being sent a snapshot or catching up.
    pytest.param(True, id="writes-go-on"),
])
def test_a_follower_needing_a_snapshot_catches_up(load, new_cluster):
    """Chapter 5 (§5.1, InstallSnapshot), liveness. A follower is cut off
    while the others commit and compact, then comes back needing the
    snapshot (over 5 kB, in 150-byte chunks: some forty round trips). With the writes
    paused it installs it and catches up; with one client writing on, back
    to back, it must catch up all the same."""
    config = raft.Config(snapshot_every=SNAPSHOT_EVERY, max_append_bytes=300)
    cluster = new_cluster(3, seed=46, config=config)
    writer = SimClient(cluster, "w")
    rng = random.Random("writer")
    keys = [f"k{i}" for i in range(200)]

    def step(write=True):
        if write and not writer.busy:
            writer.submit(write_program(rng, 1, keys)[0])
        cluster.tick()
        writer.poll()

    wait(cluster, lambda: stable_leader(cluster) is not None, 500, what="a leader")
    leader = stable_leader(cluster)
    follower = next(n for n in cluster.ids if n != leader.id)
    cluster.isolate(follower)
    for _ in range(800):
        step()
    assert len(leader.snapshot_text) > 5000
    cluster.heal()
    node = cluster.nodes[follower]
    wait(cluster, lambda: (node.log.snapshot_index > 0
                           and node.last_applied >= leader.commit_index - SNAPSHOT_EVERY),
         3000, lambda: step(load), f"{follower} catches up")
    assert cluster.delivered[follower, "InstallSnapshot"] > 30


SCHEDULE_SEEDS = range(30)
SCHEDULE_TICKS = 600


def members_of_leader(cluster):
    """The servers of the stable leader's configuration, voters and learners."""
    leader = stable_leader(cluster)
    return leader.members + leader.learners if leader is not None else cluster.ids


def reconfigure(cluster, rng):
    """One random event of the schedule: add or remove a server (asked of
    the leader), crash or restart one, or make one take a snapshot."""
    leader = cluster.leader()
    up = [n for n in cluster.ids if n not in cluster.down]
    roll = rng.random()
    if roll < 0.45 and leader is not None:
        server = rng.choice(cluster.ids)
        voters = leader.members
        action = ("remove" if server in voters and len(voters) > 1 and rng.random() < 0.5
                  else "add")
        cluster.change_membership(leader.id, ("admin", cluster.now), action, server)
    elif roll < 0.65 and len(cluster.down) < 2:
        cluster.crash(rng.choice(up), mid_cycle=rng.random() < 0.5)
    elif roll < 0.85 and cluster.down:
        cluster.restart(rng.choice(sorted(cluster.down)))
    elif up:
        cluster.take_snapshot(rng.choice(up))


@pytest.mark.parametrize("seed", SCHEDULE_SEEDS)
def test_membership_changes_snapshots_and_crashes_at_random(seed, new_cluster):
    """Chapters 4 and 5 together. Five servers, three founders; logs
    compact every 3 entries (some seeds in 150-byte chunks); every 20-60
    ticks a server is added or removed, crashes (half the time in the
    middle of a sync) or restarts, or takes a snapshot, on a network that
    loses 5% of messages, while two clients write and read. The simulator
    checks the safety properties after every delivered message; at the
    end everyone restarts, the clients finish, the servers of the last
    configuration converge on one state, and the history is linearizable."""
    rng = random.Random(f"reconfigure-{seed}")
    config = raft.Config(snapshot_every=3, max_append_bytes=rng.choice([300, 16000]))
    cluster = new_cluster(5, seed, Faults(drop=0.05, delay=(1, 3)), config, founders=3)
    clients = Clients(cluster, seed, count=1000)
    clients.clients = clients.clients[:2]
    for client in clients.clients:
        client.give_up_ticks = 300         # a client cut off gives up: outcome unknown
    next_event = 50
    while cluster.now < SCHEDULE_TICKS:
        if cluster.now >= next_event:
            reconfigure(cluster, rng)
            next_event = cluster.now + rng.randint(20, 60)
        clients.step()
    for node_id in sorted(cluster.down):
        cluster.restart(node_id)
    for client in clients.clients:
        client.give_up_ticks = None
        clients.programs[client.id] = clients.programs[client.id][:3]
    clients.finish(2000)
    wait(cluster, lambda: caught_up(cluster, members_of_leader(cluster)), 1000,
         what="the last configuration converges")
    members = members_of_leader(cluster)
    assert_same_state(cluster, members)
    assert all(cluster.nodes[n].log.snapshot_index > 0 for n in members)
    operations = history_of(cluster, clients.clients)
    assert len(operations) > 20
    verdict = linearizability.check(operations, machine=kv.KeyValueStore)
    assert verdict.ok, why(cluster, f"not linearizable:\n{verdict.explanation}")
