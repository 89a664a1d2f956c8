"""Story tests: named scenarios on the simulated cluster (tests/sim.py).

Each test tells one story, in its name and its docstring: a figure of the
paper (Figure 7: how a new leader brings divergent logs back to its own;
Figure 8: why a leader never commits an entry of an older term by counting
replicas), a test of the MIT 6.5840 Raft lab (research/anchors.md §3), or a
failure that deployments meet (a leader cut off, a node back with a huge
term, a follower thousands of entries behind, a restart in the middle of an
election). The simulator checks Raft's safety properties after every
delivered message throughout; the tests assert what each story is about: who
leads, what is committed, what converges, and how many messages it took.

Time: one tick is 10 ms (raft.TICK_MS); the election timeout is 15-30 ticks,
heartbeats every 5. The MIT tester's durations convert at that rate: its
"one second" is 100 ticks, its 10 s limit for one() is 1000 ticks.

Every test is deterministic (fixed seeds); a failure prints the seed, the
tick, every node's state and the pytest command that reruns it.
"""

import collections
import random

import pytest

import raft
from sim import Faults, SafetyViolation, SimClient, SimCluster
from test_simulation import (converged, count_append_entries, propose_many, run_clients,
                             stable_leader, wait_for_leader, why)

TICKS_PER_SECOND = 1000 // raft.TICK_MS
MAX_ELECTION_TICKS = raft.Config().election_timeout_ticks[1]

EXACT = Faults(delay=(1, 1))          # every message takes exactly one tick: step-by-step stories
RELIABLE = Faults(delay=(1, 2))       # the MIT lab's reliable network (plus a little reordering)
# The MIT lab's unreliable network (labrpc): 10% of requests and of replies
# lost, 0-26 ms of jitter; we also duplicate 5%, which labrpc does not.
UNRELIABLE = Faults(drop=0.1, duplicate=0.05, delay=(1, 3))
# ... and its "long reordering": 600 of 900 replies (2/3) held back 200-2200 ms.
LONG_REORDERING = Faults(drop=0.1, duplicate=0.05, delay=(1, 3),
                         long_delay=2 / 3, long_delay_ticks=(20, 220))


@pytest.fixture
def new_cluster(request):
    """SimCluster(size, seed, ...) whose failures say how to rerun this test."""
    def make(size, seed=0, faults=RELIABLE, config=None):
        return SimCluster(size, seed, faults, config,
                          rerun=f"python -m pytest '{request.node.nodeid}'")
    return make


# -- helpers shared by the stories -----------------------------------------------------

def terms(node):
    """A log as the paper draws it: the term of each entry, index 1 first."""
    return [entry.term for entry in node.log.entries]


def logs(cluster):
    """Every server's log terms; a crashed server's from its disk."""
    return {node_id: terms(cluster.nodes[node_id]) if node_id in cluster.nodes
            else [entry.term for entry in cluster.storage[node_id].entries]
            for node_id in cluster.ids}


def time_out_now(cluster, node_id):
    """node_id's election timer runs out at its next tick, even if a
    heartbeat arrives first: how a story picks its candidate."""
    cluster.time_out_now(node_id)


def voters(cluster, candidate, term):
    """The other running servers that voted for candidate in term."""
    return {n.id for n in cluster.nodes.values()
            if n.current_term == term and n.voted_for == candidate and n.id != candidate}


def watch_leaders(cluster):
    """The set of (term, leader) of every AppendEntries delivered from now on."""
    seen = set()

    def observe(_destination, message):
        if isinstance(message, raft.AppendEntries):
            seen.add((message.term, message.leader_id))

    cluster.observers.append(observe)
    return seen


def watch_batches(cluster, follower):
    """How many AppendEntries carrying entries reach follower from now on."""
    counts = collections.Counter()

    def observe(destination, message):
        if destination == follower and isinstance(message, raft.AppendEntries):
            counts["with entries" if message.entries else "empty"] += 1

    cluster.observers.append(observe)
    return counts


# ======================================================================================
# Figure 7: a new leader brings every follower's log back to its own
# ======================================================================================

FIGURE_7 = {         # index:  1  2  3  4  5  6  7  8  9 10 11 12
    "leader":                [1, 1, 1, 4, 4, 5, 5, 6, 6, 6],
    "a":                     [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b":                     [1, 1, 1, 4],
    "c":                     [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d":                     [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e":                     [1, 1, 1, 4, 4, 4, 4],
    "f":                     [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


def figure_7_entry(index, term):
    """The entry at (index, term), the same in every log that holds it (Log
    Matching): a client command named after its place."""
    return raft.Entry(term, {"client": f"term-{term}", "seq": index,
                             "op": ["set", "x", f"{index}@{term}"]})


def figure_7_cluster(new_cluster):
    """Seven servers, the leader-to-be and (a)-(f), holding the logs of
    Figure 7 on disk, all in term 7 (the term (d) led, voting for itself).

    The servers are started, crashed before they do anything, given their
    logs on disk, and restarted: a restart reads term, vote and log back, as
    after a real power cut. Returns the cluster and {name: node id}."""
    cluster = new_cluster(7, seed=7, faults=EXACT)
    names = dict(zip(FIGURE_7, cluster.ids))
    for node_id in cluster.ids:
        cluster.crash(node_id)
    for name, node_id in names.items():
        storage = cluster.storage[node_id]
        storage.save_term_and_vote(7, node_id if name == "d" else None)
        storage.write_entries(1, [figure_7_entry(index, term)
                                  for index, term in enumerate(FIGURE_7[name], 1)])
        storage.sync()
    for node_id in cluster.ids:
        cluster.restart(node_id)
    assert logs(cluster) == {names[name]: log for name, log in FIGURE_7.items()}
    return cluster, names


FIGURE_7_LEADER_AFTER = FIGURE_7["leader"] + [8]     # its term-8 no-op (§8) at index 11

FIGURE_7_FOLLOWERS = [
    # follower, refused AppendEntries with the §5.3 conflict hint, one entry at a time
    pytest.param("a", 1, 1, id="a-lacks-one-entry"),
    pytest.param("b", 1, 6, id="b-lacks-six-entries"),
    pytest.param("c", 0, 0, id="c-has-an-extra-uncommitted-term-6-entry"),
    pytest.param("d", 0, 0, id="d-has-two-extra-term-7-entries"),
    pytest.param("e", 2, 5, id="e-lacks-entries-and-has-extra-term-4-ones"),
    pytest.param("f", 2, 7, id="f-has-terms-2-and-3-that-no-one-else-has"),
]


@pytest.mark.parametrize("follower, refusals, one_by_one", FIGURE_7_FOLLOWERS)
def test_figure_7_the_term_8_leader_makes_each_follower_log_match_its_own(
        follower, refusals, one_by_one, new_cluster):
    """Paper Figure 7 and §5.3. When the leader of term 8 comes to power,
    its followers' logs may be any of (a)-(f):

            index   1  2  3  4  5  6  7  8  9 10 11 12
        leader      1  1  1  4  4  5  5  6  6  6
          (a)       1  1  1  4  4  5  5  6  6            missing one entry
          (b)       1  1  1  4                           missing six
          (c)       1  1  1  4  4  5  5  6  6  6  6      one extra, uncommitted
          (d)       1  1  1  4  4  5  5  6  6  6  7  7   two extra, of term 7
          (e)       1  1  1  4  4  4  4                  missing some, extra term-4 ones
          (f)       1  1  1  2  2  2  3  3  3  3  3      terms 2 and 3 no one else has

    The leader never changes its own log. It appends its term-8 no-op
    (index 11) and, for each follower, finds the last index where their
    logs agree ([LEAD-3b], [AE-2]); the follower deletes what conflicts
    ([AE-3]) and takes the leader's entries ([AE-4]). Every log ends as
    the leader's:  1 1 1 4 4 5 5 6 6 6 8.

    The §5.3 conflict hint makes that search cheap: a refusal names the
    follower's end, or the first index of its conflicting term, so the
    leader skips a whole term per round trip. (e) costs 2 refusals instead
    of 5, (f) 2 instead of 7, (b) 1 instead of 6.
    """
    cluster, names = figure_7_cluster(new_cluster)
    follower_id = names[follower]
    counts = count_append_entries(cluster, follower_id)

    # The leader-to-be times out first; with (a), (b), (e) and (f) its
    # votes are 5 of 7 (see the next test for who else could win).
    time_out_now(cluster, names["leader"])
    leader = wait_for_leader(cluster, 10)
    assert (leader.id, leader.current_term) == (names["leader"], 8), why(cluster, "wrong leader")
    assert terms(leader) == FIGURE_7_LEADER_AFTER

    node = cluster.nodes[follower_id]
    assert cluster.run_until(lambda: terms(node) == FIGURE_7_LEADER_AFTER
                             and node.commit_index == 11, 50), \
        why(cluster, f"({follower}) did not converge: {terms(node)}")
    assert cluster.run_until(lambda: converged(cluster), 50), why(cluster, "no convergence")
    # Its log is the leader's, entry for entry (commands too), and applied.
    assert node.log.entries == leader.log.entries
    assert node.machine.data == leader.machine.data == {"x": "10@6"}
    # Few round trips: the refusals the conflict hint allows, then one batch
    # with everything the follower lacks, and a heartbeat with the commit index.
    assert counts["refusals"] <= refusals, \
        f"{counts}: the hint allows {refusals}; one entry at a time would take {one_by_one}"
    assert counts["append_entries"] <= refusals + 2, counts


FIGURE_7_ELECTION = [
    # candidate, wins term 8?
    pytest.param("leader", True, id="leader-wins-5-of-7"),
    pytest.param("a", True, id="a-wins-4-of-7"),
    pytest.param("b", False, id="b-loses-with-2"),
    pytest.param("c", True, id="c-wins-6-of-7"),
    pytest.param("d", True, id="d-wins-7-of-7"),
    pytest.param("e", False, id="e-loses-with-3"),
    pytest.param("f", False, id="f-loses-with-1"),
]


@pytest.mark.parametrize("candidate, wins", FIGURE_7_ELECTION)
def test_figure_7_who_could_have_won_the_election_for_term_8(candidate, wins, new_cluster):
    """Figure 7 shows the leader of term 8 already elected. Which of the
    seven servers could have won that election? A voter grants only if the
    candidate's log is at least as up to date as its own ([RV-2], §5.4.1):
    the later last term wins, and with equal last terms the longer log.

        candidate  last entry (term, index)   votes                   of 7
        leader     (6, 10)                    leader (a) (b) (e) (f)  5  wins
        (a)        (6, 9)                     (a) (b) (e) (f)         4  wins
        (b)        (4, 4)                     (b) (f)                 2  loses
        (c)        (6, 11)                    all but (d)             6  wins
        (d)        (7, 12)                    all                     7  wins
        (e)        (4, 7)                     (b) (e) (f)             3  loses
        (f)        (3, 11)                    (f)                     1  loses

    So (a), (c) or (d) could have won too: with (c) or (d) their extra
    entries would have stayed, with (a) the leader's index 10 would have
    gone, and none of those was committed (each is on at most 3 of 7).
    Index 9 is on four servers and may have been committed: every possible
    winner holds it. The losers never lead; someone else wins a later term
    and the logs converge.
    """
    cluster, names = figure_7_cluster(new_cluster)
    node_id = names[candidate]
    leaders = watch_leaders(cluster)

    time_out_now(cluster, node_id)
    leader = wait_for_leader(cluster, 20 * MAX_ELECTION_TICKS)

    if wins:
        assert (leader.id, leader.current_term) == (node_id, 8), why(cluster, "wrong winner")
    else:
        assert leader.id != node_id and all(led != node_id for _term, led in leaders), \
            why(cluster, f"({candidate}) led although most logs are ahead of it")
    assert cluster.run_until(lambda: converged(cluster), 100), why(cluster, "no convergence")


# ======================================================================================
# Figure 8: a leader must not commit an entry of an earlier term by counting replicas
# ======================================================================================
#
# One entry per AppendEntries (max_append_bytes=1), exact one-tick delays, and
# partitions set between two deliveries let the stories below stop a leader
# exactly between sending one entry and the next. In this implementation every
# leader's first entry is its no-op (§8), so the "entry of term 2" of the
# figure is S1's term-2 no-op: the trap is the same for any entry.

# Figure 2 alone: no pre-vote or leader lease, as in the paper's story.
ONE_ENTRY_PER_MESSAGE = raft.Config(max_append_bytes=1, pre_vote=False, check_quorum=False)


def figure_8_cluster(new_cluster):
    """Five servers S1-S5 (n1-n5). Term 1: S2 leads, and its entry at index
    1 reaches everyone and commits."""
    cluster = new_cluster(5, seed=8, faults=EXACT, config=ONE_ENTRY_PER_MESSAGE)
    time_out_now(cluster, cluster.ids[1])
    assert cluster.run_until(lambda: converged(cluster), 50), why(cluster, "term 1")
    return cluster


def figure_8_a(cluster):
    """S1 wins term 2 with every vote, but by the time it leads only S2 can
    hear it: its entry at index 2 reaches S2 alone."""
    s1, s2, s3, s4, s5 = cluster.ids
    time_out_now(cluster, s1)
    assert cluster.run_until(lambda: voters(cluster, s1, 2) == {s2, s3, s4, s5}, 10), \
        why(cluster, "S1 did not get the votes of term 2")
    cluster.partition([s1, s2], [s3, s4, s5])        # the votes are on their way to S1
    assert cluster.run_until(lambda: terms(cluster.nodes[s2]) == [1, 2], 10), \
        why(cluster, "S1's entry did not reach S2")


def figure_8_b(cluster):
    """S1 crashes. S5 wins term 3 with the votes of S3, S4 and itself, and
    appends its own entry at index 2, which no one else gets. (S2 is cut off
    from here on: it keeps the term-2 entry, and stays out of the elections.)"""
    s1, s2, s3, s4, s5 = cluster.ids
    cluster.crash(s1)
    cluster.partition([s1, s3, s4, s5], [s2])
    time_out_now(cluster, s5)
    assert cluster.run_until(lambda: voters(cluster, s5, 3) == {s3, s4}, 10), \
        why(cluster, "S5 did not get the votes of term 3")
    cluster.partition([s5], [s2], [s1, s3, s4])       # the votes are on their way to S5
    assert cluster.run_until(lambda: cluster.nodes[s5].role is raft.Role.LEADER, 5), \
        why(cluster, "S5 did not lead term 3")


def figure_8_c(cluster, stop_before_its_own_entry=True):
    """S5 crashes, S1 restarts and wins term 4 with S3 and S4 (a first try
    in term 3 fails: they voted for S5 in term 3). S1 appends its no-op at
    index 3 and replicates from index 2 on, one entry per message. With
    stop_before_its_own_entry, S1 is cut off just after S3 and S4 took
    index 2 and before they get index 3."""
    s1, s2, s3, s4, s5 = cluster.ids
    cluster.crash(s5)
    cluster.restart(s1)
    time_out_now(cluster, s1)              # term 3: S3 and S4 already voted for S5
    cluster.tick(3)
    time_out_now(cluster, s1)              # term 4
    assert cluster.run_until(lambda: cluster.nodes[s1].role is raft.Role.LEADER, 5), \
        why(cluster, "S1 did not lead term 4")
    assert cluster.nodes[s1].current_term == 4
    if stop_before_its_own_entry:
        assert cluster.run_until(lambda: terms(cluster.nodes[s3]) == terms(cluster.nodes[s4])
                                 == [1, 2], 10), why(cluster, "index 2 did not reach S3, S4")
        cluster.partition([s1], [s2], [s3, s4, s5])   # their acks are on their way to S1
        leader = cluster.nodes[s1]
        assert cluster.run_until(lambda: leader.match_index[s3] == leader.match_index[s4] == 2,
                                 5), why(cluster, "S1 did not hear S3 and S4")
    else:
        assert cluster.run_until(lambda: cluster.nodes[s1].commit_index == 3, 20), \
            why(cluster, "S1 did not commit its term-4 entry")
        cluster.partition([s1], [s2], [s3, s4, s5])


def figure_8_d(cluster):
    """S1 crashes, S5 restarts and wins term 5 with S3 and S4 (its last term
    3 is later than their 2; a first try in term 4 fails: they voted for S1)."""
    s1, s2, s3, s4, s5 = cluster.ids
    cluster.crash(s1)
    cluster.restart(s5)
    time_out_now(cluster, s5)              # term 4: S3 and S4 already voted for S1
    cluster.tick(3)
    time_out_now(cluster, s5)              # term 5
    assert cluster.run_until(lambda: cluster.nodes[s5].role is raft.Role.LEADER, 5), \
        why(cluster, "S5 did not lead term 5")
    assert cluster.nodes[s5].current_term == 5


def test_figure_8_a_leader_does_not_commit_an_old_term_entry_on_a_majority_and_it_may_be_lost(
        new_cluster):
    """Paper Figure 8 and §5.4.2, the reason for [LEAD-4]'s "of the current term":

               index 1 2 3
        (a)  S1      1 2       S1 leads term 2; its index 2 reaches S2 only
             S2      1 2
             S3      1
             S4      1
             S5      1
        (b)  S5      1 3       S1 crashes; S5 wins term 3 (S3, S4, S5 vote)
                               and writes its own index 2, alone
        (c)  S1      1 2 4     S5 crashes; S1 restarts, wins term 4 (S3, S4
             S2      1 2       vote) and sends index 2 to S3 and S4 before its
             S3      1 2       term-4 entry. Index 2 is on S1, S2, S3, S4, and
             S4      1 2       S1 *knows* a majority (S1, S3, S4) has it, but
             S5      1 3       it is of term 2: S1 must not commit it.
        (d)  S3      1 3 5     S1 crashes; S5 wins term 5 (S3, S4 vote: its
             S4      1 3 5     last term 3 beats their 2) and overwrites index 2
             S5      1 3 5     with its term-3 entry. Safe only because (c)
                               never committed it.

    S2 sits out from (b) on (partitioned) so that S5 needs only S3 and S4.
    """
    cluster = figure_8_cluster(new_cluster)
    s1, s2, s3, s4, s5 = cluster.ids

    figure_8_a(cluster)
    assert logs(cluster) == {s1: [1, 2], s2: [1, 2], s3: [1], s4: [1], s5: [1]}
    figure_8_b(cluster)
    assert logs(cluster) == {s1: [1, 2], s2: [1, 2], s3: [1], s4: [1], s5: [1, 3]}
    figure_8_c(cluster)
    assert logs(cluster) == {s1: [1, 2, 4], s2: [1, 2], s3: [1, 2], s4: [1, 2], s5: [1, 3]}

    # (c) S1 knows index 2 is on a majority, and still does not commit it.
    leader = cluster.nodes[s1]
    assert leader.role is raft.Role.LEADER and leader.current_term == 4
    assert sorted([leader.log.last_index, *leader.match_index.values()]) == [0, 0, 2, 2, 3]
    assert leader.commit_index < 2, why(cluster, "S1 committed an entry of term 2 by counting")
    assert all(node.commit_index < 2 for node in cluster.nodes.values())
    term_2_entry = leader.log.entry(2)

    figure_8_d(cluster)
    new_leader = cluster.nodes[s5]
    assert cluster.run_until(lambda: new_leader.commit_index == 3, 20), \
        why(cluster, "S5 did not commit in term 5")
    assert logs(cluster) == {s1: [1, 2, 4], s2: [1, 2], s3: [1, 3, 5], s4: [1, 3, 5],
                             s5: [1, 3, 5]}
    # Index 2 now holds S5's term-3 entry, committed; S1's term-2 entry is gone.
    assert new_leader.log.entry(2) != term_2_entry

    # Everyone back: S1 and S2 drop their index 2 too.
    cluster.heal()
    cluster.restart(s1)
    assert cluster.run_until(lambda: converged(cluster), 100), why(cluster, "no convergence")
    assert all(log[:3] == [1, 3, 5] for log in logs(cluster).values())


def test_figure_8_e_an_entry_of_the_leaders_term_on_a_majority_commits_the_older_one_with_it(
        new_cluster):
    """Paper Figure 8 (e): the same story, but in (c) S1 gets its term-4
    entry (index 3) to S3 and S4 before it crashes:

               index 1 2 3
        (e)  S1      1 2 4     index 3 (term 4) is on a majority: S1 commits
             S2      1 2       it, and index 2 with it (Log Matching)
             S3      1 2 4
             S4      1 2 4
             S5      1 3

    Now S5 cannot win: S3 and S4 hold a later last term (4) than S5 (3) and
    refuse it, however often it tries. S3 or S4 leads next, and S5's
    term-3 entry is replaced by the committed term-2 one.
    """
    cluster = figure_8_cluster(new_cluster)
    s1, s2, s3, s4, s5 = cluster.ids
    figure_8_a(cluster)
    figure_8_b(cluster)
    figure_8_c(cluster, stop_before_its_own_entry=False)
    assert logs(cluster) == {s1: [1, 2, 4], s2: [1, 2], s3: [1, 2, 4], s4: [1, 2, 4],
                             s5: [1, 3]}
    assert cluster.nodes[s1].commit_index == 3
    committed = cluster.nodes[s1].log.entries[:3]

    cluster.crash(s1)
    cluster.restart(s5)
    leaders = watch_leaders(cluster)
    for _ in range(3):                     # S5 tries, and tries again
        time_out_now(cluster, s5)
        cluster.tick(3)
        assert cluster.nodes[s5].role is not raft.Role.LEADER
    leader = wait_for_leader(cluster, 20 * MAX_ELECTION_TICKS)

    assert leader.id in (s3, s4) and all(led != s5 for _term, led in leaders), \
        why(cluster, "S5 led with a log missing a committed entry")
    assert cluster.run_until(lambda: cluster.nodes[s5].log.entries[:3] == committed, 50), \
        why(cluster, "S5 kept its term-3 entry")


def test_figure_8_without_the_current_term_rule_the_checker_sees_a_committed_entry_lost(
        new_cluster, monkeypatch):
    """The same story with [LEAD-4] broken on purpose: a leader that commits
    whatever a majority holds, whatever its term. In (c) S1 then commits
    index 2; in (d) S5 wins without it, and the simulator stops the run
    (Leader Completeness: a leader lacks a committed entry)."""
    def count_replicas_of_any_term(self):
        if self.role is raft.Role.LEADER:
            matched = sorted([self.log.last_index, *self.match_index.values()], reverse=True)
            self.commit_index = max(self.commit_index, matched[len(self.members) // 2])

    monkeypatch.setattr(raft.RaftNode, "advance_commit_index", count_replicas_of_any_term)
    cluster = figure_8_cluster(new_cluster)
    figure_8_a(cluster)
    figure_8_b(cluster)
    figure_8_c(cluster)
    assert cluster.nodes[cluster.ids[0]].commit_index == 2      # the trap, sprung

    with pytest.raises(SafetyViolation, match="Leader Completeness violated"):
        figure_8_d(cluster)


# ======================================================================================
# A leader cut off from its majority
# ======================================================================================

@pytest.mark.parametrize("seed", range(3))
def test_a_partitioned_old_leader_never_answers_a_read_with_a_stale_value(seed, new_cluster):
    """A leader cut off from the majority still believes it leads for a
    while, as the majority elects a new leader and overwrites x. A client
    that reads x from the old leader must not get the old value: a read
    waits for a heartbeat round that a majority answers after the read
    arrived (ReadIndex, §6.4), which the old leader never gets. With
    check-quorum, hearing no majority for an election timeout, it steps
    down (in its own term: pre-vote keeps it from raising it) and tells the
    client to go to the new leader; so does the follower it has become.
    (test_simulation.py (c) tells the same story for writes.)"""
    cluster = new_cluster(5, seed, UNRELIABLE)
    old = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    writer = SimClient(cluster, "w", first_node=cluster.ids.index(old.id))
    run_clients(cluster, [writer], {"w": [["set", "x", "old"]]}, 500)
    cluster.partition([old.id], [n for n in cluster.ids if n != old.id])
    old_term = old.current_term
    cluster.read(old.id, "read before", ["get", "x"])
    assert old.role is raft.Role.LEADER and "read before" not in cluster.answers

    new = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS, replacing=old)
    other = SimClient(cluster, "o", first_node=cluster.ids.index(new.id))
    run_clients(cluster, [other], {"o": [["set", "x", "new"]]}, 1000)
    cluster.read(old.id, "read after", ["get", "x"])
    cluster.tick(5 * MAX_ELECTION_TICKS)

    # Check-quorum: the old leader stepped down on its own, in its own term.
    assert (old.role, old.current_term) == (raft.Role.FOLLOWER, old_term), \
        why(cluster, "the cut-off leader did not step down")
    assert old.machine.data["x"] == "old"
    for read in ("read before", "read after"):
        assert cluster.answers.get(read, {}).get("error") == "not_leader", \
            why(cluster, f"the old node answered {read!r}: {cluster.answers.get(read)}")
    cluster.heal()
    assert cluster.run_until(lambda: converged(cluster), 1000), why(cluster, "no convergence")
    assert old.machine.data["x"] == "new"


# ======================================================================================
# A node back from a partition with a much higher term
# ======================================================================================

@pytest.mark.parametrize("seed", range(5))
def test_a_node_back_with_a_much_higher_term_forces_an_election_it_cannot_win(
        seed, new_cluster):
    """A follower is cut off for 6 s. Hearing no leader, it times out again
    and again, each time in a new term: its term ends up far beyond the
    cluster's, while its log stops where it was cut off. The other four keep
    a leader and commit 20 writes.

    On heal, its first reply carries that high term, and the leader steps
    down ([ALL-2]): a disruption, expected without pre-vote (dissertation
    §9.6; with pre-vote the loner does not raise its term, and the lines
    marked PRE-VOTE below change: see the next test). It still cannot win:
    its log lacks the committed entries, so every other server refuses it
    ([RV-2]). A server holding them wins a term above the loner's, and
    nothing committed is lost."""
    # Figure 2 alone: no pre-vote or leader lease, the disruption they prevent.
    cluster = new_cluster(5, seed, RELIABLE,
                          config=raft.Config(pre_vote=False, check_quorum=False))
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    loner_id = next(n for n in cluster.ids if n != leader.id)
    cluster.partition([loner_id], [n for n in cluster.ids if n != loner_id])
    cut_at = cluster.now
    client = SimClient(cluster, "c", first_node=cluster.ids.index(leader.id))
    run_clients(cluster, [client], {"c": [["incr", "k", 1] for _ in range(20)]}, 1000)
    cluster.tick(cut_at + 6 * TICKS_PER_SECOND - cluster.now)

    loner = cluster.nodes[loner_id]
    assert stable_leader(cluster) is leader, why(cluster, "the majority lost its leader")
    assert loner.current_term >= leader.current_term + 10       # PRE-VOTE: stays put
    assert loner.log.last_index < leader.commit_index
    committed = leader.log.entries[:leader.commit_index]
    loner_term = loner.current_term
    leaders = watch_leaders(cluster)

    cluster.heal()
    assert cluster.run_until(lambda: converged(cluster), 500), why(cluster, "no convergence")

    new = stable_leader(cluster)
    assert new.id != loner_id and all(led != loner_id for _term, led in leaders), \
        why(cluster, "the loner led with a stale log")
    assert new.current_term > loner_term, why(cluster, "no election after heal")  # PRE-VOTE
    for node in cluster.nodes.values():
        assert node.log.entries[:len(committed)] == committed
        assert node.machine.data["k"] == 20


@pytest.mark.parametrize("seed", range(5))
def test_with_pre_vote_a_node_back_from_a_partition_keeps_its_term_and_deposes_no_one(
        seed, new_cluster):
    """The story above with pre-vote and check-quorum on (the defaults). Cut
    off, the loner asks for pre-votes again and again and never gets a
    majority, so it never raises its term (§9.6). On heal its replies carry
    the cluster's own term: the leader keeps leading, in the same term, and
    the loner catches up."""
    cluster = new_cluster(5, seed, RELIABLE)
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    term = leader.current_term
    loner_id = next(n for n in cluster.ids if n != leader.id)
    cluster.partition([loner_id], [n for n in cluster.ids if n != loner_id])
    cut_at = cluster.now
    client = SimClient(cluster, "c", first_node=cluster.ids.index(leader.id))
    run_clients(cluster, [client], {"c": [["incr", "k", 1] for _ in range(20)]}, 1000)
    cluster.tick(cut_at + 6 * TICKS_PER_SECOND - cluster.now)

    loner = cluster.nodes[loner_id]
    assert stable_leader(cluster) is leader, why(cluster, "the majority lost its leader")
    assert (leader.current_term, loner.current_term) == (term, term), \
        why(cluster, "a term was raised")                          # PRE-VOTE: stays put
    assert loner.log.last_index < leader.commit_index
    committed = leader.log.entries[:leader.commit_index]
    leaders = watch_leaders(cluster)

    cluster.heal()
    assert cluster.run_until(lambda: converged(cluster), 500), why(cluster, "no convergence")

    assert stable_leader(cluster) is leader and leader.current_term == term, \
        why(cluster, "the loner's return deposed the leader")   # PRE-VOTE: no election
    assert leaders == {(term, leader.id)}, leaders
    for node in cluster.nodes.values():
        assert node.log.entries[:len(committed)] == committed
        assert node.machine.data["k"] == 20


# ======================================================================================
# A follower thousands of entries behind
# ======================================================================================

BEHIND = 5000


@pytest.mark.parametrize("how, mismatches", [("missing", 1), ("conflicting suffix", 2)])
def test_a_follower_5000_entries_behind_catches_up_in_a_few_dozen_messages(
        how, mismatches, new_cluster):
    """A follower is cut off while 5,000 entries commit. Then the leader
    restarts, so the next leader knows nothing of the follower and starts
    from its own end. On the follower's return it must find where their
    logs part, then send 5,000 entries: about 220 fit one AppendEntries
    (max_append_bytes, 16,000 bytes of entries), so about 23 batches.

      missing             the follower simply lacks them: one refusal, whose
                          hint names the follower's end
      conflicting suffix  the follower is a deposed leader that appended
                          1,000 entries of its own term while cut off: a
                          second refusal names that term, and the §5.3 hint
                          skips all 1,000 at once ([AE-3] then drops them)

    The bound of 40 batches fails if entries went one by one, or if each
    batch were sent twice."""
    cluster = new_cluster(3, seed=5, faults=EXACT)
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    if how == "conflicting suffix":
        behind = leader.id
        cluster.partition([behind], [n for n in cluster.ids if n != behind])
        propose_many(cluster, behind, "lost", 1000)
        leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS, replacing=leader)
    else:
        behind = next(n for n in cluster.ids if n != leader.id)
        cluster.partition([behind], [n for n in cluster.ids if n != behind])
    propose_many(cluster, leader.id, "writer", BEHIND)
    assert cluster.run_until(lambda: leader.commit_index >= BEHIND, 500), \
        why(cluster, "no commit")
    cluster.crash(leader.id)
    cluster.restart(leader.id)
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    assert leader.next_index[behind] == leader.log.last_index       # (its no-op follows)
    far = cluster.nodes[behind]
    assert leader.log.last_index - far.commit_index > BEHIND
    refusals = collections.Counter()

    def observe(_destination, message):
        if isinstance(message, raft.AppendEntriesReply) and message.follower_id == behind \
                and not message.success:
            # With a hint the logs differ ([AE-2]); without, the term is old ([AE-1]).
            refusals["logs differ" if message.conflict_index else "old term"] += 1

    cluster.observers.append(observe)
    batches = watch_batches(cluster, behind)

    def caught_up():
        leader = stable_leader(cluster)
        return (leader is not None and far.last_applied == leader.commit_index
                and far.log.last_index == leader.log.last_index)

    cluster.heal()
    assert cluster.run_until(caught_up, 500), why(cluster, "the follower did not catch up")

    assert far.log.entries == stable_leader(cluster).log.entries
    assert far.machine.data == {"n": BEHIND}
    assert refusals["logs differ"] <= mismatches, refusals
    # And none of an old term: cut off, the follower asked for pre-votes and
    # never raised its term (§9.6), so its answers depose no one.
    assert refusals["old term"] == 0, refusals
    assert BEHIND // 250 <= batches["with entries"] <= 40, batches


# ======================================================================================
# Five servers: two may fail, three may not
# ======================================================================================

@pytest.mark.parametrize("leader_side", ["majority", "minority"])
def test_five_nodes_split_three_to_two_only_the_three_commit(leader_side, new_cluster):
    """Five servers split 3 | 2. The three keep (or elect) a leader and
    commit ten increments; the two commit nothing, even when the old leader
    is among them and takes writes; it never answers them "ok". On heal
    the two catch up and their uncommitted entries are replaced.
    (test_simulation.py (e) tells the story with crashes instead.)"""
    cluster = new_cluster(5, seed=6, faults=RELIABLE)
    leader = wait_for_leader(cluster, 10 * MAX_ELECTION_TICKS)
    others = [n for n in cluster.ids if n != leader.id]
    if leader_side == "majority":
        majority, minority = [leader.id] + others[:2], others[2:]
    else:
        majority, minority = others[1:], [leader.id, others[0]]
    assert cluster.run_until(lambda: converged(cluster), 100)
    cluster.partition(majority, minority)
    minority_commits = {n: cluster.nodes[n].commit_index for n in minority}

    if leader_side == "minority":
        for seq in range(1, 4):
            cluster.propose(leader.id, ("cut off", seq), "cut-off", seq, ["incr", "k", 100])
    client = SimClient(cluster, "c", first_node=cluster.ids.index(majority[0]))
    run_clients(cluster, [client], {"c": [["incr", "k", 1] for _ in range(10)]}, 2000)
    cluster.tick(5 * MAX_ELECTION_TICKS)

    assert [result for _seq, _op, result in client.completed] == list(range(1, 11))
    assert {n: cluster.nodes[n].commit_index for n in minority} == minority_commits, \
        why(cluster, "the minority committed")
    cluster.heal()
    assert cluster.run_until(lambda: converged(cluster), 1000), why(cluster, "no convergence")
    assert all(n.machine.data == {"k": 10} for n in cluster.nodes.values())
    if leader_side == "minority":
        answers = [cluster.answers[("cut off", seq)] for seq in range(1, 4)]
        assert all(answer["error"] == "not_leader" for answer in answers), answers


# ======================================================================================
# A restart in the middle of an election keeps the vote
# ======================================================================================

@pytest.mark.parametrize("crash, seed", [
    ("after its vote went out", 0), ("mid-cycle after its vote went out", 0),
    # Four seeds: a power cut keeps a random part of the cycle's writes.
    *(("mid-cycle while voting", seed) for seed in range(4))])
def test_a_restart_in_the_middle_of_an_election_keeps_the_vote(crash, seed, new_cluster):
    """Three servers A, V, B. A stands in term 1 and V votes for it; V
    crashes and restarts; B now stands in term 1 too. V must refuse B: if it
    had forgotten its vote, A (which got V's vote) and B (with V's vote
    again) would both lead term 1. The vote is on V's disk before the reply
    leaves ([PERSIST]), so a restart reads it back ([RV-2] then refuses).

      after its vote went out             a clean crash between two cycles
      mid-cycle after its vote went out   the power cuts out during V's next
                                          cycle: its vote was synced before
      mid-cycle while voting              the power cuts out in the cycle that
                                          votes: the vote may or may not reach
                                          the disk, but the reply never left,
                                          so A never counts it; V may then vote
                                          for B, safely (seeds 0-2 lose the vote,
                                          seed 3 keeps it)
    """
    # Figure 2 alone: no pre-vote or leader lease, as in the paper's rules.
    cluster = new_cluster(3, seed, EXACT, config=raft.Config(pre_vote=False,
                                                             check_quorum=False))
    a, v, b = cluster.ids
    storage = cluster.storage[v]
    cluster.partition([a, v], [b])
    time_out_now(cluster, a)
    if crash == "mid-cycle while voting":
        assert cluster.run_until(lambda: cluster.nodes[a].role is raft.Role.CANDIDATE, 3)
        cluster.crash(v, mid_cycle=True)        # takes A's RequestVote in, votes, dies
    else:
        assert cluster.run_until(lambda: (storage.term, storage.voted_for) == (1, a), 3), \
            why(cluster, "V did not vote for A")
        cluster.crash(v, mid_cycle=crash.startswith("mid-cycle"))
    vote_on_disk = (storage.term, storage.voted_for) == (1, a)

    cluster.partition([a], [v, b])
    cluster.restart(v)
    time_out_now(cluster, b)
    assert cluster.run_until(lambda: cluster.nodes[b].current_term == 1, 2)
    cluster.tick(3)                                   # B's RequestVote and V's answer

    a_leads = cluster.nodes[a].role is raft.Role.LEADER
    b_leads = cluster.nodes[b].role is raft.Role.LEADER
    if crash == "mid-cycle while voting":
        assert not a_leads                            # V's vote for A never left V
        assert b_leads == (not vote_on_disk), why(cluster, f"vote on disk: {vote_on_disk}")
    else:
        assert vote_on_disk and (storage.term, storage.voted_for) == (1, a)
        assert cluster.nodes[v].voted_for == a
        assert a_leads and not b_leads, why(cluster, "V voted twice in term 1")
    cluster.heal()
    assert cluster.run_until(lambda: converged(cluster), 200), why(cluster, "no convergence")


# ======================================================================================
# The MIT 6.5840 Raft lab, ported (research/anchors.md §3)
# ======================================================================================

def last_index_of(node, client):
    """The last index of node's log holding a command of client, or None."""
    for index in range(node.log.last_index, 0, -1):
        command = node.log.entry(index).command
        if command is not None and command["client"] == client:
            return index
    return None


class Lab:
    """The MIT 6.5840 tester (raft/config.go) over a SimCluster.

    A server is connected or disconnected as a whole (labrpc's enable), and
    running or crashed: crash() and start() are the lab's crash1() and
    start1() (a new server on the crashed one's persisted state). Commands
    are numbers, as in the lab: value v is the command ["set", "lab", "v"]
    of a client session of its own ("v<v>", sequence number 1), so
    resubmitting v after a failover can never apply it twice.
    """
    ONE_TICKS = 10 * TICKS_PER_SECOND       # one() gives up after 10 s,
    ATTEMPT_TICKS = 2 * TICKS_PER_SECOND    # waiting 2 s for each submission
    LEADER_TICKS = 5 * TICKS_PER_SECOND     # checkOneLeader looks for 5 s

    def __init__(self, cluster):
        self.cluster = cluster
        self.disconnected = set()
        self.rotation = 0

    # -- servers and the network ---------------------------------------------------
    def after(self, node_id, k):
        """The server k places after node_id: the lab's (leader + k) % servers."""
        ids = self.cluster.ids
        return ids[(ids.index(node_id) + k) % len(ids)]

    def disconnect(self, *node_ids):
        self.disconnected |= set(node_ids)
        self.rewire()

    def connect(self, *node_ids):
        self.disconnected -= set(node_ids)
        self.rewire()

    def rewire(self):
        connected = [n for n in self.cluster.ids if n not in self.disconnected]
        if self.disconnected:
            self.cluster.partition(connected, *([n] for n in sorted(self.disconnected)))
        else:
            self.cluster.heal()

    def crash(self, node_id, mid_cycle=False):
        if node_id in self.cluster.nodes:
            self.cluster.crash(node_id, mid_cycle=mid_cycle)

    def start(self, node_id):
        """start1: a fresh server on what the old one had persisted."""
        self.crash(node_id)
        self.cluster.restart(node_id)

    def live(self):
        """The running, connected servers."""
        return [n for n in self.cluster.nodes.values() if n.id not in self.disconnected]

    # -- commands --------------------------------------------------------------------
    @staticmethod
    def client(value):
        return f"v{value}"

    def start_command(self, node_id, value, op=None):
        """rf.Start(value): None unless node_id runs and believes it leads;
        else the index the command will have if it is ever committed."""
        node = self.cluster.nodes.get(node_id)
        if node is None or node.role is not raft.Role.LEADER:
            return None
        client = self.client(value)
        self.cluster.propose(node_id, ("lab", client, node_id, self.cluster.now), client, 1,
                             op or ["set", "lab", str(value)])
        return last_index_of(node, client)

    def submit(self, value, op=None):
        """Start on the connected servers in turn, until one leads."""
        ids = self.cluster.ids
        for _ in ids:
            self.rotation = (self.rotation + 1) % len(ids)
            if ids[self.rotation] not in self.disconnected:
                index = self.start_command(ids[self.rotation], value, op)
                if index is not None:
                    return index
        return None

    def n_committed(self, index):
        """nCommitted: how many running servers have applied index, and the
        client of the command there (the checker makes sure they agree)."""
        nodes = [n for n in self.cluster.nodes.values() if n.last_applied >= index]
        if not nodes:
            return 0, None
        command = nodes[0].log.entry(index).command
        return len(nodes), command and command["client"]

    def agree(self, values, expected_servers, retry=True, ops=None):
        """one() for several values at once, like the lab's concurrent one()
        calls: each value goes to a connected leader; if expected_servers
        have not applied it at that index within 2 s (or another command got
        the index), it is submitted again; all within 10 s. Returns
        {value: index}."""
        cluster, ops = self.cluster, ops or {}
        done, attempts = {}, {}
        deadline = cluster.now + self.ONE_TICKS
        while cluster.now <= deadline:
            for value in values:
                if value in done:
                    continue
                if attempts.get(value) is not None:
                    index, since = attempts[value]
                    count, client = self.n_committed(index)
                    if count >= expected_servers and client == self.client(value):
                        done[value] = index
                        continue
                    lost = count and client != self.client(value)
                    if cluster.now - since < self.ATTEMPT_TICKS and not lost:
                        continue
                    if not retry:
                        raise AssertionError(why(cluster, f"one({value}) failed to reach "
                                                          f"agreement on the first try"))
                index = self.submit(value, ops.get(value))
                attempts[value] = None if index is None else (index, cluster.now)
            if len(done) == len(values):
                return done
            cluster.tick()
        missing = [value for value in values if value not in done]
        raise AssertionError(why(cluster, f"one() failed to reach agreement on {missing} "
                                          f"with {expected_servers} servers"))

    def one(self, value, expected_servers, retry=True, op=None):
        """The lab's one(cmd, n, retry): submit value until at least n
        servers have committed (applied) it at one index; that index."""
        return self.agree([value], expected_servers, retry, {value: op})[value]

    def wait(self, index, expected_servers, start_term=None):
        """wait(): the client at index once expected_servers applied it; None
        if a server moved past start_term first (the lab then tries again)."""
        cluster = self.cluster
        for _ in range(self.ONE_TICKS):
            count, client = self.n_committed(index)
            if count >= expected_servers:
                return client
            if start_term is not None and any(n.current_term > start_term
                                              for n in cluster.nodes.values()):
                return None
            cluster.tick()
        raise AssertionError(why(cluster, f"only {self.n_committed(index)[0]} servers "
                                          f"committed index {index}"))

    # -- leaders -----------------------------------------------------------------------
    def connected_leader(self):
        """The connected leader of the latest term, if a majority follows it."""
        live = self.live()
        leaders = [n for n in live if n.role is raft.Role.LEADER]
        if not leaders:
            return None
        leader = max(leaders, key=lambda n: n.current_term)
        followers = [n for n in live
                     if n.current_term == leader.current_term and n.leader_id == leader.id]
        return leader if len(followers) > len(self.cluster.ids) // 2 else None

    def check_one_leader(self):
        """checkOneLeader: a connected leader emerges (Election Safety, one
        leader per term, is checked by the simulator all along)."""
        assert self.cluster.run_until(lambda: self.connected_leader() is not None,
                                      self.LEADER_TICKS), \
            why(self.cluster, "expected one leader, got none")
        return self.connected_leader()

    def check_no_leader(self):
        leaders = [n.id for n in self.live() if n.role is raft.Role.LEADER]
        assert not leaders, why(self.cluster, f"expected no connected leader, got {leaders}")

    def check_terms(self):
        """checkTerms: the term all connected servers agree on (soon)."""
        assert self.cluster.run_until(lambda: len({n.current_term for n in self.live()}) == 1,
                                      MAX_ELECTION_TICKS), why(self.cluster, "terms differ")
        return self.live()[0].current_term


@pytest.fixture
def new_lab(new_cluster):
    """Lab(SimCluster(size, seed, faults)) whose failures say how to rerun this test."""
    def make(size, seed=0, faults=RELIABLE):
        return Lab(new_cluster(size, seed, faults))
    return make


# -- 3A: leader election ----------------------------------------------------------------

def test_mit_3a_initial_election_one_leader_in_a_term_that_holds_steady(new_lab):
    """TestInitialElection3A: three servers elect one leader; they agree on
    its term (at least 1); with no failures the term does not change in 2 s
    (the lab only warns; on a network that loses nothing, a new election
    would be a bug here), and there is still one leader."""
    lab = new_lab(3, seed=1)
    lab.check_one_leader()
    term = lab.check_terms()
    assert term >= 1
    lab.cluster.tick(2 * TICKS_PER_SECOND)
    assert lab.check_terms() == term
    lab.check_one_leader()


def test_mit_3a_reelection_after_the_leader_goes_and_none_without_a_majority(new_lab):
    """TestReElection3A: the leader is disconnected, and the other two elect
    a new one; the old leader rejoins as a follower without disturbing it;
    with two of three disconnected there is no leader; once two can talk
    again, there is one."""
    lab = new_lab(3, seed=2)
    leader1 = lab.check_one_leader().id
    lab.disconnect(leader1)
    leader2 = lab.check_one_leader()
    lab.connect(leader1)
    assert lab.check_one_leader() is leader2                      # no disruption
    lab.cluster.tick(MAX_ELECTION_TICKS)
    assert lab.check_one_leader() is leader2 and leader2.role is raft.Role.LEADER
    assert lab.cluster.nodes[leader1].role is raft.Role.FOLLOWER

    lab.disconnect(leader2.id, lab.after(leader2.id, 1))
    lab.cluster.tick(2 * TICKS_PER_SECOND)
    lab.check_no_leader()
    lab.connect(lab.after(leader2.id, 1))
    lab.check_one_leader()
    lab.connect(leader2.id)
    lab.check_one_leader()


def test_mit_3a_many_elections_seven_servers_three_disconnected_at_random(new_lab):
    """TestManyElections3A: seven servers; nine times, three chosen at random
    (perhaps the same one twice) are disconnected, the others keep or
    elect a leader, and the three come back."""
    lab = new_lab(7, seed=3)
    rng = random.Random("many-elections")
    lab.check_one_leader()
    for _ in range(9):
        chosen = [rng.choice(lab.cluster.ids) for _ in range(3)]
        lab.disconnect(*chosen)
        lab.check_one_leader()
        lab.connect(*chosen)
    lab.check_one_leader()


# -- 3B: log replication -------------------------------------------------------------------

def test_mit_3b_basic_agreement_commands_commit_at_consecutive_indexes(new_lab):
    """TestBasicAgree3B: nothing is committed at an index before Start();
    three commands commit on all three servers at consecutive indexes. (The
    lab's index 1 is our 2: a new leader's first entry is its no-op, §8.)"""
    lab = new_lab(3, seed=4)
    leader = lab.check_one_leader()
    index = leader.log.last_index + 1
    for value in (100, 200, 300):
        assert lab.n_committed(index)[0] == 0, "committed before Start()"
        assert lab.one(value, 3, retry=False) == index
        index += 1


def test_mit_3b_rpc_bytes_each_command_is_sent_once_to_each_follower(new_lab):
    """TestRPCBytes3B: ten commands of 5,000 bytes. The bytes of every
    AppendEntries delivered, as encoded on the wire, stay within the lab's
    bound, servers x payload + 50,000: a leader that sent each command more
    than about once per follower would exceed it. Here it is exactly once."""
    lab = new_lab(3, seed=5)
    cluster = lab.cluster
    wire = collections.Counter()

    def observe(destination, message):
        if isinstance(message, raft.AppendEntries):
            wire["bytes"] += len(raft.encode_datagram(raft.encode_message(message)))
            for entry in message.entries:
                if entry.command is not None:
                    wire[destination, entry.command["client"]] += 1

    cluster.observers.append(observe)
    lab.one(99, 3, retry=False)
    before = wire["bytes"]
    rng = random.Random("rpc-bytes")
    payload = 0
    for value in range(100, 110):
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5000))
        lab.one(value, 3, retry=False, op=["set", "big", text])
        payload += len(text)

    sent = wire["bytes"] - before
    assert sent <= 3 * payload + 50_000, f"too many RPC bytes: {sent} for {payload}"
    followers = [n for n in cluster.ids if n != lab.check_one_leader().id]
    assert all(wire[follower, Lab.client(value)] == 1
               for follower in followers for value in range(100, 110)), wire


def test_mit_3b_follower_failure_agreement_until_both_followers_are_gone(new_lab):
    """TestFollowerFailure3B: with one follower disconnected the other two
    agree; with both gone the leader's next command never commits."""
    lab = new_lab(3, seed=6)
    lab.one(101, 3, retry=False)
    leader1 = lab.check_one_leader().id
    lab.disconnect(lab.after(leader1, 1))
    lab.one(102, 2, retry=False)
    lab.cluster.tick(TICKS_PER_SECOND)
    index = lab.one(103, 2, retry=False)

    leader2 = lab.check_one_leader().id
    lab.disconnect(lab.after(leader2, 1), lab.after(leader2, 2))
    assert lab.start_command(leader2, 104) == index + 1
    lab.cluster.tick(2 * TICKS_PER_SECOND)
    assert lab.n_committed(index + 1)[0] == 0, why(lab.cluster, "committed without a majority")


def test_mit_3b_leader_failure_a_new_leader_commits_until_no_majority_is_left(new_lab):
    """TestLeaderFailure3B: the leader is disconnected and the other two
    elect a leader and commit; that one is disconnected too, every server
    is offered a command, and none commits."""
    lab = new_lab(3, seed=7)
    lab.one(101, 3, retry=False)
    lab.disconnect(lab.check_one_leader().id)
    lab.one(102, 2, retry=False)
    lab.cluster.tick(TICKS_PER_SECOND)
    index = lab.one(103, 2, retry=False)

    lab.disconnect(lab.check_one_leader().id)
    for node_id in lab.cluster.ids:
        lab.start_command(node_id, 104)
    lab.cluster.tick(2 * TICKS_PER_SECOND)
    assert all(n.commit_index <= index for n in lab.cluster.nodes.values()), \
        why(lab.cluster, "committed without a majority")


def test_mit_3b_fail_agree_a_reconnected_follower_catches_up(new_lab):
    """TestFailAgree3B: a follower is disconnected while four commands
    commit; reconnected, it catches up, and new commands commit on all."""
    lab = new_lab(3, seed=8)
    lab.one(101, 3, retry=False)
    follower = lab.after(lab.check_one_leader().id, 1)
    lab.disconnect(follower)
    lab.one(102, 2, retry=False)
    lab.one(103, 2, retry=False)
    lab.cluster.tick(TICKS_PER_SECOND)
    lab.one(104, 2, retry=False)
    lab.one(105, 2, retry=False)
    lab.connect(follower)
    lab.one(106, 3)
    lab.cluster.tick(TICKS_PER_SECOND)
    lab.one(107, 3)


def test_mit_3b_fail_no_agree_with_three_of_five_gone_nothing_commits(new_lab):
    """TestFailNoAgree3B: three of five followers disconnected; the leader
    takes a command that cannot commit. Once they are back, a new election
    may keep or overwrite that index: either way the next command lands
    just after it (the lab's "index 2 or 3"; our leaders add a no-op), and
    agreement resumes."""
    lab = new_lab(5, seed=9)
    first = lab.one(10, 5, retry=False)
    leader = lab.check_one_leader().id
    lab.disconnect(*(lab.after(leader, k) for k in (1, 2, 3)))
    index = lab.start_command(leader, 20)
    assert index == first + 1
    lab.cluster.tick(2 * TICKS_PER_SECOND)
    assert lab.n_committed(index)[0] == 0, why(lab.cluster, "committed without a majority")

    lab.connect(*lab.cluster.ids)
    leader2 = lab.check_one_leader().id
    index2 = lab.start_command(leader2, 30)
    assert index2 in (index + 1, index + 2), index2
    lab.one(1000, 5)


def test_mit_3b_concurrent_starts_in_one_term_all_commit(new_lab):
    """TestConcurrentStarts3B: five commands started together on the leader
    all commit (if the term changes meanwhile, the lab tries again, up to
    five times)."""
    lab = new_lab(3, seed=10)
    for attempt in range(5):
        leader = lab.check_one_leader()
        term = leader.current_term
        lab.start_command(leader.id, 1 + 10 * attempt)
        values = [100 * (attempt + 1) + i for i in range(5)]
        indexes = [lab.start_command(leader.id, value) for value in values]
        if None in indexes:
            continue
        clients = [lab.wait(index, 3, term) for index in indexes]
        if None in clients:
            continue
        assert sorted(clients) == sorted(Lab.client(value) for value in values), clients
        break
    else:
        pytest.fail(why(lab.cluster, "the term changed too often"))


def test_mit_3b_rejoin_a_partitioned_leaders_uncommitted_entries_are_replaced(new_lab):
    """TestRejoin3B: the leader, disconnected, takes three commands that
    never commit; the others commit; their leader is disconnected in turn
    and the old leader comes back: it must learn it is stale, and its
    entries are replaced; with everyone back, agreement on all three."""
    lab = new_lab(3, seed=11)
    lab.one(101, 3)
    leader1 = lab.check_one_leader().id
    lab.disconnect(leader1)
    for value in (102, 103, 104):
        lab.start_command(leader1, value)
    stale = lab.cluster.nodes[leader1].log.entries[-3:]
    lab.one(103, 2)
    leader2 = lab.check_one_leader().id
    lab.disconnect(leader2)
    lab.connect(leader1)
    lab.one(104, 2)
    lab.connect(leader2)
    last = lab.one(105, 3)

    for node in lab.cluster.nodes.values():
        assert not any(entry in node.log.entries[:last] for entry in stale), \
            why(lab.cluster, f"{node.id} kept an uncommitted entry of the old leader")


def test_mit_3b_backup_logs_converge_quickly_after_two_partitions(new_lab):
    """TestBackup3B: five servers. The leader and one follower, cut off
    from the other three, take 50 commands that never commit; the three
    commit 50 of their own; then the leader of those three, with one other,
    takes 50 more that never commit, while the first two and a third commit
    50 more. When all five come back, logs full of conflicting entries must
    converge fast: the §5.3 conflict hint skips a whole term per refusal,
    so each follower is refused at most a few times, not once per entry."""
    lab = new_lab(5, seed=12)
    cluster = lab.cluster
    values = iter(range(1000, 2000))
    lab.one(next(values), 5)
    leader1 = lab.check_one_leader().id
    lab.disconnect(*(lab.after(leader1, k) for k in (2, 3, 4)))
    for _ in range(50):
        lab.start_command(leader1, next(values))
    cluster.tick(TICKS_PER_SECOND // 2)
    lab.disconnect(leader1, lab.after(leader1, 1))
    lab.connect(*(lab.after(leader1, k) for k in (2, 3, 4)))
    for _ in range(50):
        lab.one(next(values), 3)

    leader2 = lab.check_one_leader().id
    other = lab.after(leader1, 2)
    if other == leader2:
        other = lab.after(leader2, 1)
    lab.disconnect(other)
    for _ in range(50):
        lab.start_command(leader2, next(values))
    cluster.tick(TICKS_PER_SECOND // 2)
    lab.disconnect(*cluster.ids)
    lab.connect(leader1, lab.after(leader1, 1), other)
    for _ in range(50):
        lab.one(next(values), 3)

    mismatches = collections.Counter()     # refusals because the logs differ ([AE-2])

    def observe(_destination, message):
        if isinstance(message, raft.AppendEntriesReply) and message.conflict_index:
            mismatches[message.follower_id] += 1

    cluster.observers.append(observe)
    lab.connect(*cluster.ids)
    start = cluster.now
    lab.one(next(values), 5)
    assert cluster.run_until(lambda: converged(cluster), TICKS_PER_SECOND), \
        why(cluster, "no convergence")
    assert cluster.now - start <= TICKS_PER_SECOND, why(cluster, "slow to converge")
    # One entry at a time, the leader2 side would be refused about 50 times.
    assert max(mismatches.values(), default=0) <= 3, mismatches


def test_mit_3b_count_rpcs_to_elect_to_commit_and_while_idle(new_lab):
    """TestCount3B, counting RequestVote and AppendEntries delivered:
    electing the first leader takes at most 30; committing ten commands
    (eleven started, plus one) at most (10 + 1 + 3) x 3 = 42; one idle
    second (100 ticks, heartbeats every 5 to 2 followers: 40) at most 60."""
    lab = new_lab(3, seed=13)
    cluster = lab.cluster

    def rpcs():
        return sum(count for (_destination, kind), count in cluster.delivered.items()
                   if kind in ("RequestVote", "AppendEntries"))

    lab.check_one_leader()
    assert 1 <= rpcs() <= 30, f"{rpcs()} RPCs to elect the first leader"
    for attempt in range(5):
        leader = lab.check_one_leader()
        term, before = leader.current_term, rpcs()
        first = lab.start_command(leader.id, 1000 * (attempt + 1))
        values = [1000 * (attempt + 1) + i for i in range(1, 12)]
        indexes = [lab.start_command(leader.id, value) for value in values]
        assert indexes == list(range(first + 1, first + 12))
        clients = [lab.wait(index, 3, term) for index in indexes[:10]]
        if None in clients:
            continue                                    # the term changed: try again
        assert clients == [Lab.client(value) for value in values[:10]]
        committing = rpcs() - before
        assert committing <= (10 + 1 + 3) * 3, f"{committing} RPCs for 10 entries"
        break
    else:
        pytest.fail(why(cluster, "the term changed too often"))
    before = rpcs()
    cluster.tick(TICKS_PER_SECOND)
    assert rpcs() - before <= 3 * 20, f"{rpcs() - before} RPCs in one idle second"


# -- 3C: persistence ------------------------------------------------------------------------

def test_mit_3c_persist1_restarting_all_the_leader_or_a_follower_loses_nothing(new_lab):
    """TestPersist13C: all three servers restart; then the leader; then a
    server while disconnected; then another. Each time what was committed
    is still there (the checker) and new commands commit."""
    lab = new_lab(3, seed=14)
    lab.one(11, 3)
    for node_id in lab.cluster.ids:
        lab.crash(node_id)
    for node_id in lab.cluster.ids:
        lab.start(node_id)
    lab.one(12, 3)

    lab.start(lab.check_one_leader().id)
    lab.one(13, 3)

    leader2 = lab.check_one_leader().id
    lab.disconnect(leader2)
    index = lab.one(14, 2)
    lab.start(leader2)
    lab.connect(leader2)
    lab.wait(index, 3)                  # leader2 has caught up before the next crash

    i3 = lab.after(lab.check_one_leader().id, 1)
    lab.disconnect(i3)
    lab.one(15, 2)
    lab.start(i3)
    lab.connect(i3)
    lab.one(16, 3)


def test_mit_3c_persist2_servers_restarted_behind_cannot_outvote_those_that_remember(new_lab):
    """TestPersist23C: five rounds on five servers. Two followers are cut
    off while a command commits on the other three; then those three are
    cut off, and the two restart (from their disks) and reconnect: alone
    they can elect no one. A third server, restarted from its disk, joins
    them with the entry they lack, and a command commits on the three.
    Only its persisted log makes it refuse to vote for the two."""
    lab = new_lab(5, seed=15)
    value = 11
    for _ in range(5):
        lab.one(value, 5)
        leader1 = lab.check_one_leader().id
        lab.disconnect(lab.after(leader1, 1), lab.after(leader1, 2))
        lab.one(value + 1, 3)
        lab.disconnect(leader1, lab.after(leader1, 3), lab.after(leader1, 4))
        lab.start(lab.after(leader1, 1))
        lab.start(lab.after(leader1, 2))
        lab.connect(lab.after(leader1, 1), lab.after(leader1, 2))
        lab.cluster.tick(TICKS_PER_SECOND)
        lab.start(lab.after(leader1, 3))
        lab.connect(lab.after(leader1, 3))
        lab.one(value + 2, 3)
        lab.connect(lab.after(leader1, 4), leader1)
        value += 3
    lab.one(1000, 5)


def test_mit_3c_persist3_a_restarted_leader_outvotes_the_server_that_missed_a_commit(new_lab):
    """TestPersist33C: a server is disconnected while a command commits on
    the other two; both of those crash; the first comes back and so does
    one of the crashed ones, from its disk: it must still hold the command,
    so the server that missed it cannot win, and agreement goes on."""
    lab = new_lab(3, seed=16)
    lab.one(101, 3)
    leader = lab.check_one_leader().id
    lab.disconnect(lab.after(leader, 2))
    lab.one(102, 2)
    lab.crash(leader)
    lab.crash(lab.after(leader, 1))
    lab.connect(lab.after(leader, 2))
    lab.start(leader)
    lab.connect(leader)
    lab.one(103, 2)
    lab.start(lab.after(leader, 1))
    lab.connect(lab.after(leader, 1))
    lab.one(104, 3)


def lab_pause(rng):
    """The lab's pause between offering a command and failing the leader:
    usually 0-13 ms (0 or 1 tick), one time in ten up to half an election
    timeout of the lab (0-500 ms)."""
    if rng.random() < 0.1:
        return rng.randrange(TICKS_PER_SECOND // 2)
    return rng.randint(0, 1)


FIGURE_8_ROUNDS = 300


@pytest.mark.parametrize("seed", range(3))
def test_mit_3c_figure_8_leaders_crashing_at_once_never_lose_a_commit(seed, new_lab):
    """TestFigure83C, the paper's Figure 8 at random: each round offers a
    command to every server (the leaders take it), then crashes the leader
    at once, or usually within 10 ms; when fewer than three servers are up,
    a random one restarts. Logs full of entries from many short terms, some
    on a majority and not committed: exactly the Figure 8 trap. At the end
    everyone restarts and a command commits on all five.
    Fewer rounds than the lab (300, not 1,000), three seeds; half the
    crashes are power cuts in the middle of a cycle (beyond the lab)."""
    lab = new_lab(5, seed)
    cluster = lab.cluster
    rng = random.Random(f"figure-8-{seed}")
    values = iter(range(1, 100_000))
    lab.one(next(values), 1)
    up = 5
    for _ in range(FIGURE_8_ROUNDS):
        value, leader = next(values), None
        for node_id in cluster.ids:
            if lab.start_command(node_id, value) is not None:
                leader = node_id
        cluster.tick(lab_pause(rng))
        if leader is not None:
            lab.crash(leader, mid_cycle=rng.random() < 0.5)
            up -= 1
        if up < 3:
            node_id = rng.choice(cluster.ids)
            if node_id not in cluster.nodes:
                lab.start(node_id)
                up += 1
    for node_id in cluster.ids:
        if node_id not in cluster.nodes:
            lab.start(node_id)
    lab.one(next(values), 5)


@pytest.mark.parametrize("seed", range(2))
def test_mit_3c_unreliable_agreement(seed, new_lab):
    """TestUnreliableAgree3C: five servers on the unreliable network (10% of
    messages lost, some duplicated, 10-30 ms of jitter); 49 rounds of five
    commands at once (the lab's four concurrent one() calls and a fifth), each
    committed on at least one server; then, on a reliable network, one on all
    five. (Our rounds wait for all five commands; the lab's main loop waits
    only for its fifth.)"""
    lab = new_lab(5, seed, UNRELIABLE)
    for iteration in range(1, 50):
        lab.agree([100 * iteration + j for j in range(4)] + [iteration], 1)
    lab.cluster.faults = RELIABLE
    lab.one(10_000, 5)


@pytest.mark.parametrize("seed", range(2))
def test_mit_3c_figure_8_unreliable_with_long_reordering(seed, new_lab):
    """TestFigure8Unreliable3C: Figure 8 at random with disconnections
    instead of crashes, on the unreliable network; from a fifth of the way
    on, long reordering too (2/3 of replies held back 200-2200 ms, long
    after messages sent later). Each round offers a command to every
    server, waits, and disconnects the leader half the time; with fewer
    than three connected, a random one reconnects. At the end all are
    connected (long reordering still on) and a command must commit on all
    five within the lab's 10 s. Fewer rounds than the lab (300, not 1,000)."""
    lab = new_lab(5, seed, UNRELIABLE)
    cluster = lab.cluster
    rng = random.Random(f"figure-8-unreliable-{seed}")
    values = iter(range(1, 100_000))
    lab.one(next(values), 1)
    up = 5
    for round_number in range(FIGURE_8_ROUNDS):
        if round_number == FIGURE_8_ROUNDS // 5:
            cluster.faults = LONG_REORDERING
        value, leader = next(values), None
        for node_id in cluster.ids:
            if lab.start_command(node_id, value) is not None and node_id not in lab.disconnected:
                leader = node_id
        cluster.tick(lab_pause(rng))
        if leader is not None and rng.random() < 0.5:
            lab.disconnect(leader)
            up -= 1
        if up < 3:
            node_id = rng.choice(cluster.ids)
            if node_id in lab.disconnected:
                lab.connect(node_id)
                up += 1
    lab.connect(*cluster.ids)
    lab.one(next(values), 5)


class ChurnClient:
    """One client of the lab's churn test (internalChurn): offer a new value
    to every server; if one leads, look at the index it gave 0, 10, 30, 80
    and 180 ms later, and remember the value if it is committed there;
    give up on it after 380 ms. With no leader, rest 79 + 17 x me ms."""
    LOOKS = (0, 1, 3, 8, 18)
    GIVE_UP = 38

    def __init__(self, lab, me):
        self.lab, self.me = lab, me
        self.values = iter(range(1_000_000 * (me + 1), 1_000_000 * (me + 2)))
        self.seen = {}                  # value -> index where it was seen committed
        self.watching = None            # (value, index, since)
        self.rest_until = 0

    def step(self):
        lab, now = self.lab, self.lab.cluster.now
        if self.watching is None:
            if now < self.rest_until:
                return
            value, index = next(self.values), None
            for node_id in lab.cluster.ids:
                found = lab.start_command(node_id, value)
                if found is not None:
                    index = found
            if index is None:
                self.rest_until = now + (79 + 17 * self.me) // raft.TICK_MS
                return
            self.watching = (value, index, now)
        value, index, since = self.watching
        if now - since in self.LOOKS:
            count, client = lab.n_committed(index)
            if count:
                if client == lab.client(value):
                    self.seen[value] = index
                self.watching = None
        elif now - since >= self.GIVE_UP:
            self.watching = None


def churn(lab, rng, faults):
    """internalChurn: three clients offer values while, twenty times every
    0.7 s (70 ticks, a few of our election timeouts), a random server may be
    disconnected (1 in 5), restarted if crashed and connected (1 in 2), or
    crashed (1 in 5; half of them mid-cycle, beyond the lab). Then the
    network becomes reliable, everyone comes back, and a last value commits
    on all five: every value a client saw committed must be in the final
    log, at the index where it was seen."""
    cluster = lab.cluster
    cluster.faults = faults
    clients = [ChurnClient(lab, me) for me in range(3)]

    def run(ticks):
        for _ in range(ticks):
            for client in clients:
                client.step()
            cluster.tick()

    for _ in range(20):
        if rng.random() < 0.2:
            lab.disconnect(rng.choice(cluster.ids))
        if rng.random() < 0.5:
            node_id = rng.choice(cluster.ids)
            if node_id not in cluster.nodes:
                lab.start(node_id)
            lab.connect(node_id)
        if rng.random() < 0.2:
            lab.crash(rng.choice(cluster.ids), mid_cycle=rng.random() < 0.5)
        run(70)
    run(TICKS_PER_SECOND)
    cluster.faults = RELIABLE
    for node_id in cluster.ids:
        if node_id not in cluster.nodes:
            lab.start(node_id)
    lab.connect(*cluster.ids)
    cluster.tick(TICKS_PER_SECOND)
    last = lab.one(10_000_000, 5)

    final = lab.check_one_leader()
    seen = {value: index for client in clients for value, index in client.seen.items()}
    assert len(seen) >= 20, why(cluster, f"only {len(seen)} values seen committed")
    for value, index in seen.items():
        assert index <= last and final.log.entry(index).command["client"] == Lab.client(value), \
            why(cluster, f"value {value}, seen committed at index {index}, is gone")
    lab.wait(last, 5)                   # every server has applied the whole log


@pytest.mark.parametrize("seed", [0])
def test_mit_3c_reliable_churn_every_value_seen_committed_survives(seed, new_lab):
    """TestReliableChurn3C: see churn(), on the reliable network."""
    churn(new_lab(5, seed), random.Random(f"churn-{seed}"), RELIABLE)


@pytest.mark.parametrize("seed", [0])
def test_mit_3c_unreliable_churn_every_value_seen_committed_survives(seed, new_lab):
    """TestUnreliableChurn3C: see churn(), on the unreliable network."""
    churn(new_lab(5, seed), random.Random(f"unreliable-churn-{seed}"), UNRELIABLE)
