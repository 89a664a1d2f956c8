"""Rule tests: Figure 2 of the Raft paper, one rule at a time.

Each test builds ONE raft.RaftNode on raft.MemoryStorage, puts it in a state
with the helpers below (preloaded storage, then real ticks and messages),
feeds it exactly one input (a tick, a message, a proposal or a read), and
then checks the whole output of that input:

    sent      every (destination, message) it sent, compared as whole objects
    answers   every (request_id, answer) it gave a client
    state     the node's fields, compared as one dict, so a field that changed
              without the test expecting it fails the test too

Outputs are collected with raft.persist_send_apply(), the very cycle the UDP
runtime runs, and the send callback checks [PERSIST] on every message of every
test: nothing is still waiting to be synced when a message leaves.

Test names carry the rule's tag (test_ae5_..., test_lead3a_...) and
docstrings name it in brackets, so tests/test_figure2_tags.py can check that
every tag in raft.py's legend is tested.
"""

import dataclasses
import random

import pytest

import kv
import raft
from raft import (AppendEntries, AppendEntriesReply, Entry, RequestVote,
                  RequestVoteReply, Role)

SEED = 7
MEMBERS = ["n1", "n2", "n3"]
FIVE = ["n1", "n2", "n3", "n4", "n5"]
CONFIG = raft.Config(election_timeout_ticks=(10, 20), heartbeat_ticks=3,
                     pre_vote=False, check_quorum=False)   # Figure 2 alone


# ---------------------------------------------------------------------------
# Helpers: logs, nodes in a given role, the output of one input
# ---------------------------------------------------------------------------

def E(term, index):
    """The entry at index of a preloaded log: a client command, distinct per
    (term, index), so a log that kept the wrong entry shows up in ==."""
    return Entry(term, {"client": "c0", "seq": index, "op": ["set", f"k{index}", f"t{term}"]})


def log_of(terms):
    """log_of([1, 1, 2]) -> the entries of a log whose terms are 1, 1, 2."""
    return [E(term, index) for index, term in enumerate(terms, start=1)]


def command(client, seq, op):
    return {"client": client, "seq": seq, "op": op}


class RecordingStore(kv.KeyValueStore):
    """A KeyValueStore that also records every op applied, in order."""

    def __init__(self):
        super().__init__()
        self.applied = []

    def apply(self, op):
        self.applied.append(op)
        return super().apply(op)


def make_node(node_id="n1", *, term=0, log=(), voted_for=None, members=MEMBERS,
              config=CONFIG, machine=None, seed=SEED):
    """A node restarted from synced storage holding term, voted_for and log
    (a list of terms, or of Entry objects). It starts as a follower."""
    storage = raft.MemoryStorage()
    storage.term, storage.voted_for = term, voted_for
    entries = list(log)
    storage.entries = entries if all(isinstance(e, Entry) for e in entries) else log_of(entries)
    node = raft.RaftNode(node_id, members, storage, machine or kv.KeyValueStore(),
                         random.Random(seed), config)
    cycle(node)
    return node


def restart(node):
    """The same node after a power cut: only what was synced survives."""
    node.storage.crash()
    return raft.RaftNode(node.id, node.members, node.storage, kv.KeyValueStore(),
                         random.Random(SEED + 1), node.config)


def cycle(node):
    """One persist -> send -> apply cycle, the runtime's own function.
    Returns (sent, answers). Every send checks [PERSIST]: nothing written by
    the node is still unsynced when a message leaves."""
    sent, answers = [], []

    def send(destination, message):
        assert node.storage.pending == [], (
            f"[PERSIST] {message} sent while {node.storage.pending} is not synced")
        sent.append((destination, message))

    raft.persist_send_apply(node, send, lambda request_id, answer:
                            answers.append((request_id, answer)))
    return sent, answers


def step(node, message):
    node.step(message)
    return cycle(node)


def tick(node, times=1):
    """Tick times; return the output of the last tick. Earlier ticks must be
    silent (checked), so the last tick is the one input under test."""
    for number in range(times):
        node.tick()
        output = cycle(node)
        if number < times - 1:
            assert output == ([], []), f"tick {number + 1} of {times} was not silent"
    return output


def make_candidate(node_id="n1", *, term, log=(), members=MEMBERS, config=CONFIG,
                   machine=None):
    """A candidate of term, made the real way: a follower of term - 1 whose
    election timer runs out."""
    node = make_node(node_id, term=term - 1, log=log, members=members, config=config,
                     machine=machine)
    tick(node, node.election_timeout)
    assert (node.role, node.current_term) == (Role.CANDIDATE, term)
    return node


def make_leader(node_id="n1", *, term, log=(), members=MEMBERS, config=CONFIG,
                machine=None, acked=()):
    """A leader of term, elected by real votes. It has appended its no-op
    [§8-NOOP]; the peers in acked have replicated it (so it may be committed)."""
    node = make_candidate(node_id, term=term, log=log, members=members, config=config,
                          machine=machine)
    for voter in node.peers[:len(members) // 2]:
        node.step(RequestVoteReply(term, True, voter, node.id))
    assert node.role is Role.LEADER
    cycle(node)
    for peer in acked:
        step(node, AppendEntriesReply(term, True, peer, match_index=node.log.last_index))
    return node


def state(node):
    """Everything a rule may change, as one comparable dict."""
    return {
        "role": node.role, "current_term": node.current_term,
        "voted_for": node.voted_for, "leader_id": node.leader_id,
        "votes": set(node.votes), "log": list(node.log.entries),
        "commit_index": node.commit_index, "last_applied": node.last_applied,
        "next_index": dict(node.next_index), "match_index": dict(node.match_index),
        "durable": (node.storage.term, node.storage.voted_for, list(node.storage.entries)),
        "machine": node.machine.snapshot(),
    }


def heartbeat(term, leader, prev_log_index, prev_log_term, leader_commit=0, read_round=0):
    return AppendEntries(term, leader, prev_log_index, prev_log_term, (), leader_commit,
                         read_round)


NOT_LEADER = {"ok": False, "error": "not_leader"}


# ---------------------------------------------------------------------------
# [PERSIST] durable before sent
# ---------------------------------------------------------------------------

def test_persist_granted_vote_is_synced_before_the_reply_and_survives_a_crash():
    """[PERSIST] Figure 2 persistent state, §5.1 / §5.2: a vote reaches stable
    storage before the reply that grants it, so a restart cannot vote twice."""
    node = make_node(term=1)
    node.step(RequestVote(2, "n2", 0, 0))
    assert node.storage.pending != []                 # written, not yet synced
    assert (node.storage.term, node.storage.voted_for) == (1, None)

    sent = []

    def send(destination, message):
        assert node.storage.pending == []
        assert (node.storage.term, node.storage.voted_for) == (2, "n2")
        sent.append((destination, message))

    raft.persist_send_apply(node, send, lambda *answer: pytest.fail("no client here"))
    assert sent == [("n2", RequestVoteReply(2, True, "n1", "n2"))]

    restarted = restart(node)
    assert (restarted.current_term, restarted.voted_for) == (2, "n2")
    restarted.step(RequestVote(2, "n3", 0, 0))
    assert restarted.collect_messages() == [("n3", RequestVoteReply(2, False, "n1", "n3"))]


def test_persist_candidate_term_and_self_vote_are_synced_before_request_vote():
    """[PERSIST] with [CAN-1], §5.2: the new term and the vote for itself are
    durable before any RequestVote leaves."""
    node = make_node(term=3, log=[1, 3])
    for _ in range(node.election_timeout - 1):
        node.tick()
    node.tick()
    sent = []

    def send(destination, message):
        assert node.storage.pending == []
        assert (node.storage.term, node.storage.voted_for) == (4, "n1")
        sent.append((destination, message))

    raft.persist_send_apply(node, send, lambda *answer: None)
    assert sent == [("n2", RequestVote(4, "n1", 2, 3)), ("n3", RequestVote(4, "n1", 2, 3))]

    restarted = restart(node)
    assert (restarted.current_term, restarted.voted_for) == (4, "n1")
    assert restarted.log.entries == log_of([1, 3])


def test_persist_follower_entries_are_synced_before_the_success_reply():
    """[PERSIST] §5.3: a follower's success reply makes the leader count the
    entries as replicated, so they must be durable first."""
    node = make_node(term=2, log=[1])
    new_entries = (E(2, 2), E(2, 3))
    node.step(AppendEntries(2, "n2", 1, 1, new_entries, 0))
    sent = []

    def send(destination, message):
        assert node.storage.pending == []
        assert node.storage.entries == [E(1, 1), *new_entries]
        sent.append((destination, message))

    raft.persist_send_apply(node, send, lambda *answer: None)
    assert sent == [("n2", AppendEntriesReply(2, True, "n1", match_index=3, prev_log_index=1))]
    assert restart(node).log.entries == [E(1, 1), *new_entries]


def test_persist_leader_entry_is_synced_before_append_entries_carry_it():
    """[PERSIST] §5.3: the leader counts its own log towards a majority, so a
    new entry is durable on the leader before it is sent to anyone."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.propose("r1", "c1", 1, ["set", "x", "1"])
    entry = Entry(2, command("c1", 1, ["set", "x", "1"]))
    sent = []

    def send(destination, message):
        assert node.storage.pending == []
        assert node.storage.entries == [Entry(2, None), entry]
        sent.append((destination, message))

    raft.persist_send_apply(node, send, lambda *answer: None)
    assert sent == [(peer, AppendEntries(2, "n1", 1, 2, (entry,), 1)) for peer in ("n2", "n3")]
    assert restart(node).log.entries == [Entry(2, None), entry]


def test_persist_restart_with_log_newer_than_state_record_adopts_the_log_term():
    """[PERSIST] recovery: if the log was synced but the term record was not,
    the entries prove their term existed; the node takes it, with no vote."""
    storage = raft.MemoryStorage()
    storage.term, storage.voted_for = 2, "n2"
    storage.entries = log_of([1, 3])
    node = raft.RaftNode("n1", MEMBERS, storage, kv.KeyValueStore(), random.Random(SEED), CONFIG)
    assert (node.current_term, node.voted_for) == (3, None)
    cycle(node)
    assert (storage.term, storage.voted_for) == (3, None)


# ---------------------------------------------------------------------------
# [ALL-1] apply what is committed, in order, once
# ---------------------------------------------------------------------------

def spy_on_applied_indices(node):
    """Record the index of every entry node applies. The session table
    ([§6.3]) would hide a second application of a client command from the
    state machine, so ALL-1 is checked at the entries themselves."""
    applied = []
    apply_entry = node.apply_entry

    def recording(entry):
        applied.append((node.last_applied, entry))
        return apply_entry(entry)

    node.apply_entry = recording
    return applied


def test_all1_applies_committed_entries_in_log_order_and_no_further():
    """[ALL-1] Figure 2 rules for all servers, §5.3: commit_index > last_applied
    -> apply log[last_applied + 1], up to commit_index and not beyond."""
    machine = RecordingStore()
    node = make_node(term=2, log=[1, 1, 2], machine=machine)
    applied = spy_on_applied_indices(node)
    before = state(node)
    sent, answers = step(node, heartbeat(2, "n2", 3, 2, leader_commit=2))
    assert sent == [("n2", AppendEntriesReply(2, True, "n1", match_index=3, prev_log_index=3))]
    assert answers == []
    assert applied == [(1, E(1, 1)), (2, E(1, 2))]
    assert machine.applied == [E(1, 1).command["op"], E(1, 2).command["op"]]
    assert state(node) == {**before, "leader_id": "n2", "commit_index": 2, "last_applied": 2,
                           "machine": {"data": {"k1": "t1", "k2": "t1"}}}


def test_all1_never_applies_an_entry_twice():
    """[ALL-1] §5.3: each committed entry is applied exactly once; a later
    commit applies only the entries after last_applied."""
    node = make_node(term=2, log=[1, 1, 2])
    applied = spy_on_applied_indices(node)
    step(node, heartbeat(2, "n2", 3, 2, leader_commit=2))
    step(node, heartbeat(2, "n2", 3, 2, leader_commit=2))      # a duplicate
    assert applied == [(1, E(1, 1)), (2, E(1, 2))]
    sent, answers = step(node, heartbeat(2, "n2", 3, 2, leader_commit=3))
    assert applied == [(1, E(1, 1)), (2, E(1, 2)), (3, E(2, 3))]
    assert (node.commit_index, node.last_applied) == (3, 3)
    assert answers == []


def test_all1_a_malformed_command_in_the_log_is_applied_as_an_error_not_a_crash():
    """[ALL-1] the log is data from the network: an entry whose op the state
    machine rejects is applied as an error answer (as on every node), and
    applying goes on past it."""
    bad = Entry(1, command("c1", 1, ["incr", "x", "five"]))
    node = make_node(term=1, log=[bad, E(1, 2)])
    step(node, heartbeat(1, "n2", 2, 1, leader_commit=2))
    assert (node.last_applied, node.machine.data) == (2, {"k2": "t1"})


def test_all1_a_log_entry_with_an_unhashable_command_name_does_not_crash_the_node():
    """[ALL-1] a follower must survive applying any entry that decodes: an op
    whose first element is a list passes raft.decode_entry."""
    bad = Entry(1, command("c1", 1, [["set"], "x", "1"]))
    assert raft.decode_entry(raft.encode_entry(bad)) == bad
    node = make_node(term=1, log=[bad])
    step(node, heartbeat(1, "n2", 1, 1, leader_commit=1))
    assert node.last_applied == 1


# ---------------------------------------------------------------------------
# [ALL-2] a higher term: adopt it, become follower
# ---------------------------------------------------------------------------

def test_all2_leader_steps_down_on_append_entries_of_a_higher_term():
    """[ALL-2] Figure 2 rules for all servers, §5.1: a leader that sees a
    higher term adopts it and follows; its waiting clients are told to retry."""
    node = make_leader(term=2)
    node.propose("r1", "c1", 1, ["set", "x", "1"])
    node.read("q1", ["get", "x"])
    cycle(node)
    before = state(node)
    sent, answers = step(node, heartbeat(3, "n2", 0, 0))
    assert sent == [("n2", AppendEntriesReply(3, True, "n1", match_index=0))]
    assert answers == [("r1", {**NOT_LEADER, "leader": "n2", "term": 3}),
                       ("q1", {**NOT_LEADER, "leader": "n2", "term": 3})]
    assert state(node) == {**before, "role": Role.FOLLOWER, "current_term": 3,
                           "voted_for": None, "leader_id": "n2",
                           "durable": (3, None, before["log"])}


def test_all2_candidate_steps_down_on_a_vote_reply_of_a_higher_term():
    """[ALL-2] §5.1: even a reply (a refused vote) carrying a higher term makes
    a candidate adopt the term and become a follower, with no vote."""
    node = make_candidate(term=2)
    before = state(node)
    sent, answers = step(node, RequestVoteReply(5, False, "n2", node.id))
    assert (sent, answers) == ([], [])
    assert state(node) == {**before, "role": Role.FOLLOWER, "current_term": 5,
                           "voted_for": None, "durable": (5, None, [])}


def test_all2_leader_steps_down_on_an_append_entries_reply_of_a_higher_term():
    """[ALL-2] §5.1: a follower's refusal carrying a higher term deposes the
    leader; it does not know the new leader yet."""
    node = make_leader(term=2)
    node.propose("r1", "c1", 1, ["set", "x", "1"])
    cycle(node)
    before = state(node)
    sent, answers = step(node, AppendEntriesReply(4, False, "n3"))
    assert sent == []
    assert answers == [("r1", {**NOT_LEADER, "leader": None, "term": 4})]
    assert state(node) == {**before, "role": Role.FOLLOWER, "current_term": 4,
                           "voted_for": None, "leader_id": None,
                           "durable": (4, None, before["log"])}


def test_all2_higher_term_clears_the_vote_of_the_old_term():
    """[ALL-2] §5.2: a vote is per term. Adopting a higher term clears
    voted_for, so the node may vote again in the new term."""
    node = make_node(term=2, voted_for="n2")
    before = state(node)
    sent, answers = step(node, RequestVote(3, "n3", 0, 0))
    assert (sent, answers) == ([("n3", RequestVoteReply(3, True, "n1", "n3"))], [])
    assert state(node) == {**before, "current_term": 3, "voted_for": "n3",
                           "durable": (3, "n3", [])}


def test_all2_vote_is_kept_when_the_term_does_not_change():
    """[ALL-2] §5.2, eliben/raft's double-vote bug: becoming a follower within
    the same term (here a candidate hearing the winner, [CAN-3]) must NOT
    clear voted_for, or the node could vote twice in one term."""
    node = make_candidate(term=3)
    before = state(node)
    sent, answers = step(node, heartbeat(3, "n2", 0, 0))
    assert (sent, answers) == ([("n2", AppendEntriesReply(3, True, "n1"))], [])
    assert state(node) == {**before, "role": Role.FOLLOWER, "leader_id": "n2"}
    assert (node.voted_for, node.storage.voted_for) == ("n1", "n1")


def test_all2_same_or_lower_term_never_changes_term_or_vote():
    """[ALL-2] only a HIGHER term is adopted: a message of a lower term leaves
    term and vote alone (and is refused, [RV-1])."""
    node = make_node(term=4, voted_for="n2")
    before = state(node)
    sent, answers = step(node, RequestVote(3, "n3", 9, 3))
    assert (sent, answers) == ([("n3", RequestVoteReply(4, False, "n1", "n3"))], [])
    assert state(node) == before


# ---------------------------------------------------------------------------
# [FOL-1] followers answer RPCs: refusals too
# ---------------------------------------------------------------------------

def test_fol1_refused_vote_is_answered_not_silent():
    """[FOL-1] Figure 2 rules for followers, §5.2: a refused vote gets an
    explicit 'no' (PySyncObj answered with silence, leaving the candidate to
    time out)."""
    node = make_node(term=2, voted_for="n2")
    before = state(node)
    sent, answers = step(node, RequestVote(2, "n3", 0, 0))
    assert (sent, answers) == ([("n3", RequestVoteReply(2, False, "n1", "n3"))], [])
    assert state(node) == before


def test_fol1_refused_append_entries_is_answered_not_silent():
    """[FOL-1] §5.3: an AppendEntries that does not match our log is refused
    with an answer, so the leader can back up ([LEAD-3b])."""
    node = make_node(term=2, log=[1])
    before = state(node)
    sent, answers = step(node, AppendEntries(2, "n2", 3, 2, (E(2, 4),), 0))
    assert sent == [("n2", AppendEntriesReply(2, False, "n1", conflict_index=2, prev_log_index=3))]
    assert answers == []
    assert state(node) == {**before, "leader_id": "n2"}


def test_fol1_heartbeat_is_answered_and_records_the_leader():
    """[FOL-1] §5.2: a follower answers the leader's heartbeat and learns who
    leads, to redirect clients."""
    node = make_node(term=2, log=[1])
    before = state(node)
    sent, answers = step(node, heartbeat(2, "n3", 1, 1, read_round=4))
    assert sent == [("n3", AppendEntriesReply(2, True, "n1", match_index=1, read_round=4, prev_log_index=1))]
    assert answers == []
    assert state(node) == {**before, "leader_id": "n3"}


def test_fol1_leader_answers_a_request_vote_of_its_own_term_with_a_refusal():
    """[FOL-1] every RPC gets an answer, whoever receives it: a leader refuses
    a vote in its own term (it voted for itself) and says so."""
    node = make_leader(term=2)
    before = state(node)
    sent, answers = step(node, RequestVote(2, "n3", 5, 2))
    assert (sent, answers) == ([("n3", RequestVoteReply(2, False, "n1", "n3"))], [])
    assert state(node) == before


# ---------------------------------------------------------------------------
# [FOL-2] an election timeout without a leader or a granted vote
# ---------------------------------------------------------------------------

def test_fol2_follower_starts_an_election_after_a_silent_election_timeout():
    """[FOL-2] Figure 2 rules for followers, §5.2: no AppendEntries and no vote
    granted for election_timeout ticks -> become candidate, and not a tick
    earlier."""
    node = make_node(term=2, log=[1, 2])
    before = state(node)
    sent, answers = tick(node, node.election_timeout)      # earlier ticks: silent
    assert sent == [("n2", RequestVote(3, "n1", 2, 2)), ("n3", RequestVote(3, "n1", 2, 2))]
    assert answers == []
    assert state(node) == {**before, "role": Role.CANDIDATE, "current_term": 3,
                           "voted_for": "n1", "votes": {"n1"},
                           "durable": (3, "n1", log_of([1, 2]))}


def test_fol2_append_entries_from_the_leader_resets_the_election_timer():
    """[FOL-2] §5.2: hearing from the current leader restarts the countdown."""
    node = make_node(term=2)
    timeout = node.election_timeout
    tick(node, timeout - 1)
    step(node, heartbeat(2, "n2", 0, 0))
    assert tick(node, timeout - 1) == ([], [])
    assert node.role is Role.FOLLOWER
    sent, _ = tick(node)
    assert node.role is Role.CANDIDATE and len(sent) == 2


def test_fol2_granting_a_vote_resets_the_election_timer():
    """[FOL-2] §5.2: granting a vote restarts the countdown, giving that
    candidate time to win."""
    node = make_node(term=2)
    timeout = node.election_timeout
    tick(node, timeout - 1)
    assert step(node, RequestVote(2, "n2", 0, 0)) == ([("n2", RequestVoteReply(2, True, "n1", "n2"))], [])
    assert tick(node, timeout - 1) == ([], [])
    assert node.role is Role.FOLLOWER


def test_fol2_refusing_a_vote_does_not_reset_the_election_timer():
    """[FOL-2] §5.2: only a GRANTED vote counts; a refusal leaves the timer
    running, or a stream of hopeless candidates would silence the follower."""
    node = make_node(term=2, voted_for="n2")
    tick(node, node.election_timeout - 1)
    step(node, RequestVote(2, "n3", 0, 0))             # refused: already voted
    sent, _ = tick(node)
    assert node.role is Role.CANDIDATE
    assert sent == [("n2", RequestVote(3, "n1", 0, 0)), ("n3", RequestVote(3, "n1", 0, 0))]


def test_fol2_refusing_a_stale_log_candidate_of_a_higher_term_does_not_reset_the_timer():
    """[FOL-2] with [ALL-2]: a candidate whose log is behind raises our term
    but gets no vote, and must not restart our countdown (else it could keep
    better candidates from ever timing out)."""
    node = make_node(term=2, log=[1, 2])
    tick(node, node.election_timeout - 1)
    sent, _ = step(node, RequestVote(5, "n3", 1, 1))
    assert sent == [("n3", RequestVoteReply(5, False, "n1", "n3"))]
    sent, _ = tick(node)
    assert node.role is Role.CANDIDATE
    assert sent == [("n2", RequestVote(6, "n1", 2, 2)), ("n3", RequestVote(6, "n1", 2, 2))]


def test_fol2_append_entries_from_a_stale_leader_does_not_reset_the_timer():
    """[FOL-2] with [AE-1]: a deposed leader of an older term is not 'the
    current leader'; its messages do not keep us from an election."""
    node = make_node(term=3)
    tick(node, node.election_timeout - 1)
    step(node, heartbeat(2, "n2", 0, 0))
    tick(node)
    assert (node.role, node.current_term) == (Role.CANDIDATE, 4)


# ---------------------------------------------------------------------------
# [CAN-1] .. [CAN-4] candidates
# ---------------------------------------------------------------------------

def test_can1_candidate_increments_term_votes_for_itself_and_asks_everyone():
    """[CAN-1] Figure 2 rules for candidates, §5.2: term + 1, vote for self,
    RequestVote with our last log index and term to every other server; the
    leader we knew is forgotten."""
    node = make_node(term=4, log=[1, 4], members=FIVE)
    step(node, heartbeat(4, "n2", 2, 4))
    before = state(node)
    sent, answers = tick(node, node.election_timeout)
    assert sent == [(peer, RequestVote(5, "n1", 2, 4)) for peer in ("n2", "n3", "n4", "n5")]
    assert answers == []
    assert state(node) == {**before, "role": Role.CANDIDATE, "current_term": 5,
                           "voted_for": "n1", "leader_id": None, "votes": {"n1"},
                           "durable": (5, "n1", log_of([1, 4]))}


def test_can1_resets_the_election_timer():
    """[CAN-1] §5.2: the election timer restarts with the election, so the
    candidate waits a whole new timeout before trying again."""
    node = make_candidate(term=2)
    assert tick(node, node.election_timeout - 1) == ([], [])
    assert (node.role, node.current_term) == (Role.CANDIDATE, 2)


def test_can2_votes_from_a_majority_make_a_leader():
    """[CAN-2] Figure 2 rules for candidates, §5.2: self + one vote is a
    majority of three; the leader announces itself at once ([LEAD-1]) with
    its no-op ([§8-NOOP])."""
    node = make_candidate(term=2, log=[1])
    before = state(node)
    sent, answers = step(node, RequestVoteReply(2, True, "n2", node.id))
    noop = Entry(2, None)
    assert sent == [(peer, AppendEntries(2, "n1", 1, 1, (noop,), 0)) for peer in ("n2", "n3")]
    assert answers == []
    assert state(node) == {**before, "role": Role.LEADER, "leader_id": "n1",
                           "votes": {"n1", "n2"}, "log": [E(1, 1), noop],
                           "next_index": {"n2": 2, "n3": 2}, "match_index": {"n2": 0, "n3": 0},
                           "durable": (2, "n1", [E(1, 1), noop])}


def test_can2_refused_and_duplicated_votes_do_not_make_a_majority():
    """[CAN-2] §5.2: only distinct granted votes count: in a cluster of five,
    a duplicated 'yes' and a 'no' leave the candidate one vote short."""
    node = make_candidate(term=2, members=FIVE)
    for reply in (RequestVoteReply(2, True, "n2", node.id), RequestVoteReply(2, True, "n2", node.id),
                  RequestVoteReply(2, False, "n3", node.id)):
        assert step(node, reply) == ([], [])
        assert node.role is Role.CANDIDATE
    assert node.votes == {"n1", "n2"}
    sent, _ = step(node, RequestVoteReply(2, True, "n4", node.id))
    assert node.role is Role.LEADER
    assert [destination for destination, _ in sent] == ["n2", "n3", "n4", "n5"]


def test_can2_a_vote_from_an_earlier_election_does_not_count():
    """[CAN-2] replies are judged against the CURRENT term: a 'yes' for our
    election of term 2 arriving during our election of term 3 is stale."""
    node = make_candidate(term=2)
    tick(node, node.election_timeout)                     # [CAN-4]: term 3
    before = state(node)
    assert step(node, RequestVoteReply(2, True, "n2", node.id)) == ([], [])
    assert state(node) == before
    assert (node.role, node.current_term, node.votes) == (Role.CANDIDATE, 3, {"n1"})


def test_can3_append_entries_of_the_same_term_makes_a_candidate_follow():
    """[CAN-3] Figure 2 rules for candidates, §5.2: an AppendEntries from a
    leader of our term means another server won; follow it and accept."""
    node = make_candidate(term=3, log=[1])
    before = state(node)
    sent, answers = step(node, AppendEntries(3, "n3", 1, 1, (Entry(3, None),), 1))
    assert sent == [("n3", AppendEntriesReply(3, True, "n1", match_index=2, prev_log_index=1))]
    assert answers == []
    log = [E(1, 1), Entry(3, None)]
    assert state(node) == {**before, "role": Role.FOLLOWER, "leader_id": "n3",
                           "log": log, "commit_index": 1, "last_applied": 1,
                           "durable": (3, "n1", log), "machine": {"data": {"k1": "t1"}}}


def test_can3_append_entries_of_an_older_term_does_not_stop_a_candidate():
    """[CAN-3] only a leader of OUR term (or higher, [ALL-2]) ends the
    election; an older one is refused ([AE-1]) and the candidate carries on."""
    node = make_candidate(term=3)
    before = state(node)
    sent, answers = step(node, heartbeat(2, "n2", 0, 0))
    assert (sent, answers) == ([("n2", AppendEntriesReply(3, False, "n1"))], [])
    assert state(node) == before


def test_can4_election_timeout_while_candidate_starts_a_new_election():
    """[CAN-4] Figure 2 rules for candidates, §5.2: a split vote times out;
    the candidate starts over in a higher term and forgets the old votes."""
    node = make_candidate(term=2, log=[1], members=FIVE)
    step(node, RequestVoteReply(2, True, "n2", node.id))
    before = state(node)
    sent, answers = tick(node, node.election_timeout)
    assert sent == [(peer, RequestVote(3, "n1", 1, 1)) for peer in ("n2", "n3", "n4", "n5")]
    assert answers == []
    assert state(node) == {**before, "current_term": 3, "votes": {"n1"},
                           "durable": (3, "n1", log_of([1]))}


def test_can4_each_new_election_draws_a_fresh_random_timeout():
    """[CAN-4] §5.2: randomized timeouts are what break split votes, so every
    new election draws its timeout again from the node's random generator."""
    node = make_candidate(term=2)
    expected = random.Random(SEED)
    low, high = CONFIG.election_timeout_ticks
    draws = [expected.randint(low, high) for _ in range(3)]   # init, CAN-1, CAN-4
    assert node.election_timeout == draws[1]
    tick(node, node.election_timeout)
    assert (node.current_term, node.election_timeout) == (3, draws[2])


# ---------------------------------------------------------------------------
# [LEAD-1] .. [LEAD-4] leaders
# ---------------------------------------------------------------------------

def test_lead1_new_leader_sends_append_entries_to_every_follower_at_once():
    """[LEAD-1] Figure 2 rules for leaders, §5.2: upon election, send
    AppendEntries to each server, before any timer fires."""
    node = make_candidate(term=4, log=[1, 1], members=FIVE)
    step(node, RequestVoteReply(4, True, "n3", node.id))
    sent, answers = step(node, RequestVoteReply(4, True, "n5", node.id))
    noop = Entry(4, None)
    assert sent == [(peer, AppendEntries(4, "n1", 2, 1, (noop,), 0))
                    for peer in ("n2", "n3", "n4", "n5")]
    assert answers == []


def test_lead1_idle_leader_sends_a_heartbeat_every_heartbeat_interval():
    """[LEAD-1] §5.2: with nothing to replicate, the leader still sends empty
    AppendEntries every heartbeat_ticks, carrying its commit index."""
    node = make_leader(term=2, acked=["n2", "n3"])
    before = state(node)
    sent, answers = tick(node, CONFIG.heartbeat_ticks)        # earlier ticks: silent
    assert sent == [(peer, heartbeat(2, "n1", 1, 2, leader_commit=1)) for peer in ("n2", "n3")]
    assert answers == []
    assert state(node) == before
    assert tick(node, CONFIG.heartbeat_ticks) == (sent, [])


def test_lead1_heartbeat_resends_entries_a_follower_has_not_acknowledged():
    """[LEAD-1] with [LEAD-3]: a heartbeat also carries what a follower still
    lacks. The first heartbeat after a batch gives it time (it may be slow,
    not lost): no entries, from where n3 is known to match (index 0). If
    still unanswered at the next heartbeat, the batch was lost: resent."""
    node = make_leader(term=2, log=[1], acked=["n2"])
    sent, _ = tick(node, CONFIG.heartbeat_ticks)
    assert sent == [("n2", heartbeat(2, "n1", 2, 2, leader_commit=2)),
                    ("n3", heartbeat(2, "n1", 0, 0, leader_commit=2))]
    sent, _ = tick(node, CONFIG.heartbeat_ticks)
    assert sent == [("n2", heartbeat(2, "n1", 2, 2, leader_commit=2)),
                    ("n3", AppendEntries(2, "n1", 1, 1, (Entry(2, None),), 2))]


def test_lead1_heartbeat_interval_restarts_at_each_election():
    """[LEAD-1] the announcement on election is itself the first heartbeat:
    the next one is due heartbeat_ticks later, even for a node that had led
    (and ticked) in an earlier term."""
    node = make_leader(term=2, acked=["n2", "n3"])
    tick(node, CONFIG.heartbeat_ticks - 1)                   # a heartbeat almost due
    step(node, heartbeat(3, "n2", 1, 2, leader_commit=1))    # [ALL-2]: deposed
    tick(node, node.election_timeout)                        # [FOL-2]: term 4
    sent, _ = step(node, RequestVoteReply(4, True, "n3", node.id))    # [CAN-2]: elected
    noop = Entry(4, None)
    assert sent == [(peer, AppendEntries(4, "n1", 1, 2, (noop,), 1)) for peer in ("n2", "n3")]
    step(node, AppendEntriesReply(4, True, "n2", match_index=2))
    step(node, AppendEntriesReply(4, True, "n3", match_index=2))
    sent, _ = tick(node, CONFIG.heartbeat_ticks)             # earlier ticks: silent
    assert sent == [(peer, heartbeat(4, "n1", 2, 4, leader_commit=2)) for peer in ("n2", "n3")]


def test_lead2_client_command_is_appended_replicated_and_answered_once_applied():
    """[LEAD-2] Figure 2 rules for leaders, §5.3: append the command to the
    local log, replicate it, and answer only after it is applied."""
    node = make_leader(term=2, acked=["n2", "n3"])
    before = state(node)
    node.propose("r1", "c1", 1, ["incr", "x", 5])
    sent, answers = cycle(node)
    entry = Entry(2, command("c1", 1, ["incr", "x", 5]))
    assert sent == [(peer, AppendEntries(2, "n1", 1, 2, (entry,), 1)) for peer in ("n2", "n3")]
    assert answers == []                                   # not applied yet
    log = [Entry(2, None), entry]
    assert state(node) == {**before, "log": log, "durable": (2, "n1", log)}

    sent, answers = step(node, AppendEntriesReply(2, True, "n3", match_index=2))
    assert sent == []
    assert answers == [("r1", {"ok": True, "result": 5})]
    assert (node.commit_index, node.last_applied, node.machine.data) == (2, 2, {"x": 5})


def test_lead2_follower_refuses_a_command_and_names_the_leader():
    """[LEAD-2] §6.2: only the leader accepts commands; a follower points the
    client at the leader it knows, and logs nothing."""
    node = make_node(term=2)
    step(node, heartbeat(2, "n3", 0, 0))
    before = state(node)
    node.propose("r1", "c1", 1, ["set", "x", "1"])
    assert cycle(node) == ([], [("r1", {**NOT_LEADER, "leader": "n3", "term": 2})])
    assert state(node) == before


def test_lead2_malformed_command_is_refused_and_never_logged():
    """[LEAD-2] a command the state machine rejects is answered at once and
    never enters the log (every node would have to reject it forever)."""
    node = make_leader(term=2, acked=["n2", "n3"])
    before = state(node)
    node.propose("r1", "c1", 1, ["incr", "x", "five"])
    assert cycle(node) == ([], [("r1", {"ok": False, "error": "incr needs an integer amount"})])
    assert state(node) == before


def test_lead2_command_too_large_for_one_datagram_is_refused():
    """[LEAD-2] with [LEAD-3]: an entry that could never fit one AppendEntries
    would block replication forever, so it is refused up front."""
    config = dataclasses.replace(CONFIG,
                         max_append_bytes=100)
    node = make_leader(term=2, acked=["n2", "n3"], config=config)
    before = state(node)
    node.propose("r1", "c1", 1, ["set", "x", "y" * 100])
    sent, answers = cycle(node)
    assert sent == []
    assert answers == [("r1", {"ok": False, "error":
                               "command too large for one datagram (limit 100 bytes)"})]
    assert state(node) == before


def test_lead2_an_error_from_the_state_machine_is_the_answer():
    """[LEAD-2] a command that fails when applied (every node fails alike) is
    committed and answered with the error, not dropped."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.propose("r1", "c1", 1, ["set", "x", "abc"])
    cycle(node)
    step(node, AppendEntriesReply(2, True, "n2", match_index=2))
    node.propose("r2", "c1", 2, ["incr", "x", 1])
    cycle(node)
    sent, answers = step(node, AppendEntriesReply(2, True, "n2", match_index=3))
    assert answers == [("r2", {"ok": False, "error": "the value of 'x' is not an integer: 'abc'"})]
    assert node.machine.data == {"x": "abc"}


def test_lead3_sends_each_follower_the_entries_from_its_own_next_index():
    """[LEAD-3] Figure 2 rules for leaders, §5.3: last log index >= next_index
    -> AppendEntries with the entries starting at next_index, per follower."""
    node = make_leader(term=3, log=[1, 1, 2])
    step(node, AppendEntriesReply(3, False, "n2", conflict_index=2))
    tick(node, CONFIG.heartbeat_ticks)          # both batches get one heartbeat's grace
    before = state(node)
    sent, answers = tick(node, CONFIG.heartbeat_ticks)
    noop = Entry(3, None)
    assert sent == [("n2", AppendEntries(3, "n1", 1, 1, (E(1, 2), E(2, 3), noop), 0)),
                    ("n3", AppendEntries(3, "n1", 3, 2, (noop,), 0))]
    assert answers == []
    assert state(node) == before


def test_lead3_commands_proposed_together_travel_in_one_append_entries():
    """[LEAD-3] §10.2.1 batching: entries appended in one cycle go out in one
    AppendEntries per follower, not one message per entry."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.propose("r1", "c1", 1, ["set", "a", "1"])
    node.propose("r2", "c2", 1, ["set", "b", "2"])
    sent, answers = cycle(node)
    entries = (Entry(2, command("c1", 1, ["set", "a", "1"])),
               Entry(2, command("c2", 1, ["set", "b", "2"])))
    assert sent == [(peer, AppendEntries(2, "n1", 1, 2, entries, 1)) for peer in ("n2", "n3")]
    assert answers == []


def test_lead3_entries_beyond_the_datagram_budget_wait_for_the_next_message():
    """[LEAD-3] one AppendEntries carries only as many entries as fit
    max_append_bytes; the rest follow once the follower answers."""
    config = dataclasses.replace(CONFIG,
                         max_append_bytes=raft.entry_size(E(1, 1)))
    node = make_leader(term=2, log=[1, 1], config=config)
    sent, answers = step(node, AppendEntriesReply(2, False, "n2", conflict_index=1))
    assert sent == [("n2", AppendEntries(2, "n1", 0, 0, (E(1, 1),), 0))]
    sent, answers = step(node, AppendEntriesReply(2, True, "n2", match_index=1))
    assert sent == [("n2", AppendEntries(2, "n1", 1, 1, (E(1, 2),), 0))]
    assert answers == []


def test_lead3a_success_updates_match_index_and_next_index():
    """[LEAD-3a] Figure 2 rules for leaders, §5.3: on success, match_index and
    next_index for that follower move up to what it now holds."""
    node = make_leader(term=2, log=[1, 1])
    before = state(node)
    sent, answers = step(node, AppendEntriesReply(2, True, "n2", match_index=3))
    assert (sent, answers) == ([], [])
    assert state(node) == {**before, "match_index": {"n2": 3, "n3": 0},
                           "next_index": {"n2": 4, "n3": 3},
                           "commit_index": 3, "last_applied": 3,
                           "machine": {"data": {"k1": "t1", "k2": "t1"}}}


def test_lead3a_a_reordered_older_success_never_lowers_match_index():
    """[LEAD-3a] the network reorders: a success for an older, shorter
    AppendEntries arriving late must not move match_index or next_index back."""
    node = make_leader(term=2, log=[1, 1])
    step(node, AppendEntriesReply(2, True, "n2", match_index=3))
    before = state(node)
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=1)) == ([], [])
    assert state(node) == before


def test_lead3a_a_reply_from_an_earlier_term_is_ignored():
    """[LEAD-3a] replies are judged against the CURRENT term: a success sent
    to us while we led an earlier term says nothing about this term's log."""
    node = make_leader(term=3, log=[1, 1])
    before = state(node)
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=3)) == ([], [])
    assert state(node) == before


def test_lead3b_refusal_moves_next_index_back_and_retries_at_once():
    """[LEAD-3b] Figure 2 rules for leaders, §5.3: AppendEntries fails because
    of log inconsistency -> move next_index back and retry without waiting."""
    node = make_leader(term=3, log=[1, 1, 2])
    before = state(node)
    sent, answers = step(node, AppendEntriesReply(3, False, "n2", conflict_index=2))
    noop = Entry(3, None)
    assert sent == [("n2", AppendEntries(3, "n1", 1, 1, (E(1, 2), E(2, 3), noop), 0))]
    assert answers == []
    assert state(node) == {**before, "next_index": {"n2": 2, "n3": 4}}


def test_lead3b_a_stale_refusal_never_moves_next_index_below_match_index():
    """[LEAD-3b] a refusal delayed past a later success must not send the
    leader back over entries the follower is known to hold."""
    node = make_leader(term=3, log=[1, 1, 2])
    step(node, AppendEntriesReply(3, True, "n2", match_index=4))
    before = state(node)
    assert step(node, AppendEntriesReply(3, False, "n2", conflict_index=1)) == ([], [])
    assert state(node) == before


def test_lead3b_a_refusal_from_an_earlier_term_is_ignored():
    """[LEAD-3b] judged against the current term: a refusal that answered an
    AppendEntries of an earlier term does not move next_index."""
    node = make_leader(term=3, log=[1, 1, 2])
    before = state(node)
    assert step(node, AppendEntriesReply(2, False, "n2", conflict_index=1)) == ([], [])
    assert state(node) == before


def test_lead4_figure8_an_older_term_entry_on_a_majority_is_not_committed():
    """[LEAD-4] Figure 2 rules for leaders, §5.4.2, Figure 8:

        index:    1 2 3          n1 leads term 4. Index 2 (term 2) reaches n3,
        n1 (us):  1 2 4          so it is on a majority (n1, n3), yet a server
        n2:       1 2 ?          with a term-3 entry at index 2 could still be
        n3:       1 2            elected and overwrite it: NOT committed.

    Once index 3 (term 4, ours) is on a majority, 1..3 all commit."""
    config = dataclasses.replace(CONFIG,
                         max_append_bytes=raft.entry_size(E(2, 2)))  # one entry per message
    node = make_leader(term=4, log=[1, 2], config=config)
    step(node, AppendEntriesReply(4, False, "n3", conflict_index=2))
    before = state(node)
    sent, answers = step(node, AppendEntriesReply(4, True, "n3", match_index=2))
    noop = Entry(4, None)
    assert sent == [("n3", AppendEntries(4, "n1", 2, 2, (noop,), 0))]
    assert answers == []
    assert state(node) == {**before, "match_index": {"n2": 0, "n3": 2},
                           "next_index": {"n2": 3, "n3": 3}}
    assert node.commit_index == 0                           # the Figure 8 trap

    sent, answers = step(node, AppendEntriesReply(4, True, "n3", match_index=3))
    assert (sent, answers) == ([], [])
    assert (node.commit_index, node.last_applied) == (3, 3)
    assert node.machine.data == {"k1": "t1", "k2": "t2"}


def test_lead4_commit_needs_a_majority_not_just_one_follower():
    """[LEAD-4] §5.3: in a cluster of five the leader plus one follower is not
    a majority; plus two is."""
    node = make_leader(term=2, members=FIVE)
    before = state(node)
    assert step(node, AppendEntriesReply(2, True, "n4", match_index=1)) == ([], [])
    assert state(node) == {**before, "match_index": {"n2": 0, "n3": 0, "n4": 1, "n5": 0},
                           "next_index": {"n2": 1, "n3": 1, "n4": 2, "n5": 1}}
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=1)) == ([], [])
    assert node.commit_index == 1


def test_lead4_commits_the_highest_index_a_majority_holds():
    """[LEAD-4] N is the largest index held by a majority, not the largest
    index any follower holds."""
    node = make_leader(term=2, members=FIVE, acked=["n2", "n3"])
    for number in range(1, 4):
        node.propose(f"r{number}", "c1", number, ["incr", "x", 1])
    cycle(node)                                             # log: noop, 3 commands
    step(node, AppendEntriesReply(2, True, "n2", match_index=4))
    sent, answers = step(node, AppendEntriesReply(2, True, "n3", match_index=3))
    assert node.commit_index == 3
    assert answers == [("r1", {"ok": True, "result": 1}), ("r2", {"ok": True, "result": 2})]


# ---------------------------------------------------------------------------
# [AE-1] .. [AE-5] receiving AppendEntries
# ---------------------------------------------------------------------------

def test_ae1_append_entries_of_an_older_term_is_refused_with_our_term():
    """[AE-1] Figure 2 AppendEntries RPC, §5.1: term < current_term -> reply
    false, with our term so the stale leader steps down; change nothing."""
    node = make_node(term=5, log=[1])
    before = state(node)
    sent, answers = step(node, AppendEntries(4, "n2", 1, 1, (Entry(4, None),), 1))
    assert sent == [("n2", AppendEntriesReply(5, False, "n1", prev_log_index=1))]
    assert answers == []
    assert state(node) == before


def test_ae2_refuses_when_the_log_is_too_short_for_prev_log_index():
    """[AE-2] Figure 2 AppendEntries RPC, §5.3: no entry at prev_log_index ->
    reply false; the entries and leader_commit are ignored."""
    node = make_node(term=2, log=[1])
    before = state(node)
    sent, answers = step(node, AppendEntries(2, "n2", 3, 2, (E(2, 4),), 3))
    assert sent == [("n2", AppendEntriesReply(2, False, "n1", conflict_index=2, prev_log_index=3))]
    assert answers == []
    assert state(node) == {**before, "leader_id": "n2"}


def test_ae2_refuses_when_the_term_at_prev_log_index_differs():
    """[AE-2] §5.3 Log Matching: the entry at prev_log_index has another term
    -> reply false and keep the log (no truncation on a refusal)."""
    node = make_node(term=3, log=[1, 1, 2])
    before = state(node)
    sent, answers = step(node, AppendEntries(3, "n2", 3, 3, (E(3, 4),), 3))
    assert sent == [("n2", AppendEntriesReply(3, False, "n1", conflict_index=3,
                                              conflict_term=2, prev_log_index=3))]
    assert answers == []
    assert state(node) == {**before, "leader_id": "n2"}


def test_ae2_prev_log_index_zero_matches_every_log():
    """[AE-2] index 0 / term 0 is the empty-log sentinel: an AppendEntries
    from the very start is accepted by an empty follower."""
    node = make_node(term=1)
    before = state(node)
    sent, answers = step(node, AppendEntries(1, "n2", 0, 0, (E(1, 1),), 0))
    assert (sent, answers) == ([("n2", AppendEntriesReply(1, True, "n1", match_index=1))], [])
    assert state(node) == {**before, "leader_id": "n2", "log": [E(1, 1)],
                           "durable": (1, None, [E(1, 1)])}


def test_ae3_a_conflicting_entry_and_all_that_follow_it_are_deleted():
    """[AE-3] Figure 2 AppendEntries RPC, §5.3: an existing entry conflicts
    with a new one (same index, other term) -> delete it and all after it."""
    node = make_node(term=3, log=[1, 1, 2, 2])
    before = state(node)
    sent, answers = step(node, AppendEntries(3, "n2", 2, 1, (E(3, 3),), 0))
    assert (sent, answers) == ([("n2", AppendEntriesReply(3, True, "n1", match_index=3, prev_log_index=2))], [])
    log = [E(1, 1), E(1, 2), E(3, 3)]
    assert state(node) == {**before, "leader_id": "n2", "log": log,
                           "durable": (3, None, log)}


def test_ae3_matching_entries_are_kept_when_an_old_append_entries_arrives_late():
    """[AE-3] only a CONFLICT truncates: a reordered, shorter AppendEntries
    whose entries we already hold must not cut off the entries after them."""
    node = make_node(term=2, log=[1, 2, 2, 2])
    before = state(node)
    sent, answers = step(node, AppendEntries(2, "n2", 1, 1, (E(2, 2),), 0))
    assert (sent, answers) == ([("n2", AppendEntriesReply(2, True, "n1", match_index=2, prev_log_index=1))], [])
    assert state(node) == {**before, "leader_id": "n2"}


def test_ae3_a_conflict_at_a_committed_index_is_refused_and_counted():
    """[AE-3] a committed entry can never conflict (Leader Completeness,
    §5.4); a message that asks for it is forged or from a broken node. The
    committed entry stays, nothing is answered, and the refusal is counted."""
    node = make_node(term=2, log=[1, 2])
    step(node, heartbeat(2, "n2", 2, 2, leader_commit=2))
    before = state(node)
    sent, answers = step(node, AppendEntries(2, "n2", 1, 1, (E(3, 2),), 2))
    assert (sent, answers) == ([], [])
    assert state(node) == before
    assert node.counters["refused: would overwrite a committed entry"] == 1


def test_ae4_new_entries_are_appended():
    """[AE-4] Figure 2 AppendEntries RPC, §5.3: append any new entries not
    already in the log."""
    node = make_node(term=1, log=[1])
    before = state(node)
    sent, answers = step(node, AppendEntries(1, "n2", 1, 1, (E(1, 2), E(1, 3)), 0))
    assert (sent, answers) == ([("n2", AppendEntriesReply(1, True, "n1", match_index=3, prev_log_index=1))], [])
    log = log_of([1, 1, 1])
    assert state(node) == {**before, "leader_id": "n2", "log": log,
                           "durable": (1, None, log)}


def test_ae4_only_the_missing_tail_of_an_overlapping_batch_is_added():
    """[AE-4] entries we already hold are skipped, only the rest is appended;
    a duplicate of the same message then changes nothing."""
    node = make_node(term=1, log=[1, 1])
    message = AppendEntries(1, "n2", 0, 0, (E(1, 1), E(1, 2), E(1, 3)), 0)
    before = state(node)
    sent, answers = step(node, message)
    reply = [("n2", AppendEntriesReply(1, True, "n1", match_index=3))]
    assert (sent, answers) == (reply, [])
    after = {**before, "leader_id": "n2", "log": log_of([1, 1, 1]),
             "durable": (1, None, log_of([1, 1, 1]))}
    assert state(node) == after
    assert step(node, message) == (reply, [])
    assert state(node) == after


def test_ae5_commit_index_is_the_minimum_of_leader_commit_and_the_last_new_entry():
    """[AE-5] Figure 2 AppendEntries RPC, §5.3: commit_index =
    min(leader_commit, index of last NEW entry). Entries 3-4 here came from an
    old leader: the current leader has only confirmed 1-2, so even though
    leader_commit is 4, only 1-2 may be committed."""
    node = make_node(term=3, log=[1, 1, 2, 2])
    before = state(node)
    sent, answers = step(node, heartbeat(3, "n2", 2, 1, leader_commit=4))
    assert (sent, answers) == ([("n2", AppendEntriesReply(3, True, "n1", match_index=2, prev_log_index=2))], [])
    assert state(node) == {**before, "leader_id": "n2", "commit_index": 2, "last_applied": 2,
                           "machine": {"data": {"k1": "t1", "k2": "t1"}}}


def test_ae5_leader_commit_below_the_last_new_entry_is_taken_as_is():
    """[AE-5] the other side of the minimum: leader_commit 1 with entries up
    to 3 commits exactly 1."""
    node = make_node(term=1, log=[1])
    before = state(node)
    sent, answers = step(node, AppendEntries(1, "n2", 1, 1, (E(1, 2), E(1, 3)), 1))
    assert (sent, answers) == ([("n2", AppendEntriesReply(1, True, "n1", match_index=3, prev_log_index=1))], [])
    log = log_of([1, 1, 1])
    assert state(node) == {**before, "leader_id": "n2", "log": log, "durable": (1, None, log),
                           "commit_index": 1, "last_applied": 1,
                           "machine": {"data": {"k1": "t1"}}}


def test_ae5_a_reordered_older_append_entries_never_lowers_commit_index():
    """[AE-5] an AppendEntries delayed in the network, with a smaller
    leader_commit and fewer entries, must not move commit_index backwards."""
    node = make_node(term=1, log=[1, 1, 1])
    step(node, heartbeat(1, "n2", 3, 1, leader_commit=3))
    before = state(node)
    sent, answers = step(node, AppendEntries(1, "n2", 0, 0, (E(1, 1),), 1))
    assert (sent, answers) == ([("n2", AppendEntriesReply(1, True, "n1", match_index=1))], [])
    assert state(node) == before
    assert node.commit_index == 3


def test_ae5_a_reordered_append_entries_with_fewer_entries_never_lowers_commit_index():
    """[AE-5] two AppendEntries with the same leader_commit 3 but different
    batches (the datagram budget, [LEAD-3]) arrive out of order: the one with
    fewer entries caps commit lower, and must not undo the other."""
    node = make_node(term=1)
    step(node, AppendEntries(1, "n2", 0, 0, (E(1, 1), E(1, 2)), 3))
    assert node.commit_index == 2
    before = state(node)
    sent, answers = step(node, AppendEntries(1, "n2", 0, 0, (E(1, 1),), 3))
    assert (sent, answers) == ([("n2", AppendEntriesReply(1, True, "n1", match_index=1))], [])
    assert state(node) == before


def test_ae5_a_refused_append_entries_commits_nothing():
    """[AE-5] only a successful AppendEntries may move commit_index: after a
    refusal ([AE-2]) the logs are not known to match at all."""
    node = make_node(term=2, log=[1, 1, 2])
    before = state(node)
    sent, _ = step(node, heartbeat(2, "n2", 3, 3, leader_commit=3))
    assert sent == [("n2", AppendEntriesReply(2, False, "n1", conflict_index=3,
                                              conflict_term=2, prev_log_index=3))]
    assert state(node) == {**before, "leader_id": "n2"}


# ---------------------------------------------------------------------------
# [§5.3-HINT] the conflict hint, both sides (Figure 7 logs)
# ---------------------------------------------------------------------------
# Figure 7's leader for term 8:  1 1 1 4 4 5 5 6 6 6
#             follower (e):      1 1 1 4 4 4 4
#             follower (f):      1 1 1 2 2 2 3 3 3 3 3

FIGURE7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]


def test_5_3_hint_a_short_follower_reports_where_its_log_ends():
    """[§5.3-HINT] §5.3 'the follower can include the term of the conflicting
    entry and the first index it stores for that term': with no entry at
    prev_log_index at all, the hint is our last index + 1."""
    node = make_node(term=8, log=[1, 1, 1, 4, 4, 4, 4])            # Figure 7 (e)
    sent, _ = step(node, heartbeat(8, "n2", 10, 6))
    assert sent == [("n2", AppendEntriesReply(8, False, "n1", conflict_index=8, prev_log_index=10))]


def test_5_3_hint_a_conflicting_follower_reports_the_first_index_of_its_term():
    """[§5.3-HINT] Figure 7 (f): the entry at prev_log_index 10 has term 3;
    the hint names term 3 and where that term starts (index 7)."""
    node = make_node(term=8, log=[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3])  # Figure 7 (f)
    sent, _ = step(node, heartbeat(8, "n2", 10, 6))
    assert sent == [("n2", AppendEntriesReply(8, False, "n1", conflict_index=7,
                                              conflict_term=3, prev_log_index=10))]


def test_5_3_hint_leader_without_the_conflict_term_skips_the_whole_term():
    """[§5.3-HINT] the leader has no entry of term 3, so it retries at index
    7 at once: the follower's whole term-3 run is skipped in one round trip."""
    node = make_leader(term=8, log=FIGURE7_LEADER)
    before = state(node)
    sent, _ = step(node, AppendEntriesReply(8, False, "n3", conflict_index=7, conflict_term=3))
    tail = tuple(log_of(FIGURE7_LEADER)[6:]) + (Entry(8, None),)
    assert sent == [("n3", AppendEntries(8, "n1", 6, 5, tail, 0))]
    assert state(node) == {**before, "next_index": {"n2": 11, "n3": 7}}


def test_5_3_hint_leader_with_the_conflict_term_retries_after_its_last_entry_of_it():
    """[§5.3-HINT] Figure 7 (e) at prev_log_index 7 has term 4, first at
    index 4. The leader holds term 4 up to index 5, so it retries at 6."""
    node = make_leader(term=8, log=FIGURE7_LEADER)
    before = state(node)
    sent, _ = step(node, AppendEntriesReply(8, False, "n2", conflict_index=4, conflict_term=4))
    tail = tuple(log_of(FIGURE7_LEADER)[5:]) + (Entry(8, None),)
    assert sent == [("n2", AppendEntries(8, "n1", 5, 4, tail, 0))]
    assert state(node) == {**before, "next_index": {"n2": 6, "n3": 11}}


# ---------------------------------------------------------------------------
# [RV-1], [RV-2] receiving RequestVote
# ---------------------------------------------------------------------------

def test_rv1_refuses_a_candidate_of_an_older_term():
    """[RV-1] Figure 2 RequestVote RPC, §5.1: term < current_term -> reply
    false with our term, even to a candidate whose log is better."""
    node = make_node(term=5, log=[1])
    before = state(node)
    sent, answers = step(node, RequestVote(4, "n2", 10, 4))
    assert (sent, answers) == ([("n2", RequestVoteReply(5, False, "n1", "n2"))], [])
    assert state(node) == before


def test_rv2_grants_when_not_voted_and_the_candidate_log_is_up_to_date():
    """[RV-2] Figure 2 RequestVote RPC, §5.2 / §5.4.1: voted_for is null and
    the candidate's log is as up to date as ours -> grant, and record it."""
    node = make_node(term=3, log=[1, 2, 2])
    before = state(node)
    sent, answers = step(node, RequestVote(3, "n2", 3, 2))
    assert (sent, answers) == ([("n2", RequestVoteReply(3, True, "n1", "n2"))], [])
    assert state(node) == {**before, "voted_for": "n2",
                           "durable": (3, "n2", log_of([1, 2, 2]))}


def test_rv2_refuses_when_it_already_voted_for_another_candidate_this_term():
    """[RV-2] §5.2: at most one vote per term (Election Safety)."""
    node = make_node(term=3, voted_for="n3")
    before = state(node)
    sent, answers = step(node, RequestVote(3, "n2", 9, 3))
    assert (sent, answers) == ([("n2", RequestVoteReply(3, False, "n1", "n2"))], [])
    assert state(node) == before


def test_rv2_grants_again_to_the_candidate_it_already_voted_for():
    """[RV-2] 'voted_for is null OR candidate_id': a retransmitted RequestVote
    from the same candidate gets the same yes (the first reply may be lost)."""
    node = make_node(term=3, voted_for="n2")
    before = state(node)
    sent, answers = step(node, RequestVote(3, "n2", 0, 0))
    assert (sent, answers) == ([("n2", RequestVoteReply(3, True, "n1", "n2"))], [])
    assert state(node) == before


def test_rv2_candidate_turned_follower_still_refuses_others_in_that_term():
    """[RV-2] with [CAN-3]: a candidate that follows this term's winner keeps
    its vote for itself, so a third server cannot get a second vote from it."""
    node = make_candidate(term=3)
    step(node, heartbeat(3, "n2", 0, 0))
    sent, answers = step(node, RequestVote(3, "n3", 0, 0))
    assert (sent, answers) == ([("n3", RequestVoteReply(3, False, "n1", "n3"))], [])
    assert node.voted_for == "n1"


def test_rv2_refuses_candidate_with_older_last_term_even_if_its_log_is_longer():
    """[RV-2] §5.4.1: the later last term is more up to date, whatever the
    lengths: (term 1, index 5) is behind (term 2, index 3)."""
    node = make_node(term=3, log=[1, 2, 2])
    before = state(node)
    sent, answers = step(node, RequestVote(3, "n2", 5, 1))
    assert (sent, answers) == ([("n2", RequestVoteReply(3, False, "n1", "n2"))], [])
    assert state(node) == before


def test_rv2_grants_candidate_with_newer_last_term_even_if_its_log_is_shorter():
    """[RV-2] §5.4.1: (term 3, index 2) is ahead of (term 2, index 3)."""
    node = make_node(term=3, log=[1, 2, 2])
    sent, _ = step(node, RequestVote(3, "n2", 2, 3))
    assert sent == [("n2", RequestVoteReply(3, True, "n1", "n2"))]
    assert node.voted_for == "n2"


def test_rv2_refuses_candidate_with_same_last_term_and_shorter_log():
    """[RV-2] §5.4.1: with equal last terms, the longer log is more up to date."""
    node = make_node(term=3, log=[1, 2, 2])
    before = state(node)
    sent, _ = step(node, RequestVote(3, "n2", 2, 2))
    assert sent == [("n2", RequestVoteReply(3, False, "n1", "n2"))]
    assert state(node) == before


def test_rv2_grants_candidate_with_same_last_term_and_equal_or_longer_log():
    """[RV-2] §5.4.1: 'at least as up to date' includes equal."""
    for last_log_index in (3, 4):
        node = make_node(term=3, log=[1, 2, 2])
        sent, _ = step(node, RequestVote(3, "n2", last_log_index, 2))
        assert sent == [("n2", RequestVoteReply(3, True, "n1", "n2"))]


def test_rv2_a_refusal_for_a_stale_log_records_no_vote():
    """[RV-2] a vote refused because of the log is not a vote: voted_for stays
    null (durably too), and a better candidate of this term can still win it."""
    node = make_node(term=3, log=[1, 2, 2])
    step(node, RequestVote(3, "n2", 1, 1))
    assert (node.voted_for, node.storage.voted_for) == (None, None)
    sent, _ = step(node, RequestVote(3, "n3", 3, 2))
    assert sent == [("n3", RequestVoteReply(3, True, "n1", "n3"))]


# ---------------------------------------------------------------------------
# [§8-NOOP] the new leader's no-op
# ---------------------------------------------------------------------------

def test_8_noop_new_leader_appends_a_no_op_of_its_own_term():
    """[§8-NOOP] §8: a new leader appends a blank entry of its term at once,
    so something of its term can be committed without waiting for a client."""
    node = make_candidate(term=5, log=[1, 3])
    step(node, RequestVoteReply(5, True, "n3", node.id))
    assert node.log.entries == [E(1, 1), E(3, 2), Entry(5, None)]
    assert node.storage.entries == node.log.entries


def test_8_noop_committing_the_no_op_commits_the_earlier_terms_entries():
    """[§8-NOOP] with [LEAD-4]: entries of earlier terms are committed
    indirectly, by committing the no-op after them; the no-op itself changes
    nothing in the state machine and answers nobody."""
    node = make_leader(term=3, log=[1, 2])
    before = state(node)
    sent, answers = step(node, AppendEntriesReply(3, True, "n2", match_index=3))
    assert (sent, answers) == ([], [])
    assert state(node) == {**before, "match_index": {"n2": 3, "n3": 0},
                           "next_index": {"n2": 4, "n3": 3},
                           "commit_index": 3, "last_applied": 3,
                           "machine": {"data": {"k1": "t1", "k2": "t2"}}}


# ---------------------------------------------------------------------------
# [§6.3] client sessions: at most once, and the retry gets the first answer
# ---------------------------------------------------------------------------

def test_6_3_a_retry_after_apply_gets_the_first_answer_and_no_new_entry():
    """[§6.3] Ongaro's dissertation §6.3: the session remembers (client, seq)
    and its answer; a retry is answered from it, not applied again."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.propose("r1", "c1", 1, ["incr", "x", 5])
    cycle(node)
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=2))[1] == [
        ("r1", {"ok": True, "result": 5})]
    before = state(node)
    node.propose("r1-retry", "c1", 1, ["incr", "x", 5])
    assert cycle(node) == ([], [("r1-retry", {"ok": True, "result": 5})])
    assert state(node) == before


def test_6_3_a_retry_while_pending_shares_the_entry_and_both_are_answered():
    """[§6.3] a retry that arrives before the first is committed joins it: one
    log entry, applied once, both requests answered with its result."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.propose("r1", "c1", 1, ["incr", "x", 5])
    cycle(node)
    before = state(node)
    node.propose("r1-retry", "c1", 1, ["incr", "x", 5])
    assert cycle(node) == ([], [])
    assert state(node) == before
    sent, answers = step(node, AppendEntriesReply(2, True, "n2", match_index=2))
    assert answers == [("r1", {"ok": True, "result": 5}), ("r1-retry", {"ok": True, "result": 5})]
    assert node.machine.data == {"x": 5}


def test_6_3_a_duplicate_command_in_the_log_is_applied_once():
    """[§6.3] a retry re-proposed by a later leader sits in the log twice;
    applying it twice would add 5 twice. The second copy is skipped."""
    incr = command("c1", 1, ["incr", "x", 5])
    machine = RecordingStore()
    node = make_node(term=2, log=[Entry(1, incr), Entry(2, incr)], machine=machine)
    step(node, heartbeat(2, "n2", 2, 2, leader_commit=2))
    assert (node.last_applied, machine.applied, machine.data) == (2, [["incr", "x", 5]], {"x": 5})


def test_6_3_a_request_older_than_the_last_applied_one_is_refused():
    """[§6.3] a client numbers its requests and sends one at a time: a seq
    below the session's last one is a stale duplicate, refused, not applied."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.propose("r2", "c1", 2, ["incr", "x", 5])
    cycle(node)
    step(node, AppendEntriesReply(2, True, "n2", match_index=2))
    before = state(node)
    node.propose("r1", "c1", 1, ["incr", "x", 5])
    assert cycle(node) == ([], [("r1", {"ok": False, "error": "request 1 is older than 2"})])
    assert state(node) == before


# ---------------------------------------------------------------------------
# [§6.4] ReadIndex: linearizable reads without a log entry
# ---------------------------------------------------------------------------

def test_6_4_read_waits_for_a_heartbeat_round_acknowledged_by_a_majority():
    """[§6.4] dissertation §6.4 step 3: before answering, the leader confirms
    it is still the leader with a fresh heartbeat round that a majority
    acknowledges; no log entry and no fsync are needed."""
    node = make_leader(term=2, log=[1], acked=["n2", "n3"])
    syncs = node.storage.sync_count
    before = state(node)
    node.read("q1", ["get", "k1"])
    sent, answers = cycle(node)
    assert sent == [(peer, heartbeat(2, "n1", 2, 2, leader_commit=2, read_round=1))
                    for peer in ("n2", "n3")]
    assert answers == []                                  # not confirmed yet
    assert state(node) == before
    assert node.storage.sync_count == syncs

    sent, answers = step(node, AppendEntriesReply(2, True, "n3", match_index=2, read_round=1))
    assert (sent, answers) == ([], [("q1", {"ok": True, "result": "t1"})])


def test_6_4_an_acknowledgement_of_an_earlier_heartbeat_does_not_confirm_a_read():
    """[§6.4] only a round sent AFTER the read arrived proves we were still
    leader when it arrived; a reply to an older heartbeat proves nothing."""
    node = make_leader(term=2, log=[1], acked=["n2", "n3"])
    node.read("q1", ["get", "k1"])
    cycle(node)
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=2, read_round=0)) == ([], [])
    assert len(node.pending_reads) == 1


def test_6_4_read_waits_until_an_entry_of_the_leaders_term_is_committed():
    """[§6.4] dissertation §6.4 step 1: a new leader does not know the commit
    index until its no-op commits. A majority confirmed leadership (n2 acks
    the round, though its log is behind), but no answer until the no-op
    commits."""
    node = make_leader(term=3, log=[1, 1])
    node.read("q1", ["get", "k1"])
    cycle(node)
    sent, answers = step(node, AppendEntriesReply(3, False, "n2", conflict_index=2,
                                                  read_round=1))
    assert sent == [("n2", AppendEntries(3, "n1", 1, 1, (E(1, 2), Entry(3, None)), 0, 1))]
    assert answers == []                                  # leader confirmed, nothing committed
    assert node.commit_index == 0

    sent, answers = step(node, AppendEntriesReply(3, True, "n2", match_index=3, read_round=1))
    assert (sent, answers) == ([], [("q1", {"ok": True, "result": "t1"})])


def test_6_4_a_follower_refuses_a_read_and_names_the_leader():
    """[§6.4] only the leader serves linearizable reads; a follower redirects."""
    node = make_node(term=2)
    step(node, heartbeat(2, "n2", 0, 0))
    node.read("q1", ["get", "x"])
    assert cycle(node) == ([], [("q1", {**NOT_LEADER, "leader": "n2", "term": 2})])


def test_6_4_one_heartbeat_round_serves_every_read_queued_before_it():
    """[§6.4] reads arriving in one cycle share one heartbeat round."""
    node = make_leader(term=2, log=[1], acked=["n2", "n3"])
    node.read("q1", ["get", "k1"])
    node.read("q2", ["get", "nope"])
    sent, _ = cycle(node)
    assert sent == [(peer, heartbeat(2, "n1", 2, 2, leader_commit=2, read_round=1))
                    for peer in ("n2", "n3")]
    sent, answers = step(node, AppendEntriesReply(2, True, "n2", match_index=2, read_round=1))
    assert answers == [("q1", {"ok": True, "result": "t1"}), ("q2", {"ok": True, "result": None})]


def test_lead1_read_rounds_do_not_delay_the_heartbeat():
    """[LEAD-1] with [§6.4]: a read round is sent at once, but it does not
    restart the heartbeat timer, or a steady stream of reads could keep the
    heartbeat (which resends lost entries) from ever firing."""
    node = make_leader(term=2, acked=["n2", "n3"])
    tick(node, CONFIG.heartbeat_ticks - 1)
    node.read("r1", ["get", "x"])
    sent, _ = cycle(node)
    assert [message.read_round for _, message in sent] == [1, 1]
    sent, _ = tick(node)
    assert [(peer, type(message).__name__) for peer, message in sent] == [
        ("n2", "AppendEntries"), ("n3", "AppendEntries")]


def test_lead3b_a_follower_that_refuses_at_its_match_index_lost_its_data_and_gets_all_again():
    """[LEAD-3b] a refusal AT or past match_index cannot be stale: the
    follower no longer holds what it acknowledged (its data dir was wiped).
    The leader goes back below match_index and sends the log from its start."""
    node = make_leader(term=3, log=[1, 1, 2])
    step(node, AppendEntriesReply(3, True, "n2", match_index=4))
    sent, answers = step(node, AppendEntriesReply(3, False, "n2", conflict_index=1,
                                                  prev_log_index=4))
    assert node.next_index["n2"] == 1 and node.match_index["n2"] == 4
    assert [(to, m.prev_log_index, len(m.entries)) for to, m in sent] == [("n2", 0, 4)]
    assert answers == []
