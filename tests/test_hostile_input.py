"""Input that no honest node or client sends: it is refused cleanly, never
crashes a node, and never grows its memory without bound.

Regression tests for the review of the first version: a 4,300-digit term
planted by one datagram killed every node and could not be loaded back; an
incr past 4,300 digits killed every leader that answered it; a forged
AppendEntries stopped a follower or left a log that would not load; retries
and reads piled up without limit on a leader cut off from its majority; an
AppendEntries reply storm during catch-up.
"""

import json
import time

import pytest

import counter
import kv
import raft
from raft import AppendEntries, Entry, RequestVote
from sim import Faults, SimCluster
from test_rules import cycle, make_leader


def decode(fields):
    return raft.decode_message(fields)


# -- integers on the wire and on disk stay within 64 bits --------------------

@pytest.mark.parametrize("term", [2 ** 62 + 1, 2 ** 63, 10 ** 4300 - 1])
def test_a_term_beyond_2_to_the_62_is_a_protocol_error(term):
    """Terms stop at 2**62 on the wire, so a node that adopts the largest
    still has room for every election it will ever hold within 64 bits."""
    with pytest.raises(raft.ProtocolError):
        decode({"type": "RequestVote", "term": term, "candidate_id": "n2",
                "last_log_index": 0, "last_log_term": 0})


def test_the_largest_term_is_accepted():
    message = decode({"type": "RequestVote", "term": 2 ** 62, "candidate_id": "n2",
                      "last_log_index": 0, "last_log_term": 0})
    assert message == RequestVote(2 ** 62, "n2", 0, 0)


def test_a_stored_term_beyond_64_bits_is_damage(tmp_path):
    (tmp_path / "state.jsonl").write_text(json.dumps({"term": 2 ** 64, "voted_for": None})
                                          + "\n" + json.dumps({"term": 1, "voted_for": None})
                                          + "\n")
    storage = raft.JsonLinesStorage(str(tmp_path))
    try:
        with pytest.raises(raft.StorageError, match="state.jsonl:1"):
            storage.load()
    finally:
        storage.close()


# -- AppendEntries whose terms no real leader could have written --------------

def append_entries(term, prev_log_term, entry_terms):
    return {"type": "AppendEntries", "term": term, "leader_id": "n2", "prev_log_index": 1,
            "prev_log_term": prev_log_term, "leader_commit": 0,
            "entries": [{"term": t, "command": None} for t in entry_terms]}


@pytest.mark.parametrize("term, prev_log_term, entry_terms", [
    (60, 1, [50, 1]),          # entry terms going backwards
    (3, 1, [5]),               # an entry from a term later than the leader's
    (3, 4, [4]),               # prev_log_term later than the leader's term
    (5, 4, [3]),               # an entry older than the entry before it
])
def test_appendentries_with_impossible_terms_is_a_protocol_error(term, prev_log_term,
                                                                 entry_terms):
    with pytest.raises(raft.ProtocolError, match="terms out of order"):
        decode(append_entries(term, prev_log_term, entry_terms))


def test_appendentries_with_possible_terms_decodes():
    message = decode(append_entries(5, 2, [2, 3, 5]))
    assert [e.term for e in message.entries] == [2, 3, 5]


# -- state machines keep integers within 64 bits ------------------------------

LIMIT = 2 ** 63 - 1


@pytest.mark.parametrize("machine", [kv.KeyValueStore, counter.Counters])
def test_incr_past_64_bits_is_refused_and_changes_nothing(machine):
    store = machine()
    store.apply(["incr", "big", LIMIT])
    with pytest.raises(ValueError, match="64-bit"):
        store.apply(["incr", "big", 1])
    assert store.query(["get", "big"]) == LIMIT


@pytest.mark.parametrize("machine", [kv.KeyValueStore, counter.Counters])
def test_an_amount_beyond_64_bits_is_refused_before_it_is_logged(machine):
    with pytest.raises(ValueError, match="64-bit"):
        machine().check(["incr", "big", 10 ** 4299])


def test_a_string_of_twenty_digits_is_not_an_integer_for_incr():
    store = kv.KeyValueStore()
    store.apply(["set", "n", "9" * 20])
    with pytest.raises(ValueError, match="not an integer"):
        store.apply(["incr", "n", 1])


def test_counter_decr_past_64_bits_is_refused():
    store = counter.Counters()
    store.apply(["set", "c", str(-LIMIT)])
    with pytest.raises(ValueError, match="64-bit"):
        store.apply(["decr", "c", 1])


# -- a leader cut off from its majority: bounded waiters and reads -------------

def test_retries_of_one_request_share_one_waiter():
    leader = make_leader(term=2, acked=("n2",))
    for _ in range(100):
        leader.propose(("addr", "c1", 1), "c1", 1, ["incr", "x", 1])
        cycle(leader)
    assert [len(waiters) for waiters in leader.waiting.values()] == [1]


def test_reads_beyond_the_limit_are_refused_busy(monkeypatch):
    monkeypatch.setattr(raft, "MAX_PENDING_READS", 3)
    leader = make_leader(term=2, acked=("n2",))
    answers = []
    for number in range(5):
        leader.read(("addr", "c1", number), ["get", "x"])
        answers += cycle(leader)[1]
    assert answers == [(("addr", "c1", 3), {"ok": False, "error": "busy: too many reads waiting"}),
                       (("addr", "c1", 4), {"ok": False, "error": "busy: too many reads waiting"})]
    assert len(leader.pending_reads) == 3


# -- catch-up sends each batch about once, whatever the delays -----------------

@pytest.mark.parametrize("delay", [1, 3, 8])
def test_a_lagging_follower_is_sent_each_batch_about_once(delay):
    """Duplicate and late replies do not start extra send chains: the
    number of AppendEntries carrying entries stays close to the number of
    batches the gap needs, with a few heartbeat-driven resends."""
    config = raft.Config(max_append_bytes=4000)
    cluster = SimCluster(3, seed=delay, faults=Faults(delay=(delay, delay)), config=config)
    assert cluster.run_until(lambda: cluster.leader() is not None, 500)
    leader = cluster.leader()
    lagging = next(n for n in cluster.ids if n != leader.id)
    cluster.crash(lagging)
    for seq in range(1, 1001):
        cluster.nodes[leader.id].propose(("r", seq), "c", seq, ["set", "k", "v" * 10])
    cluster.tick(5)
    gap = cluster.nodes[leader.id].log.last_index
    batches_needed = -(-gap * (raft.entry_size(cluster.nodes[leader.id].log.entry(gap)) + 1)
                      // config.max_append_bytes)
    sent_with_entries = []
    original = cluster.transmit

    def counting_transmit(sender, destination, message):
        if destination == lagging and isinstance(message, AppendEntries) and message.entries:
            sent_with_entries.append(message)
        original(sender, destination, message)

    cluster.transmit = counting_transmit
    cluster.restart(lagging)
    assert cluster.run_until(
        lambda: cluster.nodes[lagging].log.last_index == cluster.leader().log.last_index, 3000)
    round_trip_ticks = 2 * delay
    sends_per_batch = 1 + -(-round_trip_ticks // (2 * config.heartbeat_ticks))   # ceil
    assert len(sent_with_entries) <= batches_needed * sends_per_batch + 3, (
        f"{len(sent_with_entries)} AppendEntries with entries for {batches_needed} batches")
