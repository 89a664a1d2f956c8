"""Seeded simulated clusters on the real core (tests/sim.py).

The network drops, duplicates and delays messages by 1-8 ticks, so they also
arrive out of order. sim.py checks the safety properties of the paper's
Figure 3 after every cycle of every node; these tests add liveness (a leader
emerges, clients finish, nodes converge) and end-to-end client guarantees
(every acknowledged increment counted exactly once, reads linearizable).

Every failure names its seed and the command that reruns exactly that case.
"""

import dataclasses
import random

import pytest

import raft
import sim
from sim import Faults, SimClient, SimCluster

LOSSY = Faults(drop=0.1, duplicate=0.05, delay=(1, 8))
MAX_ELECTION_TICKS = raft.Config().election_timeout_ticks[1]


@pytest.fixture
def make_cluster(request):
    """SimCluster(size, seed, ...) whose failures say how to rerun this test."""
    def make(seed, size=3, faults=LOSSY, config=None):
        return SimCluster(size, seed, faults, config,
                          rerun=f"python -m pytest '{request.node.nodeid}'")
    return make


def why(cluster, what):
    """The failure text of a liveness or end-to-end check."""
    return (f"{what} (seed {cluster.seed}, tick {cluster.now}); rerun: {cluster.rerun_hint()}\n"
            + "\n".join(f"  {n.id}: {n.describe()} leader={n.leader_id} commit={n.commit_index}"
                        f" applied={n.last_applied} last={n.log.last_index}"
                        for n in cluster.nodes.values()))


def stable_leader(cluster):
    """The leader that a majority of all members follows in its term, if any."""
    leader = cluster.leader()
    if leader is None:
        return None
    followers = [n for n in cluster.nodes.values()
                 if n.current_term == leader.current_term and n.leader_id == leader.id]
    return leader if len(followers) > len(cluster.ids) // 2 else None


def converged(cluster):
    """All running nodes hold the same log, and have applied all of it."""
    nodes = list(cluster.nodes.values())
    leader = stable_leader(cluster)
    return (leader is not None
            and all(n.log.entries == leader.log.entries for n in nodes)
            and all(n.last_applied == leader.log.last_index for n in nodes))


def wait_for_leader(cluster, max_ticks, replacing=None):
    """A stable leader; with replacing, one other than that node."""
    def found():
        leader = stable_leader(cluster)
        return leader is not None and leader is not replacing
    assert cluster.run_until(found, max_ticks), \
        why(cluster, f"no stable leader within {max_ticks} ticks")
    return stable_leader(cluster)


def step_clients(cluster, clients, programs):
    """One tick in which each idle client submits the next op of its program."""
    for client in clients:
        if not client.busy and programs[client.id]:
            client.submit(programs[client.id].pop(0))
    cluster.tick()
    for client in clients:
        client.poll()


def run_clients(cluster, clients, programs, max_ticks):
    """Each client works through its program, one request at a time."""
    for _ in range(max_ticks):
        if not any(client.busy or programs[client.id] for client in clients):
            return
        step_clients(cluster, clients, programs)
    raise AssertionError(why(cluster, "clients did not finish in "
                                      f"{max_ticks} ticks: {[c.op for c in clients]}"))


# -- (a) elections ------------------------------------------------------------------

ELECTION_SEEDS = range(40)


@pytest.mark.parametrize("seed", ELECTION_SEEDS)
def test_a_leader_emerges_within_a_few_election_timeouts(seed, make_cluster):
    cluster = make_cluster(seed)
    wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)


@pytest.mark.parametrize("seed", ELECTION_SEEDS)
def test_a_new_leader_is_elected_after_the_leader_crashes(seed, make_cluster):
    cluster = make_cluster(seed)
    old = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    cluster.crash(old.id)

    new = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)

    assert new.id != old.id and new.current_term > old.current_term
    cluster.restart(old.id)
    assert cluster.run_until(lambda: converged(cluster), 20 * MAX_ELECTION_TICKS), \
        why(cluster, "no convergence after the old leader restarted")


@pytest.mark.parametrize("seed", ELECTION_SEEDS)
def test_on_a_reliable_network_a_new_leader_within_five_election_timeouts(seed, make_cluster):
    """CONTRACT.md: after the leader fails, a new leader answers within
    5 x the maximum election timeout while a majority is up and can talk."""
    cluster = make_cluster(seed, size=3 + 2 * (seed % 2), faults=Faults(delay=(1, 3)))
    old = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    cluster.crash(old.id)
    crashed_at = cluster.now

    new = wait_for_leader(cluster, 5 * MAX_ELECTION_TICKS)

    assert new.id != old.id and cluster.now - crashed_at <= 5 * MAX_ELECTION_TICKS


@pytest.mark.parametrize("seed", ELECTION_SEEDS)
def test_a_new_leader_is_elected_when_the_leader_is_partitioned_away(seed, make_cluster):
    cluster = make_cluster(seed)
    old = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    others = [n for n in cluster.ids if n != old.id]
    cluster.partition([old.id], others)

    new = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS, replacing=old)

    assert new.id != old.id and new.current_term > old.current_term


# -- (b) agreement under crashes, restarts and partitions --------------------------------

AGREEMENT_SEEDS = range(200)
CHAOS_TICKS = 300


def program(client_id, rounds):
    """incr own key, incr the shared key, set own key, read own key; repeat."""
    ops = []
    for n in range(rounds):
        ops += [["incr", f"k-{client_id}", 1], ["incr", "total", 1],
                ["set", f"s-{client_id}", f"v{n}"], ["get", f"k-{client_id}"]]
    return ops


def chaos(cluster, rng):
    """One tick's worth of faults: crash (half the time in mid-cycle, losing
    some unsynced writes), restart, partition, heal. At most a minority is
    down at once."""
    roll = rng.random()
    up = [n for n in cluster.ids if n not in cluster.down]
    if roll < 0.015 and len(cluster.down) < len(cluster.ids) // 2:
        cluster.crash(rng.choice(up), mid_cycle=rng.random() < 0.5)
    elif roll < 0.03 and cluster.down:
        cluster.restart(rng.choice(sorted(cluster.down)))
    elif roll < 0.04:
        cluster.random_split(rng)
    elif roll < 0.055:
        cluster.heal()


@pytest.mark.parametrize("seed", AGREEMENT_SEEDS)
def test_clients_agree_through_crashes_and_partitions(seed, make_cluster):
    size = 5 if seed % 5 == 4 else 3
    cluster = make_cluster(seed, size)
    rng = random.Random(f"chaos-{seed}")
    names = ["a", "b", "c"]
    clients = [SimClient(cluster, name, first_node=i) for i, name in enumerate(names)]
    programs = {name: program(name, 4) for name in names}

    # Chaos: clients work while nodes crash and restart and the network splits.
    for _ in range(CHAOS_TICKS):
        chaos(cluster, rng)
        step_clients(cluster, clients, programs)
    # Then calm: everything restarts, the network heals, every client finishes.
    cluster.heal()
    for node_id in sorted(cluster.down):
        cluster.restart(node_id)
    run_clients(cluster, clients, programs, 3000)
    assert cluster.run_until(lambda: converged(cluster), 1000), \
        why(cluster, "nodes did not converge after healing")

    states = {n.id: n.machine.data for n in cluster.nodes.values()}
    assert all(state == states["n1"] for state in states.values()), \
        why(cluster, f"state machines differ: {states}")
    state = states["n1"]
    increments_of_total = []
    for client in clients:
        own = f"k-{client.id}"
        assert [op for _seq, op, _result in client.completed] == program(client.id, 4), \
            why(cluster, f"client {client.id} did not complete its program in order")
        # Each acknowledged increment counted exactly once, and a retry got
        # the first answer back: the own key's increments return 1, 2, 3...
        own_results = [r for _s, op, r in client.completed if op[0] == "incr" and op[1] == own]
        assert own_results == list(range(1, len(own_results) + 1)), why(
            cluster, f"client {client.id}: increments of {own} answered {own_results}")
        assert state[own] == len(own_results), why(
            cluster, f"{own} = {state[own]} after {len(own_results)} acknowledged increments")
        # Linearizable reads: only this client writes its key, one request at a
        # time, so every read returns exactly the increments acknowledged so far.
        acknowledged = 0
        for _seq, op, result in client.completed:
            if op[0] == "incr" and op[1] == own:
                acknowledged += 1
            elif op[0] == "get":
                assert result == acknowledged, why(
                    cluster, f"client {client.id} read {own} = {result} after "
                             f"{acknowledged} acknowledged increments")
        sets = [op[2] for _s, op, _r in client.completed if op[0] == "set"]
        assert state[f"s-{client.id}"] == sets[-1]
        increments_of_total += [r for _s, op, r in client.completed if op[1] == "total"]
    # The shared counter: every increment applied once, each answer distinct.
    assert sorted(increments_of_total) == list(range(1, len(increments_of_total) + 1)), \
        why(cluster, f"increments of total answered {sorted(increments_of_total)}")
    assert state["total"] == len(increments_of_total)


# -- (c) a partitioned old leader steps down, its uncommitted entries replaced ------------

@pytest.mark.parametrize("seed", range(10))
def test_a_partitioned_old_leader_steps_down_and_its_uncommitted_entries_are_replaced(
        seed, make_cluster):
    cluster = make_cluster(seed, size=5)
    old = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    writer = SimClient(cluster, "w", first_node=cluster.ids.index(old.id))
    run_clients(cluster, [writer], {"w": [["set", "x", "before"]]}, 500)
    committed = old.commit_index
    majority = [n for n in cluster.ids if n != old.id]
    cluster.partition([old.id], majority)

    # The old leader, cut off, still takes commands: it cannot commit them.
    for seq in range(1, 6):
        cluster.propose(old.id, ("stale", seq), "stale-client", seq, ["set", "x", f"stale{seq}"])
    stale_term = old.current_term
    stale = {i: old.log.entry(i) for i in range(committed + 1, old.log.last_index + 1)}
    assert len(stale) >= 5
    # The majority elects a leader of a later term, which commits other writes.
    new = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS, replacing=old)
    assert new.id != old.id and new.current_term > stale_term
    others = SimClient(cluster, "o", first_node=cluster.ids.index(new.id))
    run_clients(cluster, [others], {"o": [["set", "x", f"new{i}"] for i in range(8)]}, 1000)
    # Check-quorum: hearing no majority for an election timeout, the old
    # leader steps down on its own, in its own term (pre-vote keeps it from
    # raising it), having committed nothing more.
    assert cluster.run_until(lambda: old.role is raft.Role.FOLLOWER, 3 * MAX_ELECTION_TICKS), \
        why(cluster, "the cut-off leader did not step down")
    assert old.current_term == stale_term and old.commit_index == committed

    cluster.heal()
    assert cluster.run_until(lambda: converged(cluster), 1000), \
        why(cluster, "no convergence after heal")

    assert old.role is raft.Role.FOLLOWER and old.current_term >= new.current_term
    for index, entry in stale.items():
        assert old.log.term_at(index) is None or old.log.entry(index) != entry, \
            why(cluster, f"uncommitted index {index} of term {stale_term} survived")
    assert all(e.term != stale_term or i <= committed
               for i, e in enumerate(old.log.entries, 1))
    # Clients of the deposed leader were told to retry elsewhere, never "ok".
    answers = [cluster.answers.get(("stale", seq)) for seq in range(1, 6)]
    assert all(a is not None and a["error"] == "not_leader" for a in answers), answers
    assert old.machine.data["x"] == "new7"


# -- (d) a far-behind follower catches up in a few round trips -----------------------------

def count_append_entries(cluster, follower):
    """Count AppendEntries delivered to follower, and its refusals."""
    counts = {"append_entries": 0, "refusals": 0}

    def observe(destination, message):
        if destination == follower and isinstance(message, raft.AppendEntries):
            counts["append_entries"] += 1
        if (isinstance(message, raft.AppendEntriesReply) and message.follower_id == follower
                and not message.success):
            counts["refusals"] += 1

    cluster.observers.append(observe)
    return counts


def propose_many(cluster, leader_id, client_id, count):
    for seq in range(1, count + 1):
        cluster.propose(leader_id, (client_id, seq), client_id, seq, ["incr", "n", 1])
        if seq % 50 == 0:
            cluster.tick()


GAP = 500


@pytest.mark.parametrize("how", ["same leader", "new leader", "conflicting suffix"])
def test_a_follower_far_behind_catches_up_in_few_round_trips(how, request):
    """[§5.3-HINT] plus batching: a follower 500 entries behind costs a few
    round trips, not 500.
      same leader         the leader's next_index for it never moved: batches only
      new leader          next_index starts at the new leader's end; the refusal's
                          conflict_index sends it straight back to the follower's end
      conflicting suffix  the follower is a deposed leader holding 500 entries of
                          its own term; the conflict_term hint skips them in one go
    """
    cluster = SimCluster(3, seed=7, faults=Faults(delay=(1, 1)),
                         rerun=f"python -m pytest '{request.node.nodeid}'")
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    if how == "conflicting suffix":
        behind = leader.id
        cluster.partition([behind], [n for n in cluster.ids if n != behind])
        propose_many(cluster, behind, "lost", GAP)   # never committed
        leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS, replacing=leader)
    else:
        behind = next(n for n in cluster.ids if n != leader.id)
        cluster.partition([behind], [n for n in cluster.ids if n != behind])
    propose_many(cluster, leader.id, "writer", GAP)
    assert cluster.run_until(lambda: leader.commit_index >= GAP, 500), why(cluster, "no commit")
    if how != "same leader":
        cluster.crash(leader.id)                    # a fresh leader knows nothing
        cluster.restart(leader.id)                  # about the lagging follower
        leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
        assert leader.next_index[behind] >= leader.log.last_index   # (its no-op)
    far = cluster.nodes[behind]
    assert leader.log.last_index - far.commit_index > GAP
    counts = count_append_entries(cluster, behind)

    cluster.heal()
    assert cluster.run_until(lambda: far.log.entries == leader.log.entries
                             and far.commit_index == leader.commit_index, 200), \
        why(cluster, "the follower did not catch up")

    # About 220 of these entries fit one AppendEntries (max_append_bytes).
    assert counts["refusals"] <= {"same leader": 0, "new leader": 1,
                                  "conflicting suffix": 2}[how], counts
    assert counts["append_entries"] <= 10, counts


# -- (e) five nodes tolerate two crashed nodes ------------------------------------------------

@pytest.mark.parametrize("seed", range(10))
def test_five_nodes_keep_working_with_two_crashed(seed, make_cluster):
    cluster = make_cluster(seed, size=5)
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    # Crash the leader and one follower on even seeds, two followers on odd ones.
    followers = [n for n in cluster.ids if n != leader.id]
    crashed = [leader.id, followers[0]] if seed % 2 == 0 else followers[:2]
    for node_id in crashed:
        cluster.crash(node_id)

    client = SimClient(cluster, "c")
    ops = [["incr", "k", 1] for _ in range(10)]
    run_clients(cluster, [client], {"c": list(ops)}, 2000)
    assert [r for _s, _op, r in client.completed] == list(range(1, 11))

    for node_id in crashed:
        cluster.restart(node_id)
    assert cluster.run_until(lambda: converged(cluster), 1000), why(cluster, "no convergence")
    assert all(n.machine.data == {"k": 10} for n in cluster.nodes.values())


def test_five_nodes_with_three_crashed_commit_nothing(make_cluster):
    cluster = make_cluster(0, size=5)
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    assert cluster.run_until(lambda: leader.commit_index == leader.log.last_index, 100)
    followers = [n for n in cluster.ids if n != leader.id]
    for node_id in followers[:3]:
        cluster.crash(node_id)
    committed = leader.commit_index

    term = leader.current_term
    cluster.propose(leader.id, "r", "c", 1, ["incr", "k", 1])
    cluster.tick(20 * MAX_ELECTION_TICKS)

    assert max(n.commit_index for n in cluster.nodes.values()) == committed
    # Check-quorum: the leader, hearing no majority, stepped down in its term
    # (the two left cannot win a pre-vote) and told the client to retry.
    assert (leader.role, leader.current_term) == (raft.Role.FOLLOWER, term)
    assert cluster.answers["r"]["error"] == "not_leader", cluster.answers["r"]


# -- the checker has teeth: break a rule, and it is caught ---------------------------------------

def test_the_checker_catches_a_message_sent_before_its_state_is_synced(monkeypatch):
    def send_then_sync(node, send, deliver):
        for destination, message in node.collect_messages():
            send(destination, message)
        node.storage.sync()
        node.apply_committed()
        for request_id, answer in node.collect_answers():
            deliver(request_id, answer)

    monkeypatch.setattr(raft, "persist_send_apply", send_then_sync)
    cluster = SimCluster(3, seed=1, faults=LOSSY)
    with pytest.raises(sim.SafetyViolation, match=r"PERSIST violated at tick \d+ \(seed 1\)"):
        cluster.run_until(lambda: False, 10 * MAX_ELECTION_TICKS)


def find_violation(max_seeds, ticks=400, writes=True):
    """Run seeds with crashes until the checker objects; return its message."""
    for seed in range(max_seeds):
        cluster = SimCluster(3, seed, LOSSY)
        rng = random.Random(seed)
        try:
            for _ in range(ticks):
                chaos(cluster, rng)
                leader = cluster.leader()
                if writes and leader is not None and rng.random() < 0.3:
                    cluster.propose(leader.id, ("p", cluster.now), "p", cluster.now,
                                    ["incr", "k", 1])
                cluster.tick()
        except sim.SafetyViolation as violation:
            return str(violation)
    return None


def test_the_checker_catches_a_vote_that_ignores_the_log(monkeypatch):
    """Without [RV-2]'s up-to-date check, a node missing committed entries can
    win an election: Leader Completeness fails."""
    monkeypatch.setattr(raft.RaftNode, "is_up_to_date", lambda self, term, index: True)
    found = find_violation(60)
    assert found is not None and "Leader Completeness violated" in found
    assert "rerun: sim.SimCluster(size=3, seed=" in found


def test_the_checker_catches_a_second_vote_in_one_term(monkeypatch):
    """Without [RV-2]'s voted_for check a node votes twice in one term; the
    durable-vote check sees its synced vote change."""
    original = raft.RaftNode.handle_request_vote

    def forgetful(self, request):
        self.voted_for = None
        original(self, request)

    monkeypatch.setattr(raft.RaftNode, "handle_request_vote", forgetful)
    found = find_violation(60)
    assert found is not None and "durable vote violated" in found


def test_the_checker_catches_two_leaders_in_one_term(monkeypatch):
    """A candidate that counts refusals as votes ([CAN-2] broken) lets two
    candidates win the same term: Election Safety fails."""
    original = raft.RaftNode.handle_request_vote_reply

    def count_every_reply(self, reply):
        if reply.pre_vote:                  # pre-votes (§9.6) are counted as before
            return original(self, reply)
        if self.role is raft.Role.CANDIDATE and reply.term == self.current_term:
            self.votes.add(reply.voter_id)
            self.count_votes()

    monkeypatch.setattr(raft.RaftNode, "handle_request_vote_reply", count_every_reply)
    found = find_violation(60, ticks=100, writes=False)
    assert found is not None and "Election Safety violated" in found


def test_the_checker_catches_a_follower_that_skips_the_log_check(monkeypatch):
    """Without [AE-2] a follower takes entries after a prev_log_index whose
    term differs from the leader's: its log holds an index and term that
    mean something else elsewhere (Log Matching), and it may commit what the
    leader never had (State Machine Safety)."""
    original = raft.RaftNode.handle_append_entries

    def trusting(self, request):
        if request.prev_log_index <= self.log.last_index:     # "it surely matches"
            request = dataclasses.replace(
                request, prev_log_term=self.log.term_at(request.prev_log_index))
        original(self, request)

    monkeypatch.setattr(raft.RaftNode, "handle_append_entries", trusting)
    found = find_violation(60)
    assert found is not None and ("State Machine Safety violated" in found
                                  or "Log Matching violated" in found), found


def converged_cluster(seed=1):
    cluster = SimCluster(3, seed)
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    for seq in range(1, 4):
        cluster.propose(leader.id, seq, "c", seq, ["incr", "k", 1])
    assert cluster.run_until(lambda: converged(cluster), 200)
    return cluster, leader


def test_the_checker_catches_two_logs_that_differ_under_one_index_and_term():
    cluster, leader = converged_cluster()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    forged = raft.Entry(follower.log.term_at(3), {"client": "f", "seq": 1, "op": ["del", "k"]})
    rest = [forged] + follower.log.slice(4, follower.log.last_index)
    follower.log.replace_from(3, rest)
    cluster.storage[follower.id].write_entries(3, rest)

    with pytest.raises(sim.SafetyViolation, match="Log Matching violated"):
        cluster.check_safety()


def test_the_checker_catches_a_leader_rewriting_its_own_log():
    cluster, leader = converged_cluster()
    rest = leader.log.slice(2, leader.log.last_index)
    leader.log.replace_from(2, rest)
    cluster.storage[leader.id].write_entries(2, rest)

    with pytest.raises(sim.SafetyViolation, match="Leader Append-Only violated"):
        cluster.check_safety()
