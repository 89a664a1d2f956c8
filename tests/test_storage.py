"""JsonLinesStorage (raft.py [4]) and the PERSIST rule ([6.9]).

The format: state.jsonl and log.jsonl in the data dir, append-only.
  state.jsonl  {"term": T, "voted_for": ID or null}    the last line wins
  log.jsonl    {"index": I, "term": T, "command": C}   a line with index I
               replaces the entry at I and every entry after it
A torn last line (a crash in mid-write) is dropped on load and cut off the
file; any other damage raises StorageError naming the file and the 1-based
line, because a committed entry must never be dropped in silence.
"""

import json
import os
import random
import socket
import subprocess
import sys

import pytest

import kv
import raft

E = raft.Entry
MEMBERS = ["n1", "n2", "n3"]
RAFT_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "raft.py")


def command(client, seq, *op):
    return {"client": client, "seq": seq, "op": list(op)}


def entries(*terms):
    """One entry per term given, each with a distinct command."""
    return [E(term, command("c", seq, "incr", "k", 1)) for seq, term in enumerate(terms, 1)]


def log_line(index, entry):
    return json.dumps({"index": index, "term": entry.term, "command": entry.command})


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def open_storage(data_dir):
    """Open a JsonLinesStorage; every one opened is closed after the test."""
    opened = []

    def open_(path=data_dir):
        storage = raft.JsonLinesStorage(str(path))
        opened.append(storage)
        return storage

    yield open_
    for storage in opened:
        storage.close()


def reopen(open_storage, storage):
    """Close (a clean stop) and load again from the same directory."""
    storage.close()
    fresh = open_storage()
    return fresh, fresh.load()


def write_files(data_dir, state_lines=(), log_lines=(), state_tail="", log_tail=""):
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "state.jsonl").write_text("".join(line + "\n" for line in state_lines)
                                          + state_tail)
    (data_dir / "log.jsonl").write_text("".join(line + "\n" for line in log_lines) + log_tail)


# -- round trip and replacement ------------------------------------------------------

def test_an_empty_data_dir_loads_as_term_0_no_vote_and_the_empty_log(open_storage, data_dir):
    storage = open_storage()
    assert storage.load() == (0, None, [])
    assert (data_dir / "state.jsonl").exists() and (data_dir / "log.jsonl").exists()


def test_term_vote_and_entries_survive_close_and_reopen(open_storage):
    storage = open_storage()
    storage.load()
    written = entries(1, 1, 2) + [E(2, None), E(3, command("c", 9, "set", "k", "v é ✓"))]
    storage.save_term_and_vote(2, "n2")
    storage.write_entries(1, written[:3])
    storage.write_entries(4, written[3:])
    storage.save_term_and_vote(3, "n3")
    storage.sync()

    _, loaded = reopen(open_storage, storage)

    assert loaded == (3, "n3", written)


def test_the_last_state_line_wins(open_storage):
    storage = open_storage()
    storage.load()
    for term, vote in [(1, None), (1, "n1"), (2, None), (5, "n2"), (5, None)]:
        storage.save_term_and_vote(term, vote)
    storage.sync()

    _, loaded = reopen(open_storage, storage)

    assert loaded == (5, None, [])


def test_a_log_line_replaces_its_index_and_all_after_it_without_rewriting(
        open_storage, data_dir):
    storage = open_storage()
    storage.load()
    first = entries(1, 1, 1, 1, 1)
    storage.write_entries(1, first)                 # 1..5
    storage.sync()
    new3 = E(2, command("d", 1, "set", "x", "3"))
    storage.write_entries(3, [new3])                # AE-3: 3.. conflict, replaced
    storage.sync()

    storage, loaded = reopen(open_storage, storage)
    assert loaded == (0, None, [first[0], first[1], new3])

    new4 = E(2, command("d", 2, "set", "x", "4"))
    storage.write_entries(4, [new4])
    storage.sync()
    _, loaded = reopen(open_storage, storage)
    assert loaded == (0, None, [first[0], first[1], new3, new4])
    # Append-only: every write is still in the file, none was rewritten.
    lines = (data_dir / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [1, 2, 3, 4, 5, 3, 4]


def test_rewriting_from_index_1_replaces_the_whole_log(open_storage):
    storage = open_storage()
    storage.load()
    storage.write_entries(1, entries(1, 1, 1))
    storage.write_entries(1, entries(2))
    storage.sync()

    _, loaded = reopen(open_storage, storage)

    assert loaded == (0, None, entries(2))


# -- torn tails: a crash in mid-write -----------------------------------------------------

GOOD_STATE = [json.dumps({"term": 2, "voted_for": "n2"}),
              json.dumps({"term": 3, "voted_for": None})]
GOOD_LOG = [log_line(i, e) for i, e in enumerate(entries(1, 2, 3), 1)]
NEXT_LOG = log_line(4, entries(1, 2, 3, 3)[3])

TORN = {
    "log: no trailing newline": ("", NEXT_LOG[:20]),
    "log: a whole record but no trailing newline": ("", NEXT_LOG),
    "log: unparseable final line": ("", '{"index": 4, "te\x00\x00\x00\n'),
    "state: no trailing newline": ('{"term": 9, "vot', ""),
    "state: unparseable final line": ('{"term": 9,,}\n', ""),
    "both files": ('{"term"', '{"index": 4, "term": 3, "command": {"cli'),
}


@pytest.mark.parametrize("state_tail, log_tail", TORN.values(), ids=TORN.keys())
def test_a_torn_last_line_is_dropped_and_cut_off_so_appending_works(
        open_storage, data_dir, caplog, state_tail, log_tail):
    write_files(data_dir, GOOD_STATE, GOOD_LOG, state_tail, log_tail)
    good_state_bytes = "".join(line + "\n" for line in GOOD_STATE).encode()
    good_log_bytes = "".join(line + "\n" for line in GOOD_LOG).encode()

    storage = open_storage()
    loaded = storage.load()

    assert loaded == (3, None, entries(1, 2, 3))
    # The torn bytes are gone from the files, not just skipped in memory...
    assert (data_dir / "state.jsonl").read_bytes() == good_state_bytes
    assert (data_dir / "log.jsonl").read_bytes() == good_log_bytes
    # ...with one warning per torn file that names the file and the line.
    warnings = [r.getMessage() for r in caplog.records if "torn" in r.getMessage()]
    expected = ([f"state.jsonl:{len(GOOD_STATE) + 1}"] if state_tail else []) + \
               ([f"log.jsonl:{len(GOOD_LOG) + 1}"] if log_tail else [])
    assert len(warnings) == len(expected)
    for warning, where in zip(warnings, expected):
        assert where in warning

    # Appending after the cut gives whole lines, and the result reloads cleanly.
    storage.save_term_and_vote(4, "n1")
    storage.write_entries(4, entries(1, 2, 3, 4)[3:])
    storage.sync()
    _, loaded = reopen(open_storage, storage)
    assert loaded == (4, "n1", entries(1, 2, 3, 4))


def test_a_file_holding_only_a_torn_line_loads_as_empty(open_storage, data_dir):
    write_files(data_dir, state_tail='{"term": 1', log_tail='{"index": 1')

    storage = open_storage()

    assert storage.load() == (0, None, [])
    assert (data_dir / "log.jsonl").read_bytes() == b""


# -- damage anywhere else stops the node, naming file and line ------------------------

DAMAGE = {
    "not JSON": "this is not json",
    "an empty line": "",
    "a missing field": json.dumps({"index": 2, "term": 1}),
    "a string term": json.dumps({"index": 2, "term": "1", "command": None}),
    "term 0": json.dumps({"index": 2, "term": 0, "command": None}),
    "a bad command": json.dumps({"index": 2, "term": 1, "command": {"op": "x"}}),
    "a string index": json.dumps({"index": "2", "term": 1, "command": None}),
    "not an object": "[2, 1, null]",
}


@pytest.mark.parametrize("damaged", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_middle_log_line_raises_storage_error_naming_file_and_line(
        open_storage, data_dir, damaged):
    write_files(data_dir, GOOD_STATE, [GOOD_LOG[0], damaged, GOOD_LOG[2]])
    storage = open_storage()

    with pytest.raises(raft.StorageError) as caught:
        storage.load()

    path = str(data_dir / "log.jsonl")
    assert (caught.value.path, caught.value.line) == (path, 2)
    assert str(caught.value).startswith(f"{path}:2: ")


@pytest.mark.parametrize("damaged", [
    "{not json}",
    json.dumps({"term": -1, "voted_for": None}),
    json.dumps({"term": 1, "voted_for": 7}),
    json.dumps({"voted_for": None}),
])
def test_a_damaged_middle_state_line_raises_storage_error_naming_file_and_line(
        open_storage, data_dir, damaged):
    write_files(data_dir, [GOOD_STATE[0], damaged, GOOD_STATE[1]], GOOD_LOG)
    storage = open_storage()

    with pytest.raises(raft.StorageError) as caught:
        storage.load()

    path = str(data_dir / "state.jsonl")
    assert (caught.value.path, caught.value.line) == (path, 2)
    assert str(caught.value).startswith(f"{path}:2: ")


def test_damage_before_a_torn_tail_is_still_damage(open_storage, data_dir):
    """Only the very last line may be torn; the line before it was complete."""
    write_files(data_dir, GOOD_STATE, [GOOD_LOG[0], "garbage"], log_tail='{"ind')
    storage = open_storage()

    with pytest.raises(raft.StorageError) as caught:
        storage.load()

    assert (caught.value.path, caught.value.line) == (str(data_dir / "log.jsonl"), 2)


@pytest.mark.parametrize("indexes, bad_line", [
    ([1, 2, 4], 3),          # a hole after 2
    ([2], 1),                # the log cannot start at 2
    ([0], 1),                # nor at 0
    ([1, 2, 3, 5, 4], 4),
], ids=["hole", "starts at 2", "index 0", "hole then fill"])
def test_a_gap_in_log_indexes_raises_storage_error_naming_the_line(
        open_storage, data_dir, indexes, bad_line):
    write_files(data_dir, GOOD_STATE,
                [log_line(index, E(1)) for index in indexes])
    storage = open_storage()

    with pytest.raises(raft.StorageError) as caught:
        storage.load()

    path = str(data_dir / "log.jsonl")
    assert (caught.value.path, caught.value.line) == (path, bad_line)
    assert str(caught.value).startswith(f"{path}:{bad_line}: ")


def write_backwards_log(data_dir):
    """Index 2 has term 1 after index 1 has term 2: terms never fall along a log."""
    write_files(data_dir, GOOD_STATE, [log_line(1, E(2)), log_line(2, E(1)), log_line(3, E(2))])


def test_a_term_going_backwards_raises_storage_error_naming_the_file(open_storage, data_dir):
    write_backwards_log(data_dir)
    storage = open_storage()

    with pytest.raises(raft.StorageError) as caught:
        storage.load()

    assert caught.value.path == str(data_dir / "log.jsonl")
    assert str(caught.value).startswith(str(data_dir / "log.jsonl"))


def test_a_term_going_backwards_names_the_line_that_wrote_it(open_storage, data_dir):
    write_backwards_log(data_dir)
    storage = open_storage()

    with pytest.raises(raft.StorageError) as caught:
        storage.load()

    assert (caught.value.path, caught.value.line) == (str(data_dir / "log.jsonl"), 2)


def test_replacing_an_entry_with_a_lower_term_is_legal_history(open_storage, data_dir):
    """Line 3 (term 2 at index 3) is later replaced by a line with index 2:
    the term order that matters is the final log's, not the file's."""
    write_files(data_dir, GOOD_STATE, [log_line(1, E(1)), log_line(2, E(2)), log_line(3, E(2)),
                                       log_line(2, E(1)), log_line(3, E(3))])
    storage = open_storage()

    assert storage.load() == (3, None, [E(1), E(1), E(3)])


def test_writing_no_entries_leaves_a_loadable_log(open_storage):
    storage = open_storage()
    storage.load()
    storage.write_entries(1, entries(1, 1))
    storage.write_entries(3, [])
    storage.write_entries(3, entries(1, 1, 1)[2:])
    storage.sync()

    _, loaded = reopen(open_storage, storage)

    assert loaded[2] == entries(1, 1, 1)


# -- one node per data dir -----------------------------------------------------------

def test_a_second_storage_on_the_same_dir_is_refused_until_the_first_closes(
        open_storage, data_dir):
    first = open_storage()
    first.load()

    with pytest.raises(raft.DataDirInUse) as caught:
        open_storage()
    assert str(caught.value) == f"{data_dir} is in use by another running node"

    first.close()
    second = open_storage()
    assert second.load() == (0, None, [])


# -- sync: flush + fsync, once per dirty file (group commit) ---------------------------

@pytest.fixture
def fsyncs(monkeypatch):
    """Record every fsync or fdatasync: the fd, its path, and what the file held by then."""
    calls = []

    def fake_fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:                 # no /proc: the checks that need it are skipped
            path = None
        content = open(path, "rb").read() if path and os.path.isfile(path) else None
        calls.append((fd, path, content))

    monkeypatch.setattr(os, "fsync", fake_fsync)
    monkeypatch.setattr(raft, "fdatasync", fake_fsync)
    return calls


def test_sync_flushes_then_fsyncs_each_dirty_file_once(open_storage, data_dir, fsyncs):
    storage = open_storage()
    storage.load()
    fsyncs.clear()                      # load syncs the directory; not counted here
    many = entries(*[1] * 100)
    for start in range(0, 100, 10):     # ten writes of ten entries each...
        storage.write_entries(start + 1, many[start:start + 10])
    storage.save_term_and_vote(1, "n1")
    storage.save_term_and_vote(1, "n2")

    storage.sync()                      # ...and one group commit

    log_fd, state_fd = storage.log_file.fileno(), storage.state_file.fileno()
    assert sorted(fd for fd, _, _ in fsyncs) == sorted([log_fd, state_fd])
    on_disk = {fd: content for fd, _, content in fsyncs}
    if on_disk[log_fd] is not None:     # flushed before the fsync, not after
        assert on_disk[log_fd].count(b"\n") == 100
        assert on_disk[state_fd].count(b"\n") == 2

    fsyncs.clear()
    storage.sync()                      # nothing written since: nothing to sync
    assert fsyncs == []

    storage.write_entries(101, entries(1))
    storage.sync()                      # only the log is dirty
    assert [fd for fd, _, _ in fsyncs] == [log_fd]


def test_load_fsyncs_the_data_directory(open_storage, data_dir, fsyncs):
    """New files survive a crash only once their directory entry is synced."""
    storage = open_storage()
    storage.load()
    assert len(fsyncs) == 1
    _, path, _ = fsyncs[0]
    if path is not None:
        assert os.path.realpath(path) == os.path.realpath(data_dir)


def test_a_torn_tail_is_cut_off_durably(open_storage, data_dir, fsyncs):
    write_files(data_dir, GOOD_STATE, GOOD_LOG, log_tail='{"ind')
    storage = open_storage()
    storage.load()
    paths = [path for _, path, _ in fsyncs]
    if paths[0] is not None:
        assert os.path.realpath(data_dir / "log.jsonl") in paths


# -- a RaftNode restarted on the same directory ------------------------------------------

def make_node(storage, node_id="n1", config=raft.Config()):
    return raft.RaftNode(node_id, MEMBERS, storage, kv.KeyValueStore(), random.Random(1),
                         config=config)


# Figure 2 alone: no pre-vote or leader lease, so a vote request right after a
# leader's AppendEntries is answered, as in the paper's rules.
BASELINE = raft.Config(pre_vote=False, check_quorum=False)


def cycle(node, sent):
    raft.persist_send_apply(node, lambda to, message: sent.append((to, message)),
                            lambda request_id, answer: None)


def test_a_restarted_node_resumes_term_vote_and_log_and_keeps_its_vote(open_storage):
    storage = open_storage()
    node = make_node(storage, config=BASELINE)   # Figure 2 alone: vote persistence
    sent = []
    old = entries(2, 2, 2)
    node.step(raft.AppendEntries(2, "n2", 0, 0, tuple(old), leader_commit=1))
    cycle(node, sent)
    node.step(raft.RequestVote(3, "n3", last_log_index=3, last_log_term=2))
    cycle(node, sent)
    new = E(3, command("c", 7, "set", "x", "y"))
    node.step(raft.AppendEntries(3, "n3", 1, 2, (new,), leader_commit=1))   # AE-3 at 2
    cycle(node, sent)
    assert (node.current_term, node.voted_for, node.log.entries) == (3, "n3", [old[0], new])
    storage.close()                    # the process stops

    restarted = make_node(open_storage(), config=BASELINE)

    assert (restarted.current_term, restarted.voted_for, restarted.log.entries) == \
        (3, "n3", [old[0], new])
    # A restart mid-election keeps its vote: another candidate of term 3 is refused.
    sent.clear()
    restarted.step(raft.RequestVote(3, "n2", last_log_index=9, last_log_term=3))
    cycle(restarted, sent)
    assert sent == [("n2", raft.RequestVoteReply(3, False, "n1", "n2"))]


def test_a_log_newer_than_the_state_line_sets_the_term_with_no_vote(open_storage, data_dir):
    """The log was synced, the state line not: the entries prove term 4."""
    write_files(data_dir, [json.dumps({"term": 2, "voted_for": "n2"})],
                [log_line(1, E(2)), log_line(2, E(4))])

    storage = open_storage()
    node = make_node(storage)
    cycle(node, [])
    assert (node.current_term, node.voted_for) == (4, None)

    _, loaded = reopen(open_storage, storage)
    assert loaded == (4, None, [E(2), E(4)])


# -- [PERSIST]: nothing leaves a node before what it depends on is synced ------------------

def test_every_message_leaves_after_its_state_is_synced():
    storage = raft.MemoryStorage()
    node = make_node(storage)
    seen = []

    def send(destination, message):
        seen.append((message, list(storage.pending), storage.term, storage.voted_for,
                     len(storage.entries)))

    def run(*inputs):
        for feed in inputs:
            feed()
        raft.persist_send_apply(node, send, lambda request_id, answer: None)

    # As a follower: a vote, then entries from the leader of term 2.
    run(lambda: node.step(raft.RequestVote(2, "n2", 0, 0)))
    run(lambda: node.step(raft.AppendEntries(2, "n2", 0, 0, tuple(entries(2, 2, 2)), 0)))
    # Two inputs, one cycle: one group commit for both.
    syncs = storage.sync_count
    run(lambda: node.step(raft.AppendEntries(2, "n2", 3, 2, tuple(entries(2, 2, 2, 2)[3:]), 3)),
        lambda: node.step(raft.AppendEntries(2, "n2", 4, 2, tuple(entries(2, 2, 2, 2, 2)[4:]), 3)))
    assert storage.sync_count == syncs + 1
    # Its timer runs out: first a pre-vote round (§9.6, on by default), then,
    # with n2's pre-vote, a candidate, then leader of term 3, with client commands.
    for _ in range(node.config.election_timeout_ticks[1]):
        run(node.tick)
        if any(isinstance(m, raft.RequestVote) and m.pre_vote for m, *_ in seen):
            break
    assert node.role is raft.Role.FOLLOWER and node.current_term == 2, "a pre-vote raises nothing"
    run(lambda: node.step(raft.RequestVoteReply(3, True, "n2", node.id, pre_vote=True)))
    assert node.role is raft.Role.CANDIDATE
    run(lambda: node.step(raft.RequestVoteReply(3, True, "n2", node.id)))
    assert node.role is raft.Role.LEADER
    run(lambda: node.propose("r1", "e", 1, ["incr", "k", 1]),   # "c" is the preloaded log's client
        lambda: node.propose("r2", "d", 1, ["set", "x", "y"]))
    run(lambda: node.step(raft.AppendEntriesReply(3, True, "n2", match_index=6)))
    run(*[node.tick] * node.config.heartbeat_ticks)

    kinds = [type(message).__name__ for message, *_ in seen]
    assert {"RequestVote", "RequestVoteReply", "AppendEntries", "AppendEntriesReply"} <= set(kinds)
    assert any(isinstance(m, raft.RequestVote) and m.pre_vote for m, *_ in seen)
    for message, pending, term, voted_for, stored in seen:
        assert pending == [], f"{message} sent with unsynced writes {pending}"
        if isinstance(message, raft.RequestVote) and message.pre_vote:
            # A pre-vote proposes term + 1 and records nothing (§9.6).
            assert (term, voted_for) == (message.term - 1, "n2")
            continue
        assert term == message.term
        if isinstance(message, raft.RequestVote):
            assert voted_for == node.id
        if isinstance(message, raft.RequestVoteReply) and message.vote_granted:
            assert voted_for == "n2"
        if isinstance(message, raft.AppendEntriesReply) and message.success:
            assert stored >= message.match_index
        if isinstance(message, raft.AppendEntries):
            assert stored >= message.prev_log_index + len(message.entries)
    assert any(isinstance(m, raft.AppendEntries) and len(m.entries) == 2 for m, *_ in seen), \
        "the two commands of one cycle travel in one AppendEntries"


# -- the command line: damage stops the node with one line naming file:line ------------

def free_udp_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_the_node_refuses_to_start_on_a_damaged_log_with_one_line_naming_it(
        tmp_path, data_dir):
    write_files(data_dir, GOOD_STATE, [GOOD_LOG[0], "{damaged", GOOD_LOG[2]])
    port, peer1, peer2 = free_udp_ports(3)

    result = subprocess.run(
        [sys.executable, RAFT_PY, str(port), "--data-dir", str(data_dir),
         "--peers", f"{peer1},{peer2}", "--no-repl"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30)

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "log.jsonl:2" in lines[0]
    assert result.stdout == ""
