"""Rule tests beyond Figure 2: snapshots, membership, pre-vote, leases,
check-quorum and leadership transfer, one rule at a time.

The method is tests/test_rules.py's, with its helpers: ONE raft.RaftNode on
raft.MemoryStorage (or on raft.JsonLinesStorage in a tmp_path, for the
storage rules), put in a state by preloaded storage and then real ticks and
messages, fed exactly one input, and the whole output of that input checked
(every message sent, every client answer, and the node's fields as one
dict). Outputs come from raft.persist_send_apply(), the runtime's own cycle,
and test_rules.cycle() checks [PERSIST] on every message sent.

Docstrings name the dissertation section in brackets (Ongaro, "Consensus:
Bridging Theory and Practice", 2014): ch. 5 log compaction ([§5.1], its
Figure 5.3 is InstallSnapshot; the Raft paper's Figure 13 is the same RPC),
§4.1-§4.3 membership, §9.6 pre-vote, §4.2.3 disruptive servers, §6.2
check-quorum, §3.10 leadership transfer, §6.4 ReadIndex.

The core has no clock: time is ticks, never sleeps.
"""

import dataclasses
import json
import math
import random

import pytest

import kv
import raft
from raft import (AppendEntries, AppendEntriesReply, Entry, InstallSnapshot,
                  InstallSnapshotReply, Membership, RequestVote, RequestVoteReply, Role,
                  Snapshot, TimeoutNow)
from test_rules import (CONFIG, FIVE, MEMBERS, NOT_LEADER, SEED, E, command, cycle,
                        heartbeat, log_of, make_candidate, make_leader, make_node, state,
                        step, tick)

FOUR = ["n1", "n2", "n3", "n4"]
PRE_VOTE = dataclasses.replace(CONFIG, pre_vote=True)              # §9.6 alone
LEASE = dataclasses.replace(CONFIG, check_quorum=True)             # §4.2.3 + §6.2 alone
BOTH = dataclasses.replace(CONFIG, pre_vote=True, check_quorum=True)   # the default pair
SMALL = dataclasses.replace(CONFIG, max_append_bytes=100)          # snapshot chunks of 50


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def config_entry(term, voters, learners=()):
    """A configuration entry (§4.1) as it sits in the log."""
    return Entry(term, {"config": {"voters": list(voters), "learners": list(learners)}})


def snapshot_text(index, term, data=None, sessions=(), voters=MEMBERS, learners=()):
    return raft.encode_snapshot(Snapshot(index, term, Membership(tuple(voters), tuple(learners)),
                                         "kv", {"data": dict(data or {})}, tuple(sessions)))


def configuration(node):
    """(voters, learners, peers) in force on node."""
    return (list(node.members), list(node.learners), list(node.peers))


def full_state(node):
    """test_rules.state() plus what this file's rules may change."""
    return {**state(node),
            "snapshot": (node.log.snapshot_index, node.log.snapshot_term, node.snapshot_text),
            "stored_snapshot": (node.storage.snapshot_text, node.storage.snapshot_index),
            "sessions": dict(node.sessions),
            "configuration": configuration(node)}


def make_node_with_snapshot(node_id="n1", *, term, text, log_after=(), config=CONFIG,
                            members=MEMBERS):
    """A follower restarted from synced storage holding a snapshot and the
    log entries after it."""
    storage = raft.MemoryStorage()
    storage.term = term
    storage.snapshot_text, storage.snapshot_index = text, raft.decode_snapshot(text).index
    storage.entries = list(log_after)
    node = raft.RaftNode(node_id, members, storage, kv.KeyValueStore(),
                         random.Random(SEED), config)
    cycle(node)
    return node


def reboot(node, members=MEMBERS):
    """The node after a power cut, started with the command line's members:
    whatever it knows beyond them must come from storage."""
    node.storage.crash()
    return raft.RaftNode(node.id, members, node.storage, kv.KeyValueStore(),
                         random.Random(SEED + 1), node.config)


def elect(node):
    """Time out, win the votes of enough voters; returns the output of the
    input that made it leader."""
    tick(node, node.election_timeout)
    assert node.role is Role.CANDIDATE
    voters = [m for m in node.members if m != node.id][:len(node.members) // 2]
    for voter in voters[:-1]:
        step(node, RequestVoteReply(node.current_term, True, voter, node.id))
    output = step(node, RequestVoteReply(node.current_term, True, voters[-1], node.id))
    assert node.role is Role.LEADER
    return output


def run_ticks(node, times):
    """Tick a node (a leader sends heartbeats meanwhile); all answers given."""
    answers = []
    for _ in range(times):
        node.tick()
        answers += cycle(node)[1]
    return answers


def chunks(text, size):
    """The (offset, data, done) pieces of text in chunks of size."""
    pieces = [(offset, text[offset:offset + size]) for offset in range(0, len(text), size)]
    return [(offset, data, offset + len(data) == len(text)) for offset, data in pieces]


def snapshot_leader(config=CONFIG):
    """Leader n1 of term 2 that has compacted its log to a snapshot at index
    3 (term 2): n2 holds everything, n3 answered that its log is empty, so
    n3 is being sent the snapshot (its first chunk is the return value)."""
    node = make_leader(term=2, log=[1, 1], config=config, acked=["n2"])
    assert node.take_snapshot() == 3
    sent, _ = step(node, AppendEntriesReply(2, False, "n3", conflict_index=1))
    assert [(peer, type(message)) for peer, message in sent] == [("n3", InstallSnapshot)]
    return node, sent[0][1]


def jcycle(node):
    """test_rules.cycle() for a node on JsonLinesStorage: [PERSIST] here is
    "no file written since the last fsync" on every send."""
    sent, answers = [], []

    def send(destination, message):
        assert not node.storage.dirty, f"[PERSIST] {message} sent before an fsync"
        sent.append((destination, message))

    raft.persist_send_apply(node, send, lambda r, a: answers.append((r, a)))
    return sent, answers


def write_data_dir(path, *, snapshot=None, log=(), log_first_index=1, term=3):
    """A data dir written by hand, as a crash may have left it."""
    path.mkdir(exist_ok=True)
    if snapshot is not None:
        (path / "snapshot.jsonl").write_text(snapshot)
    (path / "log.jsonl").write_text(raft.encode_log_lines(log_first_index, list(log)))
    (path / "state.jsonl").write_text(json.dumps({"term": term, "voted_for": None}) + "\n")


def load_dir(path):
    storage = raft.JsonLinesStorage(str(path))
    try:
        return storage.load(), storage.load_snapshot()
    finally:
        storage.close()


# ---------------------------------------------------------------------------
# Snapshots on one node (ch. 5)
# ---------------------------------------------------------------------------

def test_take_snapshot_compacts_the_log_and_storage_and_keeps_later_entries():
    """[§5.1] a snapshot of the state machine and the sessions at last_applied
    replaces the log up to there, in memory and in storage; the entries after
    it stay, and the snapshot is written before take_snapshot returns."""
    node = make_node(term=2, log=[1, 1, 2, 2])
    step(node, heartbeat(2, "n2", 4, 2, leader_commit=2))
    before = full_state(node)
    assert node.take_snapshot() == 2
    text = node.storage.snapshot_text
    assert raft.decode_snapshot(text) == Snapshot(
        2, 1, Membership(tuple(MEMBERS)), "kv", {"data": {"k1": "t1", "k2": "t1"}},
        (("c0", 2, {"ok": True, "result": None}),))
    after = [E(2, 3), E(2, 4)]
    assert full_state(node) == {**before, "log": after, "durable": (2, None, after),
                                "snapshot": (2, 1, text), "stored_snapshot": (text, 2)}
    assert node.status()["snapshot_index"] == 2
    assert cycle(node) == ([], [])             # nothing to tell anyone


def test_take_snapshot_leaves_later_entries_to_be_applied_as_usual():
    """[§5.1] the entries kept after the snapshot are applied later, in order."""
    node = make_node(term=2, log=[1, 1, 2, 2])
    step(node, heartbeat(2, "n2", 4, 2, leader_commit=2))
    node.take_snapshot()
    step(node, heartbeat(2, "n2", 4, 2, leader_commit=4))
    assert (node.last_applied, node.machine.data) == (
        4, {"k1": "t1", "k2": "t1", "k3": "t2", "k4": "t2"})


def test_snapshot_every_takes_a_snapshot_once_n_entries_are_applied():
    """[§5.1.2] snapshot_every=N: compact when N entries were applied since
    the last snapshot, not before, and not again until N more."""
    node = make_node(term=1, log=[1] * 5, config=dataclasses.replace(CONFIG, snapshot_every=3))
    step(node, heartbeat(1, "n2", 5, 1, leader_commit=2))
    assert (node.last_applied, node.status()["snapshot_index"], node.storage.snapshot_text) == (
        2, 0, None)
    step(node, heartbeat(1, "n2", 5, 1, leader_commit=3))
    assert node.status()["snapshot_index"] == node.storage.snapshot_index == 3
    assert node.log.entries == node.storage.entries == log_of([1] * 5)[3:]
    step(node, heartbeat(1, "n2", 5, 1, leader_commit=5))
    assert (node.last_applied, node.status()["snapshot_index"]) == (5, 3)


def snapshotted_follower():
    """Follower n1 whose log (a 4-voter configuration, then c1's incr) was
    applied and compacted into a snapshot at index 3."""
    incr = Entry(1, command("c1", 1, ["incr", "x", 5]))
    node = make_node(term=1, log=[E(1, 1), config_entry(1, FOUR), incr])
    step(node, heartbeat(1, "n2", 3, 1, leader_commit=3))
    assert node.take_snapshot() == 3
    return node


def test_restart_from_a_snapshot_restores_machine_configuration_and_indexes():
    """[§5.1] after a restart the snapshot stands for the log it replaced:
    the state machine, the configuration in force at its index (not the one
    on the command line), and commit_index = last_applied = its index."""
    node = reboot(snapshotted_follower())
    assert node.machine.data == {"k1": "t1", "x": 5}
    assert (node.members, node.learners, node.peers) == (FOUR, [], ["n2", "n3", "n4"])
    assert (node.commit_index, node.last_applied) == (3, 3)
    assert (node.log.snapshot_index, node.log.snapshot_term, node.log.entries) == (3, 1, [])
    assert node.status()["snapshot_index"] == 3


def test_restart_from_a_snapshot_restores_sessions_so_a_retry_gets_its_first_answer():
    """[§5.1] with [§6.3]: the sessions travel in the snapshot, so after a
    restart a retried request is answered with its first result and not
    applied again (x stays 5)."""
    node = reboot(snapshotted_follower())
    assert dict(node.sessions) == {"c0": (1, {"ok": True, "result": None}),
                                   "c1": (1, {"ok": True, "result": 5})}
    elect(node)
    before = full_state(node)
    node.propose("retry", "c1", 1, ["incr", "x", 5])
    assert cycle(node) == ([], [("retry", {"ok": True, "result": 5})])
    assert full_state(node) == before
    for voter in ("n2", "n3"):
        step(node, AppendEntriesReply(node.current_term, True, voter, match_index=4))
    assert (node.commit_index, node.machine.data) == (4, {"k1": "t1", "x": 5})


# ---------------------------------------------------------------------------
# InstallSnapshot: the leader's side (Figure 5.3)
# ---------------------------------------------------------------------------

def test_leader_sends_install_snapshot_when_next_index_is_compacted_away():
    """[§5.1] Figure 5.3: a follower needing entry 1, which the leader has
    compacted, gets the snapshot instead (one chunk here: it fits)."""
    node, first = snapshot_leader()
    text = node.snapshot_text
    assert first == InstallSnapshot(2, "n1", 3, 2, 0, text, True)
    assert node.snapshot_offset == {"n3": 0}


def test_leader_sends_the_snapshot_in_chunks_bounded_by_max_append_bytes():
    """[§5.1] Figure 5.3 offset/data/done: with a small max_append_bytes the
    snapshot goes in many chunks, one at a time, each sent on the answer to
    the previous one; together they are the snapshot text, and each chunk's
    data, escaped as JSON, fits the byte budget (the snapshot below is
    quote-heavy: escaping doubles it)."""
    quotes = '"\\' * 40
    log = [Entry(1, command("c0", 1, ["set", "q", quotes])), E(1, 2)]
    node = make_leader(term=2, log=log, config=SMALL, acked=["n2"])
    node.take_snapshot()
    sent, _ = step(node, AppendEntriesReply(2, False, "n3", conflict_index=1))
    text, budget = node.snapshot_text, SMALL.max_append_bytes
    received = []
    while True:
        assert len(sent) == 1
        peer, message = sent[0]
        assert peer == "n3" and isinstance(message, InstallSnapshot)
        assert (message.last_included_index, message.last_included_term) == (3, 2)
        assert len(json.dumps(message.data)) - 2 <= budget
        received.append((message.offset, message.data, message.done))
        if message.done:
            break
        sent, _ = step(node, InstallSnapshotReply(2, "n3", 3, message.offset,
                                                  message.offset + len(message.data), False))
    assert received == chunks(text, budget // 2)
    assert len(received) == math.ceil(len(text) / (budget // 2)) > 5


def test_a_worst_case_snapshot_chunk_fits_the_runtimes_datagram_limit():
    """[§5.1] at the runtime's budget (max_datagram - headroom) a chunk of
    text that JSON-escapes to double its length still fits one datagram."""
    config = dataclasses.replace(CONFIG, max_append_bytes=raft.DEFAULT_MAX_DATAGRAM_BYTES
                                 - raft.DATAGRAM_HEADROOM_BYTES)
    quotes = '"\\' * 40000
    node = make_leader(term=2, log=[Entry(1, command("c0", 1, ["set", "q", quotes]))],
                       config=config, acked=["n2"])
    node.take_snapshot()
    sent, _ = step(node, AppendEntriesReply(2, False, "n3", conflict_index=1))
    (_, message), = sent
    assert not message.done
    assert len(json.dumps(message.data)) > 1.9 * len(message.data)      # really worst case
    datagram = raft.encode_datagram(raft.encode_message(message))
    assert len(datagram) <= raft.DEFAULT_MAX_DATAGRAM_BYTES


def small_snapshot_leader():
    """A SMALL leader sending n3 its snapshot in chunks of 50: the first
    two chunks acknowledged, the third (offset 100) just sent."""
    node, first = snapshot_leader(SMALL)
    assert (first.offset, len(first.data), first.done) == (0, 50, False)
    step(node, InstallSnapshotReply(2, "n3", 3, 0, 50, False))
    sent, _ = step(node, InstallSnapshotReply(2, "n3", 3, 50, 100, False))
    assert [(m.offset, m.done) for _, m in sent] == [(100, False)]
    return node, sent[0][1]


def test_leader_resends_the_unanswered_chunk_at_the_heartbeat():
    """[§5.1] a chunk (or its answer) lost: the heartbeat resends the chunk
    the follower has not acknowledged, not the snapshot from the start."""
    node, third = small_snapshot_leader()
    before = full_state(node)
    sent, answers = tick(node, CONFIG.heartbeat_ticks)
    assert sent == [("n2", heartbeat(2, "n1", 3, 2, leader_commit=3)), ("n3", third)]
    assert answers == []
    assert full_state(node) == before


def test_leader_goes_on_from_the_followers_next_offset():
    """[§5.1] the follower's answer says how much it holds; the leader
    resumes from there, even backwards (the follower lost its partial copy)."""
    node, third = small_snapshot_leader()
    sent, answers = step(node, InstallSnapshotReply(2, "n3", 3, 100, 0, False))
    text = node.snapshot_text
    assert (sent, answers) == ([("n3", InstallSnapshot(2, "n1", 3, 2, 0, text[:50], False))], [])
    assert node.snapshot_offset == {"n3": 0}


def test_leader_ignores_a_stale_answer_about_an_older_chunk():
    """[§5.1] a late duplicate answer to chunk 0 must not move the leader
    back to offset 50, nor put a second chunk in flight."""
    node, third = small_snapshot_leader()
    before = full_state(node)
    assert step(node, InstallSnapshotReply(2, "n3", 3, 0, 50, False)) == ([], [])
    assert full_state(node) == before
    assert node.snapshot_offset == {"n3": 100}


def test_leader_restarts_at_offset_0_after_taking_a_newer_snapshot():
    """[§5.1] an answer about snapshot 3 reaches a leader that now has a
    snapshot at 4: the chunks of the old one are no use; send the new one
    from the start."""
    node, third = small_snapshot_leader()
    node.propose("p", "c1", 1, ["set", "x", "1"])
    cycle(node)
    step(node, AppendEntriesReply(2, True, "n2", match_index=4))
    assert node.take_snapshot() == 4
    sent, answers = step(node, InstallSnapshotReply(2, "n3", 3, 100, 150, False))
    assert (sent, answers) == ([("n3", InstallSnapshot(2, "n1", 4, 2, 0, node.snapshot_text[:50],
                                                       False))], [])
    assert node.snapshot_offset == {"n3": 0}


def test_leader_after_a_done_answer_sets_match_and_next_index_and_sends_entries():
    """[§5.1] done: the follower holds everything up to the snapshot; match
    and next index follow, and replication goes on with AppendEntries from
    the entry after the snapshot."""
    node, first = snapshot_leader()
    node.propose("p", "c1", 1, ["set", "x", "1"])
    cycle(node)
    entry = node.log.entry(4)
    before = full_state(node)
    sent, answers = step(node, InstallSnapshotReply(2, "n3", 3, 0, len(node.snapshot_text), True))
    assert sent == [("n3", AppendEntries(2, "n1", 3, 2, (entry,), 3))]
    assert answers == []
    assert full_state(node) == {**before, "match_index": {**before["match_index"], "n3": 3},
                                "next_index": {**before["next_index"], "n3": 4}}
    assert node.snapshot_offset == {}


# ---------------------------------------------------------------------------
# InstallSnapshot: the follower's side (Figure 5.3, Figure 13)
# ---------------------------------------------------------------------------

SNAP = snapshot_text(4, 2, {"x": "snap"}, [("c9", 3, {"ok": True, "result": None})])
THIRD = math.ceil(len(SNAP) / 3)
PARTS = chunks(SNAP, THIRD)


def install(index, term, offset, data, done, leader_term=2):
    return InstallSnapshot(leader_term, "n2", index, term, offset, data, done)


def test_follower_takes_chunks_in_order_and_answers_how_much_it_holds():
    """[§5.1] Figure 5.3: each chunk at the expected offset is kept and
    answered with next_offset; until done, nothing of the node's state (log,
    machine, storage) changes."""
    node = make_node(term=2, log=[1])
    before = full_state(node)
    for offset, data, done in PARTS[:2]:
        sent, answers = step(node, install(4, 2, offset, data, done))
        assert (sent, answers) == ([("n2", InstallSnapshotReply(2, "n1", 4, offset,
                                                                offset + len(data), False))], [])
        assert full_state(node) == {**before, "leader_id": "n2"}


def test_follower_installs_the_snapshot_only_when_the_last_chunk_arrives():
    """[§5.1] Figure 13 steps 5-8: on done the whole snapshot replaces the
    machine, sessions and log at once, durably, and the answer says done."""
    node = make_node(term=2, log=[1])
    for offset, data, done in PARTS[:2]:
        step(node, install(4, 2, offset, data, done))
    before = full_state(node)
    offset, data, done = PARTS[2]
    sent, answers = step(node, install(4, 2, offset, data, done))
    assert (sent, answers) == ([("n2", InstallSnapshotReply(2, "n1", 4, offset, len(SNAP),
                                                            True))], [])
    assert full_state(node) == {**before, "log": [], "durable": (2, None, []),
                                "commit_index": 4, "last_applied": 4,
                                "machine": {"data": {"x": "snap"}},
                                "snapshot": (4, 2, SNAP), "stored_snapshot": (SNAP, 4),
                                "sessions": {"c9": (3, {"ok": True, "result": None})}}


def test_follower_answers_a_duplicate_or_out_of_order_chunk_with_where_it_stands():
    """[§5.1] a chunk that is not the next one (repeated, or past a lost
    one) is not kept; the answer repeats how much the follower holds."""
    node = make_node(term=2, log=[1])
    step(node, install(4, 2, *PARTS[0]))
    before = full_state(node)
    for offset, data, done in (PARTS[0], PARTS[2]):
        sent, answers = step(node, install(4, 2, offset, data, done))
        assert (sent, answers) == ([("n2", InstallSnapshotReply(2, "n1", 4, offset, THIRD,
                                                                False))], [])
        assert full_state(node) == before
    sent, _ = step(node, install(4, 2, *PARTS[1]))          # the right one still fits
    assert sent == [("n2", InstallSnapshotReply(2, "n1", 4, THIRD, 2 * THIRD, False))]


def test_follower_keeps_the_log_after_the_snapshot_when_it_agrees_there():
    """[§5.1] Figure 13 step 6: our entry at last_included_index has the
    snapshot's term, so the entries after it are kept (and stay durable)."""
    node = make_node(term=2, log=[1, 1, 2, 2, 2])
    text = snapshot_text(4, 2, {"x": "snap"})
    step(node, install(4, 2, 0, text, True))
    assert (node.log.snapshot_index, node.log.entries, node.storage.entries) == (
        4, [E(2, 5)], [E(2, 5)])
    assert (node.commit_index, node.last_applied, node.log.last_index) == (4, 4, 5)


def test_follower_drops_its_whole_log_when_it_disagrees_at_the_snapshot_index():
    """[§5.1] Figure 13 step 7: our entry at last_included_index has another
    term, so nothing in our log can be trusted past it: all of it goes."""
    node = make_node(term=2, log=[1, 1, 1, 1, 1])
    text = snapshot_text(4, 2, {"x": "snap"})
    step(node, install(4, 2, 0, text, True))
    assert (node.log.snapshot_index, node.log.entries, node.storage.entries) == (4, [], [])
    assert (node.log.last_index, node.log.last_term) == (4, 2)


def test_follower_acknowledges_a_snapshot_it_already_covers_without_installing_it():
    """[§5.1] a snapshot up to index 2, reaching a follower that committed
    index 3: nothing to install (committed entries agree with any leader's);
    the answer is done so the leader moves on."""
    node = make_node(term=2, log=[1, 1, 2])
    step(node, heartbeat(2, "n2", 3, 2, leader_commit=3))
    before = full_state(node)
    text = snapshot_text(2, 1, {"other": "state"})
    sent, answers = step(node, install(2, 1, 0, text[:10], False))
    assert (sent, answers) == ([("n2", InstallSnapshotReply(2, "n1", 2, 0, 10, True))], [])
    assert full_state(node) == before


def test_follower_refuses_a_damaged_snapshot_and_changes_nothing():
    """[§5.1] the assembled text must decode: a header that counts two
    sessions over one session line is refused (next_offset 0, not done),
    and the node's state stays as it was."""
    node = make_node(term=2, log=[1])
    damaged = SNAP.replace('"sessions":1', '"sessions":2', 1)
    assert damaged != SNAP
    before = full_state(node)
    sent, answers = step(node, install(4, 2, 0, damaged, True))
    assert (sent, answers) == ([("n2", InstallSnapshotReply(2, "n1", 4, 0, 0, False))], [])
    assert full_state(node) == {**before, "leader_id": "n2"}
    assert node.counters["bad field"] == 1


def test_follower_refuses_a_snapshot_whose_state_does_not_restore():
    """[§5.1] a snapshot that decodes but whose state the machine cannot
    restore ({"state": {"nodata": 1}} for kv) installs nothing, so the answer
    must not say done: a done answer makes the leader set match_index to 4
    for a follower that holds nothing."""
    node = make_node(term=2, log=[1])
    broken = SNAP.replace('{"state":{"data":{"x":"snap"}}}', '{"state":{"nodata":1}}', 1)
    assert broken != SNAP and raft.decode_snapshot(broken).state == {"nodata": 1}
    before = full_state(node)
    sent, answers = step(node, install(4, 2, 0, broken, True))
    assert full_state(node) == {**before, "leader_id": "n2"}      # holds: nothing installed
    assert (sent, answers) == ([("n2", InstallSnapshotReply(2, "n1", 4, 0, 0, False))], [])


def test_follower_takes_the_configuration_of_an_installed_snapshot():
    """[§5.1] with [§4.1]: the snapshot carries the configuration in force at
    its index; installing it puts that configuration in force."""
    node = make_node(term=2, log=[1])
    text = snapshot_text(4, 2, {"x": "snap"}, voters=FOUR, learners=["n5"])
    step(node, install(4, 2, 0, text, True))
    assert configuration(node) == (FOUR, ["n5"], ["n2", "n3", "n4", "n5"])


def test_append_entries_from_below_the_snapshot_index_is_accepted():
    """[§5.1] with [AE-2]: prev_log_index 1 is inside our snapshot (index
    3), hence committed and matching; the entries up to 3 are skipped and
    the rest appended."""
    node = make_node_with_snapshot(term=2, text=snapshot_text(3, 1, {"a": "1"}))
    before = full_state(node)
    entries = (E(1, 2), E(1, 3), E(2, 4), E(2, 5))
    sent, answers = step(node, AppendEntries(2, "n2", 1, 1, entries, 3))
    assert (sent, answers) == ([("n2", AppendEntriesReply(2, True, "n1", match_index=5, prev_log_index=1))], [])
    assert full_state(node) == {**before, "leader_id": "n2", "log": [E(2, 4), E(2, 5)],
                                "durable": (2, None, [E(2, 4), E(2, 5)])}


# ---------------------------------------------------------------------------
# JsonLinesStorage with snapshots (§5.1.3: writing snapshots safely)
# ---------------------------------------------------------------------------

def test_json_storage_writes_snapshot_whole_and_rewrites_log_after_it(tmp_path):
    """[§5.1] snapshot.jsonl holds exactly the snapshot text; log.jsonl is
    rewritten to start just after the snapshot; no temporary file is left;
    a reload gives back the same log and snapshot."""
    storage = raft.JsonLinesStorage(str(tmp_path))
    node = raft.RaftNode("n1", MEMBERS, storage, kv.KeyValueStore(), random.Random(SEED), CONFIG)
    node.step(AppendEntries(1, "n2", 0, 0, tuple(log_of([1, 1, 1, 1])), 2))
    jcycle(node)
    assert node.take_snapshot() == 2
    storage.close()
    assert (tmp_path / "snapshot.jsonl").read_text() == node.snapshot_text
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    assert load_dir(tmp_path) == ((1, None, [E(1, 3), E(1, 4)]), node.snapshot_text)


def test_json_storage_after_a_crash_between_the_two_files_keeps_an_agreeing_suffix(tmp_path):
    """[§5.1] crash after snapshot.jsonl was renamed into place, before
    log.jsonl was rewritten: the old log still starts at 1. It agrees with
    the snapshot at its index (term 1 at 3), so entries 4.. are kept."""
    write_data_dir(tmp_path, snapshot=snapshot_text(3, 1), log=log_of([1, 1, 1, 2, 2]))
    assert load_dir(tmp_path) == ((3, None, [E(2, 4), E(2, 5)]), snapshot_text(3, 1))


def test_json_storage_after_a_crash_between_the_two_files_drops_a_disagreeing_log(tmp_path):
    """[§5.1] as above, but the old log has term 2 at the snapshot's index 3
    (the snapshot was installed from a leader): Figure 13, all of it goes."""
    write_data_dir(tmp_path, snapshot=snapshot_text(3, 1), log=log_of([1, 1, 2, 2, 2]))
    assert load_dir(tmp_path) == ((3, None, []), snapshot_text(3, 1))


def restart_on_disk(path):
    storage = raft.JsonLinesStorage(str(path))
    return raft.RaftNode("n1", MEMBERS, storage, kv.KeyValueStore(), random.Random(SEED), CONFIG)


def test_json_storage_entries_written_after_a_crash_recovery_survive_the_next_restart(tmp_path):
    """[§5.1] with [PERSIST]: crash while installing a snapshot (index 5)
    over a short log (1..2): the restart loads the snapshot and no entries.
    The node then stores and acknowledges entries 6 and 7; a second restart
    must still have them."""
    write_data_dir(tmp_path, snapshot=snapshot_text(5, 2), log=log_of([1, 1]))
    node = restart_on_disk(tmp_path)
    node.step(AppendEntries(3, "n2", 5, 2, (Entry(3, None), Entry(3, None)), 0))
    assert jcycle(node)[0] == [("n2", AppendEntriesReply(3, True, "n1", match_index=7, prev_log_index=5))]
    node.storage.close()
    (_, _, entries), _ = load_dir(tmp_path)
    assert entries == [Entry(3, None), Entry(3, None)]


def test_json_storage_entries_written_after_dropping_a_disagreeing_log_survive(tmp_path):
    """[§5.1] with [PERSIST]: crash while installing a snapshot (index 3,
    term 1) over a log that disagrees there (term 2): the restart drops the
    log. Entries 4 and 5 of term 3 are then stored and acknowledged; they
    must survive the next restart (a lost acknowledged entry can undo a
    commit)."""
    write_data_dir(tmp_path, snapshot=snapshot_text(3, 1), log=log_of([1, 1, 2, 2, 2]))
    node = restart_on_disk(tmp_path)
    assert node.log.entries == []
    node.step(AppendEntries(3, "n2", 3, 1, (Entry(3, None), Entry(3, None)), 0))
    assert jcycle(node)[0] == [("n2", AppendEntriesReply(3, True, "n1", match_index=5, prev_log_index=3))]
    node.storage.close()
    (_, _, entries), _ = load_dir(tmp_path)
    assert entries == [Entry(3, None), Entry(3, None)]


def test_json_storage_ignores_and_removes_leftover_temporary_files(tmp_path):
    """[§5.1] a crash before a rename leaves snapshot.jsonl.tmp or
    log.jsonl.tmp half written; the old files are whole and are what loads,
    and the leftovers are removed."""
    write_data_dir(tmp_path, snapshot=snapshot_text(2, 1), log=[E(1, 3)], log_first_index=3)
    (tmp_path / "snapshot.jsonl.tmp").write_text('{"index": 9, "te')
    (tmp_path / "log.jsonl.tmp").write_text('{"index": 3, "term": 7, "comm')
    assert load_dir(tmp_path) == ((3, None, [E(1, 3)]), snapshot_text(2, 1))
    assert not (tmp_path / "snapshot.jsonl.tmp").exists()
    assert not (tmp_path / "log.jsonl.tmp").exists()


def test_json_storage_a_temporary_snapshot_alone_is_no_snapshot(tmp_path):
    """[§5.1] the first snapshot's crash before its rename: there is no
    snapshot yet, and the whole log loads."""
    write_data_dir(tmp_path, log=log_of([1, 1]))
    (tmp_path / "snapshot.jsonl.tmp").write_text(snapshot_text(2, 1))
    assert load_dir(tmp_path) == ((3, None, log_of([1, 1])), None)
    assert not (tmp_path / "snapshot.jsonl.tmp").exists()


@pytest.mark.parametrize("line, damage", [
    (2, lambda lines: [lines[0], "{not json", *lines[2:]]),
    (3, lambda lines: [*lines[:2], '{"client":"c9","seq":"three","answer":{}}']),
    (1, lambda lines: ['{"index":4,"term":2}', *lines[1:]]),
])
def test_json_storage_a_damaged_snapshot_file_is_a_storage_error_naming_file_and_line(
        tmp_path, line, damage):
    """[§5.1] snapshot.jsonl is written whole and renamed into place, so any
    damage is real: StorageError with the file and the bad line."""
    lines = damage(SNAP.splitlines())
    write_data_dir(tmp_path, snapshot="\n".join(lines) + "\n")
    with pytest.raises(raft.StorageError) as caught:
        load_dir(tmp_path)
    assert (caught.value.path, caught.value.line) == (str(tmp_path / "snapshot.jsonl"), line)
    assert f"snapshot.jsonl:{line}:" in str(caught.value)


def test_json_storage_a_log_starting_past_the_snapshot_is_a_storage_error(tmp_path):
    """[§5.1] snapshot up to 2, log from 5: entries 3 and 4 are missing."""
    write_data_dir(tmp_path, snapshot=snapshot_text(2, 1), log=[E(1, 5), E(1, 6)],
                   log_first_index=5)
    with pytest.raises(raft.StorageError) as caught:
        load_dir(tmp_path)
    assert (caught.value.path, caught.value.line) == (str(tmp_path / "log.jsonl"), 1)
    assert "missing" in caught.value.reason


# ---------------------------------------------------------------------------
# Membership changes, one server at a time (§4.1-§4.3)
# ---------------------------------------------------------------------------

def test_4_1_a_leader_uses_a_configuration_as_soon_as_it_appends_it():
    """[§4.1] a server uses the latest configuration in its log, committed or
    not: adding n4 makes it a learner and a peer at once."""
    node = make_leader(term=2, acked=["n2", "n3"])
    before = full_state(node)
    node.change_membership("a", "add", "n4")
    sent, answers = cycle(node)
    entry = config_entry(2, MEMBERS, ["n4"])
    assert sent == [(peer, AppendEntries(2, "n1", 1, 2, (entry,), 1)) for peer in ("n2", "n3")]
    assert answers == []
    log = before["log"] + [entry]
    assert full_state(node) == {**before, "log": log, "durable": (2, "n1", log),
                                "next_index": {"n2": 2, "n3": 2, "n4": 3},
                                "match_index": {"n2": 1, "n3": 1, "n4": 0},
                                "configuration": (MEMBERS, ["n4"], ["n2", "n3", "n4"])}


def test_4_1_a_follower_uses_a_configuration_as_soon_as_it_stores_it():
    """[§4.1] a follower takes a configuration entry into use on storing it,
    before it is committed: its next election asks n4 too."""
    node = make_node(term=1, log=[1])
    sent, _ = step(node, AppendEntries(1, "n2", 1, 1, (config_entry(1, FOUR),), 0))
    assert sent == [("n2", AppendEntriesReply(1, True, "n1", match_index=2, prev_log_index=1))]
    assert (configuration(node), node.commit_index) == ((FOUR, [], ["n2", "n3", "n4"]), 0)
    sent, _ = tick(node, node.election_timeout)
    assert [peer for peer, _ in sent] == ["n2", "n3", "n4"]


def test_4_1_truncating_an_uncommitted_configuration_entry_reverts_the_configuration():
    """[§4.1] with [AE-3]: the entry that added learner n4 is deleted by a
    conflicting entry, so the previous configuration is in force again."""
    node = make_node(term=1, log=[E(1, 1), config_entry(1, MEMBERS, ["n4"])])
    assert configuration(node) == (MEMBERS, ["n4"], ["n2", "n3", "n4"])
    sent, _ = step(node, AppendEntries(2, "n2", 1, 1, (Entry(2, None),), 0))
    assert sent == [("n2", AppendEntriesReply(2, True, "n1", match_index=2, prev_log_index=1))]
    assert configuration(node) == (MEMBERS, [], ["n2", "n3"])


def test_4_1_a_change_waits_until_the_leader_commits_an_entry_of_its_term():
    """[§4.1] single-server changes are safe only once the new leader has
    committed in its term (the published fix): until then the request waits,
    then goes ahead by itself."""
    node = make_leader(term=2, log=[1])
    before = full_state(node)
    node.change_membership("a", "add", "n4")
    assert cycle(node) == ([], [])
    assert full_state(node) == before
    sent, answers = step(node, AppendEntriesReply(2, True, "n2", match_index=2))
    entry = config_entry(2, MEMBERS, ["n4"])
    assert node.log.entries[-1] == entry and node.log.last_index == 3
    assert sent == [("n2", AppendEntries(2, "n1", 2, 2, (entry,), 2))]
    assert answers == []


def test_4_1_only_one_configuration_change_at_a_time():
    """[§4.1] while the configuration adding n4 is uncommitted, a second
    change waits: no second configuration entry, no answer; once the first
    commits, the second goes ahead."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.change_membership("a", "add", "n4")
    cycle(node)
    before = full_state(node)
    node.change_membership("r", "remove", "n3")
    assert cycle(node) == ([], [])
    assert full_state(node) == before
    step(node, AppendEntriesReply(2, True, "n2", match_index=2))
    assert node.log.entry(3) == config_entry(2, ["n1", "n2"], ["n4"])


def learner_leader(**kwargs):
    """Leader n1 of term 2 whose log holds (index 1) the configuration
    voters n1-n3 + learner n4; its no-op is index 2."""
    return make_leader(term=2, log=[config_entry(1, MEMBERS, ["n4"])], **kwargs)


def test_4_2_1_a_learner_gets_append_entries_but_does_not_count_for_commit():
    """[§4.2.1] a learner receives the log (the new leader announces itself
    to n4 too), but its acknowledgement is no vote towards a majority."""
    node = make_candidate(term=2, log=[config_entry(1, MEMBERS, ["n4"])])
    sent, _ = step(node, RequestVoteReply(2, True, "n2", "n1"))
    assert [peer for peer, _ in sent] == ["n2", "n3", "n4"]
    before = full_state(node)
    assert step(node, AppendEntriesReply(2, True, "n4", match_index=2)) == ([], [])
    assert full_state(node) == {**before, "match_index": {"n2": 0, "n3": 0, "n4": 2},
                                "next_index": {"n2": 2, "n3": 2, "n4": 3}}
    assert node.commit_index == 0


def test_4_2_1_a_learner_never_stands_for_election():
    """[§4.2.1] a learner has no vote, so it never campaigns: its election
    timer runs out and it stays a follower, silent, in its term."""
    node = make_node("n4", term=1, log=[config_entry(1, MEMBERS, ["n4"])], members=[])
    step(node, heartbeat(1, "n1", 1, 1, leader_commit=1))     # the configuration commits
    assert (node.members, node.learners, node.commit_index) == (MEMBERS, ["n4"], 1)
    before = full_state(node)
    for _ in range(3):
        assert tick(node, node.election_timeout) == ([], [])
    assert full_state(node) == {**before, "leader_id": None}   # it no longer hears one


def test_4_2_1_a_learner_that_stops_hearing_the_leader_answers_pre_votes_again():
    """[§4.2.1] with [§9.6]: a learner never campaigns, but after a timeout
    without its leader it no longer claims to hear one. The voter that the
    leader's newer configuration made of it may be needed by the other voter
    (seed 1789: a learner whose timer was the minimum refused every pre-vote
    forever, and the two-voter cluster never elected a leader)."""
    config = dataclasses.replace(BOTH, election_timeout_ticks=(10, 10))
    node = make_node("n2", term=1, log=[config_entry(1, ["n1"], ["n2"])], members=[],
                     config=config)
    step(node, heartbeat(1, "n1", 1, 1, leader_commit=1))
    assert (node.members, node.learners, node.leader_id) == (["n1"], ["n2"], "n1")
    tick(node, 10)
    assert node.leader_id is None and node.role is Role.FOLLOWER
    sent, answers = step(node, RequestVote(2, "n1", 2, 1, pre_vote=True))
    assert (sent, answers) == ([("n1", RequestVoteReply(2, True, "n2", "n1", pre_vote=True))],
                               [])
    assert node.current_term == 1


def test_4_2_1_a_learner_caught_up_within_an_election_timeout_is_promoted():
    """[§4.2.1] the learner replicates to the leader's last index within an
    election timeout: the leader appends the configuration making it a voter,
    and replicates it (to n4 too)."""
    node = learner_leader(acked=["n2"])
    before = full_state(node)
    sent, answers = step(node, AppendEntriesReply(2, True, "n4", match_index=2))
    entry = config_entry(2, FOUR)
    assert sorted(sent) == [(peer, AppendEntries(2, "n1", 2, 2, (entry,), 2))
                            for peer in ("n2", "n4")]
    assert answers == []
    log = before["log"] + [entry]
    assert full_state(node) == {**before, "log": log, "durable": (2, "n1", log),
                                "match_index": {"n2": 2, "n3": 0, "n4": 2},
                                "next_index": {"n2": 3, "n3": 2, "n4": 3},
                                "configuration": (FOUR, [], ["n2", "n3", "n4"])}


def test_4_2_1_a_learner_whose_round_took_too_long_must_do_another_round():
    """[§4.2.1] n4 reaches the end of its first round after more than an
    election timeout while the log grew: no promotion, a new round to the
    current last index starts; finishing that one quickly promotes it."""
    node = learner_leader(acked=["n2"])
    run_ticks(node, CONFIG.election_timeout_ticks[0] + 1)
    node.propose("p", "c1", 1, ["set", "x", "1"])
    cycle(node)
    step(node, AppendEntriesReply(2, True, "n4", match_index=2))
    assert (node.learners, node.log.last_index) == (["n4"], 3)
    step(node, AppendEntriesReply(2, True, "n4", match_index=3))
    assert (node.members, node.learners) == (FOUR, [])
    assert node.log.entry(4) == config_entry(2, FOUR)


def test_4_2_1_add_is_answered_only_when_the_voter_configuration_commits():
    """[§4.2.1] add n4: committing the learner configuration answers nobody;
    the answer comes when the configuration with n4 as voter commits, on a
    majority of the four voters."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.change_membership("a", "add", "n4")
    cycle(node)
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=2))[1] == []
    assert step(node, AppendEntriesReply(2, True, "n4", match_index=2))[1] == []
    assert node.members == FOUR and node.log.entry(3) == config_entry(2, FOUR)
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=3))[1] == []   # 2 of 4
    assert step(node, AppendEntriesReply(2, True, "n4", match_index=3))[1] == [
        ("a", {"ok": True, "result": None})]


def test_4_2_1_an_add_whose_server_never_answers_fails_and_the_learner_is_dropped():
    """[§4.2.1] n4 is down or a typo: after ADD_PATIENCE election timeouts
    the add fails with an error naming it, and since n4 never answered at
    all, a configuration without the learner is appended. The node keeps
    running (seeds 170 and 278 once crashed here: dropping the add twice)."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.change_membership("a", "add", "n4")
    cycle(node)
    step(node, AppendEntriesReply(2, True, "n2", match_index=2))   # learner config commits
    assert node.learners == ["n4"]
    answers = run_ticks(node, raft.ADD_PATIENCE * CONFIG.election_timeout_ticks[1] - 1)
    assert answers == []
    node.tick()
    assert cycle(node)[1] == [("a", {"ok": False, "error": (
        "n4 did not catch up within 10 election timeouts: is it running, and does it "
        "reach the leader?")})]
    assert node.pending_changes == [] and node.learners == []
    assert node.log.entry(node.log.last_index) == config_entry(2, MEMBERS)


def test_4_1_remove_is_answered_when_its_configuration_commits():
    """[§4.1] remove n3: the configuration without it is appended at once
    (n3 is no longer replicated to) and the answer waits for its commit."""
    node = make_leader(term=2, acked=["n2", "n3"])
    node.change_membership("r", "remove", "n3")
    sent, answers = cycle(node)
    entry = config_entry(2, ["n1", "n2"])
    assert (sent, answers) == ([("n2", AppendEntries(2, "n1", 1, 2, (entry,), 1))], [])
    assert configuration(node) == (["n1", "n2"], [], ["n2"])
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=2)) == (
        [], [("r", {"ok": True, "result": None})])


def test_4_1_removing_the_last_voter_is_refused():
    """[§4.1] a configuration with no voters could never commit or elect."""
    node = make_node(members=["n1"])
    tick(node, node.election_timeout)
    assert node.role is Role.LEADER and node.commit_index == 1
    before = full_state(node)
    node.change_membership("r", "remove", "n1")
    assert cycle(node) == ([], [("r", {"ok": False, "error": "cannot remove the last voter"})])
    assert full_state(node) == before


def removing_leader():
    node = make_leader(term=2, acked=["n2", "n3"])
    node.change_membership("r", "remove", "n1")
    cycle(node)
    assert configuration(node) == (["n2", "n3"], [], ["n2", "n3"])
    return node


def test_4_2_2_a_leader_removing_itself_leads_on_without_counting_itself():
    """[§4.2.2] the leader is not in the new configuration: it still leads,
    but n1 + n2 (a majority of the old three) do not commit it; only a
    majority of n2, n3 does."""
    node = removing_leader()
    before = full_state(node)
    assert step(node, AppendEntriesReply(2, True, "n2", match_index=2)) == ([], [])
    assert full_state(node) == {**before, "match_index": {"n2": 2, "n3": 1},
                                "next_index": {"n2": 3, "n3": 2}}
    assert node.role is Role.LEADER and node.commit_index == 1


def test_4_2_2_a_removed_leader_steps_down_at_commit_and_hands_over_with_timeout_now():
    """[§4.2.2] once the configuration without it commits, the leader
    answers the remove, steps down, and sends TimeoutNow to the most
    up-to-date voter (n3, tied with n2 on match_index, wins on id).
    TimeoutNow is decided while applying, after this cycle's sends, so it
    may leave with the next cycle."""
    node = removing_leader()
    step(node, AppendEntriesReply(2, True, "n2", match_index=2))
    sent, answers = step(node, AppendEntriesReply(2, True, "n3", match_index=2))
    assert answers == [("r", {"ok": True, "result": None})]
    assert (node.role, node.leader_id, node.commit_index) == (Role.FOLLOWER, None, 2)
    sent += cycle(node)[0]
    assert sent == [("n3", TimeoutNow(2, "n1"))]
    assert tick(node, 3 * CONFIG.election_timeout_ticks[1]) == ([], [])   # never stands


def test_4_1_a_joining_node_never_campaigns():
    """[§4.1] a node started with no members (to --join) knows no voters,
    itself included: its timer runs out and nothing happens."""
    node = raft.RaftNode("n4", [], raft.MemoryStorage(), kv.KeyValueStore(),
                         random.Random(SEED), CONFIG)
    cycle(node)
    before = full_state(node)
    assert tick(node, 3 * CONFIG.election_timeout_ticks[1]) == ([], [])
    assert full_state(node) == before
    assert configuration(node) == ([], [], [])


def test_4_1_a_joining_node_accepts_append_entries_from_any_leader():
    """[§4.1] RPCs are heard whoever sends them: the joining node stores the
    leader's log, and takes the configuration in it into use."""
    node = raft.RaftNode("n4", [], raft.MemoryStorage(), kv.KeyValueStore(),
                         random.Random(SEED), CONFIG)
    cycle(node)
    entries = (E(1, 1), config_entry(3, MEMBERS, ["n4"]))
    sent, answers = step(node, AppendEntries(3, "n1", 0, 0, entries, 1))
    assert (sent, answers) == ([("n1", AppendEntriesReply(3, True, "n4", match_index=2))], [])
    assert (node.current_term, node.leader_id, node.log.entries) == (3, "n1", list(entries))
    assert configuration(node) == (MEMBERS, ["n4"], ["n1", "n2", "n3"])


# ---------------------------------------------------------------------------
# Pre-vote (§9.6)
# ---------------------------------------------------------------------------

def test_9_6_timeout_asks_for_pre_votes_without_changing_term_or_vote():
    """[§9.6] the election timer runs out: RequestVote(pre_vote=True) for
    term + 1 to every voter; the term, the vote and storage stay."""
    node = make_node(term=2, log=[1, 2], config=PRE_VOTE)
    before = full_state(node)
    sent, answers = tick(node, node.election_timeout)
    assert sent == [(peer, RequestVote(3, "n1", 2, 2, pre_vote=True)) for peer in ("n2", "n3")]
    assert answers == []
    assert full_state(node) == before
    assert node.pre_votes == {"n1"}


def test_9_6_grants_a_pre_vote_to_an_up_to_date_log_and_records_nothing():
    """[§9.6] a granted pre-vote echoes the proposed term; our term, vote
    and election timer stay (the timer still runs out on time)."""
    node = make_node(term=2, log=[1, 2], config=PRE_VOTE)
    tick(node, node.election_timeout - 1)
    before = full_state(node)
    sent, answers = step(node, RequestVote(3, "n2", 2, 2, pre_vote=True))
    assert (sent, answers) == ([("n2", RequestVoteReply(3, True, "n1", "n2", pre_vote=True))], [])
    assert full_state(node) == before
    sent, _ = tick(node)
    assert sent == [(peer, RequestVote(3, "n1", 2, 2, pre_vote=True)) for peer in ("n2", "n3")]


def test_9_6_refuses_a_pre_vote_to_a_log_that_is_behind():
    """[§9.6] the same log test as [RV-2]: a refusal carries our own term."""
    node = make_node(term=2, log=[1, 2], config=PRE_VOTE)
    before = full_state(node)
    sent, answers = step(node, RequestVote(3, "n2", 5, 1, pre_vote=True))
    assert (sent, answers) == ([("n2", RequestVoteReply(2, False, "n1", "n2", pre_vote=True))],
                               [])
    assert full_state(node) == before


def test_9_6_refuses_a_pre_vote_while_it_hears_a_leader():
    """[§9.6] with [§4.2.3] (the default configuration): a follower that
    heard its leader within the minimum election timeout says no."""
    node = make_node(term=2, log=[1, 2], config=BOTH)
    step(node, heartbeat(2, "n2", 2, 2))
    before = full_state(node)
    sent, answers = step(node, RequestVote(3, "n3", 2, 2, pre_vote=True))
    assert (sent, answers) == ([("n3", RequestVoteReply(2, False, "n1", "n3", pre_vote=True))],
                               [])
    assert full_state(node) == before


def test_9_6_refuses_a_pre_vote_while_it_hears_a_leader_even_without_check_quorum():
    """[§9.6] the dissertation's pre-vote condition itself: a voter grants
    only if it has not heard a leader within the election timeout. This is
    part of pre-vote, not of check-quorum."""
    node = make_node(term=2, log=[1, 2], config=PRE_VOTE)
    step(node, heartbeat(2, "n2", 2, 2))
    sent, _ = step(node, RequestVote(3, "n3", 2, 2, pre_vote=True))
    assert sent == [("n3", RequestVoteReply(2, False, "n1", "n3", pre_vote=True))]


def pre_candidate(members=FIVE):
    node = make_node(term=2, log=[1, 2], members=members, config=PRE_VOTE)
    tick(node, node.election_timeout)
    assert node.pre_votes == {"n1"}
    return node


def test_9_6_a_granted_pre_vote_reply_does_not_make_the_receiver_adopt_its_term():
    """[§9.6] with [ALL-2]: a granted pre-vote carries the proposed term 3;
    it is counted, not adopted: one grant of five is no majority, and the
    term stays 2."""
    node = pre_candidate()
    before = full_state(node)
    assert step(node, RequestVoteReply(3, True, "n2", "n1", pre_vote=True)) == ([], [])
    assert full_state(node) == before
    assert node.pre_votes == {"n1", "n2"}


def test_9_6_a_majority_of_pre_votes_starts_the_real_election():
    """[§9.6] with [CAN-1]: pre-votes from a majority (n1, n2, n3 of five):
    now the term goes up, the node votes for itself and asks for real votes."""
    node = pre_candidate()
    step(node, RequestVoteReply(3, True, "n2", "n1", pre_vote=True))
    before = full_state(node)
    sent, answers = step(node, RequestVoteReply(3, True, "n3", "n1", pre_vote=True))
    assert sent == [(peer, RequestVote(3, "n1", 2, 2)) for peer in ("n2", "n3", "n4", "n5")]
    assert answers == []
    assert full_state(node) == {**before, "role": Role.CANDIDATE, "current_term": 3,
                                "voted_for": "n1", "votes": {"n1"},
                                "durable": (3, "n1", log_of([1, 2]))}


def test_9_6_a_refused_pre_vote_with_a_higher_term_is_adopted():
    """[§9.6] with [ALL-2]: a refusal carries the voter's real term; a
    higher one is news, and the pre-candidate adopts it and stops."""
    node = pre_candidate()
    before = full_state(node)
    assert step(node, RequestVoteReply(5, False, "n2", "n1", pre_vote=True)) == ([], [])
    assert full_state(node) == {**before, "current_term": 5, "durable": (5, None, log_of([1, 2]))}
    assert node.pre_votes is None


def test_9_6_a_candidate_whose_election_times_out_asks_for_pre_votes_again():
    """[§9.6] with [CAN-4]: a split election does not raise the term again
    at once: the candidate returns to follower and asks for pre-votes for
    term + 1, keeping its term and its vote."""
    node = pre_candidate(members=MEMBERS)
    step(node, RequestVoteReply(3, True, "n2", "n1", pre_vote=True))
    assert (node.role, node.current_term) == (Role.CANDIDATE, 3)
    before = full_state(node)
    sent, answers = tick(node, node.election_timeout)
    assert sent == [(peer, RequestVote(4, "n1", 2, 2, pre_vote=True)) for peer in ("n2", "n3")]
    assert answers == []
    assert full_state(node) == {**before, "role": Role.FOLLOWER}
    assert (node.voted_for, node.storage.voted_for) == ("n1", "n1")


# ---------------------------------------------------------------------------
# Lease (§4.2.3) and check-quorum (§6.2)
# ---------------------------------------------------------------------------

def test_4_2_3_a_follower_hearing_its_leader_ignores_a_request_vote():
    """[§4.2.3] within the minimum election timeout of hearing the leader, a
    RequestVote (even of a higher term, with a better log) is ignored: no
    answer, no new term, no vote."""
    node = make_node(term=2, log=[1, 2], config=LEASE)
    step(node, heartbeat(2, "n2", 2, 2))
    tick(node, LEASE.election_timeout_ticks[0] - 1)
    before = full_state(node)
    assert step(node, RequestVote(3, "n3", 9, 2)) == ([], [])
    assert full_state(node) == before


def test_4_2_3_the_lease_ends_after_the_minimum_election_timeout():
    """[§4.2.3] election_timeout_ticks[0] ticks without the leader: the
    request is handled as usual ([ALL-2], [RV-2])."""
    node = make_node(term=2, log=[1, 2], config=LEASE)
    step(node, heartbeat(2, "n2", 2, 2))
    assert node.election_timeout > LEASE.election_timeout_ticks[0]
    tick(node, LEASE.election_timeout_ticks[0])
    sent, _ = step(node, RequestVote(3, "n3", 9, 2))
    assert sent == [("n3", RequestVoteReply(3, True, "n1", "n3"))]


def test_4_2_3_a_transfer_request_vote_is_not_ignored_during_the_lease():
    """[§4.2.3] with [§3.10]: RequestVote(transfer=True) comes from the
    leader's own hand-over, so the lease does not apply: term adopted, vote
    granted."""
    node = make_node(term=2, log=[1, 2], config=LEASE)
    step(node, heartbeat(2, "n2", 2, 2))
    before = full_state(node)
    sent, answers = step(node, RequestVote(3, "n3", 2, 2, transfer=True))
    assert (sent, answers) == ([("n3", RequestVoteReply(3, True, "n1", "n3"))], [])
    assert full_state(node) == {**before, "current_term": 3, "voted_for": "n3", "leader_id": None,
                                "durable": (3, "n3", log_of([1, 2]))}


def test_6_2_check_quorum_a_leader_hearing_no_majority_steps_down():
    """[§6.2] check-quorum: election_timeout_ticks[1] ticks without an answer
    from a majority: the leader steps down (and tells its waiting clients)."""
    node = make_leader(term=2, config=LEASE)
    node.propose("p", "c1", 1, ["set", "x", "1"])
    cycle(node)
    assert run_ticks(node, LEASE.election_timeout_ticks[1] - 1) == []
    assert node.role is Role.LEADER
    before = full_state(node)
    node.tick()
    sent, answers = cycle(node)
    assert (sent, answers) == ([], [("p", {**NOT_LEADER, "leader": None, "term": 2})])
    assert full_state(node) == {**before, "role": Role.FOLLOWER, "leader_id": None}


def test_6_2_check_quorum_a_leader_answered_by_a_majority_stays():
    """[§6.2] one answer (n2) in the window makes n1 + n2 a majority: the
    leader stays; the next window starts afresh and needs answers again."""
    node = make_leader(term=2, config=LEASE)
    run_ticks(node, 5)
    step(node, AppendEntriesReply(2, True, "n2", match_index=1))
    run_ticks(node, LEASE.election_timeout_ticks[1] - 5)
    assert node.role is Role.LEADER
    run_ticks(node, LEASE.election_timeout_ticks[1])
    assert node.role is Role.FOLLOWER


# ---------------------------------------------------------------------------
# Leadership transfer (§3.10)
# ---------------------------------------------------------------------------

def transferring_leader():
    """Leader n1 of term 2, n2 caught up, n3 behind, handing over to n3."""
    node = make_leader(term=2, acked=["n2"])
    node.transfer_leadership("t", "n3")
    assert cycle(node) == ([], [])            # n3 is behind: no TimeoutNow yet
    return node


def test_3_10_a_leader_handing_over_refuses_writes():
    """[§3.10] during a transfer the leader takes no new writes (they would
    delay the target's catching up): not_leader, the target not yet named."""
    node = transferring_leader()
    before = full_state(node)
    node.propose("p", "c1", 1, ["set", "x", "1"])
    assert cycle(node) == ([], [("p", {**NOT_LEADER, "leader": None, "term": 2})])
    assert full_state(node) == before


def test_3_10_time_out_now_goes_only_when_the_target_has_the_whole_log():
    """[§3.10] n3 acknowledges the last index: TimeoutNow, and the transfer
    request is answered with the target."""
    node = transferring_leader()
    assert step(node, AppendEntriesReply(2, True, "n3", match_index=0)) == ([], [])
    sent, answers = step(node, AppendEntriesReply(2, True, "n3", match_index=1))
    assert (sent, answers) == ([("n3", TimeoutNow(2, "n1"))], [("t", {"ok": True,
                                                                      "result": "n3"})])
    node.propose("p", "c1", 1, ["set", "x", "1"])
    assert cycle(node) == ([], [("p", {**NOT_LEADER, "leader": "n3", "term": 2})])


def test_3_10_a_transfer_that_does_not_finish_in_an_election_timeout_gives_up():
    """[§3.10] after election_timeout_ticks[1] ticks the transfer is
    abandoned with an error, and the leader takes writes again."""
    node = transferring_leader()
    assert run_ticks(node, CONFIG.election_timeout_ticks[1]) == []
    node.tick()
    assert cycle(node)[1] == [("t", {"ok": False, "error": "n3 did not catch up within an "
                                                           "election timeout"})]
    assert node.transfer is None
    node.propose("p", "c1", 1, ["set", "x", "1"])
    sent, answers = cycle(node)
    assert answers == [] and node.log.last_index == 2


def test_3_10_time_out_now_starts_an_election_at_once_without_pre_vote():
    """[§3.10] TimeoutNow from our leader of our term: stand for election now
    (no timeout, no pre-vote), asking with transfer=True so the voters'
    leases do not ignore it."""
    node = make_node(term=2, log=[1, 2], config=BOTH)
    step(node, heartbeat(2, "n2", 2, 2))
    before = full_state(node)
    sent, answers = step(node, TimeoutNow(2, "n2"))
    assert sent == [(peer, RequestVote(3, "n1", 2, 2, transfer=True)) for peer in ("n2", "n3")]
    assert answers == []
    assert full_state(node) == {**before, "role": Role.CANDIDATE, "current_term": 3,
                                "voted_for": "n1", "votes": {"n1"}, "leader_id": None,
                                "durable": (3, "n1", log_of([1, 2]))}


def test_3_10_time_out_now_of_an_old_term_is_ignored():
    """[§3.10] a TimeoutNow from term 2 reaching a follower of term 3 is a
    leftover of an old hand-over: nothing happens."""
    node = make_node(term=3, log=[1, 2], config=BOTH)
    step(node, heartbeat(3, "n2", 2, 2))
    before = full_state(node)
    assert step(node, TimeoutNow(2, "n2")) == ([], [])
    assert full_state(node) == before


def test_3_10_time_out_now_from_a_server_that_is_not_our_leader_is_ignored():
    """[§3.10] only the leader we follow can hand over to us."""
    node = make_node(term=3, log=[1, 2], config=BOTH)
    step(node, heartbeat(3, "n2", 2, 2))
    before = full_state(node)
    assert step(node, TimeoutNow(3, "n3")) == ([], [])
    assert full_state(node) == before


def test_3_10_a_learner_ignores_time_out_now():
    """[§3.10] with [§4.2.1]: a learner has no vote to stand with."""
    node = make_node("n4", term=1, log=[config_entry(1, MEMBERS, ["n4"])], members=[])
    step(node, heartbeat(1, "n1", 1, 1, leader_commit=1))
    before = full_state(node)
    assert step(node, TimeoutNow(1, "n1")) == ([], [])
    assert full_state(node) == before


def test_3_10_transfer_to_a_server_that_is_not_a_voter_is_refused():
    """[§3.10] only a voter can be elected: a learner target is refused at
    once and the leader goes on taking writes."""
    node = learner_leader(acked=["n2"])
    before = full_state(node)
    node.transfer_leadership("t", "n4")
    assert cycle(node) == ([], [("t", {"ok": False, "error": "n4 is not a voter"})])
    assert full_state(node) == before and node.transfer is None


# ---------------------------------------------------------------------------
# ReadIndex after a leader change (§6.4)
# ---------------------------------------------------------------------------

def test_6_4_a_read_at_a_new_leader_waits_for_its_no_op_even_with_a_known_commit():
    """[§6.4] n1 learned commit index 3 as a follower, then became leader of
    term 3. A read there waits: the heartbeat round is acknowledged (still
    leader) but until the no-op commits, the leader's commit index may be
    behind the last leader's. Once it commits, the read is answered."""
    node = make_node(term=2, log=[1, 2, 2])
    step(node, heartbeat(2, "n2", 3, 2, leader_commit=3))
    elect(node)
    node.read("q", ["get", "k3"])
    sent, answers = cycle(node)
    assert [message.read_round for _, message in sent] == [1, 1] and answers == []
    before = full_state(node)
    assert step(node, AppendEntriesReply(3, True, "n2", match_index=0, read_round=1)) == ([], [])
    assert full_state(node) == before and node.commit_index == 3
    assert step(node, AppendEntriesReply(3, True, "n2", match_index=4, read_round=1)) == (
        [], [("q", {"ok": True, "result": "t2"})])
