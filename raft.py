"""raft.py: a replicated state machine you can read, run, kill and restart.

Theory of operation
===================
Three (or more) copies of this program, one per UDP port, keep the same ordered
log of commands and apply it to the same state machine (a key-value store in
kv.py, or named counters in counter.py). They agree on the log with Raft, as
described in "In Search of an Understandable Consensus Algorithm" (Ongaro and
Ousterhout, 2014, Figure 2) and Ongaro's dissertation (2014).

    python raft.py 8000          # and 8001, 8002 in two more terminals
    python raft.py demo          # or all three in one terminal

How to read this file
---------------------
Top to bottom, algorithm first, plumbing last:

    [1] constants and errors        [6] RaftNode: the algorithm, and the one
    [2] messages (one per RPC)          persist -> send -> apply cycle
    [3] the log (1-based)           [7] runtime: UDP socket, owner thread, timers
    [4] storage (JSON-lines files)  [8] RaftClient
    [5] the state-machine interface [9] the prompt   [10] the command line

Sections [2]-[6] are the whole algorithm. They never read a clock, a socket,
a file (storage is an interface) or a thread: time arrives as tick() calls,
messages as step() calls, randomness from a seeded random.Random. So the same
inputs always give the same outputs, and tests/ can run thousands of seeded
fault schedules in seconds on the very code that runs in production.

Figure 2 rule tags
------------------
Every rule of the paper's Figure 2 lives in exactly one place below, under a
comment that starts with its tag. Elsewhere the code says "see [TAG]".
docs/figure2.md maps each tag to its function and to the tests that prove it.

  PERSIST  term, vote and log reach stable storage before any reply or
           message that depends on them is sent
  ALL-1    if commit_index > last_applied: apply log[last_applied + 1]
  ALL-2    a message with a higher term: adopt it, become follower
  FOL-1    followers answer RPCs from candidates and leaders
  FOL-2    no AppendEntries from the leader and no vote granted for an
           election timeout: become candidate
  CAN-1    on becoming candidate: increment term, vote for self, reset the
           election timer, send RequestVote to all other servers
  CAN-2    votes from a majority: become leader
  CAN-3    AppendEntries from a leader of our term: become follower
  CAN-4    election timeout while candidate: start a new election
  LEAD-1   on election, and when idle: send AppendEntries heartbeats
  LEAD-2   a client command: append to own log, answer once applied
  LEAD-3   last log index >= next_index: send AppendEntries from next_index
  LEAD-3a  success: update next_index and match_index
  LEAD-3b  failure by log inconsistency: move next_index back and retry
  LEAD-4   commit N if a majority has match_index >= N and log[N] is of
           the current term (never count replicas of an older term, §5.4.2)
  AE-1     AppendEntries: reply false if term < current_term
  AE-2     reply false if the log has no entry at prev_log_index whose term
           is prev_log_term
  AE-3     an existing entry conflicts with a new one (same index, other
           term): delete it and all that follow
  AE-4     append any new entries not already in the log
  AE-5     leader_commit > commit_index: commit_index =
           min(leader_commit, index of last new entry)
  RV-1     RequestVote: reply false if term < current_term
  RV-2     grant if voted_for is null or the candidate, and the candidate's
           log is at least as up to date as ours (§5.4.1)

Beyond Figure 2, tagged by the section they follow:
  §5.3-HINT  the conflict-term hint that lets a lagging follower catch up in
             a few round trips instead of one entry per round trip
  §8-NOOP    a leader appends a no-op entry at the start of its term
  §6.3       client sessions: each (client id, sequence number) is applied at
             most once and a retry gets the first answer back
  §6.4       ReadIndex: linearizable reads confirmed by a heartbeat round

Glossary
--------
term         a number that only grows; each term has at most one leader.
index        a position in the log, starting at 1. Index 0 with term 0 is the
             empty log, so "the entry before the first one" needs no special case.
committed    stored on a majority by the leader of its term; it can never be lost
             or changed.
applied      executed on this node's state machine. Always a prefix of committed.
"""

from __future__ import annotations

import argparse
import cmd
import collections
import dataclasses
import enum
import fcntl
import hashlib
import heapq
import hmac
import inspect
import ipaddress
import json
import logging
import math
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Protocol

# ===========================================================================
# [1] Constants and errors
# ===========================================================================

TICK_MS = 10                       # one core tick is 10 ms of wall time
DEFAULT_ELECTION_TIMEOUT_MS = (150, 300)   # the paper's recommendation, §9.3
DEFAULT_HEARTBEAT_MS = 50
DEFAULT_MAX_DATAGRAM_BYTES = 32768  # well under UDP's 64 KiB, so one datagram
                                    # never has to be refused by the kernel
DEFAULT_PORTS = (8000, 8001, 8002)
DATAGRAM_HEADROOM_BYTES = 1024     # an AppendEntries' fields besides its entries
                                   # (ids up to MAX_ID_CHARS, five integers)
MAX_SESSIONS = 10000               # client sessions kept; least recent evicted
MAX_PENDING_READS = 10000          # reads waiting on one leader; more are refused
MAX_INBOX_ITEMS = 10000            # datagrams queued for the owner; more are dropped
TAG_BYTES = 32                     # HMAC-SHA256 tag in front of every datagram, with a key
MAX_RECEIVE_BYTES = 65000 + TAG_BYTES   # the largest datagram any node or client sends
MAX_ID_CHARS = 256                 # node and client ids on the wire
MAX_WIRE_INTEGER = 2 ** 63 - 1     # indexes, sequence numbers: a sender must not
                                   # plant a number too big to write back
MAX_TERM = 2 ** 62                 # terms on the wire: a node that adopted the
                                   # largest still has 2**62 elections of headroom
                                   # before its own term leaves the 64-bit range


class RaftError(Exception):
    """An operation failed: a bad command, or a state-machine error."""


class ClusterUnavailable(RaftError):
    """No leader answered within the timeout; the call's outcome is unknown."""


class ProtocolError(ValueError):
    """A datagram that is not a well-formed message. Dropped and counted
    under reason, one of a fixed few (DROP_REASONS): the text may quote
    what the sender wrote, the counter name never does."""

    def __init__(self, detail: str, reason: str = "bad field"):
        super().__init__(detail)
        self.reason = reason


# Why a datagram was dropped: the keys of status()["dropped"].
DROP_REASONS = ("unauthenticated", "oversized", "not JSON", "unknown type", "bad field",
                "not from a member", "inbox full")


class DataDirInUse(Exception):
    """Another running node holds this data dir."""


class StorageError(Exception):
    """A damaged data file. Names the file and the 1-based line number."""

    def __init__(self, path: str, line: int | None, reason: str):
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = path, line, reason


def normalize_address(text: str, default_host: str = "127.0.0.1") -> str:
    """'8000' -> '127.0.0.1:8000'; 'localhost:8001' -> '127.0.0.1:8001'.

    Node ids are HOST:PORT strings, so one spelling per address matters:
    two spellings of one node would count as two voters.
    """
    text = text.strip()
    host, _, port = text.rpartition(":")
    if not host:
        host = default_host
    if host == "localhost":
        host = "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a HOST:PORT or PORT: {text!r}")
    return f"{host}:{int(port)}"


def split_address(node_id: str) -> tuple[str, int]:
    host, _, port = node_id.rpartition(":")
    return host, int(port)


# ===========================================================================
# [2] Messages: one frozen dataclass per RPC and reply, the paper's names
# ===========================================================================
# Field names follow Figure 2. Replies also name their sender (voter_id,
# follower_id) because a reply must be matched to the peer that sent it.
# Fields marked OPT are not in Figure 2; the comment says where they come from.

@dataclasses.dataclass(frozen=True)
class Entry:
    """One log entry: the term it was created in, and what to apply.

    command is None for a leader's no-op (see [§8-NOOP]), otherwise
    {"client": id, "seq": n, "op": [...]} for a client command (see [§6.3]).
    """
    term: int
    command: Any = None


@dataclasses.dataclass(frozen=True)
class RequestVote:
    term: int
    candidate_id: str
    last_log_index: int
    last_log_term: int


@dataclasses.dataclass(frozen=True)
class RequestVoteReply:
    term: int
    vote_granted: bool
    voter_id: str
    candidate_id: str    # OPT: the candidate it answers, so a copy replayed to
                         # another candidate of the same term counts for nothing


@dataclasses.dataclass(frozen=True)
class AppendEntries:
    term: int
    leader_id: str
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    read_round: int = 0        # OPT §6.4: echoed back to confirm leadership


@dataclasses.dataclass(frozen=True)
class AppendEntriesReply:
    term: int
    success: bool
    follower_id: str
    match_index: int = 0       # OPT: last index known to match, on success
    conflict_index: int = 0    # OPT §5.3-HINT: where the leader should retry
    conflict_term: int = 0     # OPT §5.3-HINT: term of our entry at prev_log_index
    read_round: int = 0        # OPT §6.4: the read_round we are answering


PEER_MESSAGES = (RequestVote, RequestVoteReply, AppendEntries, AppendEntriesReply)
MESSAGE_TYPES = {cls.__name__: cls for cls in PEER_MESSAGES}


def encode_entry(entry: Entry) -> dict:
    return {"term": entry.term, "command": entry.command}


def encode_message(message) -> dict:
    """A peer message as a JSON-ready dict with its type name."""
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    if isinstance(message, AppendEntries):
        fields["entries"] = [encode_entry(e) for e in message.entries]
    return {"type": type(message).__name__, **fields}


def _check_field(name: str, value, kind: str):
    """Strict type checks: bool is not an int, ints are never negative."""
    if kind == "int":
        if type(value) is not int or not 0 <= value <= MAX_WIRE_INTEGER:
            raise ProtocolError(f"{name} must be an integer from 0 to 2**63-1")
    elif kind == "term":
        if type(value) is not int or not 0 <= value <= MAX_TERM:
            raise ProtocolError(f"{name} must be an integer from 0 to 2**62")
    elif kind == "bool":
        if type(value) is not bool:
            raise ProtocolError(f"{name} must be true or false")
    elif kind == "id":
        if type(value) is not str or not 0 < len(value) <= MAX_ID_CHARS:
            raise ProtocolError(f"{name} must be a short string")
    return value


_FIELD_KINDS = {"term": "term", "candidate_id": "id", "last_log_index": "int",
                "last_log_term": "term", "vote_granted": "bool", "voter_id": "id",
                "leader_id": "id", "prev_log_index": "int", "prev_log_term": "term",
                "leader_commit": "int", "read_round": "int", "success": "bool",
                "follower_id": "id", "match_index": "int", "conflict_index": "int",
                "conflict_term": "term"}


def decode_entry(raw) -> Entry:
    if type(raw) is not dict or set(raw) != {"term", "command"}:
        raise ProtocolError("an entry must be {term, command}")
    _check_field("entry term", raw["term"], "term")
    if raw["term"] < 1:
        raise ProtocolError("entry term must be at least 1")
    return Entry(raw["term"], check_entry_command(raw["command"]))


def check_entry_command(command):
    """An entry's command is None (no-op) or a client command dict."""
    if command is None:
        return None
    if (type(command) is not dict or set(command) != {"client", "seq", "op"}):
        raise ProtocolError("an entry command must be null or {client, seq, op}")
    _check_field("client", command["client"], "id")
    _check_field("seq", command["seq"], "int")
    if type(command["op"]) is not list or not command["op"]:
        raise ProtocolError("op must be a non-empty list")
    return command


def decode_message(fields: dict):
    """The inverse of encode_message. Raises ProtocolError, never anything else."""
    cls = MESSAGE_TYPES.get(fields.get("type"))
    if cls is None:
        raise ProtocolError(f"unknown message type {fields.get('type')!r}", "unknown type")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING}
    given = set(fields) - {"type"}
    if not required <= given or not given <= names:
        raise ProtocolError(f"{cls.__name__} fields do not match")
    values = {}
    for name in given:
        if name == "entries":
            if type(fields[name]) is not list:
                raise ProtocolError("entries must be a list")
            values[name] = tuple(decode_entry(e) for e in fields[name])
        else:
            values[name] = _check_field(name, fields[name], _FIELD_KINDS[name])
    message = cls(**values)
    if cls is AppendEntries:
        check_entry_terms(message)
    return message


def check_entry_terms(message: AppendEntries) -> None:
    """Terms never decrease along a log, and no leader writes entries of a
    term later than its own: anything else is forged or corrupt."""
    terms = [message.prev_log_term, *(e.term for e in message.entries), message.term]
    if any(a > b for a, b in zip(terms, terms[1:])):
        raise ProtocolError("AppendEntries terms out of order")


# ===========================================================================
# [3] The log: 1-based, index 0 / term 0 is the empty-log sentinel
# ===========================================================================

class Log:
    """The entries 1..last_index. log.term_at(0) == 0, so the entry "before
    the first one" matches every log, and AE-2 needs no special case."""

    def __init__(self, entries: Iterable[Entry] = ()):
        self.entries: list[Entry] = list(entries)

    @property
    def last_index(self) -> int:
        return len(self.entries)

    @property
    def last_term(self) -> int:
        return self.term_at(self.last_index)

    def term_at(self, index: int) -> int | None:
        """The term of the entry at index, 0 for index 0, None if absent."""
        if index == 0:
            return 0
        if 1 <= index <= len(self.entries):
            return self.entries[index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - 1]

    def slice(self, first: int, last: int) -> list[Entry]:
        """Entries first..last inclusive."""
        return self.entries[first - 1:last]

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries sharing index's term."""
        term = self.term_at(index)
        while index > 1 and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """The last index holding term, 0 if the log has no entry of term."""
        for index in range(self.last_index, 0, -1):
            found = self.term_at(index)
            if found == term:
                return index
            if found < term:
                break          # terms only grow along the log
        return 0

    def replace_from(self, index: int, entries: list[Entry]) -> None:
        """Drop entries index.. and put entries in their place."""
        del self.entries[index - 1:]
        self.entries.extend(entries)


# ===========================================================================
# [4] Storage: what must survive a crash
# ===========================================================================
# Figure 2 "persistent state on all servers": current_term, voted_for, log[].
# The core writes through this interface and never waits for the disk; the
# one cycle in [6.9] calls sync() before any message leaves. Both stores
# share the contract: nothing written is durable until sync() returns.

class Storage(Protocol):
    def load(self) -> tuple[int, str | None, list[Entry]]: ...
    def save_term_and_vote(self, term: int, voted_for: str | None) -> None: ...
    def write_entries(self, first_index: int, entries: list[Entry]) -> None: ...
    def sync(self) -> None: ...


class MemoryStorage:
    """Storage for tests: a synced part, and what a crash would lose.

    crash() throws the unsynced writes away, exactly like a power cut, so a
    simulated cluster catches any message sent before its state was synced.
    """

    def __init__(self):
        self.term, self.voted_for, self.entries = 0, None, []
        self.pending: list[tuple] = []
        self.sync_count = 0

    def load(self):
        return self.term, self.voted_for, list(self.entries)

    def save_term_and_vote(self, term, voted_for):
        self.pending.append(("state", term, voted_for))

    def write_entries(self, first_index, entries):
        if entries:
            self.pending.append(("entries", first_index, list(entries)))

    def sync(self):
        for kind, a, b in self.pending:
            if kind == "state":
                self.term, self.voted_for = a, b
            else:
                del self.entries[a - 1:]
                self.entries.extend(b)
        if self.pending:
            self.sync_count += 1
        self.pending = []

    def crash(self):
        self.pending = []


fdatasync = getattr(os, "fdatasync", os.fsync)     # macOS has only fsync


class JsonLinesStorage:
    """Two append-only JSON-lines files in the data dir (docs/storage.md).

    state.jsonl  {"term": 4, "voted_for": "127.0.0.1:8001"}   last line wins
    log.jsonl    {"index": 7, "term": 4, "command": {...}}
                 a line with index i replaces the entry at i and all after it,
                 so a conflicting suffix (AE-3) is dropped without rewriting.

    A torn last line (a crash mid-write) is dropped on load; damage anywhere
    else raises StorageError naming the file and line.
    """

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        os.makedirs(data_dir, exist_ok=True)
        self.lock_file = open(os.path.join(data_dir, "lock"), "a")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_file.close()
            raise DataDirInUse(f"{data_dir} is in use by another running node")
        self.state_path = os.path.join(data_dir, "state.jsonl")
        self.log_path = os.path.join(data_dir, "log.jsonl")
        self.state_file = self.log_file = None
        self.dirty: set = set()
        self.sync_count = 0

    # -- loading ---------------------------------------------------------------
    def load(self):
        states = self._read_lines(self.state_path, self._parse_state)
        term, voted_for = states[-1] if states else (0, None)
        entries: list[Entry] = []
        for line_number, (index, entry) in enumerate(
                self._read_lines(self.log_path, self._parse_entry), start=1):
            if not 1 <= index <= len(entries) + 1:
                raise StorageError(self.log_path, line_number,
                                   f"index {index} leaves a gap after {len(entries)}")
            if index > 1 and entry.term < entries[index - 2].term:
                raise StorageError(self.log_path, line_number,
                                   f"term {entry.term} at index {index} is older than "
                                   f"the term before it ({entries[index - 2].term})")
            del entries[index - 1:]
            entries.append(entry)
        self.state_file = open(self.state_path, "a", encoding="utf-8")
        self.log_file = open(self.log_path, "a", encoding="utf-8")
        self._fsync_directory()
        return term, voted_for, entries

    def _read_lines(self, path, parse):
        """Parse every line; drop a torn last line; anything else is damage."""
        if not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        records, good_bytes = [], 0
        for number, raw in enumerate(lines, start=1):
            is_last = number == len(lines)
            if is_last and raw == b"":
                break
            try:
                if is_last:
                    raise ValueError("no newline at the end")
                records.append(parse(json.loads(raw.decode("utf-8"))))
            except (ValueError, TypeError, KeyError, UnicodeDecodeError,
                    RecursionError, ProtocolError) as error:
                torn = is_last or (number == len(lines) - 1 and lines[-1] == b"")
                if not torn:
                    raise StorageError(path, number, f"damaged line: {error}")
                self._drop_torn_tail(path, good_bytes, number)
                break
            good_bytes += len(raw) + 1
        return records

    @staticmethod
    def _drop_torn_tail(path, good_bytes, number):
        logging.getLogger("raft").warning(
            "%s:%d: dropping a torn last line (a crash in mid-write)", path, number)
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _parse_state(record):
        term, voted_for = record["term"], record["voted_for"]
        if type(term) is not int or not 0 <= term <= MAX_WIRE_INTEGER or not (
                voted_for is None or type(voted_for) is str):
            raise ValueError("bad term or voted_for")
        return term, voted_for

    @staticmethod
    def _parse_entry(record):
        if type(record["index"]) is not int or not 0 <= record["index"] <= MAX_WIRE_INTEGER:
            raise ValueError("bad index")
        entry = decode_entry({"term": record["term"], "command": record["command"]})
        return record["index"], entry

    # -- writing ----------------------------------------------------------------
    def save_term_and_vote(self, term, voted_for):
        self.state_file.write(json.dumps({"term": term, "voted_for": voted_for}) + "\n")
        self.dirty.add(self.state_file)

    def write_entries(self, first_index, entries):
        if not entries:
            return
        lines = [json.dumps({"index": first_index + offset, "term": entry.term,
                             "command": entry.command}, separators=(",", ":"))
                 for offset, entry in enumerate(entries)]
        self.log_file.write("\n".join(lines) + "\n")
        self.dirty.add(self.log_file)

    def sync(self):
        """flush + fsync every file written since the last sync: one group commit.

        fdatasync where the OS has it: it skips timestamps, but still writes
        the new file size, which is all an append needs to be readable."""
        for f in self.dirty:
            f.flush()
            fdatasync(f.fileno())
        if self.dirty:
            self.sync_count += 1
        self.dirty.clear()

    def _fsync_directory(self):
        """New files exist after a crash only once their directory is synced."""
        fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self):
        for f in (self.state_file, self.log_file):
            if f is not None:
                f.close()
        self.lock_file.close()


# ===========================================================================
# [5] The state-machine interface (kv.py and counter.py implement it)
# ===========================================================================

class StateMachine(Protocol):
    """What the log is applied to. Deterministic: same ops, same results.

    check(op)    raise ValueError if op is malformed (before it is logged)
    is_read(op)  True for ops that change nothing (served by ReadIndex, §6.4)
    apply(op)    change the state, return a JSON value; a ValueError is an
                 answer too (every node raises it alike; the client sees it)
    query(op)    answer a read op without changing anything
    snapshot()   the whole state as a JSON value; restore(data) reverses it
    """
    name: str
    def check(self, op: list) -> None: ...
    def is_read(self, op: list) -> bool: ...
    def apply(self, op: list) -> Any: ...
    def query(self, op: list) -> Any: ...
    def snapshot(self) -> Any: ...
    def restore(self, data: Any) -> None: ...


def make_state_machine(name: str) -> StateMachine:
    if name == "kv":
        import kv
        return kv.KeyValueStore()
    if name == "counter":
        import counter
        return counter.Counters()
    raise ValueError(f"unknown state machine {name!r} (choose kv or counter)")


# ===========================================================================
# [6] RaftNode: the algorithm
# ===========================================================================

class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclasses.dataclass(frozen=True)
class Config:
    """Timing in ticks (the runtime converts from milliseconds once)."""
    election_timeout_ticks: tuple[int, int] = (15, 30)
    heartbeat_ticks: int = 5
    max_append_bytes: int = 16000     # entry bytes in one AppendEntries
    max_sessions: int = MAX_SESSIONS


@dataclasses.dataclass
class PendingRead:
    """A linearizable read waiting for its ReadIndex conditions (§6.4)."""
    request_id: Any
    op: list
    round: int                 # the heartbeat round that must reach a majority
    read_index: int | None     # None until an entry of our term is committed


# A leader's view of the batch of entries last sent to a follower.
NOTHING_IN_FLIGHT, BATCH_SENT, BATCH_WAITED = 0, 1, 2


def not_leader(leader_id: str | None, term: int | None = None) -> dict:
    """The answer of a node that is not the leader: where to go instead (if
    it knows), and its term, so a client can say what is going on."""
    return {"ok": False, "error": "not_leader", "leader": leader_id, "term": term}


def entry_size(entry: Entry) -> int:
    """Bytes an entry takes in a datagram: the unit of the batching budget."""
    return len(json.dumps(encode_entry(entry), separators=(",", ":")))


class RaftNode:
    """One server's Raft state and rules. No I/O, no clock, no threads.

    Inputs:  tick(), step(message), propose(...), read(...)
    Outputs: collect_messages() -> [(destination, message)]
             apply_committed()  -> applies [ALL-1], then
             collect_answers()  -> [(request_id, answer dict)]
    The caller must run persist_send_apply() after its inputs ([6.9]).
    """

    # -- [6.1] state, grouped like the Figure 2 state box ---------------------
    def __init__(self, node_id: str, members: Iterable[str], storage: Storage,
                 machine: StateMachine, rng: random.Random,
                 config: Config = Config(), logger: logging.Logger | None = None):
        self.id = node_id
        self.members = sorted(set(members) | {node_id})
        self.peers = [m for m in self.members if m != node_id]
        self.storage, self.machine, self.rng, self.config = storage, machine, rng, config
        self.logger = logger or logging.getLogger("raft")

        # Persistent state on all servers (see [PERSIST])
        term, voted_for, entries = storage.load()
        self.log = Log(entries)
        self.current_term = max(term, self.log.last_term)
        self.voted_for = voted_for if term == self.current_term else None
        if self.current_term != term:
            # The log was synced but the state record was not: the entries
            # prove the term existed, and no vote of that term was ever sent.
            storage.save_term_and_vote(self.current_term, None)

        # Volatile state on all servers
        self.commit_index = 0
        self.last_applied = 0

        # Volatile state on leaders (reinitialized after election)
        self.next_index: dict[str, int] = {}
        self.match_index: dict[str, int] = {}

        # Beyond Figure 2: role and timers, client sessions, reads, outputs
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self.votes: set[str] = set()
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.election_timeout = self.random_election_timeout()
        self.in_flight: dict[str, int] = {}      # heartbeats a batch has waited
        self.sessions: collections.OrderedDict = collections.OrderedDict()
        self.waiting: dict[int, dict] = {}       # index -> {request_id: term}
        self.proposed: dict[tuple[str, int], int] = {}
        self.pending_reads: dict[Any, PendingRead] = {}
        self.read_round = 0
        self.read_round_wanted = False
        self.read_acks: dict[str, int] = {}
        self.outbox: list[tuple[str, Any]] = []
        self.answers: list[tuple[Any, dict]] = []
        self.counters: collections.Counter = collections.Counter()
        # Explain mode: also log the frequent decisions (refusals, commits,
        # back-offs), and pass every decision to on_explain (the prompt
        # prints them). Elections, votes and step-downs are always logged.
        self.explaining = False
        self.on_explain: Callable[[str], None] | None = None

    def random_election_timeout(self) -> int:
        low, high = self.config.election_timeout_ticks
        return self.rng.randint(low, high)

    def has_quorum(self, ids: Iterable[str]) -> bool:
        """A majority of the members (this node included if in ids)."""
        return len(set(ids) & set(self.members)) > len(self.members) // 2

    def set_term_and_vote(self, term: int, voted_for: str | None) -> None:
        """Change persistent state; it is synced before the next send."""
        self.current_term, self.voted_for = term, voted_for
        self.storage.save_term_and_vote(term, voted_for)

    def send(self, destination: str, message) -> None:
        self.outbox.append((destination, message))

    def answer(self, request_id, reply: dict) -> None:
        self.answers.append((request_id, reply))

    def describe(self) -> str:
        return f"term={self.current_term} {self.role.value}"

    def explain(self, rule: str, text: str) -> None:
        """Log one decision with the rule that made it and the values it
        compared. `explain on` at a prompt shows these lines as they happen."""
        line = f"{text} [{rule}]"
        self.logger.info("%s", line)
        if self.explaining and self.on_explain is not None:
            self.on_explain(line)

    # -- [6.2] inputs ------------------------------------------------------------
    def tick(self) -> None:
        """One unit of time has passed."""
        if self.role is Role.LEADER:
            self.heartbeat_elapsed += 1
            if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
                self.broadcast_append_entries()
            return
        self.election_elapsed += 1
        # [FOL-2] a follower that heard from no leader and granted no vote for
        # a whole election timeout starts an election.
        # [CAN-4] a candidate whose election timed out (a split vote) starts
        # a new one, in a higher term, with a fresh random timeout.
        if self.election_elapsed >= self.election_timeout:
            self.start_election()

    def step(self, message) -> None:
        """A peer message arrived. Stale, duplicated and reordered ones are harmless."""
        sender = message_sender(message)
        if sender not in self.members or sender == self.id:
            self.counters["not from a member"] += 1
            return
        # [ALL-2] a higher term in any message means we are out of date:
        # adopt the term and become a follower before handling the message.
        if message.term > self.current_term:
            leader = message.leader_id if isinstance(message, AppendEntries) else None
            self.explain("ALL-2", f"sees term {message.term} from {sender}, newer than "
                                  f"its term {self.current_term}: adopts it as a follower")
            self.become_follower(message.term, leader)
        # [FOL-1] every RPC gets an answer, refusals included (a refusal
        # answered with silence leaves the sender guessing; PySyncObj did that).
        if isinstance(message, RequestVote):
            self.handle_request_vote(message)
        elif isinstance(message, RequestVoteReply):
            self.handle_request_vote_reply(message)
        elif isinstance(message, AppendEntries):
            self.handle_append_entries(message)
        else:
            self.handle_append_entries_reply(message)

    # -- [6.3] role transitions -------------------------------------------------
    def become_follower(self, term: int, leader_id: str | None = None) -> None:
        """Step down (or stay) as follower in term.

        voted_for is cleared only when the term changes: clearing it within a
        term would let this node vote twice in that term (eliben/raft's bug).
        """
        newer = term > self.current_term
        if newer:
            self.set_term_and_vote(term, None)
        self.leader_id = leader_id
        if self.role is Role.FOLLOWER:
            # A follower keeps its election timer running: only hearing the
            # leader or granting a vote resets it (see [FOL-2]). Otherwise a
            # candidate with a stale log, raising the term again and again,
            # could keep better candidates from ever timing out.
            return
        self.explain("ALL-2" if newer else "CAN-3",
                     f"steps down from {self.role.value} to follower in term {term}"
                     + (f": {leader_id} leads it" if leader_id else ""))
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.election_timeout = self.random_election_timeout()
        if was_leader:
            self.fail_pending_requests()

    def start_election(self) -> None:
        # [CAN-1] increment the term, vote for ourselves, reset the election
        # timer, and ask every other server for its vote. The vote for
        # ourselves is persisted before any RequestVote leaves (see [PERSIST]).
        self.explain("FOL-2" if self.role is Role.FOLLOWER else "CAN-4",
                     f"heard no leader for {self.election_elapsed} ticks (its timeout): "
                     f"stands for election in term {self.current_term + 1}")
        self.role = Role.CANDIDATE
        self.set_term_and_vote(self.current_term + 1, self.id)
        self.leader_id = None
        self.votes = {self.id}
        self.election_elapsed = 0
        self.election_timeout = self.random_election_timeout()
        self.explain("CAN-1", f"votes for itself in term {self.current_term} and asks "
                              f"{', '.join(self.peers)} (its last log: term {self.log.last_term}, "
                              f"index {self.log.last_index})")
        for peer in self.peers:
            self.send(peer, RequestVote(self.current_term, self.id,
                                        self.log.last_index, self.log.last_term))
        self.count_votes()

    def count_votes(self) -> None:
        # [CAN-2] votes from a majority of the servers: become leader.
        if self.role is Role.CANDIDATE and self.has_quorum(self.votes):
            self.become_leader()

    def become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self.next_index = {peer: self.log.last_index + 1 for peer in self.peers}
        self.match_index = {peer: 0 for peer in self.peers}
        self.in_flight = {peer: NOTHING_IN_FLIGHT for peer in self.peers}
        self.read_round, self.read_round_wanted = 0, False
        self.read_acks = {peer: 0 for peer in self.peers}
        self.explain("CAN-2", f"becomes leader of term {self.current_term}: votes from "
                              f"{', '.join(sorted(self.votes))}, a majority of "
                              f"{len(self.members)}")
        # [§8-NOOP] A new leader does not know which entries of earlier terms
        # are committed (LEAD-4 may not count them). Committing an entry of its
        # own term settles that, so it appends a no-op at once.
        index = self.append_to_own_log(None)
        self.explain("§8-NOOP", f"appends a no-op at index {index}: committing an entry "
                                f"of its own term settles what earlier terms committed")
        # [LEAD-1] announce the new leader with AppendEntries to everyone
        # now, and again whenever the heartbeat interval passes.
        self.broadcast_append_entries()

    def fail_pending_requests(self) -> None:
        """A deposed leader cannot promise anything: clients must retry."""
        for waiters in self.waiting.values():
            for request_id in waiters:
                self.answer(request_id, not_leader(self.leader_id, self.current_term))
        for request_id in self.pending_reads:
            self.answer(request_id, not_leader(self.leader_id, self.current_term))
        self.waiting, self.proposed, self.pending_reads = {}, {}, {}

    # -- [6.4] elections ----------------------------------------------------------
    def is_up_to_date(self, last_log_term: int, last_log_index: int) -> bool:
        """Is a log ending at (last_log_term, last_log_index) at least as up
        to date as ours? The later last term wins; with equal last terms, the
        longer log wins (§5.4.1). This is what keeps committed entries: a
        committed entry is on a majority, and a voter holding it refuses every
        candidate whose log is behind its own."""
        if last_log_term != self.log.last_term:
            return last_log_term > self.log.last_term
        return last_log_index >= self.log.last_index

    def handle_request_vote(self, request: RequestVote) -> None:
        candidate = request.candidate_id
        # [RV-1] a candidate from an older term cannot win anything.
        if request.term < self.current_term:
            granted, reason = False, f"its term {request.term} is older than ours"
        # [RV-2] grant only if we have not voted for someone else in this
        # term, and the candidate's log is at least as up to date as ours.
        elif self.voted_for not in (None, candidate):
            granted, reason = False, f"we already voted for {self.voted_for}"
        elif not self.is_up_to_date(request.last_log_term, request.last_log_index):
            granted, reason = False, (
                f"its last log (term {request.last_log_term}, index "
                f"{request.last_log_index}) is behind ours (term {self.log.last_term}, "
                f"index {self.log.last_index})")
        else:
            granted, reason = True, "its log is up to date"
            self.set_term_and_vote(self.current_term, candidate)
            self.election_elapsed = 0     # see [FOL-2]: granting a vote resets the timer
        rule = "RV-1" if request.term < self.current_term else "RV-2"
        self.explain(rule, f"{'grants' if granted else 'refuses'} its vote to {candidate} "
                           f"in term {request.term}: {reason}")
        self.send(candidate, RequestVoteReply(self.current_term, granted, self.id, candidate))

    def handle_request_vote_reply(self, reply: RequestVoteReply) -> None:
        # Judge the reply against our term now, not the one we had when we
        # asked: a reply from an earlier election must not count.
        if (self.role is not Role.CANDIDATE or reply.term != self.current_term
                or reply.candidate_id != self.id):
            return
        if reply.vote_granted:
            self.votes.add(reply.voter_id)
            self.count_votes()

    # -- [6.5] replication and commit -----------------------------------------------
    def append_to_own_log(self, command) -> int:
        """A leader adds an entry of its term. Synced before it is sent anywhere."""
        index = self.log.last_index + 1
        entry = Entry(self.current_term, command)
        self.log.replace_from(index, [entry])
        self.storage.write_entries(index, [entry])
        self.advance_commit_index()       # a one-node cluster commits at once
        return index

    def broadcast_append_entries(self, is_heartbeat: bool = True) -> None:
        """[LEAD-1] heartbeat, which also carries any entries a follower lacks.
        A read round (§6.4) sends the same messages but leaves the heartbeat
        timer and the resend decisions to the real heartbeats."""
        if is_heartbeat:
            self.heartbeat_elapsed = 0
        for peer in self.peers:
            batch = self.in_flight[peer]
            if batch == BATCH_SENT or (batch == BATCH_WAITED and not is_heartbeat):
                # A batch is on its way, maybe just slow: send no entries now,
                # from where the follower is known to match. If its reply is
                # still missing at the next heartbeat, it was lost: resend.
                if is_heartbeat:
                    self.in_flight[peer] = BATCH_WAITED
                match = self.match_index[peer]
                self.send(peer, AppendEntries(self.current_term, self.id, match,
                                              self.log.term_at(match), (),
                                              self.commit_index, self.read_round))
            else:
                self.send_append_entries(peer)

    def send_append_entries(self, peer: str) -> None:
        # [LEAD-3] send the entries from next_index on: as many as fit one
        # datagram. An empty list is a heartbeat; either way the follower
        # checks that our logs match at prev_log_index (AE-2).
        prev_log_index = self.next_index[peer] - 1
        entries, budget = [], self.config.max_append_bytes
        for index in range(prev_log_index + 1, self.log.last_index + 1):
            entry = self.log.entry(index)
            budget -= entry_size(entry) + 1          # + 1: the comma between entries
            if budget < 0 and entries:
                break
            entries.append(entry)
        self.in_flight[peer] = BATCH_SENT if entries else NOTHING_IN_FLIGHT
        self.send(peer, AppendEntries(
            self.current_term, self.id, prev_log_index,
            self.log.term_at(prev_log_index), tuple(entries),
            self.commit_index, self.read_round))

    def handle_append_entries(self, request: AppendEntries) -> None:
        # [AE-1] a leader of an older term is deposed; tell it our term.
        if request.term < self.current_term:
            if self.explaining:
                self.explain("AE-1", f"refuses AppendEntries from {request.leader_id}: its "
                                     f"term {request.term} is older than {self.current_term}")
            self.reply_append_entries(request, success=False)
            return
        # [CAN-3] someone won this term's election; a candidate gives up.
        if self.role is not Role.FOLLOWER:
            self.become_follower(request.term, request.leader_id)
        self.leader_id = request.leader_id
        self.election_elapsed = 0          # see [FOL-2]: the leader is alive
        # [AE-2] our logs must agree at prev_log_index, or the new entries
        # would not extend the same history (Log Matching).
        if self.log.term_at(request.prev_log_index) != request.prev_log_term:
            if self.explaining:
                self.explain_log_mismatch(request)
            self.reply_append_entries(request, success=False)
            return
        if not self.store_new_entries(request):
            return
        last_new_index = request.prev_log_index + len(request.entries)
        # [AE-5] learn the commit index, but only as far as our log is known
        # to match the leader's; a reordered, older message never lowers it.
        if request.leader_commit > self.commit_index:
            commit_index = max(self.commit_index, min(request.leader_commit, last_new_index))
            if self.explaining and commit_index > self.commit_index:
                self.explain("AE-5", f"commits up to index {commit_index}: the leader has "
                                     f"committed {request.leader_commit}, and our log matches "
                                     f"its up to {last_new_index}")
            self.commit_index = commit_index
        self.reply_append_entries(request, success=True, match_index=last_new_index)

    def store_new_entries(self, request: AppendEntries) -> bool:
        """AE-3 and AE-4: skip entries we have; cut at the first conflict.
        Returns False if the message was refused (see below)."""
        for offset, entry in enumerate(request.entries):
            index = request.prev_log_index + 1 + offset
            existing_term = self.log.term_at(index)
            if existing_term == entry.term:
                continue               # a duplicate or reordered message
            # [AE-3] a conflicting entry (same index, other term) and all that
            # follow it were never committed: they go. A committed entry
            # conflicting would mean two leaders committed different things.
            if existing_term is not None:
                if index <= self.commit_index:
                    return self.refuse_to_overwrite_committed(request, index)
                self.explain("AE-3", f"deletes entries {index}..{self.log.last_index}: entry "
                                     f"{index} has term {existing_term}, the leader's has "
                                     f"term {entry.term}")
            # [AE-4] append the entries not already in the log.
            new_entries = list(request.entries[offset:])
            self.log.replace_from(index, new_entries)
            self.storage.write_entries(index, new_entries)
            return True
        return True

    def explain_log_mismatch(self, request: AppendEntries) -> None:
        index = request.prev_log_index
        ours = self.log.term_at(index)
        found = (f"our log ends at index {self.log.last_index}" if ours is None
                 else f"our entry {index} has term {ours}")
        self.explain("AE-2", f"refuses AppendEntries from {request.leader_id}: it needs "
                             f"entry {index} of term {request.prev_log_term}, {found}")

    def refuse_to_overwrite_committed(self, request: AppendEntries, index: int) -> bool:
        """A real leader never conflicts with a committed entry (Leader
        Completeness, §5.4.3), so this message is forged or from a broken
        node: keep the committed entry, answer nothing, and say so loudly."""
        self.counters["refused: would overwrite a committed entry"] += 1
        self.logger.error("%s refuses AppendEntries from %s: it conflicts with committed "
                          "index %d (commit index %d)", self.describe(),
                          request.leader_id, index, self.commit_index)
        return False

    def reply_append_entries(self, request: AppendEntries, success: bool,
                             match_index: int = 0) -> None:
        conflict_index = conflict_term = 0
        if not success and request.term >= self.current_term:
            # [§5.3-HINT] tell the leader where our log stops agreeing: past
            # our end, or at the first entry of our conflicting term, so it
            # skips a whole term per round trip instead of one entry.
            if request.prev_log_index > self.log.last_index:
                conflict_index = self.log.last_index + 1
            else:
                conflict_term = self.log.term_at(request.prev_log_index)
                conflict_index = self.log.first_index_of_term(request.prev_log_index)
        self.send(request.leader_id, AppendEntriesReply(
            self.current_term, success, self.id, match_index,
            conflict_index, conflict_term, request.read_round))

    def handle_append_entries_reply(self, reply: AppendEntriesReply) -> None:
        if self.role is not Role.LEADER or reply.term != self.current_term:
            return                          # stale: from an earlier term of ours
        peer = reply.follower_id
        self.read_acks[peer] = max(self.read_acks[peer], reply.read_round)
        before = (self.match_index[peer], self.next_index[peer])
        if reply.success:
            # [LEAD-3a] the follower holds our log up to match_index.
            if self.match_index[peer] < reply.match_index <= self.log.last_index:
                self.match_index[peer] = reply.match_index
            self.next_index[peer] = max(self.next_index[peer], self.match_index[peer] + 1)
            self.advance_commit_index()
        else:
            # [LEAD-3b] the logs disagree: retry from earlier, skipping the
            # follower's whole conflicting term if we do not have it (§5.3-HINT).
            retry_at = reply.conflict_index
            if reply.conflict_term:
                ours = self.log.last_index_of_term(reply.conflict_term)
                retry_at = ours + 1 if ours else reply.conflict_index
            self.next_index[peer] = max(self.match_index[peer] + 1,
                                        min(retry_at, self.log.last_index + 1))
            if self.explaining and self.next_index[peer] != before[1]:
                self.explain("LEAD-3b", f"{peer} has no match before index {before[1]}: "
                                        f"retries from {self.next_index[peer]}"
                                        + (f" (skipping its term {reply.conflict_term}, "
                                           f"§5.3-HINT)" if reply.conflict_term else ""))
        if (self.match_index[peer], self.next_index[peer]) == before:
            return     # a duplicate or late reply: its batch was already answered
        self.in_flight[peer] = NOTHING_IN_FLIGHT
        if self.next_index[peer] <= self.log.last_index:
            self.send_append_entries(peer)

    def advance_commit_index(self) -> None:
        # [LEAD-4] commit N when a majority holds it AND log[N] is from our
        # own term. Counting replicas of an older entry is not enough
        # (Figure 8):
        #      index: 1 2 3
        #   S1 (us):  1 2 4    S1 led term 2 and wrote index 2; S5 led term 3
        #   S2:       1 2      and wrote its own index 2, unreplicated; S1 now
        #   S3:       1 2      leads term 4. Index 2 (term 2) is on S1-S3, a
        #   S4:       1        majority, yet S5 can still win an election with
        #   S5:       1 3      S2-S4's votes (last term 3 beats 2) and overwrite
        # it. Once an entry of term 4 is on a majority, S5 can never win, and
        # everything before that entry is safe too (Log Matching).
        if self.role is not Role.LEADER:
            return
        matched = sorted([self.log.last_index, *self.match_index.values()], reverse=True)
        majority_index = matched[len(self.members) // 2]
        if majority_index <= self.commit_index:
            return
        if self.log.term_at(majority_index) == self.current_term:
            if self.explaining:
                self.explain("LEAD-4", f"commits up to index {majority_index} (term "
                                       f"{self.current_term}): a majority of {len(self.members)} "
                                       f"holds it")
            self.commit_index = majority_index
        elif self.explaining:
            self.explain("LEAD-4", f"does not commit index {majority_index} although a "
                                   f"majority holds it: its term "
                                   f"{self.log.term_at(majority_index)} is not ours "
                                   f"({self.current_term}), see Figure 8")

    # -- [6.6] client commands and sessions (§6.3) ----------------------------
    def propose(self, request_id, client_id: str, seq: int, op: list) -> None:
        """A client asks for op, numbered seq in its session. Answered later,
        once applied, through collect_answers() (or at once if refused)."""
        if self.role is not Role.LEADER:
            self.answer(request_id, not_leader(self.leader_id, self.current_term))
            return
        try:
            self.machine.check(op)
        except ValueError as error:
            self.answer(request_id, {"ok": False, "error": str(error)})
            return
        session = self.sessions.get(client_id)
        if session is not None and seq <= session[0]:
            # Already applied (see [§6.3]): the retry gets the first answer back.
            self.answer(request_id, session[1] if seq == session[0] else
                        {"ok": False, "error": f"request {seq} is older than {session[0]}"})
            return
        index = self.proposed.get((client_id, seq))
        if index is None:
            command = {"client": client_id, "seq": seq, "op": op}
            if entry_size(Entry(self.current_term, command)) > self.config.max_append_bytes:
                self.answer(request_id, {"ok": False, "error": (
                    f"command too large for one datagram (limit "
                    f"{self.config.max_append_bytes} bytes)")})
                return
            # [LEAD-2] append the command to our log; answer once applied.
            index = self.append_to_own_log(command)
            if self.explaining:
                self.explain("LEAD-2", f"appends {' '.join(map(str, op))} at index {index} "
                                       f"(term {self.current_term}); answers once applied")
            self.proposed[(client_id, seq)] = index
        self.waiting.setdefault(index, {})[request_id] = self.current_term

    def apply_entry(self, entry: Entry) -> dict:
        """Apply one committed entry; the session table makes it at-most-once."""
        command = entry.command
        if command is None:
            return {"ok": True, "result": None}             # a leader's no-op
        client_id, seq = command["client"], command["seq"]
        try:
            self.machine.check(command["op"])   # a leader logs only checked ops,
        except ValueError as error:             # but the log is data: be sure
            return {"ok": False, "error": str(error)}
        session = self.sessions.get(client_id)
        if session is not None and seq <= session[0]:
            # [§6.3] a duplicate in the log (a retry re-proposed by a later
            # leader): do not apply it twice; repeat the first answer.
            return session[1] if seq == session[0] else {"ok": False, "error": "stale request"}
        try:
            answer = {"ok": True, "result": self.machine.apply(command["op"])}
        except ValueError as error:
            answer = {"ok": False, "error": str(error)}
        self.sessions[client_id] = (seq, answer)
        self.sessions.move_to_end(client_id)
        if len(self.sessions) > self.config.max_sessions:
            self.sessions.popitem(last=False)   # every node evicts the same one
        return answer

    # -- [6.7] linearizable reads (§6.4) -------------------------------------------
    def read(self, request_id, op: list) -> None:
        """A read that changes nothing. No log entry, no fsync, yet linearizable:
        [§6.4] ReadIndex. (1) Wait until an entry of our term is committed, so
        commit_index covers every write acknowledged by any earlier leader;
        record it as the read index. (2) Confirm we are still the leader with
        a heartbeat round that a majority answers after the read arrived: no
        newer leader can have committed anything we lack. (3) Answer once
        last_applied reaches the read index."""
        if self.role is not Role.LEADER:
            self.answer(request_id, not_leader(self.leader_id, self.current_term))
            return
        try:
            self.machine.check(op)
        except ValueError as error:
            self.answer(request_id, {"ok": False, "error": str(error)})
            return
        if len(self.pending_reads) >= MAX_PENDING_READS:
            self.answer(request_id, {"ok": False, "error": "busy: too many reads waiting"})
            return
        # [§6.4] the read waits for the next heartbeat round (one round serves
        # every read queued in this cycle) and for its read index.
        self.pending_reads[request_id] = PendingRead(request_id, op, self.read_round + 1, None)
        self.read_round_wanted = True

    def has_committed_in_term(self) -> bool:
        return self.log.term_at(self.commit_index) == self.current_term

    def is_read_confirmed(self, read: PendingRead) -> bool:
        acks = [self.id] + [p for p in self.peers if self.read_acks[p] >= read.round]
        return read.round <= self.read_round and self.has_quorum(acks)

    def answer_ready_reads(self) -> None:
        waiting = {}
        for read in self.pending_reads.values():
            if read.read_index is None and self.has_committed_in_term():
                read.read_index = self.commit_index
            if (read.read_index is not None and self.last_applied >= read.read_index
                    and self.is_read_confirmed(read)):
                try:
                    answer = {"ok": True, "result": self.machine.query(read.op)}
                except ValueError as error:
                    answer = {"ok": False, "error": str(error)}
                self.answer(read.request_id, answer)
            else:
                waiting[read.request_id] = read
        self.pending_reads = waiting

    # -- [6.8] outputs: what the cycle persists, sends, applies ------------------------
    def collect_messages(self) -> list[tuple[str, Any]]:
        """Everything to send, after batching this cycle's new entries:
        one AppendEntries per follower carries all of them."""
        if self.role is Role.LEADER:
            if self.read_round_wanted:
                self.read_round += 1          # one round serves every read queued
                self.read_round_wanted = False
                self.broadcast_append_entries(is_heartbeat=False)
            else:
                for peer in self.peers:
                    if (self.in_flight[peer] == NOTHING_IN_FLIGHT
                            and self.next_index[peer] <= self.log.last_index):
                        self.send_append_entries(peer)
        messages, self.outbox = self.outbox, []
        return messages

    def apply_committed(self) -> None:
        # [ALL-1] apply committed entries in log order, each exactly once,
        # and answer the clients waiting for them.
        while self.last_applied < self.commit_index:
            self.last_applied += 1
            index = self.last_applied
            entry = self.log.entry(index)
            answer = self.apply_entry(entry)
            if self.logger.isEnabledFor(logging.INFO):   # spare the encoding otherwise
                self.logger.info("[COMMIT] %d %d %s", index, entry.term,
                                 json.dumps(entry.command, separators=(",", ":")))
            if entry.command is not None:
                self.proposed.pop((entry.command["client"], entry.command["seq"]), None)
            for request_id, term in self.waiting.pop(index, {}).items():
                self.answer(request_id, answer if term == entry.term
                            else not_leader(self.leader_id, self.current_term))
        if self.pending_reads:
            self.answer_ready_reads()

    def collect_answers(self) -> list[tuple[Any, dict]]:
        answers, self.answers = self.answers, []
        return answers

    def status(self) -> dict:
        """This node's own view; no consensus involved."""
        return {"id": self.id, "role": self.role.value, "term": self.current_term,
                "voted_for": self.voted_for, "leader": self.leader_id,
                "commit_index": self.commit_index, "last_applied": self.last_applied,
                "last_log_index": self.log.last_index, "last_log_term": self.log.last_term,
                "members": list(self.members), "machine": self.machine.name,
                "sessions": len(self.sessions), "dropped": dict(self.counters)}


def message_sender(message) -> str:
    """The id of the node that sent a peer message."""
    if isinstance(message, RequestVote):
        return message.candidate_id
    if isinstance(message, AppendEntries):
        return message.leader_id
    if isinstance(message, RequestVoteReply):
        return message.voter_id
    return message.follower_id


# -- [6.9] the one ordering rule -----------------------------------------------------
def persist_send_apply(node: RaftNode, send: Callable[[str, Any], None],
                       deliver: Callable[[Any, dict], None]) -> None:
    """Run after feeding a node its inputs: the runtime and the simulator
    both call this, so tests exercise the real order.

    [PERSIST] term, vote and new entries reach stable storage (one flush +
    fsync for everything this cycle wrote: group commit) BEFORE any message
    that depends on them leaves. A vote sent before it is durable can be
    cast twice after a crash; an AppendEntries success sent before the
    entries are durable can make a leader count a replica that vanishes.
    Committed entries are applied, and clients answered, only after that.
    """
    messages = node.collect_messages()
    # [PERSIST] one flush + fsync for everything written, before any send.
    node.storage.sync()
    for destination, message in messages:
        send(destination, message)
    node.apply_committed()
    for request_id, answer in node.collect_answers():
        deliver(request_id, answer)


# ===========================================================================
# [7] Runtime: one UDP socket, a receiver thread, one owner thread
# ===========================================================================
# The owner thread alone touches the RaftNode, so the core needs no lock.
# Everything else posts to its queue: datagrams (receiver thread) and calls
# from the prompt. The owner turns the monotonic clock into ticks itself, so
# a flood of datagrams can delay but never starve the timers. Each round it
# feeds the node every tick due and every queued input, then runs
# persist_send_apply once: many entries per fsync and per datagram when load
# is high, one fsync per request when it is low.

def ms_to_ticks(milliseconds: float) -> int:
    return max(1, math.ceil(milliseconds / TICK_MS))


def encode_datagram(fields: dict) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode("utf-8")


def decode_datagram(data: bytes) -> dict:
    try:
        fields = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("not JSON", "not JSON") from None
    if type(fields) is not dict or type(fields.get("type")) is not str:
        raise ProtocolError("not a message object", "not JSON")
    return fields


# -- [7.1] authentication: an HMAC-SHA256 tag on every datagram ----------------------
# With a cluster key (--key-file) every datagram, peer or client, is TAG + BODY:
# BODY is the JSON message and TAG = HMAC-SHA256(key, BODY). The receiver
# recomputes the tag and compares in constant time (hmac.compare_digest), so
# timing tells a forger nothing. Without the key no one can make a datagram a
# node accepts. A datagram captured and replayed later is harmless: Raft already
# survives duplicated, delayed messages, and client sequence numbers stop a
# request being applied twice (docs/security.md says why, step by step).

def seal(key: bytes | None, body: bytes) -> bytes:
    """The datagram to send: body, tagged when the cluster has a key."""
    if key is None:
        return body
    return hmac.new(key, body, hashlib.sha256).digest() + body


def unseal(key: bytes | None, data: bytes) -> bytes:
    """The body of a datagram we should read; ProtocolError if not."""
    if len(data) > MAX_RECEIVE_BYTES:
        raise ProtocolError(f"{len(data)} bytes is more than any node sends", "oversized")
    if key is None:
        return data
    tag, body = data[:TAG_BYTES], data[TAG_BYTES:]
    expected = hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, expected):
        raise ProtocolError("missing or wrong authentication tag", "unauthenticated")
    return body


def resolve_address(node_id: str) -> tuple[str, int]:
    """A member's (IP, port), as a datagram from it shows its source."""
    host, port = split_address(node_id)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        try:
            return socket.gethostbyname(host), port
        except OSError:
            return host, port               # unresolvable: nothing will match it


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- [7.2] the lab: faults a learner switches on in `raft.py demo` --------------------
# Demo nodes start with --lab and take LabRequest datagrams from loopback:
# cut links (partitions), lose, delay or duplicate peer messages, and send
# explain/trace lines to the demo's terminal. A node without --lab treats a
# LabRequest like any unknown message: dropped and counted.

@dataclasses.dataclass
class LinkFaults:
    """What happens to peer messages this node sends on one link."""
    drop: float = 0.0            # probability a message is lost
    duplicate: float = 0.0       # probability it is sent twice
    delay_ms: int = 0            # held back delay_ms, +-50%, so they also reorder

    @classmethod
    def decode(cls, raw) -> "LinkFaults":
        if type(raw) is not dict or not set(raw) <= {"drop", "duplicate", "delay_ms"}:
            raise ProtocolError("link faults must be {drop, duplicate, delay_ms}")
        faults = cls(**raw)
        for name in ("drop", "duplicate"):
            value = getattr(faults, name)
            if type(value) not in (int, float) or not 0 <= value <= 1:
                raise ProtocolError(f"{name} must be a probability")
        if type(faults.delay_ms) is not int or not 0 <= faults.delay_ms <= 10_000:
            raise ProtocolError("delay_ms must be 0-10000")
        return faults


class Lab:
    def __init__(self):
        self.cut_off: set[str] = set()          # peers we neither hear nor reach
        self.links: dict[str, LinkFaults] = {}  # peer id, or "*" for every link
        self.delayed: list = []                 # heap of (due, order, data, address)
        self.order = 0
        self.rng = random.Random()

    def faults_for(self, peer: str) -> LinkFaults:
        return self.links.get(peer) or self.links.get("*") or LinkFaults()


def describe_message(message) -> str:
    """A peer message in a line a person can read (trace mode)."""
    if isinstance(message, RequestVote):
        return (f"RequestVote(term {message.term}, last log term {message.last_log_term} "
                f"index {message.last_log_index})")
    if isinstance(message, RequestVoteReply):
        return f"RequestVoteReply(term {message.term}, granted={message.vote_granted})"
    if isinstance(message, AppendEntries):
        what = f"{len(message.entries)} entries" if message.entries else "heartbeat"
        return (f"AppendEntries(term {message.term}, prev {message.prev_log_index}/"
                f"{message.prev_log_term}, {what}, commit {message.leader_commit})")
    if message.success:
        return f"AppendEntriesReply(term {message.term}, ok, match {message.match_index})"
    return (f"AppendEntriesReply(term {message.term}, refused, conflict index "
            f"{message.conflict_index} term {message.conflict_term})")


def short_id(node_id: str) -> str:
    """127.0.0.1:8001 -> 8001: on one machine the port says it all."""
    return node_id[len("127.0.0.1:"):] if node_id.startswith("127.0.0.1:") else node_id


class NodeServer:
    """A RaftNode on a UDP port, with its data dir and threads."""

    def __init__(self, node_id: str, members: list[str], data_dir: str,
                 machine: str = "kv", host: str | None = None,
                 election_timeout_ms: tuple[int, int] = DEFAULT_ELECTION_TIMEOUT_MS,
                 heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
                 max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
                 logger: logging.Logger | None = None, key: bytes | None = None,
                 lab: bool = False):
        self.id = node_id
        self.logger = logger or logging.getLogger("raft")
        self.max_datagram_bytes = max_datagram_bytes
        self.key = key
        # Peer messages are read only from the members' own addresses.
        self.member_addresses = {member: resolve_address(member) for member in members}
        # Datagrams the receiver thread drops (bad tag, oversized, inbox
        # full), counted under its lock; status() adds the owner's counts.
        self.receiver_drops: collections.Counter = collections.Counter()
        self.receiver_lock = threading.Lock()
        config = Config(
            election_timeout_ticks=(ms_to_ticks(election_timeout_ms[0]),
                                    ms_to_ticks(election_timeout_ms[1])),
            heartbeat_ticks=ms_to_ticks(heartbeat_ms),
            max_append_bytes=max_datagram_bytes - DATAGRAM_HEADROOM_BYTES)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bind_host, port = split_address(node_id)
        try:
            self.socket.bind((host or bind_host, port))
        except OSError as error:
            self.socket.close()
            raise OSError(f"cannot bind UDP {host or bind_host}:{port}: {error.strerror}") from None
        self.storage = JsonLinesStorage(data_dir)
        try:
            self.node = RaftNode(node_id, members, self.storage, make_state_machine(machine),
                                 random.Random(os.urandom(16)), config, self.logger)
        except BaseException:
            self.storage.close()
            self.socket.close()
            raise
        self.inbox: queue.Queue = queue.Queue(maxsize=MAX_INBOX_ITEMS)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.on_change: Callable[[str], None] | None = None
        self.last_seen = (None, None, None)
        # Explain and trace lines go to event_sink: the node's prompt prints
        # them; in the lab they travel to the demo's terminal.
        self.lab = Lab() if lab else None
        self.tracing = False
        self.event_sink: Callable[[str], None] | None = None
        self.node.on_explain = self.emit_event

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> "NodeServer":
        for target, name in ((self.receive_forever, "receiver"),
                             (self.own_forever, "owner")):
            thread = threading.Thread(target=target, name=f"{self.id} {name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.logger.info("started: members %s, last log index %d, term %d",
                         ", ".join(self.node.members),
                         self.node.log.last_index, self.node.current_term)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.storage.sync()
        self.storage.close()
        self.socket.close()
        self.logger.info("stopped")

    def call(self, function: Callable[[RaftNode], Any], timeout: float = 5.0):
        """Run function(node) on the owner thread and return its result."""
        done, box = threading.Event(), []
        self.inbox.put(("call", function, done, box))
        if not done.wait(timeout):
            raise TimeoutError("the node did not answer")
        return box[0]

    # -- the three threads ------------------------------------------------------------
    def receive_forever(self) -> None:
        self.socket.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data, address = self.socket.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            # Authenticate here, before the queue: a flood of forgeries costs
            # one HMAC each and never reaches the owner thread.
            try:
                body = unseal(self.key, data)
                self.inbox.put_nowait(("datagram", body, address))
            except ProtocolError as error:
                self.count_receiver_drop(error.reason, address, error)
            except queue.Full:               # the owner is overwhelmed: shed load
                self.count_receiver_drop("inbox full", address, "the owner is behind")

    def count_receiver_drop(self, reason: str, address, detail) -> None:
        with self.receiver_lock:
            self.receiver_drops[reason] += 1
        self.logger.debug("dropped a datagram from %s: %s", address, detail)

    def own_forever(self) -> None:
        try:
            self.run_owner_loop()
        except Exception:
            # A broken invariant in the core: stop loudly rather than serve
            # wrong answers. Everything acknowledged is already on disk.
            self.logger.critical("internal error, stopping the node", exc_info=True)
            logging.shutdown()
            os._exit(70)

    def run_owner_loop(self) -> None:
        tick_seconds = TICK_MS / 1000
        next_tick = time.monotonic() + tick_seconds
        while not self.stopping.is_set():
            batch = []
            try:
                batch.append(self.inbox.get(timeout=max(0.0, next_tick - time.monotonic())))
                while len(batch) < 1000:
                    batch.append(self.inbox.get_nowait())
            except queue.Empty:
                pass
            # First what arrived, then the time that passed: after a stall,
            # the leader's queued heartbeats count before any election timeout.
            for item in batch:
                self.handle(item)
            now = time.monotonic()
            if now - next_tick > 1.0:        # the machine slept: do not replay it
                next_tick = now
            while now >= next_tick:
                self.node.tick()
                next_tick += tick_seconds
            persist_send_apply(self.node, self.send_message, self.deliver_answer)
            if self.lab is not None:
                self.send_delayed(now)
            self.notice_changes()

    # -- inputs ----------------------------------------------------------------
    def handle(self, item) -> None:
        kind = item[0]
        if kind == "datagram":
            self.handle_datagram(item[1], item[2])
        elif kind == "call":
            _, function, done, box = item
            try:
                box.append(function(self.node))
            except Exception as error:      # a bad prompt call must not kill the node
                box.append(error)
            done.set()

    def handle_datagram(self, data: bytes, address) -> None:
        try:
            fields = decode_datagram(data)
            kind = fields["type"]
            if kind in MESSAGE_TYPES:
                self.handle_peer_message(decode_message(fields), address)
            elif kind == "LabRequest" and self.lab is not None and is_loopback(address[0]):
                self.handle_lab_request(fields, address)
            elif kind == "ClientRequest":
                self.handle_client_request(fields, address)
            elif kind == "StatusRequest":
                nonce = _check_field("nonce", fields.get("nonce"), "int")
                self.send_datagram({"type": "StatusReply", "nonce": nonce,
                                    "status": self.status()}, address)
            else:
                raise ProtocolError(f"unknown message type {kind!r}", "unknown type")
        except ProtocolError as error:
            # Counted under a fixed name: a sender must not be able to grow
            # the table (or the status reply) with strings of its choosing.
            self.node.counters[error.reason] += 1
            self.logger.debug("dropped a datagram from %s: %s", address, error)

    def handle_peer_message(self, message, address) -> None:
        """RPCs and replies count only from the member they name, sent from
        that member's own address (and, with a key, authentic)."""
        sender = message_sender(message)
        if self.member_addresses.get(sender) != address:
            raise ProtocolError(f"{type(message).__name__} from {address[0]}:{address[1]} "
                                f"names {sender!r}", "not from a member")
        if self.lab is not None and sender in self.lab.cut_off:
            return                              # the lab's partition: never arrived
        if self.tracing:
            self.emit_event(f"<- {short_id(sender)} {describe_message(message)}")
        self.node.step(message)

    # -- the lab and the event sink --------------------------------------------------
    def handle_lab_request(self, fields: dict, address) -> None:
        nonce = _check_field("nonce", fields.get("nonce"), "int")
        lab = self.lab
        if "cut_off" in fields:
            cut_off = fields["cut_off"]
            if type(cut_off) is not list or not set(cut_off) <= set(self.node.peers):
                raise ProtocolError("cut_off must list peers")
            lab.cut_off = set(cut_off)
        if "links" in fields:
            links = fields["links"]
            if type(links) is not dict or not set(links) <= {"*", *self.node.peers}:
                raise ProtocolError("links must map peers (or *) to faults")
            lab.links = {peer: LinkFaults.decode(raw) for peer, raw in links.items()}
        for flag in ("explain", "trace"):
            if flag in fields:
                value = _check_field(flag, fields[flag], "bool")
                if flag == "explain":
                    self.node.explaining = value
                else:
                    self.tracing = value
        if "watch_port" in fields:
            port = _check_field("watch_port", fields["watch_port"], "int")
            self.event_sink = lambda text: self.send_datagram(
                {"type": "LabEvent", "text": f"{short_id(self.id)} {text}"}, (address[0], port))
        self.send_datagram({"type": "LabReply", "nonce": nonce}, address)

    def emit_event(self, text: str) -> None:
        if self.event_sink is not None:
            self.event_sink(text.replace("127.0.0.1:", ""))

    def send_delayed(self, now: float) -> None:
        delayed = self.lab.delayed
        while delayed and delayed[0][0] <= now:
            _due, _order, data, address = heapq.heappop(delayed)
            self.send_bytes(data, address)

    def status(self) -> dict:
        """The node's status plus the runtime's view. Owner thread only."""
        status = self.node.status()
        with self.receiver_lock:
            for reason, count in self.receiver_drops.items():
                status["dropped"][reason] = status["dropped"].get(reason, 0) + count
        status["authenticated"] = self.key is not None
        return status

    def handle_client_request(self, fields: dict, address) -> None:
        client_id = _check_field("client_id", fields.get("client_id"), "id")
        seq = _check_field("seq", fields.get("seq"), "int")
        op = fields.get("op")
        if type(op) is not list or not op or type(op[0]) is not str:
            raise ProtocolError("op must be a list starting with a command name")
        request_id = (address, client_id, seq)
        if self.node.machine.is_read(op):         # read() and propose() check op
            self.node.read(request_id, op)
        else:
            self.node.propose(request_id, client_id, seq, op)

    # -- outputs --------------------------------------------------------------------
    def send_message(self, destination: str, message) -> None:
        if self.tracing:
            self.emit_event(f"-> {short_id(destination)} {describe_message(message)}")
        if self.lab is None:
            self.send_datagram(encode_message(message), split_address(destination))
            return
        # The lab's faults, applied as the message leaves.
        lab = self.lab
        faults = lab.faults_for(destination)
        if destination in lab.cut_off or lab.rng.random() < faults.drop:
            return
        copies = 2 if lab.rng.random() < faults.duplicate else 1
        for _ in range(copies):
            if faults.delay_ms:
                delay = faults.delay_ms * lab.rng.uniform(0.5, 1.5) / 1000
                lab.order += 1
                data = self.encode_for_sending(encode_message(message))
                if data is not None:
                    heapq.heappush(lab.delayed, (time.monotonic() + delay, lab.order, data,
                                                 split_address(destination)))
            else:
                self.send_datagram(encode_message(message), split_address(destination))

    def deliver_answer(self, request_id, answer: dict) -> None:
        address, client_id, seq = request_id
        self.send_datagram({"type": "ClientReply", "client_id": client_id,
                            "seq": seq, **answer}, address)

    def send_datagram(self, fields: dict, address) -> None:
        data = self.encode_for_sending(fields)
        if data is not None:
            self.send_bytes(data, address)

    def encode_for_sending(self, fields: dict) -> bytes | None:
        """The datagram's bytes, tagged if we have a key; None if unsendable."""
        try:
            data = encode_datagram(fields)
        except (ValueError, TypeError) as error:   # never expected: say so, keep serving
            self.logger.error("cannot encode a %s: %s", fields.get("type"), error)
            return None
        if len(data) > self.max_datagram_bytes:
            self.logger.error("not sending a %d-byte %s: over the %d-byte limit",
                              len(data), fields.get("type"), self.max_datagram_bytes)
            return None
        return seal(self.key, data)

    def send_bytes(self, data: bytes, address) -> None:
        try:
            self.socket.sendto(data, address)
        except OSError as error:           # unreachable peer: the loss Raft tolerates
            self.logger.debug("send to %s failed: %s", address, error)

    def notice_changes(self) -> None:
        seen = (self.node.role, self.node.current_term, self.node.leader_id)
        if seen == self.last_seen:
            return
        self.last_seen = seen
        role, term, leader = seen
        if role is Role.LEADER:
            text = f"is the leader for term {term}"
        elif leader:
            text = f"follows {leader} in term {term}"
        else:
            text = f"is a {role.value} in term {term}, no leader yet"
        self.logger.info("%s", text)
        if self.on_change:
            self.on_change(f"{self.id} {text}")


# ===========================================================================
# [8] RaftClient: find the leader, retry safely, read linearizably
# ===========================================================================

class RaftClient:
    """A client of the cluster. One request at a time; one client per thread.

    Each client has a unique id and numbers its requests. A retry (after a
    timeout, or to another node) reuses the number, so the cluster applies
    the request at most once and answers the retry with the first result.
    """

    # A silent node is retried elsewhere after FIRST_ATTEMPT_SECONDS, then
    # after twice that, and so on up to MAX_ATTEMPT_SECONDS: a dead leader
    # costs little, and a slow one (a loaded machine, a slow disk) is not
    # flooded. Re-sending is always safe: the request keeps its number.
    FIRST_ATTEMPT_SECONDS = 0.1
    MAX_ATTEMPT_SECONDS = 1.0
    # After a node fails to answer, hints that name it are ignored for this
    # long: followers of a dead leader name it until their election timers
    # fire. Only for a while: a live leader may just have lost one datagram.
    DISTRUST_SECONDS = 0.5

    def __init__(self, peers: Iterable[str], timeout: float = 5.0,
                 key: bytes | None = None, client_id: str | None = None):
        self.peers = [normalize_address(p) for p in peers]
        if not self.peers:
            raise ValueError("RaftClient needs at least one node address")
        if isinstance(key, str):
            key = key.encode("utf-8")
        if key is not None and not key.strip():
            raise ValueError("RaftClient key must not be empty")
        # As with --key-file, whitespace around the secret is not part of it.
        self.key = key.strip() if key is not None else None
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex
        self.seq = 0
        self.leader: str | None = None
        self.send_error: str | None = None
        self.silent: str | None = None      # the node that last failed to answer,
        self.silent_until = 0.0             # distrusted until this monotonic time
        # Called with a line saying why a request is being retried (prompts
        # print it, so a learner sees an election happen instead of a pause).
        self.on_retry: Callable[[str], None] | None = None
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("0.0.0.0", 0))

    # -- the public API ---------------------------------------------------------------
    def set(self, key: str, value: str) -> None:
        self.request(["set", key, str(value)])

    def get(self, key: str):
        return self.request(["get", key])

    def incr(self, key: str, by: int = 1) -> int:
        if type(by) is not int:
            raise RaftError("incr needs an integer amount")
        return self.request(["incr", key, by])

    def delete(self, key: str) -> bool:
        return self.request(["del", key])

    def status(self, node_id: str) -> dict:
        """One node's own view (no consensus). ClusterUnavailable if silent."""
        address = split_address(normalize_address(node_id))
        self.seq += 1
        nonce = self.seq
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:        # re-ask: a datagram can be lost
            reply = self.exchange(
                {"type": "StatusRequest", "nonce": nonce}, address,
                min(deadline, time.monotonic() + self.FIRST_ATTEMPT_SECONDS),
                lambda r: r.get("type") == "StatusReply" and r.get("nonce") == nonce)
            if reply is not None:
                return reply["status"]
        raise ClusterUnavailable(f"{node_id} did not answer within {self.timeout}s")

    def close(self) -> None:
        self.socket.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests ------------------------------------------------------------------------
    def request(self, op: list):
        """Send op to the leader, following redirects, until answered or timeout."""
        self.seq += 1
        seq = self.seq
        fields = {"type": "ClientRequest", "client_id": self.client_id, "seq": seq, "op": op}
        limit = DEFAULT_MAX_DATAGRAM_BYTES - DATAGRAM_HEADROOM_BYTES
        if len(encode_datagram(fields)) > limit:
            raise RaftError(f"command too large for one datagram (limit {limit} bytes)")
        deadline = time.monotonic() + self.timeout
        rotation = silences = 0
        last_trouble = "no node answered"
        while time.monotonic() < deadline:
            target = self.leader or self.next_node(rotation)
            attempt_seconds = min(self.MAX_ATTEMPT_SECONDS,
                                  self.FIRST_ATTEMPT_SECONDS * 2 ** min(silences, 10))
            reply = self.exchange(
                fields, split_address(target),
                min(deadline, time.monotonic() + attempt_seconds),
                lambda r: (r.get("type") == "ClientReply" and r.get("seq") == seq
                           and r.get("client_id") == self.client_id))
            if reply is None:
                self.leader, self.silent = None, target
                self.silent_until = time.monotonic() + self.DISTRUST_SECONDS
                rotation, silences = rotation + 1, silences + 1
                last_trouble = self.retrying(last_trouble, self.send_error or (
                    f"{target} did not answer (down, cut off, or a leader without a "
                    f"majority)"))
                continue
            if target == self.silent:
                self.silent = None                   # it is back
            if reply.get("ok"):
                self.leader = target
                return reply.get("result")
            if reply.get("error") != "not_leader":
                raise RaftError(str(reply.get("error")))
            # A follower names its leader. Right after a leader dies, its
            # followers still name it until their election timers fire:
            # do not go back to a node that just failed to answer.
            hint = reply.get("leader")
            self.leader = hint if hint not in (None, target, self.distrusted()) else None
            if self.leader is None:
                rotation += 1
                term = reply.get("term")
                last_trouble = self.retrying(last_trouble, "no leader yet: an election is "
                                             "under way" + (f" in term {term}" if term else ""))
                time.sleep(0.02)                     # let the election finish
        raise ClusterUnavailable(f"no leader answered within {self.timeout}s "
                                 f"({last_trouble}); the outcome is unknown")

    def retrying(self, previous: str, trouble: str) -> str:
        """Report a new reason for retrying (once, not at every attempt)."""
        if trouble != previous and self.on_retry is not None:
            self.on_retry(f"{trouble}; retrying")
        return trouble

    def ask(self, node_id: str, op: list, timeout: float = 2.0) -> str:
        """Send op to one node only, with no redirect and no retry elsewhere,
        and say in words what it answered (the demo's `ask`, for learning
        what a follower or a cut-off leader does with a request)."""
        self.seq += 1
        seq = self.seq
        fields = {"type": "ClientRequest", "client_id": self.client_id, "seq": seq, "op": op}
        reply = self.exchange(fields, split_address(normalize_address(node_id)),
                              time.monotonic() + timeout,
                              lambda r: (r.get("type") == "ClientReply" and r.get("seq") == seq
                                         and r.get("client_id") == self.client_id))
        if reply is None:
            return (f"no answer within {timeout:g}s: it is down or paused, or a leader that "
                    f"cannot reach a majority to commit (the outcome is unknown)")
        if reply.get("ok"):
            return format_answer(op[0], reply.get("result"))
        if reply.get("error") == "not_leader":
            leader = reply.get("leader")
            return (f"not the leader (term {reply.get('term')}); " +
                    (f"it says {short_id(leader)} leads" if leader else "it knows no leader"))
        return f"error: {reply.get('error')}"

    def distrusted(self) -> str | None:
        """The node that just failed to answer, while that is recent news."""
        return self.silent if time.monotonic() < self.silent_until else None

    def next_node(self, rotation: int) -> str:
        """The nodes in turn, skipping one that just failed to answer."""
        nodes = [p for p in self.peers if p != self.distrusted()] or self.peers
        return nodes[rotation % len(nodes)]

    def exchange(self, fields: dict, address, deadline: float, matches):
        """Send one datagram; wait for a reply that matches, or None at deadline."""
        try:
            self.send_error = None
            self.socket.sendto(seal(self.key, encode_datagram(fields)), address)
        except OSError as error:             # e.g. an address this host cannot reach
            self.send_error = f"cannot send to {address[0]}:{address[1]}: {error.strerror}"
            time.sleep(max(0.0, min(deadline - time.monotonic(), 0.1)))
            return None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.socket.settimeout(remaining)
            try:
                data, _ = self.socket.recvfrom(65535)
                reply = decode_datagram(unseal(self.key, data))
            except socket.timeout:
                return None
            except (OSError, ProtocolError):
                continue                     # stale, foreign or broken: ignore
            if matches(reply):
                return reply


# ===========================================================================
# [9] The prompt: one per node (NodePrompt) or for a whole demo (DemoPrompt)
# ===========================================================================

def format_answer(verb: str, result) -> str:
    """The words the prompt and `raft.py client` print for a result."""
    if verb == "set":
        return "OK"
    if verb == "del":
        return "OK" if result else "(nil)"
    return "(nil)" if result is None else str(result)


class ClusterPrompt(cmd.Cmd):
    """Commands that go to the cluster: typed on any node, they reach the
    leader (a follower answers with the leader's address and the client
    follows it)."""

    def __init__(self, client: RaftClient, prompt_text: str):
        super().__init__()
        self.client = client
        self.prompt = prompt_text if sys.stdin.isatty() else ""
        client.on_retry = lambda text: print(f"* {text}", file=sys.stderr, flush=True)

    def do_help(self, arg):
        """help [CMD]: list the commands, or explain one."""
        if arg.strip():
            method = getattr(self, "do_" + arg.strip(), None)
            if method is None or not method.__doc__:
                print(f"error: no command {arg.strip()!r}; type help for the list")
                return
            print(inspect.cleandoc(method.__doc__))
            return
        print("Commands (help CMD tells more):")
        for name in self.get_names():
            method = getattr(self, name)
            if name.startswith("do_") and name != "do_EOF" and method.__doc__:
                print(f"  {method.__doc__.strip().splitlines()[0]}")

    def run(self, verb: str, op_words: list) -> None:
        try:
            if verb == "set":
                self.client.set(op_words[0], op_words[1])
                result = None
            elif verb == "get":
                result = self.client.get(op_words[0])
            elif verb == "incr":
                result = self.client.incr(op_words[0], op_words[1])
            else:
                result = self.client.delete(op_words[0])
            print(format_answer(verb, result))
        except RaftError as error:
            print(f"error: {error}")

    def do_set(self, arg):
        """set KEY VALUE: store VALUE (the rest of the line) under KEY.
        set VALUE: the first README's form; stores it under the key 'value'."""
        words = arg.split(maxsplit=1)
        if not words:
            print("error: usage: set KEY VALUE")
            return
        self.run("set", words if len(words) == 2 else ["value", words[0]])

    def do_get(self, arg):
        """get KEY: print the value, or (nil) if there is none. Linearizable."""
        words = arg.split()
        if len(words) > 1:
            print("error: usage: get KEY")
            return
        self.run("get", words or ["value"])

    def do_incr(self, arg):
        """incr KEY [N]: add N (default 1) and print the new value."""
        words = arg.split()
        if not 1 <= len(words) <= 2 or (len(words) == 2 and not _is_integer(words[1])):
            print("error: usage: incr KEY [N] (N an integer)")
            return
        self.run("incr", [words[0], int(words[1]) if len(words) == 2 else 1])

    def do_del(self, arg):
        """del KEY: delete KEY; prints OK if it existed, (nil) if not."""
        words = arg.split()
        if len(words) != 1:
            print("error: usage: del KEY")
            return
        self.run("del", words)

    def do_quit(self, arg):
        """quit: stop (Ctrl-D and Ctrl-C too)."""
        return True

    def do_EOF(self, arg):
        if self.prompt:
            print()
        return True

    def emptyline(self):
        pass                                  # cmd.Cmd would repeat the last command

    def default(self, line):
        print(f"error: unknown command {line.split()[0]!r}; type help")

    def onecmd(self, line):
        try:
            return super().onecmd(line)
        except Exception as error:            # a typo never kills a node
            print(f"error: {error}")


def on_off(arg: str) -> bool | None:
    word = arg.strip().lower()
    if word not in ("on", "off"):
        print("error: say on or off")
        return None
    return word == "on"


def _is_integer(text: str) -> bool:
    return re.fullmatch(r"-?[0-9]{1,18}", text) is not None


class NodePrompt(ClusterPrompt):
    """The prompt of `python raft.py PORT`: cluster commands plus this node's view."""

    def __init__(self, server: NodeServer, client: RaftClient):
        super().__init__(client, f"raft {server.id}> ")
        self.server = server

    def do_status(self, arg):
        """status: this node's role, term, leader, commit index, last applied."""
        for key, value in self.server.call(lambda node: self.server.status()).items():
            print(f"{key}: {value}")

    def do_explain(self, arg):
        """explain on|off: show each decision and the rule that made it.
        This node prints each decision it takes, with the tag of the Figure 2
        rule that made it and the values it compared, e.g.
          8001 refuses its vote to 8000 in term 5: its last log (term 3,
          index 7) is behind ours (term 4, index 2) [RV-2]
        docs/figure2.md maps every rule tag to the code and its tests."""
        value = on_off(arg)
        if value is not None:
            self.server.call(lambda node: setattr(node, "explaining", value))
            print(f"explain {'on' if value else 'off'}")

    def do_trace(self, arg):
        """trace on|off: show every message this node sends (->) and receives (<-)."""
        value = on_off(arg)
        if value is not None:
            self.server.call(lambda node: setattr(self.server, "tracing", value))
            print(f"trace {'on' if value else 'off'}")

    def do_log(self, arg):
        """log [N]: the last N entries of this node's log (default 10)."""
        count = int(arg) if arg.strip().isdigit() else 10

        def last_entries(node: RaftNode):
            first = max(1, node.log.last_index - count + 1)
            return [(index, node.log.entry(index), index <= node.commit_index)
                    for index in range(first, node.log.last_index + 1)]
        for index, entry, committed in self.server.call(last_entries):
            mark = "committed" if committed else "not committed"
            print(f"{index} term={entry.term} {json.dumps(entry.command)} ({mark})")


class LocalCluster:
    """Node processes on this machine, for `demo`, `bench` and tests."""

    def __init__(self, ports: list[int], data_root: str, machine: str = "kv",
                 extra_args: Iterable[str] = (), key_file: str | None = None):
        self.ports, self.data_root, self.machine = list(ports), data_root, machine
        self.extra_args = list(extra_args) + (["--key-file", key_file] if key_file else [])
        self.key = read_key_file(key_file)
        self.paused: set[int] = set()
        self.processes: dict[int, subprocess.Popen] = {}
        self.addresses = [f"127.0.0.1:{port}" for port in self.ports]

    def data_dir(self, port: int) -> str:
        return os.path.join(self.data_root, str(port))

    def start(self, port: int) -> None:
        peers = ",".join(str(p) for p in self.ports if p != port)
        os.makedirs(self.data_dir(port), exist_ok=True)
        with open(os.path.join(self.data_dir(port), "stderr.txt"), "ab") as stderr:
            self.processes[port] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(port), "--peers", peers,
                 "--no-repl", "--machine", self.machine, "--data-dir", self.data_dir(port),
                 "--parent-pid", str(os.getpid()), "--lab", *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True)

    def is_running(self, port: int) -> bool:
        process = self.processes.get(port)
        return process is not None and process.poll() is None

    def pause(self, port: int) -> None:
        """SIGSTOP: the node freezes mid-step, like a long GC pause or a VM
        migration; its timers and its peers' timers keep running."""
        self.processes[port].send_signal(signal.SIGSTOP)
        self.paused.add(port)

    def resume(self, port: int) -> None:
        self.processes[port].send_signal(signal.SIGCONT)
        self.paused.discard(port)

    def kill(self, port: int) -> None:
        """SIGKILL: no chance to clean up, like a power cut for the process."""
        self.paused.discard(port)
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self, port: int) -> None:
        if port in self.paused:
            self.resume(port)
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        """SIGTERM every node at once, then wait: stopping them one by one
        would let the last ones hold a needless election on the way out."""
        for port in list(self.paused):
            self.resume(port)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for port in list(self.processes):
            self.stop(port)

    def statuses(self, timeout: float = 0.3) -> dict[int, dict | None]:
        with RaftClient(self.addresses, timeout=timeout, key=self.key) as client:
            result = {}
            for port, address in zip(self.ports, self.addresses):
                try:
                    result[port] = client.status(address)
                except ClusterUnavailable:
                    result[port] = None
            return result

    def wait_for_leader(self, timeout: float = 10.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses().values():
                if status and status["role"] == "leader":
                    return status["id"]
            time.sleep(0.05)
        return None


class LineWriter:
    """A stream that writes whole lines only. The prompt's answers and the
    lines other threads print (explain, trace, notices) then never end up
    glued into one line."""

    def __init__(self, stream):
        self.stream, self.lock, self.pending = stream, threading.Lock(), threading.local()

    def write(self, text: str) -> int:
        buffered = getattr(self.pending, "text", "") + text
        lines, newline, rest = buffered.rpartition("\n")
        self.pending.text = rest
        if newline:
            with self.lock:
                self.stream.write(lines + "\n")
                self.stream.flush()
        return len(text)

    def flush(self) -> None:
        rest, self.pending.text = getattr(self.pending, "text", ""), ""
        with self.lock:
            self.stream.write(rest)
            self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class LabConsole:
    """The demo's side of the lab: sends LabRequests to the nodes and prints
    the explain and trace lines they send back."""

    def __init__(self, key: bytes | None):
        self.key = key
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.replies: queue.Queue = queue.Queue()
        self.nonce = 0
        self.closed = False
        threading.Thread(target=self.receive_forever, daemon=True).start()

    def receive_forever(self) -> None:
        while not self.closed:
            try:
                data, _ = self.socket.recvfrom(65535)
                fields = decode_datagram(unseal(self.key, data))
            except (OSError, ProtocolError):
                continue
            if fields["type"] == "LabEvent" and type(fields.get("text")) is str:
                print(f"  {fields['text']}", flush=True)
            elif fields["type"] == "LabReply":
                self.replies.put(fields.get("nonce"))

    def send(self, port: int, settings: dict, timeout: float = 1.0) -> bool:
        """Apply settings on one node; False if it did not confirm in time."""
        self.nonce += 1
        fields = {"type": "LabRequest", "nonce": self.nonce, "watch_port": self.port, **settings}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.socket.sendto(seal(self.key, encode_datagram(fields)), ("127.0.0.1", port))
            try:
                while True:
                    if self.replies.get(timeout=0.1) == self.nonce:
                        return True
            except queue.Empty:
                continue
        return False

    def close(self) -> None:
        self.closed = True
        self.socket.close()


class DemoPrompt(ClusterPrompt):
    """The prompt of `python raft.py demo`: the whole cluster in one terminal,
    and a lab to break it in: partitions, lost, slow and doubled messages,
    paused nodes."""

    intro = ("Three Raft nodes are running. Try: set x 5, incr hits, get x, status,\n"
             "kill PORT (the leader!), status, start PORT, partition PORT | PORT PORT,\n"
             "heal, explain on. help lists everything.")

    def __init__(self, cluster: LocalCluster, client: RaftClient, explain: bool = False):
        super().__init__(client, "raft demo> ")
        self.cluster = cluster
        self.console = LabConsole(cluster.key)
        self.groups: list[set[int]] = []                 # empty: no partition
        self.links: dict[tuple[int, int] | str, LinkFaults] = {}   # (a, b) with a < b, or "*"
        self.flags = {"explain": explain, "trace": False}

    # -- the cluster at a glance --------------------------------------------------------
    def do_status(self, arg):
        """status: every node's role, term, leader, log, commit index and network."""
        print(f"{'node':<7}{'role':<11}{'term':>5}  {'leader':<8}{'log':>5}{'commit':>8}"
              f"{'applied':>9}  network")
        for port, status in self.cluster.statuses().items():
            network = self.network_of(port)
            if status is None:
                state = ("stopped" if not self.cluster.is_running(port) else
                         "paused" if port in self.cluster.paused else "no answer")
                print(f"{port:<7}{state:<11}{'':>5}  {'':<8}{'':>5}{'':>8}{'':>9}  {network}")
                continue
            leader = short_id(status["leader"]) if status["leader"] else "-"
            print(f"{port:<7}{status['role']:<11}{status['term']:>5}  {leader:<8}"
                  f"{status['last_log_index']:>5}{status['commit_index']:>8}"
                  f"{status['last_applied']:>9}  {network}")

    def network_of(self, port: int) -> str:
        parts = []
        cut = self.cut_off(port)
        if cut:
            parts.append("cut off from " + " ".join(map(str, sorted(cut))))
        for link, faults in sorted(self.links.items(), key=str):
            if link == "*" or port in link:
                where = "" if link == "*" else f" to {link[1] if link[0] == port else link[0]}"
                parts += [f"{name} {value}{where}" for name, value in (
                    ("drop", f"{faults.drop:.0%}"), ("duplicate", f"{faults.duplicate:.0%}"),
                    ("delay", f"{faults.delay_ms}ms")) if not value.startswith("0")]
        return ", ".join(parts) or "ok"

    def port_argument(self, arg) -> int | None:
        text = arg.strip().rpartition(":")[2]
        if not text.isdigit() or int(text) not in self.cluster.ports:
            print(f"error: name one of the ports {', '.join(map(str, self.cluster.ports))}")
            return None
        return int(text)

    # -- processes ----------------------------------------------------------------------
    def do_kill(self, arg):
        """kill PORT: SIGKILL that node, as if its machine lost power."""
        port = self.port_argument(arg)
        if port is not None:
            self.cluster.kill(port)
            print(f"killed {port}")

    def do_start(self, arg):
        """start PORT: restart a stopped node on its data dir; it catches up."""
        port = self.port_argument(arg)
        if port is None:
            return
        if self.cluster.is_running(port):
            print(f"error: {port} is already running")
            return
        self.cluster.start(port)
        self.apply_lab([port], timeout=5.0)
        print(f"started {port}")

    def do_pause(self, arg):
        """pause PORT: freeze that node (SIGSTOP); resume PORT wakes it.
        It stays silent and keeps its state, then wakes up with stale ideas
        (a long GC pause, a stalled VM)."""
        port = self.running_port(arg)
        if port is not None and port not in self.cluster.paused:
            self.cluster.pause(port)
            print(f"paused {port}")

    def do_resume(self, arg):
        """resume PORT: wake a paused node (SIGCONT)."""
        port = self.running_port(arg)
        if port is not None and port in self.cluster.paused:
            self.cluster.resume(port)
            self.apply_lab([port])            # what changed while it slept
            print(f"resumed {port}")

    def running_port(self, arg) -> int | None:
        port = self.port_argument(arg)
        if port is not None and not self.cluster.is_running(port):
            print(f"error: {port} is not running")
            return None
        return port

    # -- the network ----------------------------------------------------------------------
    def do_partition(self, arg):
        """partition PORTS | PORTS: cut the network between groups of nodes.
        E.g. partition 8000 | 8001 8002. Ports not named form one more group.
        A group without a majority cannot elect a leader or commit."""
        groups = []
        for part in arg.split("|"):
            ports = [self.port_argument(word) for word in part.split()]
            if None in ports:
                return
            groups.append(set(ports))
        named = set().union(*groups)
        rest = set(self.cluster.ports) - named
        if rest:
            groups.append(rest)
        if not arg.strip() or len(groups) < 2 or sum(map(len, groups)) != len(named | rest):
            print("error: usage: partition PORT [PORT...] | PORT [PORT...] (each port once)")
            return
        self.groups = [g for g in groups if g]
        self.apply_lab()
        print("partitioned: " + " | ".join(" ".join(map(str, sorted(g))) for g in self.groups))

    def do_heal(self, arg):
        """heal: end every partition and link fault (drop, delay, duplicate)."""
        self.groups, self.links = [], {}
        self.apply_lab()
        print("healed")

    def do_drop(self, arg):
        """drop N% [PORT PORT]: lose N% of the messages.
        On every link, or on the link between two nodes (both ways).
        drop 0 ends it."""
        self.set_link_fault("drop", arg, "%")

    def do_duplicate(self, arg):
        """duplicate N% [PORT PORT]: send N% of the messages twice.
        On every link, or on the link between two nodes (both ways)."""
        self.set_link_fault("duplicate", arg, "%")

    def do_delay(self, arg):
        """delay Nms [PORT PORT]: hold messages back about N ms.
        Each is held N ms +-50%, so they also arrive out of order. On every
        link, or on the link between two nodes (both ways). delay 0 ends it."""
        self.set_link_fault("delay_ms", arg, "ms")

    def set_link_fault(self, name: str, arg: str, unit: str) -> None:
        words = arg.split()
        usage = f"error: usage: {name.replace('_ms', '')} N{unit} [PORT PORT]"
        if len(words) not in (1, 3) or not words[0].removesuffix(unit).isdigit():
            print(usage)
            return
        number = int(words[0].removesuffix(unit))
        if unit == "%" and number > 100 or unit == "ms" and number > 10_000:
            print(usage + (" (at most 100%)" if unit == "%" else " (at most 10000ms)"))
            return
        link: tuple[int, int] | str = "*"
        if len(words) == 3:
            a, b = self.port_argument(words[1]), self.port_argument(words[2])
            if a is None or b is None:
                return
            if a == b:
                print("error: name two different ports")
                return
            link = (min(a, b), max(a, b))
        faults = dataclasses.replace(self.links.get(link, LinkFaults()),
                                     **{name: number / 100 if unit == "%" else number})
        self.links[link] = faults
        if faults == LinkFaults():
            del self.links[link]
        self.apply_lab()
        print(f"{name.replace('_ms', '')} {number}{unit} on "
              + ("every link" if link == "*" else f"{link[0]} <-> {link[1]}"))

    def cut_off(self, port: int) -> set[int]:
        for group in self.groups:
            if port in group:
                return set(self.cluster.ports) - group
        return set()

    def apply_lab(self, ports: Iterable[int] | None = None, timeout: float = 1.0) -> None:
        """Tell each running node its part of the lab's state."""
        for port in ports or self.cluster.ports:
            if not self.cluster.is_running(port) or port in self.cluster.paused:
                continue
            every = self.links.get("*", LinkFaults())
            links = {"*": dataclasses.asdict(every)} if "*" in self.links else {}
            for link, faults in self.links.items():
                if link != "*" and port in link:
                    # A link's own settings add to those of every link.
                    peer = link[1] if link[0] == port else link[0]
                    own = {name: value for name, value in dataclasses.asdict(faults).items()
                           if value}
                    links[f"127.0.0.1:{peer}"] = dataclasses.asdict(
                        dataclasses.replace(every, **own))
            settings = {"cut_off": [f"127.0.0.1:{p}" for p in sorted(self.cut_off(port))],
                        "links": links, **self.flags}
            if not self.console.send(port, settings, timeout):
                print(f"warning: {port} did not confirm the lab settings")

    # -- seeing inside ----------------------------------------------------------------------
    def do_explain(self, arg):
        """explain on|off: show each decision and the rule that made it.
        Every node prints each decision it takes, with the tag of the Figure 2
        rule that made it and the values it compared (docs/figure2.md)."""
        self.set_flag("explain", arg)

    def do_trace(self, arg):
        """trace on|off: show every message sent (->) and received (<-).
        Heartbeats included: try it with demo --pace slow."""
        self.set_flag("trace", arg)

    def set_flag(self, name: str, arg: str) -> None:
        value = on_off(arg)
        if value is not None:
            self.flags[name] = value
            self.apply_lab()
            print(f"{name} {'on' if value else 'off'}")

    def do_ask(self, arg):
        """ask PORT CMD...: send a command to that node only.
        No redirect and no retry elsewhere, e.g. ask 8000 set x 1: see what
        a follower, or a leader cut off from its majority, answers."""
        words = arg.split()
        port = self.port_argument(words[0]) if words else None
        if port is None:
            return
        op = words[1:]
        if not op or op[0] not in ("set", "get", "incr", "del"):
            print("error: usage: ask PORT set KEY VALUE | get KEY | incr KEY [N] | del KEY")
            return
        if op[0] == "incr":
            op = op[:2] + [int(op[2]) if len(op) > 2 and _is_integer(op[2]) else 1]
        elif op[0] == "set" and len(op) > 3:
            op = op[:2] + [" ".join(op[2:])]
        print(f"{port}: {self.client.ask(f'127.0.0.1:{port}', op)}")

    def postloop(self):
        self.console.close()


# ===========================================================================
# [10] The command line
# ===========================================================================

class UsageError(Exception):
    """Bad arguments or config: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_address_list(text: str, default_host: str) -> list[str]:
    try:
        return [normalize_address(part, default_host) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise UsageError(f"--peers: {error}") from None


def load_config_file(path: str) -> dict[str, str]:
    """{"nodes": {"node1": "127.0.0.1:8000", ...}} -> {name: HOST:PORT}."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as error:
        raise UsageError(f"--config {path}: {error.strerror}") from None
    except ValueError as error:
        raise UsageError(f"--config {path}: not valid JSON: {error}") from None
    nodes = config.get("nodes") if isinstance(config, dict) else None
    if not isinstance(nodes, dict) or not nodes:
        raise UsageError(f"--config {path}: needs {{\"nodes\": {{\"name\": \"HOST:PORT\", ...}}}}")
    try:
        result = {str(name): normalize_address(str(address)) for name, address in nodes.items()}
    except ValueError as error:
        raise UsageError(f"--config {path}: {error}") from None
    if len(set(result.values())) != len(result):
        raise UsageError(f"--config {path}: two nodes share an address")
    return result


def cluster_addresses(args) -> list[str]:
    """For client, check, bench: --config, --peers, or the default cluster."""
    if getattr(args, "config", None):
        return list(load_config_file(args.config).values())
    if getattr(args, "peers", None):
        return parse_address_list(args.peers, "127.0.0.1")
    return [f"127.0.0.1:{port}" for port in DEFAULT_PORTS]


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peers", help="the cluster's nodes, comma-separated PORT or HOST:PORT")
    parser.add_argument("--config", help='JSON file {"nodes": {"name": "HOST:PORT", ...}}')
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    parser.add_argument("--key-file", help="the cluster secret, for a cluster run with --key-file")


MIN_KEY_BYTES = 16


def read_key_file(path: str | None) -> bytes | None:
    """The cluster secret: the file's bytes without surrounding whitespace.
    A missing or empty file is an error; a file other users can read, or a
    short key, gets a warning (the key is the whole of the cluster's trust)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
        mode = os.stat(path).st_mode
    except OSError as error:
        raise UsageError(f"--key-file {path}: {error.strerror}") from None
    if not key:
        raise UsageError(f"--key-file {path}: the file is empty; put a secret in it, e.g. "
                         f"python -c 'import secrets; print(secrets.token_hex(32))' > {path}")
    if mode & 0o004:
        print(f"warning: --key-file {path} is readable by every user on this machine "
              f"(chmod 600 {path})", file=sys.stderr)
    if len(key) < MIN_KEY_BYTES:
        print(f"warning: --key-file {path} holds only {len(key)} bytes; use at least "
              f"{MIN_KEY_BYTES} random ones (e.g. secrets.token_hex(32))", file=sys.stderr)
    return key


def node_parser() -> Parser:
    parser = Parser(prog="raft.py", description="Run one Raft node with a prompt. "
                    "Other commands: raft.py client|check|demo|bench --help")
    parser.add_argument("port", nargs="?", type=int, help="UDP port of this node")
    parser.add_argument("--port", dest="port_option", type=int, help="same as PORT")
    parser.add_argument("--peers", help="the other members, comma-separated PORT or HOST:PORT "
                        "(default: 127.0.0.1:8000,8001,8002 less this one)")
    parser.add_argument("--config", help='cluster file {"nodes": {"name": "HOST:PORT"}}')
    parser.add_argument("--id", "--node-id", dest="node_name", help="this node's name in --config")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--data-dir", "--storage-dir", dest="data_dir",
                        help="where the JSON-lines files live (default raft-data/PORT)")
    parser.add_argument("--machine", choices=("kv", "counter"), default="kv")
    parser.add_argument("--election-timeout", default="150,300", metavar="MIN,MAX",
                        help="milliseconds, randomized in the range")
    parser.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT_MS, metavar="MS")
    parser.add_argument("--max-datagram", type=int, default=DEFAULT_MAX_DATAGRAM_BYTES,
                        metavar="BYTES", help="largest datagram sent (2048-65000)")
    parser.add_argument("--key-file", help="cluster secret: every datagram is authenticated")
    parser.add_argument("--log-file", help="node log (default DATA_DIR/node.log)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--no-repl", action="store_true", help="no prompt; stop on SIGINT/SIGTERM")
    parser.add_argument("--explain", action="store_true",
                        help="print each decision with the Figure 2 rule that made it")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lab", action="store_true", help=argparse.SUPPRESS)
    return parser


def resolve_node(args) -> tuple[str, list[str]]:
    """This node's id and the cluster's members, from the arguments."""
    if args.config:
        nodes = load_config_file(args.config)
        if not args.node_name:
            raise UsageError("--config needs --id NAME (one of the names in the file)")
        if args.node_name not in nodes:
            raise UsageError(f"--id {args.node_name}: not in {args.config} "
                             f"(names: {', '.join(nodes)})")
        return nodes[args.node_name], list(nodes.values())
    port = args.port if args.port is not None else args.port_option
    if port is None:
        raise UsageError("give a PORT, e.g. python raft.py 8000, or --config FILE --id NAME")
    if not 0 < port < 65536:
        raise UsageError(f"port {port} is out of range")
    host = "127.0.0.1" if args.host in ("localhost", "0.0.0.0", "") else args.host
    node_id = f"{host}:{port}"
    if args.peers is None:
        defaults = [f"127.0.0.1:{p}" for p in DEFAULT_PORTS]
        if node_id not in defaults:
            raise UsageError(f"port {port} is not in the default cluster 8000,8001,8002: "
                             f"name the other members with --peers")
        return node_id, defaults
    peers = parse_address_list(args.peers, host)
    if node_id in peers:
        raise UsageError(f"--peers lists this node ({node_id}) itself: name only the others")
    if len(set(peers)) != len(peers):
        raise UsageError("--peers repeats an address")
    return node_id, [node_id, *peers]


def parse_election_timeout(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--election-timeout {text}: want MIN,MAX in milliseconds") from None
    if not 0 < low <= high:
        raise UsageError(f"--election-timeout {text}: want 0 < MIN <= MAX")
    return low, high


def setup_node_logging(node_id: str, log_file: str, level: str):
    """Everything at LEVEL to the log file; only warnings and errors to
    stderr (the prompt prints its own notices of leader changes)."""
    logger = logging.getLogger(f"raft.{node_id}")
    logger.setLevel(level)
    logger.propagate = False
    formatter = logging.Formatter(f"%(asctime)s %(levelname)s {node_id} %(message)s")
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    console.setLevel(logging.WARNING)
    logger.addHandler(console)
    return logger


def stop_on_signals() -> None:
    """SIGTERM and SIGINT stop cleanly, exit status 0. SIGINT is set
    explicitly: a shell starting `python raft.py ... &` leaves it ignored."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def watch_parent(parent_pid: int) -> None:
    """Demo and bench nodes stop when the process that started them is gone."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()


def main_node(argv: list[str]) -> int:
    args = node_parser().parse_args(argv)
    node_id, members = resolve_node(args)
    key = read_key_file(args.key_file)
    election_timeout = parse_election_timeout(args.election_timeout)
    if args.heartbeat <= 0 or ms_to_ticks(args.heartbeat) >= ms_to_ticks(election_timeout[0]):
        raise UsageError(f"--heartbeat must be positive and, in {TICK_MS} ms ticks, "
                         f"below the election timeout's minimum")
    if not 2048 <= args.max_datagram <= 65000:
        raise UsageError("--max-datagram must be between 2048 and 65000")
    bind_host = args.host if args.host != "127.0.0.1" else split_address(node_id)[0]
    if key is None and not is_loopback(bind_host):
        print(f"warning: {bind_host}:{split_address(node_id)[1]} takes datagrams from the "
              f"network without --key-file: anyone who can reach it can pose as a member "
              f"or a client (see docs/security.md)", file=sys.stderr)
    data_dir = args.data_dir or os.path.join("raft-data", node_id.rpartition(":")[2])
    os.makedirs(data_dir, exist_ok=True)
    logger = setup_node_logging(node_id, args.log_file or os.path.join(data_dir, "node.log"),
                                args.log_level)
    stop_on_signals()
    server = NodeServer(node_id, members, data_dir, args.machine,
                        None if args.host == "127.0.0.1" else args.host,
                        election_timeout, args.heartbeat, args.max_datagram, logger, key,
                        lab=args.lab)
    server.node.explaining = args.explain
    server.event_sink = lambda text: print(f"  {short_id(node_id)} {text}",
                                           file=sys.stderr, flush=True)
    try:                      # from here on, a signal means a clean stop
        server.start()
        if args.parent_pid:
            watch_parent(args.parent_pid)
        if args.no_repl:
            while not server.stopping.wait(1.0):
                pass
        else:
            sys.stdout, sys.stderr = LineWriter(sys.stdout), LineWriter(sys.stderr)
            server.on_change = lambda text: print(f"* {text}", file=sys.stderr, flush=True)
            client = RaftClient([node_id, *[m for m in members if m != node_id]], key=key)
            print(f"Raft node {node_id} in a cluster of {len(members)}; "
                  f"data in {data_dir}/. Type help, or Ctrl-D to stop.")
            NodePrompt(server, client).cmdloop()
            client.close()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()
    return 0


def main_client(argv: list[str]) -> int:
    parser = Parser(prog="raft.py client", description="One request to the cluster: "
                    "set KEY VALUE | get KEY | incr KEY [N] | del KEY | status [HOST:PORT]")
    add_cluster_options(parser)
    parser.add_argument("words", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    key = read_key_file(args.key_file)
    words = args.words
    usage = {"set": (3, None, "set KEY VALUE"), "get": (2, 2, "get KEY"),
             "incr": (2, 3, "incr KEY [N]"), "del": (2, 2, "del KEY"),
             "status": (1, 2, "status [HOST:PORT]")}
    if not words or words[0] not in usage:
        raise UsageError("say what to do: " + " | ".join(u[2] for u in usage.values()))
    low, high, form = usage[words[0]]
    if len(words) < low or (high and len(words) > high):
        raise UsageError(f"usage: raft.py client [options] {form}")
    with RaftClient(cluster_addresses(args), timeout=args.timeout, key=key) as client:
        verb = words[0]
        if verb == "status":
            targets = words[1:] or client.peers
            for target in targets:
                print(json.dumps(client.status(target)))
            return 0
        if verb == "set":
            result = client.set(words[1], " ".join(words[2:]))
        elif verb == "get":
            result = client.get(words[1])
        elif verb == "incr":
            if len(words) == 3 and not _is_integer(words[2]):
                raise UsageError(f"incr: {words[2]!r} is not an integer")
            result = client.incr(words[1], int(words[2]) if len(words) == 3 else 1)
        else:
            result = client.delete(words[1])
        print(format_answer(verb, result))
    return 0


def main_check(argv: list[str]) -> int:
    parser = Parser(prog="raft.py check", description="Increment a counter N times, "
                    "reading it back after every increment (read-after-write).")
    add_cluster_options(parser)
    parser.add_argument("--ops", "--num-operations", dest="ops", type=int, required=True)
    parser.add_argument("--counter", default="counter", help="the key to increment")
    parser.add_argument("--log-file", default="raft-check.log", help="client log")
    args = parser.parse_args(argv)
    key = read_key_file(args.key_file)
    if args.ops < 1:
        raise UsageError("--ops must be at least 1")
    logger = logging.getLogger("raft.check")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(args.log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    previous = None
    with RaftClient(cluster_addresses(args), timeout=args.timeout, key=key) as client:
        logger.info("check: %d increments of %r on %s", args.ops, args.counter, client.peers)
        for number in range(1, args.ops + 1):
            written = client.incr(args.counter)
            read = client.get(args.counter)
            logger.info("op %d: incr -> %s, get -> %s (leader %s)",
                        number, written, read, client.leader)
            problem = None
            if read != written:
                problem = f"read-after-write violated: incr returned {written}, get returned {read}"
            elif previous is not None and written != previous + 1:
                problem = f"increment lost or doubled: {previous} then {written}"
            if problem:
                logger.error("op %d: %s", number, problem)
                print(f"violation: op {number}: {problem}", file=sys.stderr)
                return 1
            previous = written
    print(f"check passed: {args.ops} increments of {args.counter!r}, each read back "
          f"at once; it is now {previous}")
    logger.info("check passed")
    return 0


def free_udp_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --pace: (election timeout range, heartbeat) in ms. slow is ten times the
# default, so a person can read each step as it happens.
PACES = {"normal": (DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS),
         "slow": ((DEFAULT_ELECTION_TIMEOUT_MS[0] * 10, DEFAULT_ELECTION_TIMEOUT_MS[1] * 10),
                  DEFAULT_HEARTBEAT_MS * 10)}


def main_demo(argv: list[str]) -> int:
    parser = Parser(prog="raft.py demo", description="Three local nodes and one prompt.")
    parser.add_argument("--base-port", type=int, default=8000,
                        help="nodes use BASE, BASE+1, BASE+2 (default 8000)")
    parser.add_argument("--data-dir", default=os.path.join("raft-data", "demo"))
    parser.add_argument("--machine", choices=("kv", "counter"), default="kv")
    parser.add_argument("--key-file", help="run the cluster authenticated with this secret")
    parser.add_argument("--pace", choices=sorted(PACES), default="normal",
                        help="slow: every timeout x10, so a person can follow each step")
    parser.add_argument("--explain", action="store_true", help="start with explain on")
    args = parser.parse_args(argv)
    ports = [args.base_port + i for i in range(3)]
    for port in ports:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise UsageError(f"UDP port {port} is in use (another node?); try --base-port") from None
        finally:
            probe.close()
    election_timeout_ms, heartbeat_ms = PACES[args.pace]
    cluster = LocalCluster(ports, args.data_dir, args.machine, key_file=args.key_file,
                           extra_args=["--election-timeout", "%d,%d" % election_timeout_ms,
                                       "--heartbeat", str(heartbeat_ms)])
    stop_on_signals()
    sys.stdout, sys.stderr = LineWriter(sys.stdout), LineWriter(sys.stderr)
    client_timeout = 5.0 * election_timeout_ms[1] / DEFAULT_ELECTION_TIMEOUT_MS[1]
    try:
        for port in ports:
            cluster.start(port)
        print(f"Started nodes on ports {', '.join(map(str, ports))} "
              f"(data and logs in {args.data_dir}/PORT/).")
        with RaftClient(cluster.addresses, timeout=client_timeout, key=cluster.key) as client:
            prompt = DemoPrompt(cluster, client, explain=args.explain)
            if args.explain:                  # before the first election
                prompt.apply_lab(timeout=5.0)
            leader = cluster.wait_for_leader(timeout=10 if args.pace == "normal" else 60)
            print(f"Leader: {leader}" if leader else "No leader yet; try status in a moment.")
            prompt.cmdloop()
    except KeyboardInterrupt:
        print()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cluster.stop_all()
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def bench_workload(addresses: list[str], clients: int, seconds: float,
                   read_ratio: float, key: bytes | None = None) -> dict[str, list[float]]:
    """C client threads, each one request at a time, for D seconds."""
    latencies: dict[str, list[float]] = {"write": [], "read": []}
    errors = []
    lock = threading.Lock()

    def run(number: int):
        rng = random.Random(number)
        with RaftClient(addresses, timeout=5.0, key=key) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                kind = "read" if rng.random() < read_ratio else "write"
                name = f"bench-{rng.randrange(100)}"
                started = time.perf_counter()
                try:
                    if kind == "read":
                        client.get(name)
                    else:
                        client.set(name, str(number))
                except RaftError as error:
                    errors.append(str(error))
                    continue
                with lock:
                    latencies[kind].append(time.perf_counter() - started)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies["errors"] = errors
    return latencies


def bench_failover(cluster: LocalCluster, kills: int) -> list[float]:
    """SIGKILL the leader; time until a write succeeds; restart it; repeat."""
    times = []
    with RaftClient(cluster.addresses, timeout=10.0, key=cluster.key) as client:
        for number in range(kills):
            leader = cluster.wait_for_leader()
            client.set("failover", str(number))
            if leader is None:
                break
            port = int(leader.rpartition(":")[2])
            cluster.kill(port)
            started = time.perf_counter()
            client.set("failover", f"after-{number}")
            times.append(time.perf_counter() - started)
            cluster.start(port)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:   # let it catch up before the next kill
                status = cluster.statuses().get(port)
                if status and status["leader"] and status["last_applied"] > 0:
                    break
                time.sleep(0.05)
    return times


def print_bench_results(results: dict, seconds: float) -> None:
    for kind in ("write", "read"):
        values = results[kind]
        if values:
            print(f"  {kind + 's':<7}{len(values) / seconds:9.0f} ops/s   "
                  f"p50 {percentile(values, 0.5) * 1000:6.2f} ms   "
                  f"p99 {percentile(values, 0.99) * 1000:6.2f} ms")
    if results["errors"]:
        print(f"  errors: {len(results['errors'])} (first: {results['errors'][0]})")


def main_bench(argv: list[str]) -> int:
    parser = Parser(prog="raft.py bench", description="Throughput, latency and failover time.")
    add_cluster_options(parser)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--read-ratio", type=float, default=0.5)
    parser.add_argument("--kills", type=int, default=5, help="leader kills (local cluster only)")
    parser.add_argument("--machine", choices=("kv", "counter"), default="kv")
    args = parser.parse_args(argv)
    key = read_key_file(args.key_file)
    if args.clients < 1 or args.seconds <= 0 or not 0 <= args.read_ratio <= 1:
        raise UsageError("need --clients >= 1, --seconds > 0, 0 <= --read-ratio <= 1")
    cluster = None
    data_root = tempfile.mkdtemp(prefix="raft-bench-")
    try:
        if args.peers or args.config:
            addresses = cluster_addresses(args)
        else:
            cluster = LocalCluster(free_udp_ports(3), data_root, args.machine,
                                   key_file=args.key_file)
            for port in cluster.ports:
                cluster.start(port)
            if cluster.wait_for_leader() is None:
                raise RaftError("the local cluster elected no leader")
            addresses = cluster.addresses
        print(f"bench: {args.clients} clients for {args.seconds:g} s, "
              f"{args.read_ratio:.0%} reads, on {', '.join(addresses)}")
        print_bench_results(bench_workload(addresses, args.clients, args.seconds,
                                           args.read_ratio, key), args.seconds)
        times = bench_failover(cluster, args.kills) if cluster and args.kills > 0 else []
        if times:
            print(f"  failover: SIGKILL leader -> next write answered: median "
                  f"{percentile(times, 0.5) * 1000:.0f} ms over {len(times)} kills "
                  f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
    finally:
        if cluster:
            cluster.stop_all()
        shutil.rmtree(data_root, ignore_errors=True)
    return 0


COMMANDS = {"client": main_client, "check": main_check, "demo": main_demo, "bench": main_bench}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        return main_node(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StorageError as error:
        print(f"error: damaged data: {error}", file=sys.stderr)
        return 1
    except DataDirInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RaftError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
