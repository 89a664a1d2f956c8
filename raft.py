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
ADD_PATIENCE = 10                  # election timeouts a new server has to catch up
MAX_INBOX_ITEMS = 10000            # datagrams queued for the owner; more are dropped
TAG_BYTES = 32                     # HMAC-SHA256 tag in front of every datagram, with a key
MAX_RECEIVE_BYTES = 65000 + TAG_BYTES   # the largest datagram any node or client sends
MAX_ID_CHARS = 256                 # node and client ids on the wire
MAX_SNAPSHOT_BYTES = 1 << 28       # a snapshot received in chunks (256 MiB): beyond
                                   # it the sender is broken or hostile
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
    pre_vote: bool = False     # OPT §9.6: "would you vote for me in term?" (changes nothing)
    transfer: bool = False     # OPT §3.10: sent on the leader's TimeoutNow, so voters
                               # do not ignore it as a disruption (§4.2.3)


@dataclasses.dataclass(frozen=True)
class RequestVoteReply:
    term: int
    vote_granted: bool
    voter_id: str
    candidate_id: str    # OPT: the candidate it answers, so a copy replayed to
                         # another candidate of the same term counts for nothing
    pre_vote: bool = False     # OPT §9.6: the answer to a pre-vote


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
    prev_log_index: int = 0    # OPT: the request's, so a refusal can be dated


@dataclasses.dataclass(frozen=True)
class InstallSnapshot:
    """Dissertation Figure 5.3: the leader sends its snapshot in chunks, when
    a follower needs entries the leader has already compacted away."""
    term: int
    leader_id: str
    last_included_index: int
    last_included_term: int
    offset: int                # where data goes in the snapshot text
    data: str                  # a chunk of the snapshot file's text (ASCII JSON lines)
    done: bool                 # the last chunk


@dataclasses.dataclass(frozen=True)
class InstallSnapshotReply:
    term: int
    follower_id: str
    last_included_index: int   # OPT: the snapshot it answers about
    chunk_offset: int          # OPT: the offset of the chunk it answers
    next_offset: int           # OPT: how much of the snapshot it holds: send from there
    done: bool                 # OPT: the whole snapshot is installed (and durable)


@dataclasses.dataclass(frozen=True)
class TimeoutNow:
    """§3.10: the leader tells an up-to-date follower to stand for election
    at once, to hand leadership over without waiting for a timeout."""
    term: int
    leader_id: str


PEER_MESSAGES = (RequestVote, RequestVoteReply, AppendEntries, AppendEntriesReply,
                 InstallSnapshot, InstallSnapshotReply, TimeoutNow)
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
    elif kind == "text":
        if type(value) is not str or len(value) > MAX_RECEIVE_BYTES or not value.isascii():
            raise ProtocolError(f"{name} must be an ASCII string")
    return value


_FIELD_KINDS = {"term": "term", "candidate_id": "id", "last_log_index": "int",
                "last_log_term": "term", "vote_granted": "bool", "voter_id": "id",
                "leader_id": "id", "prev_log_index": "int", "prev_log_term": "term",
                "leader_commit": "int", "read_round": "int", "success": "bool",
                "follower_id": "id", "match_index": "int", "conflict_index": "int",
                "conflict_term": "term", "pre_vote": "bool", "transfer": "bool",
                "last_included_index": "int", "last_included_term": "term",
                "offset": "int", "data": "text", "done": "bool", "chunk_offset": "int",
                "next_offset": "int"}


def decode_entry(raw) -> Entry:
    if type(raw) is not dict or set(raw) != {"term", "command"}:
        raise ProtocolError("an entry must be {term, command}")
    _check_field("entry term", raw["term"], "term")
    if raw["term"] < 1:
        raise ProtocolError("entry term must be at least 1")
    return Entry(raw["term"], check_entry_command(raw["command"]))


def check_entry_command(command):
    """An entry's command is None (no-op), a configuration (§4.1) or a
    client command dict."""
    if command is None:
        return None
    if type(command) is dict and set(command) == {"config"}:
        decode_membership(command["config"])
        return command
    if (type(command) is not dict or set(command) != {"client", "seq", "op"}):
        raise ProtocolError("an entry command must be null, {config} or {client, seq, op}")
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
    if cls is InstallSnapshot and message.last_included_term > message.term:
        raise ProtocolError("a snapshot of a term later than its leader's")
    return message


@dataclasses.dataclass(frozen=True)
class Membership:
    """A cluster configuration (§4.1): the voters, whose majority elects and
    commits, and the learners, who receive the log but do not vote yet
    (§4.2.1: a new server catches up before it counts)."""
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()

    def encode(self) -> dict:
        return {"voters": list(self.voters), "learners": list(self.learners)}

    @property
    def servers(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.voters) | set(self.learners)))

    def describe(self) -> str:
        text = ", ".join(short_id(v) for v in self.voters) or "no voters"
        if self.learners:
            text += f" (learning: {', '.join(short_id(l) for l in self.learners)})"
        return text


def decode_membership(raw) -> Membership:
    if type(raw) is not dict or set(raw) != {"voters", "learners"}:
        raise ProtocolError("a configuration must be {voters, learners}")
    for name in ("voters", "learners"):
        if type(raw[name]) is not list or len(raw[name]) > 1000:
            raise ProtocolError(f"{name} must be a list")
        for node_id in raw[name]:
            _check_field(name, node_id, "id")
    voters, learners = raw["voters"], raw["learners"]
    if (len(set(voters)) != len(voters) or len(set(learners)) != len(learners)
            or set(voters) & set(learners)):
        raise ProtocolError("a configuration names a server twice")
    return Membership(tuple(sorted(voters)), tuple(sorted(learners)))


def config_of(entry: "Entry") -> Membership | None:
    """The configuration an entry carries, if it is a configuration entry."""
    command = entry.command
    if type(command) is dict and "config" in command:
        return decode_membership(command["config"])
    return None


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
    """The entries snapshot_index+1..last_index. Entries up to snapshot_index
    are compacted into a snapshot (dissertation ch. 5); only the last one's
    term is kept. With no snapshot, snapshot_index is 0 and term_at(0) == 0,
    so the entry "before the first one" matches every log, and AE-2 needs no
    special case."""

    def __init__(self, entries: Iterable[Entry] = (), snapshot_index: int = 0,
                 snapshot_term: int = 0):
        self.entries: list[Entry] = list(entries)
        self.snapshot_index, self.snapshot_term = snapshot_index, snapshot_term

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.term_at(self.last_index)

    def term_at(self, index: int) -> int | None:
        """The term of the entry at index; None if absent or compacted away."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if self.snapshot_index < index <= self.last_index:
            return self.entries[index - self.snapshot_index - 1].term
        return None

    def entry(self, index: int) -> Entry:
        if index <= self.snapshot_index:
            raise IndexError(f"entry {index} is compacted into the snapshot")
        return self.entries[index - self.snapshot_index - 1]

    def slice(self, first: int, last: int) -> list[Entry]:
        """Entries first..last inclusive (first is past the snapshot)."""
        return self.entries[first - self.snapshot_index - 1:last - self.snapshot_index]

    def first_index_of_term(self, index: int) -> int:
        """The first index of the run of entries sharing index's term (as far
        back as the log still has entries)."""
        term = self.term_at(index)
        while index > self.snapshot_index + 1 and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """The last index holding term, 0 if the log has no entry of term."""
        for index in range(self.last_index, self.snapshot_index - 1, -1):
            found = self.term_at(index)
            if found == term:
                return index
            if found < term:
                break          # terms only grow along the log
        return 0

    def replace_from(self, index: int, entries: list[Entry]) -> None:
        """Drop entries index.. and put entries in their place."""
        assert index > self.snapshot_index, "a snapshot's entries are committed"
        del self.entries[index - self.snapshot_index - 1:]
        self.entries.extend(entries)

    def compact(self, index: int, term: int) -> None:
        """Forget the entries up to index: a snapshot covers them. Entries
        after index stay if the log holds index with this term, else (an
        installed snapshot that our log disagrees with) they all go."""
        if self.term_at(index) == term:
            del self.entries[:index - self.snapshot_index]
        else:
            self.entries = []
        self.snapshot_index, self.snapshot_term = index, term


# ===========================================================================
# [4] Storage: what must survive a crash
# ===========================================================================
# Figure 2 "persistent state on all servers": current_term, voted_for, log[].
# The core writes through this interface and never waits for the disk; the
# one cycle in [6.9] calls sync() before any message leaves. Both stores
# share the contract: nothing written is durable until sync() returns.

class Storage(Protocol):
    def load(self) -> tuple[int, str | None, list[Entry]]: ...   # entries after the snapshot
    def load_snapshot(self) -> str | None: ...                    # after load()
    def save_term_and_vote(self, term: int, voted_for: str | None) -> None: ...
    def write_entries(self, first_index: int, entries: list[Entry]) -> None: ...
    def sync(self) -> None: ...
    def save_snapshot(self, text: str, index: int, term: int,
                      entries_after: list[Entry]) -> None: ...      # durable on return


# -- the snapshot file (dissertation ch. 5) -------------------------------------------
# A snapshot is the state machine and the client sessions as of one applied
# index, with the configuration in force there. Its file is JSON lines, and
# the same text travels in InstallSnapshot chunks:
#   {"index": 120, "term": 3, "config": {...}, "machine": "kv", "sessions": 2}
#   {"state": {...}}                                  the state machine's snapshot()
#   {"client": "9f..", "seq": 14, "answer": {...}}    one line per session, LRU first

@dataclasses.dataclass(frozen=True)
class Snapshot:
    index: int                 # the last log index it covers
    term: int                  # that entry's term
    config: Membership         # the configuration in force at index
    machine: str               # kv or counter
    state: Any                 # the state machine's snapshot()
    sessions: tuple            # ((client, seq, answer), ...), least recent first


class SnapshotDamage(ValueError):
    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line = line


def encode_snapshot(snapshot: Snapshot) -> str:
    """The snapshot as JSON lines; ASCII only, so a chunk's length in
    characters is its length in bytes."""
    records = [{"index": snapshot.index, "term": snapshot.term,
                "config": snapshot.config.encode(), "machine": snapshot.machine,
                "sessions": len(snapshot.sessions)},
               {"state": snapshot.state},
               *({"client": c, "seq": q, "answer": a} for c, q, a in snapshot.sessions)]
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def decode_snapshot(text: str) -> Snapshot:
    """The inverse of encode_snapshot; SnapshotDamage names the bad line.
    The header counts the session lines, so a cut-off text is caught too."""
    lines = text.split("\n")
    if lines[-1] != "":
        raise SnapshotDamage(len(lines), "no newline at the end")
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise SnapshotDamage(number, f"not JSON: {error}") from None
        if type(record) is not dict:
            raise SnapshotDamage(number, "not a JSON object")
        records.append(record)
    if len(records) < 2:
        raise SnapshotDamage(len(records) + 1, "a snapshot needs a header and a state line")
    header, state = records[0], records[1]
    try:
        if set(header) != {"index", "term", "config", "machine", "sessions"}:
            raise ProtocolError("header fields do not match")
        index = _check_field("index", header["index"], "int")
        term = _check_field("term", header["term"], "term")
        config = decode_membership(header["config"])
        if header["machine"] not in ("kv", "counter"):
            raise ProtocolError("machine must be kv or counter")
        count = _check_field("sessions", header["sessions"], "int")
    except ProtocolError as error:
        raise SnapshotDamage(1, str(error)) from None
    if set(state) != {"state"}:
        raise SnapshotDamage(2, "the second line must be {state}")
    if len(records) - 2 != count:
        raise SnapshotDamage(len(lines), f"{len(records) - 2} session lines, the header "
                                          f"says {count}")
    sessions = []
    for number, record in enumerate(records[2:], start=3):
        try:
            if set(record) != {"client", "seq", "answer"} or type(record["answer"]) is not dict:
                raise ProtocolError("a session line is {client, seq, answer}")
            sessions.append((_check_field("client", record["client"], "id"),
                             _check_field("seq", record["seq"], "int"), record["answer"]))
        except ProtocolError as error:
            raise SnapshotDamage(number, str(error)) from None
    return Snapshot(index, term, config, header["machine"], state["state"], tuple(sessions))


def encode_log_lines(first_index: int, entries: list[Entry]) -> str:
    return "".join(json.dumps({"index": first_index + offset, "term": entry.term,
                               "command": entry.command}, separators=(",", ":")) + "\n"
                   for offset, entry in enumerate(entries))


class MemoryStorage:
    """Storage for tests: a synced part, and what a crash would lose.

    crash() throws the unsynced writes away, exactly like a power cut, so a
    simulated cluster catches any message sent before its state was synced.
    entries holds the synced entries after the snapshot (snapshot_index).
    """

    def __init__(self):
        self.term, self.voted_for, self.entries = 0, None, []
        self.snapshot_text, self.snapshot_index = None, 0
        self.pending: list[tuple] = []
        self.sync_count = 0

    def load(self):
        return self.term, self.voted_for, list(self.entries)

    def load_snapshot(self):
        return self.snapshot_text

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
                del self.entries[a - self.snapshot_index - 1:]
                self.entries.extend(b)
        if self.pending:
            self.sync_count += 1
        self.pending = []

    def save_snapshot(self, text, index, term, entries_after):
        self.sync()
        self.snapshot_text, self.snapshot_index = text, index
        self.entries = list(entries_after)
        self.sync_count += 1

    def crash(self):
        self.pending = []


fdatasync = getattr(os, "fdatasync", os.fsync)     # macOS has only fsync


class JsonLinesStorage:
    """JSON-lines files in the data dir (docs/storage.md).

    state.jsonl     {"term": 4, "voted_for": "127.0.0.1:8001"}   last line wins
    log.jsonl       {"index": 7, "term": 4, "command": {...}}
                    a line with index i replaces the entry at i and all after it,
                    so a conflicting suffix (AE-3) is dropped without rewriting.
                    After a snapshot it starts just past the snapshot's index.
    snapshot.jsonl  the latest snapshot (see encode_snapshot), replaced whole:
                    written to a temporary name, fsynced, renamed, dir fsynced.

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
        self.snapshot_path = os.path.join(data_dir, "snapshot.jsonl")
        self.state_file = self.log_file = None
        self.snapshot_text: str | None = None
        self.dirty: set = set()
        self.sync_count = 0

    # -- loading ---------------------------------------------------------------
    def load(self):
        for path in (self.snapshot_path, self.log_path):
            if os.path.exists(path + ".tmp"):     # a crash before the rename:
                os.remove(path + ".tmp")          # the old file is still whole
        snapshot_index, snapshot_term = self._load_snapshot()
        states = self._read_lines(self.state_path, self._parse_state)
        term, voted_for = states[-1] if states else (0, None)
        base, entries = None, []              # entries hold base+1, base+2, ...
        for line_number, (index, entry) in enumerate(
                self._read_lines(self.log_path, self._parse_entry), start=1):
            if base is None:                  # compaction cuts the log's front
                base = index - 1 if snapshot_index else 0
            if not base + 1 <= index <= base + len(entries) + 1:
                raise StorageError(self.log_path, line_number,
                                   f"index {index} leaves a gap after {base + len(entries)}")
            if index > base + 1 and entry.term < entries[index - base - 2].term:
                raise StorageError(self.log_path, line_number,
                                   f"term {entry.term} at index {index} is older than "
                                   f"the term before it ({entries[index - base - 2].term})")
            del entries[index - base - 1:]
            entries.append(entry)
        base = base or 0
        if base > snapshot_index:
            raise StorageError(self.log_path, 1, f"the log starts at index {base + 1}, "
                               f"but the snapshot ends at {snapshot_index}: entries are missing")
        kept = self._entries_after(snapshot_index, snapshot_term, base, entries)
        if base != snapshot_index and (entries or os.path.exists(self.log_path)):
            # A crash came between the snapshot and the log rewrite: finish
            # the rewrite now, so the file starts right after the snapshot
            # and new entries appended to it follow on without a gap.
            self._replace_file(self.log_path, encode_log_lines(snapshot_index + 1, kept))
        self.state_file = open(self.state_path, "a", encoding="utf-8")
        self.log_file = open(self.log_path, "a", encoding="utf-8")
        self._fsync_directory()
        return term, voted_for, kept

    def _load_snapshot(self) -> tuple[int, int]:
        if not os.path.exists(self.snapshot_path):
            return 0, 0
        with open(self.snapshot_path, "rb") as f:
            data = f.read()
        try:
            snapshot = decode_snapshot(data.decode("ascii"))
        except UnicodeDecodeError as error:
            raise StorageError(self.snapshot_path, data[:error.start].count(b"\n") + 1,
                               "not ASCII") from None
        except SnapshotDamage as error:
            # Written whole and renamed into place: any damage is real damage.
            raise StorageError(self.snapshot_path, error.line, str(error)) from None
        self.snapshot_text = data.decode("ascii")
        return snapshot.index, snapshot.term

    def _entries_after(self, snapshot_index, snapshot_term, base, entries):
        """The log entries past the snapshot. A crash between writing a
        snapshot and rewriting the log leaves the old log: keep what follows
        the snapshot if the log agrees with it there, else nothing (as when
        installing a snapshot, Figure 13)."""
        if base == snapshot_index:
            return entries
        last = base + len(entries)
        if last >= snapshot_index and entries[snapshot_index - base - 1].term == snapshot_term:
            return entries[snapshot_index - base:]
        if last > snapshot_index:
            logging.getLogger("raft").warning(
                "%s: dropping entries %d..%d, which disagree with the snapshot at %d",
                self.log_path, snapshot_index + 1, last, snapshot_index)
        return []

    def load_snapshot(self):
        return self.snapshot_text

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
        self.log_file.write(encode_log_lines(first_index, entries))
        self.dirty.add(self.log_file)

    def save_snapshot(self, text, index, term, entries_after):
        """Replace the snapshot, then the log with just the entries after
        it. Each file is written under a temporary name, fsynced, renamed
        over the old one, and the directory fsynced: a crash leaves either
        the old file or the new one, whole. Snapshot first: a crash between
        the two leaves a log that load() trims against the new snapshot."""
        self.sync()
        self._replace_file(self.snapshot_path, text)
        self.log_file.close()
        self._replace_file(self.log_path, encode_log_lines(index + 1, entries_after))
        self.log_file = open(self.log_path, "a", encoding="utf-8")
        self.snapshot_text = text
        self.sync_count += 1

    def _replace_file(self, path: str, text: str) -> None:
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        self._fsync_directory()

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
    snapshot_every: int = 0           # compact after this many applied entries (0: never)
    pre_vote: bool = True             # §9.6: ask "would you vote?" before raising the term
    check_quorum: bool = True         # a leader that hears no majority for an election
                                      # timeout steps down, and followers ignore vote
                                      # requests while they hear a leader (§4.2.3)


@dataclasses.dataclass
class PendingRead:
    """A linearizable read waiting for its ReadIndex conditions (§6.4)."""
    request_id: Any
    op: list
    round: int                 # the heartbeat round that must reach a majority
    read_index: int | None     # None until an entry of our term is committed


@dataclasses.dataclass
class Transfer:
    """A leadership transfer under way (§3.10)."""
    target: str
    started: int               # the leader's tick count when it began
    request_ids: list          # clients waiting to hear that TimeoutNow went out
    sent: bool = False         # TimeoutNow is on its way


# A leader's view of the batch of entries last sent to a follower.
NOTHING_IN_FLIGHT, BATCH_SENT, BATCH_WAITED = 0, 1, 2

# Requests that are about the cluster, not the state machine (the runtime
# routes them to the RaftNode methods of the same purpose).
ADMIN_OPS = ("add_member", "remove_member", "transfer", "snapshot")


def not_leader(leader_id: str | None, term: int | None = None) -> dict:
    """The answer of a node that is not the leader: where to go instead (if
    it knows), and its term, so a client can say what is going on."""
    return {"ok": False, "error": "not_leader", "leader": leader_id, "term": term}


def entry_size(entry: Entry) -> int:
    """Bytes an entry takes in a datagram: the unit of the batching budget."""
    return len(json.dumps(encode_entry(entry), separators=(",", ":")))


class RaftNode:
    """One server's Raft state and rules. No I/O, no clock, no threads.

    Inputs:  tick(), step(message), propose(...), read(...),
             change_membership(...), transfer_leadership(...), take_snapshot()
    Outputs: collect_messages() -> [(destination, message)]
             apply_committed()  -> applies [ALL-1], then
             collect_answers()  -> [(request_id, answer dict)]
    The caller must run persist_send_apply() after its inputs ([6.9]).
    """

    # -- [6.1] state, grouped like the Figure 2 state box ---------------------
    def __init__(self, node_id: str, members: Iterable[str], storage: Storage,
                 machine: StateMachine, rng: random.Random,
                 config: Config = Config(), logger: logging.Logger | None = None):
        """members: the cluster this node starts in when its log and snapshot
        hold no configuration yet; empty for a node that will --join."""
        self.id = node_id
        self.storage, self.machine, self.rng, self.config = storage, machine, rng, config
        self.logger = logger or logging.getLogger("raft")
        members = sorted(set(members) | ({node_id} if members else set()))

        # Persistent state on all servers (see [PERSIST]), and the snapshot
        # that stands for the log's compacted prefix (dissertation ch. 5).
        term, voted_for, entries = storage.load()
        self.snapshot_text = storage.load_snapshot()
        snapshot = self.load_snapshot_state(self.snapshot_text)
        self.log = Log(entries, snapshot.index if snapshot else 0,
                       snapshot.term if snapshot else 0)
        self.current_term = max(term, self.log.last_term)
        self.voted_for = voted_for if term == self.current_term else None
        if self.current_term != term:
            # The log was synced but the state record was not: the entries
            # prove the term existed, and no vote of that term was ever sent.
            storage.save_term_and_vote(self.current_term, None)

        # Volatile state on all servers (a snapshot is committed and applied)
        self.commit_index = self.log.snapshot_index
        self.last_applied = self.log.snapshot_index

        # Volatile state on leaders (reinitialized after election)
        self.next_index: dict[str, int] = {}
        self.match_index: dict[str, int] = {}

        # The configuration (§4.1): the latest one in the log is in force.
        # configs holds (index, Membership) for the snapshot's (or the start
        # configuration, at index 0) and each configuration entry after it.
        base = snapshot.config if snapshot else Membership(tuple(members))
        self.configs: list[tuple[int, Membership]] = [(self.log.snapshot_index, base)]
        self.members: list[str] = []              # voters of the latest configuration
        self.learners: list[str] = []
        self.peers: list[str] = []                # everyone we replicate to

        # Beyond Figure 2: role and timers, client sessions, reads, outputs
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self.votes: set[str] = set()
        self.pre_votes: set[str] | None = None   # a pre-vote under way (§9.6)
        self.pre_vote_rounds = 0                 # pre-votes in a row that found no majority
        self.ticks = 0                           # this node's clock, in ticks
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.election_timeout = self.random_election_timeout()
        self.last_heard: dict[str, int] = {}     # leader: peer -> tick of its last answer
        self.in_flight: dict[str, int] = {}      # heartbeats a batch has waited
        self.snapshot_offset: dict[str, int] = {}  # followers being sent the snapshot
        self.incoming: tuple | None = None       # (key, [chunks], length) being received
        self.sessions: collections.OrderedDict = collections.OrderedDict()
        if snapshot:
            for client, seq, answer in snapshot.sessions:
                self.sessions[client] = (seq, answer)
        self.waiting: dict[int, dict] = {}       # index -> {request_id: term}
        self.proposed: dict[tuple[str, int], int] = {}
        self.pending_reads: dict[Any, PendingRead] = {}
        self.pending_changes: list[tuple] = []   # (request, add|remove, id, tick asked)
        self.catch_up: dict[str, tuple[int, int]] = {}   # learner -> (round end, start tick)
        self.transfer: Transfer | None = None
        self.read_round = 0
        self.read_round_wanted = False
        self.read_acks: dict[str, int] = {}
        self.outbox: list[tuple[str, Any]] = []
        self.answers: list[tuple[Any, dict]] = []
        self.counters: collections.Counter = collections.Counter()
        self.on_apply: Callable[[int, Entry], None] | None = None   # observers (tests)
        # Explain mode: also log the frequent decisions (refusals, commits,
        # back-offs), and pass every decision to on_explain (the prompt
        # prints them). Elections, votes and step-downs are always logged.
        self.explaining = False
        self.on_explain: Callable[[str], None] | None = None
        self.track_configurations(self.log.snapshot_index + 1)

    def load_snapshot_state(self, text: str | None) -> Snapshot | None:
        """Restore the state machine from the stored snapshot, if any."""
        if text is None:
            return None
        snapshot = decode_snapshot(text)       # storage checked it when loading
        where = getattr(self.storage, "snapshot_path", "snapshot")
        if snapshot.machine != self.machine.name:
            raise StorageError(where, 1, f"a snapshot of the {snapshot.machine} machine; "
                                         f"this node runs {self.machine.name}")
        try:
            self.machine.restore(snapshot.state)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise StorageError(where, 2, f"the state does not restore: {error!r}") from None
        return snapshot

    def random_election_timeout(self) -> int:
        low, high = self.config.election_timeout_ticks
        return self.rng.randint(low, high)

    def has_quorum(self, ids: Iterable[str]) -> bool:
        """A majority of the voters (this node included if in ids)."""
        return len(set(ids) & set(self.members)) > len(self.members) // 2

    def is_voter(self) -> bool:
        return self.id in self.members

    def may_stand_for_election(self) -> bool:
        """A voter of its latest configuration, or of any configuration from
        the last committed one on. §4.2.2: a server the latest configuration
        leaves out may still be needed until that configuration commits (the
        leader that was removing it may be gone); it just does not count its
        own vote (has_quorum counts only the latest voters)."""
        committed = [i for i, _ in self.configs if i <= self.commit_index][-1:] or [0]
        return any(self.id in config.voters for i, config in self.configs
                   if i >= committed[0])

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
        self.ticks += 1
        self.election_elapsed += 1
        if self.role is Role.LEADER:
            self.check_quorum()
            if self.role is Role.LEADER:
                self.check_transfer()
            if self.role is Role.LEADER:
                self.heartbeat_elapsed += 1
                if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
                    self.broadcast_append_entries()
            return
        # [FOL-2] a follower that heard from no leader and granted no vote for
        # a whole election timeout starts an election.
        # [CAN-4] a candidate whose election timed out (a split vote) starts
        # a new one, in a higher term, with a fresh random timeout.
        # Both first ask for pre-votes (§9.6) when config.pre_vote is on. A
        # learner, a new empty node, or a server whose removal is committed
        # never stands (see may_stand_for_election).
        if self.election_elapsed >= self.election_timeout:
            if not self.may_stand_for_election():
                # It waits on, but no longer hears a leader: pre-votes from
                # the voters that need it get an answer (seed 1789: a learner
                # whose timer was 15 ticks kept "hearing" a leader forever).
                self.leader_id, self.election_elapsed = None, 0
            elif self.config.pre_vote:
                self.start_pre_vote()
            else:
                self.start_election()

    def step(self, message) -> None:
        """A peer message arrived. Stale, duplicated and reordered ones are harmless.

        RPCs are processed whoever sends them, member or not (§4.1: a server
        new to the cluster, or one our log does not list yet, must be heard);
        replies count only from the servers we asked."""
        sender = message_sender(message)
        if sender == self.id:
            self.counters["not from a member"] += 1
            return
        # [§4.2.3] a vote request while we hear from a leader comes from a
        # server that cannot know better (removed, or cut off and back): it
        # must not depose a leader that is working. Ignore it, term and all.
        if (isinstance(message, RequestVote) and not message.transfer
                and (message.pre_vote or self.config.check_quorum)
                and self.hears_a_leader()):
            self.refuse_during_lease(message)
            return
        # [ALL-2] a higher term in any message means we are out of date:
        # adopt the term and become a follower before handling the message.
        # A pre-vote's term is only proposed (§9.6): it changes nothing.
        if message.term > self.current_term and not is_pre_vote(message):
            leader = message.leader_id if isinstance(
                message, (AppendEntries, InstallSnapshot, TimeoutNow)) else None
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
        elif isinstance(message, AppendEntriesReply):
            self.handle_append_entries_reply(message)
        elif isinstance(message, InstallSnapshot):
            self.handle_install_snapshot(message)
        elif isinstance(message, InstallSnapshotReply):
            self.handle_install_snapshot_reply(message)
        else:
            self.handle_timeout_now(message)

    def hears_a_leader(self) -> bool:
        """Within the minimum election timeout of hearing a leader (or being
        one): no election is needed, so none is allowed to disrupt (§4.2.3).
        Pre-votes are refused then (§9.6); real votes too, with check-quorum."""
        if self.role is Role.LEADER:
            return True
        return (self.leader_id is not None
                and self.election_elapsed < self.config.election_timeout_ticks[0])

    def refuse_during_lease(self, request: RequestVote) -> None:
        kind = "pre-vote" if request.pre_vote else "vote"
        if self.explaining:
            self.explain("§4.2.3", f"ignores the {kind} request of {request.candidate_id} "
                                   f"for term {request.term}: it hears leader "
                                   f"{self.leader_id} (the request could only disrupt it)")
        if request.pre_vote:       # a pre-vote changes nothing: say no at once
            self.send(request.candidate_id, RequestVoteReply(
                self.current_term, False, self.id, request.candidate_id, pre_vote=True))

    # -- [6.3] role transitions -------------------------------------------------
    def become_follower(self, term: int, leader_id: str | None = None,
                        rule: str = "CAN-3") -> None:
        """Step down (or stay) as follower in term (rule: the tag that says
        why, for a step-down within the term).

        voted_for is cleared only when the term changes: clearing it within a
        term would let this node vote twice in that term (eliben/raft's bug).
        """
        newer = term > self.current_term
        if newer:
            self.set_term_and_vote(term, None)
            self.pre_votes = None
        self.leader_id = leader_id
        if self.role is Role.FOLLOWER:
            # A follower keeps its election timer running: only hearing the
            # leader or granting a vote resets it (see [FOL-2]). Otherwise a
            # candidate with a stale log, raising the term again and again,
            # could keep better candidates from ever timing out.
            return
        self.explain("ALL-2" if newer else rule,
                     f"steps down from {self.role.value} to follower in term {term}"
                     + (f": {leader_id} leads it" if leader_id else ""))
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self.election_elapsed = 0
        self.election_timeout = self.random_election_timeout()
        if was_leader:
            self.fail_pending_requests()

    def start_pre_vote(self) -> None:
        """[§9.6] Pre-vote: before raising its term, a would-be candidate asks
        the voters whether they would vote for it in term + 1. They say yes
        only if its log is up to date and they hear no leader themselves. A
        server that was cut off, and comes back with a stale log or to a
        healthy leader, so never raises the cluster's term."""
        if self.role is Role.CANDIDATE:
            self.explain("CAN-4", f"election of term {self.current_term} timed out: "
                                  f"back to follower, to ask for pre-votes first")
            self.role = Role.FOLLOWER
        self.leader_id = None
        self.pre_vote_rounds = (self.pre_vote_rounds + 1) if self.pre_votes else 1
        self.pre_votes = {self.id}
        self.election_elapsed = 0
        self.election_timeout = self.random_election_timeout()
        rounds = self.pre_vote_rounds
        if self.explaining and (rounds < 3 or rounds in (10, 100) or rounds % 1000 == 0):
            # A cut-off server asks again at every timeout: say so now and
            # then, not several times a second.
            again = f" (round {rounds} in a row)" if rounds > 1 else ""
            self.explain("§9.6", f"heard no leader for its timeout: asks for pre-votes for "
                                 f"term {self.current_term + 1} (its term stays "
                                 f"{self.current_term}){again}")
        for peer in self.members:
            if peer != self.id:
                self.send(peer, RequestVote(self.current_term + 1, self.id,
                                            self.log.last_index, self.log.last_term,
                                            pre_vote=True))
        self.count_pre_votes()

    def count_pre_votes(self) -> None:
        if self.pre_votes is not None and self.has_quorum(self.pre_votes):
            granted, self.pre_votes = self.pre_votes, None
            self.start_election(pre_votes=granted)

    def start_election(self, transfer: bool = False, pre_votes: set | None = None) -> None:
        # [CAN-1] increment the term, vote for ourselves, reset the election
        # timer, and ask every other server for its vote. The vote for
        # ourselves is persisted before any RequestVote leaves (see [PERSIST]).
        if transfer:
            why = "gets TimeoutNow (the leader hands leadership over to it)"
        elif pre_votes is not None:
            why = (f"has pre-votes from {', '.join(sorted(pre_votes))}, a majority of "
                   f"{len(self.members)}")
        else:
            why = f"heard no leader for {self.election_elapsed} ticks (its timeout)"
        self.explain("FOL-2" if self.role is Role.FOLLOWER else "CAN-4",
                     f"{why}: stands for election in term {self.current_term + 1}")
        self.role = Role.CANDIDATE
        self.set_term_and_vote(self.current_term + 1, self.id)
        self.leader_id = None
        self.votes = {self.id}
        self.pre_votes = None
        self.election_elapsed = 0
        self.election_timeout = self.random_election_timeout()
        voters = [m for m in self.members if m != self.id]
        self.explain("CAN-1", f"votes for itself in term {self.current_term} and asks "
                              f"{', '.join(voters) or 'no one else'} (its last log: term "
                              f"{self.log.last_term}, index {self.log.last_index})")
        for peer in voters:
            self.send(peer, RequestVote(self.current_term, self.id, self.log.last_index,
                                        self.log.last_term, transfer=transfer))
        self.count_votes()

    def count_votes(self) -> None:
        # [CAN-2] votes from a majority of the servers: become leader.
        if self.role is Role.CANDIDATE and self.has_quorum(self.votes):
            self.become_leader()

    def become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self.next_index, self.match_index, self.in_flight, self.read_acks = {}, {}, {}, {}
        self.snapshot_offset, self.catch_up, self.transfer = {}, {}, None
        self.track_peers()
        self.read_round, self.read_round_wanted = 0, False
        self.election_elapsed, self.last_heard = 0, {}
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

    def track_peers(self) -> None:
        """A leader keeps replication state for exactly the current peers."""
        if self.role is not Role.LEADER:
            return
        for peer in self.peers:
            if peer not in self.next_index:
                self.next_index[peer] = self.log.last_index + 1
                self.match_index[peer] = 0
                self.in_flight[peer] = NOTHING_IN_FLIGHT
                self.read_acks[peer] = 0
        for table in (self.next_index, self.match_index, self.in_flight, self.read_acks,
                      self.snapshot_offset, self.catch_up):
            for peer in [p for p in table if p not in self.peers]:
                del table[peer]

    def fail_pending_requests(self) -> None:
        """A deposed leader cannot promise anything: clients must retry."""
        refusal = not_leader(self.leader_id, self.current_term)
        for waiters in self.waiting.values():
            for request_id in waiters:
                self.answer(request_id, refusal)
        for request_id in self.pending_reads:
            self.answer(request_id, refusal)
        for request_id, *_ in self.pending_changes:
            self.answer(request_id, refusal)
        if self.transfer is not None and not self.transfer.sent:
            for request_id in self.transfer.request_ids:
                self.answer(request_id, refusal)
        self.waiting, self.proposed, self.pending_reads = {}, {}, {}
        self.pending_changes, self.transfer = [], None

    def check_quorum(self) -> None:
        """Check-quorum: a leader that heard from no majority of voters for
        an election timeout steps down, so its clients go and find the leader
        the others have elected (or will elect) instead of waiting on it."""
        if not self.config.check_quorum:
            return
        timeout = self.config.election_timeout_ticks[1]
        if self.election_elapsed < timeout:
            return                  # a new leader gets one timeout to hear from them
        heard = {self.id} | {peer for peer, tick in self.last_heard.items()
                             if self.ticks - tick < timeout}
        if not self.has_quorum(heard):
            self.explain("check-quorum", f"heard from only {', '.join(sorted(heard))} of "
                                         f"{len(self.members)} voters in an election "
                                         f"timeout: steps down")
            self.become_follower(self.current_term, None, rule="check-quorum")

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
        if request.pre_vote:
            self.handle_pre_vote(request)
            return
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

    def handle_pre_vote(self, request: RequestVote) -> None:
        """[§9.6] Would we vote for this candidate in its proposed term? The
        same test as RV-1 and RV-2, but nothing is recorded: no term, no
        vote, no timer reset. (Hearing a leader was checked in step().)"""
        if request.term <= self.current_term:
            granted, reason = False, f"term {request.term} is not past ours"
        elif not self.is_up_to_date(request.last_log_term, request.last_log_index):
            granted, reason = False, "its log is behind ours"
        else:
            granted, reason = True, "its log is up to date and we hear no leader"
        if self.explaining:
            self.explain("§9.6", f"{'grants' if granted else 'refuses'} a pre-vote to "
                                 f"{request.candidate_id} for term {request.term}: {reason}")
        # A granted pre-vote echoes the proposed term, so it is not mistaken
        # for news of a newer term; a refusal carries ours.
        self.send(request.candidate_id, RequestVoteReply(
            request.term if granted else self.current_term, granted, self.id,
            request.candidate_id, pre_vote=True))

    def handle_request_vote_reply(self, reply: RequestVoteReply) -> None:
        if reply.candidate_id != self.id or reply.voter_id not in self.members:
            return
        if reply.pre_vote:
            if (self.pre_votes is not None and reply.vote_granted
                    and reply.term == self.current_term + 1):
                self.pre_votes.add(reply.voter_id)
                self.count_pre_votes()
            return
        # Judge the reply against our term now, not the one we had when we
        # asked: a reply from an earlier election must not count.
        if self.role is not Role.CANDIDATE or reply.term != self.current_term:
            return
        if reply.vote_granted:
            self.votes.add(reply.voter_id)
            self.count_votes()

    def handle_timeout_now(self, message: TimeoutNow) -> None:
        """[§3.10] Our leader asks us to stand for election at once: it has
        brought our log up to date and stopped taking writes."""
        if (message.term != self.current_term or message.leader_id != self.leader_id
                or self.role is not Role.FOLLOWER or not self.is_voter()):
            return
        self.start_election(transfer=True)

    # -- [6.5] replication and commit -----------------------------------------------
    def append_to_own_log(self, command) -> int:
        """A leader adds an entry of its term. Synced before it is sent anywhere."""
        index = self.log.last_index + 1
        entry = Entry(self.current_term, command)
        self.log.replace_from(index, [entry])
        self.storage.write_entries(index, [entry])
        self.track_configurations(index)
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
            if peer in self.snapshot_offset:
                if is_heartbeat:          # the chunk or its answer may be lost: resend
                    self.send_snapshot_chunk(peer)
            elif batch == BATCH_SENT or (batch == BATCH_WAITED and not is_heartbeat):
                # A batch is on its way, maybe just slow: send no entries now,
                # from where the follower is known to match. If its reply is
                # still missing at the next heartbeat, it was lost: resend.
                if is_heartbeat:
                    self.in_flight[peer] = BATCH_WAITED
                match = max(self.match_index[peer], self.log.snapshot_index)
                self.send(peer, AppendEntries(self.current_term, self.id, match,
                                              self.log.term_at(match), (),
                                              self.commit_index, self.read_round))
            else:
                self.send_append_entries(peer)

    def send_append_entries(self, peer: str) -> None:
        # [LEAD-3] send the entries from next_index on: as many as fit one
        # datagram. An empty list is a heartbeat; either way the follower
        # checks that our logs match at prev_log_index (AE-2). Entries we
        # have compacted away can only go as a snapshot.
        prev_log_index = self.next_index[peer] - 1
        if prev_log_index < self.log.snapshot_index:
            self.snapshot_offset.setdefault(peer, 0)
            self.send_snapshot_chunk(peer)
            return
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
        self.recognize_leader(request.term, request.leader_id)
        # [AE-2] our logs must agree at prev_log_index, or the new entries
        # would not extend the same history (Log Matching). Entries up to our
        # snapshot are committed, so they agree with every real leader's.
        if (request.prev_log_index > self.log.snapshot_index
                and self.log.term_at(request.prev_log_index) != request.prev_log_term):
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

    def recognize_leader(self, term: int, leader_id: str) -> None:
        # [CAN-3] someone won this term's election; a candidate gives up.
        if self.role is not Role.FOLLOWER:
            self.become_follower(term, leader_id)
        self.leader_id = leader_id
        self.pre_votes = None
        self.election_elapsed = 0          # see [FOL-2]: the leader is alive

    def store_new_entries(self, request: AppendEntries) -> bool:
        """AE-3 and AE-4: skip entries we have; cut at the first conflict.
        Returns False if the message was refused (see below)."""
        for offset, entry in enumerate(request.entries):
            index = request.prev_log_index + 1 + offset
            if index <= self.log.snapshot_index:
                continue               # committed, and compacted into our snapshot
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
            self.track_configurations(index)
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
            conflict_index, conflict_term, request.read_round, request.prev_log_index))

    def handle_append_entries_reply(self, reply: AppendEntriesReply) -> None:
        peer = reply.follower_id
        if (self.role is not Role.LEADER or reply.term != self.current_term
                or peer not in self.next_index):
            return                  # stale: from an earlier term of ours, or an ex-peer
        self.last_heard[peer] = self.ticks
        self.read_acks[peer] = max(self.read_acks[peer], reply.read_round)
        if peer in self.snapshot_offset:
            return                  # a late answer: the snapshot decides where it stands
        before = (self.match_index[peer], self.next_index[peer])
        if reply.success:
            # [LEAD-3a] the follower holds our log up to match_index.
            if self.match_index[peer] < reply.match_index <= self.log.last_index:
                self.match_index[peer] = reply.match_index
            self.next_index[peer] = max(self.next_index[peer], self.match_index[peer] + 1)
            self.advance_commit_index()
            self.consider_promotion(peer)
            self.check_transfer()
        else:
            # [LEAD-3b] the logs disagree: retry from earlier, skipping the
            # follower's whole conflicting term if we do not have it (§5.3-HINT).
            retry_at = reply.conflict_index
            if reply.conflict_term:
                ours = self.log.last_index_of_term(reply.conflict_term)
                retry_at = ours + 1 if ours else reply.conflict_index
            # Never back over entries the follower is known to hold: a
            # refusal overtaken by a later success is stale. Except one: a
            # refusal of exactly the entry it acknowledged last, as the
            # heartbeat after an acknowledgement asks (see [LEAD-1]). Then it
            # has lost its data (a wiped data dir) and gets it all again.
            # (A reordered refusal can look the same: it costs one resend.)
            lost = reply.prev_log_index == self.match_index[peer] > 0
            if lost:
                self.logger.info("%s refuses entry %d, which it acknowledged: sending "
                                 "from %d again (has it lost its data?)", peer,
                                 reply.prev_log_index, reply.conflict_index)
            floor = 1 if lost else self.match_index[peer] + 1
            self.next_index[peer] = max(floor, min(retry_at, self.log.last_index + 1))
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
        # Only voters count (§4.1), so a leader being removed does not count itself.
        if self.role is not Role.LEADER:
            return
        matched = sorted((self.log.last_index if voter == self.id
                          else self.match_index.get(voter, 0) for voter in self.members),
                         reverse=True)
        if not matched:
            return
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

    # -- [6.6] snapshots: log compaction (dissertation ch. 5) ------------------------
    def take_snapshot(self) -> int:
        """Write the state machine and the sessions as of last_applied to a
        snapshot, and drop the log entries it covers. Returns its index."""
        index = self.last_applied
        if index <= self.log.snapshot_index:
            return self.log.snapshot_index
        term = self.log.term_at(index)
        sessions = tuple((client, seq, answer)
                         for client, (seq, answer) in self.sessions.items())
        snapshot = Snapshot(index, term, self.config_at(index), self.machine.name,
                            self.machine.snapshot(), sessions)
        text = encode_snapshot(snapshot)
        dropped = index - self.log.snapshot_index
        self.log.compact(index, term)
        self.storage.save_snapshot(text, index, term, self.log.entries)
        self.snapshot_text = text
        self.forget_configurations_before(index)
        for peer in self.snapshot_offset:    # followers being sent the old one
            self.snapshot_offset[peer] = 0    # get this one, from its start
        self.explain("§5.1", f"takes a snapshot at index {index} (term {term}, "
                             f"{len(text)} bytes) and drops {dropped} log entries")
        return index

    def a_follower_still_needs_the_log(self) -> bool:
        """A leader holds off automatic compaction while a follower it hears
        from is being sent a snapshot, or is catching up from far behind:
        compacting then would restart that follower's transfer, and under
        steady writes it might never catch up. A follower that is silent
        (down, cut off) holds nothing up."""
        if self.role is not Role.LEADER:
            return False
        far_behind = self.last_applied - self.config.snapshot_every
        timeout = self.config.election_timeout_ticks[1]
        return any(self.ticks - self.last_heard.get(peer, -timeout) < timeout
                   and (peer in self.snapshot_offset or self.match_index[peer] < far_behind)
                   for peer in self.peers)

    def send_snapshot_chunk(self, peer: str) -> None:
        """[§5.1] InstallSnapshot (the dissertation's Figure 5.3): the next chunk of our snapshot for a
        follower that needs entries we no longer have. One chunk is in flight
        at a time; the follower's answer says where to go on from."""
        offset = self.snapshot_offset[peer]
        text = self.snapshot_text or ""
        # The text is ASCII JSON: as a JSON string each character takes at
        # most two bytes (\" \\ \n), so half the budget always fits.
        data = text[offset:offset + max(1, self.config.max_append_bytes // 2)]
        self.in_flight[peer] = BATCH_SENT
        self.send(peer, InstallSnapshot(self.current_term, self.id, self.log.snapshot_index,
                                        self.log.snapshot_term, offset, data,
                                        offset + len(data) >= len(text)))

    def handle_install_snapshot(self, request: InstallSnapshot) -> None:
        if request.term < self.current_term:     # as AE-1: an old leader learns our term
            self.reply_install_snapshot(request, 0, False)
            return
        self.recognize_leader(request.term, request.leader_id)
        if request.last_included_index <= self.commit_index:
            # We already hold (committed, so agreeing with any leader) all it
            # covers: nothing to install.
            self.reply_install_snapshot(request, request.offset + len(request.data), True)
            return
        key = (request.term, request.leader_id, request.last_included_index,
               request.last_included_term)
        if self.incoming is None or self.incoming[0] != key:
            self.incoming = (key, [], 0)
        _, chunks, length = self.incoming
        if length + len(request.data) > MAX_SNAPSHOT_BYTES:
            self.counters["bad field"] += 1      # no real snapshot is this big
            self.incoming = None
            return
        if request.offset != length:
            # Lost, duplicated or reordered: say how much we hold.
            self.reply_install_snapshot(request, length, False)
            return
        chunks.append(request.data)
        length += len(request.data)
        self.incoming = (key, chunks, length)
        if not request.done:
            self.reply_install_snapshot(request, length, False)
            return
        self.incoming = None
        text = "".join(chunks)
        try:
            snapshot = decode_snapshot(text)
            if (snapshot.index, snapshot.term) != (request.last_included_index,
                                                   request.last_included_term):
                raise SnapshotDamage(1, "its header does not match the message")
            if snapshot.machine != self.machine.name:
                raise SnapshotDamage(1, f"a {snapshot.machine} snapshot; we run "
                                        f"{self.machine.name}")
        except SnapshotDamage as error:
            self.counters["bad field"] += 1
            self.logger.error("%s drops a damaged snapshot from %s: line %d: %s",
                              self.describe(), request.leader_id, error.line, error)
            self.reply_install_snapshot(request, 0, False)
            return
        installed = self.install_snapshot(snapshot, text)
        self.reply_install_snapshot(request, length if installed else 0, installed)

    def install_snapshot(self, snapshot: Snapshot, text: str) -> bool:
        """Replace our state with the leader's snapshot, all at once and only
        once it is whole (Figure 13, steps 5-8): keep the log entries after it
        if our log agrees with it at its last index, else drop the whole log."""
        previous = self.machine.snapshot()
        try:
            self.machine.restore(snapshot.state)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            self.machine.restore(previous)
            self.counters["bad field"] += 1
            self.logger.error("%s cannot restore a snapshot: %r", self.describe(), error)
            return False
        self.log.compact(snapshot.index, snapshot.term)
        self.sessions = collections.OrderedDict(
            (client, (seq, answer)) for client, seq, answer in snapshot.sessions)
        self.commit_index = max(self.commit_index, snapshot.index)
        self.last_applied = snapshot.index
        self.configs = [(snapshot.index, snapshot.config)]
        self.track_configurations(snapshot.index + 1)
        # Durable before our answer says so (see [PERSIST]): save_snapshot
        # returns only once the files are synced.
        self.storage.save_snapshot(text, snapshot.index, snapshot.term, self.log.entries)
        self.snapshot_text = text
        self.explain("§5.1", f"installs the leader's snapshot up to index {snapshot.index} "
                             f"(term {snapshot.term}); keeps {len(self.log.entries)} later "
                             f"log entries")
        return True

    def reply_install_snapshot(self, request: InstallSnapshot, next_offset: int,
                               done: bool) -> None:
        self.send(request.leader_id, InstallSnapshotReply(
            self.current_term, self.id, request.last_included_index, request.offset,
            next_offset, done))

    def handle_install_snapshot_reply(self, reply: InstallSnapshotReply) -> None:
        peer = reply.follower_id
        if (self.role is not Role.LEADER or reply.term != self.current_term
                or peer not in self.snapshot_offset):
            return
        self.last_heard[peer] = self.ticks
        if reply.last_included_index != self.log.snapshot_index:
            self.snapshot_offset[peer] = 0       # we have a newer snapshot: start it
        elif reply.done:
            # The follower holds everything up to the snapshot's index.
            del self.snapshot_offset[peer]
            self.in_flight[peer] = NOTHING_IN_FLIGHT
            self.match_index[peer] = max(self.match_index[peer], reply.last_included_index)
            self.next_index[peer] = self.match_index[peer] + 1
            self.advance_commit_index()
            self.consider_promotion(peer)
            self.check_transfer()
            self.send_append_entries(peer)
            return
        elif (reply.chunk_offset == self.snapshot_offset[peer]
                or reply.next_offset > self.snapshot_offset[peer]):
            # An answer to the chunk we last sent, or news of progress. A
            # stale answer about an older chunk must not move us back, and
            # sending only on an answer keeps one chunk in flight.
            self.snapshot_offset[peer] = min(reply.next_offset, len(self.snapshot_text or ""))
        else:
            return
        self.send_snapshot_chunk(peer)

    # -- [6.7] membership changes, one server at a time (§4.1-4.3) ---------------------
    def track_configurations(self, from_index: int) -> None:
        """[§4.1] A server uses the latest configuration in its log, committed
        or not. Called whenever entries from from_index on were replaced: a
        configuration entry that AE-3 deleted stops counting at once."""
        while len(self.configs) > 1 and self.configs[-1][0] >= from_index:
            self.configs.pop()
        for index in range(max(from_index, self.log.snapshot_index + 1),
                           self.log.last_index + 1):
            entry = self.log.entry(index)
            if type(entry.command) is dict and "config" in entry.command:
                self.configs.append((index, config_of(entry)))
        self.use_latest_configuration()

    def use_latest_configuration(self) -> None:
        index, latest = self.configs[-1]
        if (list(latest.voters), list(latest.learners)) == (self.members, self.learners):
            return
        first = not self.members and not self.learners and not self.peers
        self.members, self.learners = list(latest.voters), list(latest.learners)
        self.peers = [server for server in latest.servers if server != self.id]
        if hasattr(self, "role"):                  # not while __init__ is still loading
            self.track_peers()
            if not first or index:
                self.explain("§4.1", f"uses the configuration {latest.describe()} from index "
                                     f"{index}: it takes effect as soon as it is in the log")

    def forget_configurations_before(self, index: int) -> None:
        """After compaction the snapshot carries the configuration in force
        at its index; only later configuration entries stay in the list."""
        base = self.config_at(index)
        self.configs = [(index, base)] + [(i, c) for i, c in self.configs if i > index]

    def config_at(self, index: int) -> Membership:
        return [config for i, config in self.configs if i <= index][-1]

    def can_change_configuration(self) -> bool:
        """One change at a time, and only once an entry of this leader's term
        is committed (the fix to single-server changes published after the
        dissertation: otherwise two leaders' changes can overlap)."""
        return (self.role is Role.LEADER and self.transfer is None
                and self.configs[-1][0] <= self.commit_index
                and self.has_committed_in_term())

    def change_membership(self, request_id, action: str, server: str) -> None:
        """Add (as a learner first, §4.2.1) or remove one server. Answered
        once the configuration that settles it is committed."""
        if self.role is not Role.LEADER:
            self.answer(request_id, not_leader(self.leader_id, self.current_term))
            return
        self.pending_changes.append((request_id, action, server, self.ticks))
        self.advance_membership_changes()

    def advance_membership_changes(self) -> None:
        for change in list(self.pending_changes):
            if change not in self.pending_changes:
                continue                    # answered meanwhile (drop_pending_adds)
            request_id, action, server, asked = change
            if (self.gives_up_adding(request_id, action, server, asked)
                    or self.try_membership_change(request_id, action, server)):
                # Giving up on an add may already have dropped it (drop_pending_adds).
                self.pending_changes = [c for c in self.pending_changes if c != change]

    def gives_up_adding(self, request_id, action: str, server: str, asked: int) -> bool:
        """§4.2.1: a server that does not catch up in time (down, or a typo)
        is not waited for forever. After ADD_PATIENCE election timeouts the
        request fails; a learner that never answered at all is removed again."""
        patience = ADD_PATIENCE * self.config.election_timeout_ticks[1]
        if action != "add" or self.ticks - asked < patience:
            return False
        self.answer(request_id, {"ok": False, "error": (
            f"{server} did not catch up within {ADD_PATIENCE} election timeouts: is it "
            f"running, and does it reach the leader?")})
        if (server in self.learners and self.match_index.get(server) == 0
                and server not in self.snapshot_offset and self.can_change_configuration()):
            self.drop_pending_adds(server, request_id)
            index, latest = self.configs[-1]
            self.append_configuration(
                Membership(latest.voters, tuple(l for l in latest.learners if l != server)),
                "§4.2.1", f"gives up on {server}, which never answered")
        return True

    def drop_pending_adds(self, server: str, request_id) -> None:
        """A removal overrides any add of the same server still waiting."""
        for waiting in [c for c in self.pending_changes if c[1:3] == ("add", server)]:
            if waiting[0] != request_id:
                self.answer(waiting[0], {"ok": False,
                                         "error": f"{server} was removed meanwhile"})
        self.pending_changes = [c for c in self.pending_changes if c[1:3] != ("add", server)]

    def try_membership_change(self, request_id, action: str, server: str) -> bool:
        """Take the next step of one request; True once it is answered or
        waits only for a commit."""
        index, latest = self.configs[-1]
        if action == "add":
            if server in latest.voters:
                return self.answer_when_committed(index, request_id)
            if server in latest.learners or not self.can_change_configuration():
                return False               # promoted once caught up (consider_promotion)
            self.append_configuration(Membership(latest.voters, latest.learners + (server,)),
                                      "§4.2.1", f"adds {server} as a learner: it gets the "
                                                f"log, and a vote once it has caught up")
            return False
        if server not in latest.servers:
            return self.answer_when_committed(index, request_id)
        if latest.voters == (server,):
            self.answer(request_id, {"ok": False, "error": "cannot remove the last voter"})
            return True
        if not self.can_change_configuration():
            return False
        self.drop_pending_adds(server, request_id)
        index = self.append_configuration(
            Membership(tuple(v for v in latest.voters if v != server),
                       tuple(l for l in latest.learners if l != server)),
            "§4.1", f"removes {server}")
        return self.answer_when_committed(index, request_id)

    def append_configuration(self, config: Membership, rule: str, text: str) -> int:
        index = self.append_to_own_log({"config": config.encode()})
        self.explain(rule, f"{text} (configuration entry at index {index}: "
                           f"{config.describe()})")
        return index

    def answer_when_committed(self, index: int, request_id) -> bool:
        if index <= self.last_applied:
            self.answer(request_id, {"ok": True, "result": None})
        else:
            self.waiting.setdefault(index, {})[request_id] = self.log.term_at(index)
        return True

    def consider_promotion(self, peer: str) -> None:
        """[§4.2.1] A learner becomes a voter once it has caught up: it
        replicates in rounds (each to the leader's last index when the round
        began), and the round that takes less than an election timeout shows
        it is close enough that adding its vote will not stall commits."""
        if peer not in self.learners or not self.can_change_configuration():
            return
        round_end, started = self.catch_up.setdefault(peer, (self.log.last_index, self.ticks))
        if self.match_index[peer] < round_end:
            return
        if self.ticks - started > self.config.election_timeout_ticks[0]:
            self.catch_up[peer] = (self.log.last_index, self.ticks)   # one more round
            return
        index, latest = self.configs[-1]
        self.append_configuration(
            Membership(tuple(sorted(latest.voters + (peer,))),
                       tuple(l for l in latest.learners if l != peer)),
            "§4.2.1", f"promotes {peer} to voter: it caught up to index {round_end} in "
                      f"{self.ticks - started} ticks")

    def step_down_if_removed(self) -> None:
        """[§4.2.2] A leader removed from the configuration leads until that
        configuration is committed (without counting itself), then steps
        down, handing leadership to the most up-to-date voter."""
        if (self.role is not Role.LEADER or self.is_voter()
                or self.configs[-1][0] > self.commit_index):
            return
        if self.transfer is not None:
            return                 # handing over: check_transfer steps down after
        target = self.most_up_to_date_voter()
        if target is not None and self.match_index[target] != self.log.last_index:
            # Bring it up to date first, taking no more writes (§3.10).
            self.explain("§4.2.2", f"the configuration without it is committed: hands "
                                   f"leadership to {target} once it has every entry")
            self.transfer = Transfer(target, self.ticks, [])
            return
        text = "the configuration without it is committed: steps down"
        if target is not None:
            self.send(target, TimeoutNow(self.current_term, self.id))
            text += f" and hands leadership to {target} (TimeoutNow)"
        self.explain("§4.2.2", text)
        self.become_follower(self.current_term, None, rule="§4.2.2")

    def most_up_to_date_voter(self) -> str | None:
        voters = [v for v in self.members if v != self.id and v in self.match_index]
        return max(voters, key=lambda v: (self.match_index[v], v), default=None)

    # -- [6.8] leadership transfer (§3.10) ------------------------------------------------
    def transfer_leadership(self, request_id, target: str | None = None) -> None:
        """Hand leadership to target (None: the most up-to-date voter). The
        leader stops taking writes, brings the target's log up to date, and
        sends it TimeoutNow; the answer comes when TimeoutNow is sent."""
        if self.role is not Role.LEADER:
            self.answer(request_id, not_leader(self.leader_id, self.current_term))
            return
        if target is None:
            target = self.most_up_to_date_voter()
            if target is None:
                self.answer(request_id, {"ok": False, "error": "no other voter to hand "
                                                               "leadership to"})
                return
        if target == self.id:
            self.answer(request_id, {"ok": True, "result": self.id})
            return
        if target not in self.members:
            self.answer(request_id, {"ok": False, "error": f"{target} is not a voter"})
            return
        if self.transfer is not None and self.transfer.target != target:
            self.answer(request_id, {"ok": False, "error": f"busy: handing leadership to "
                                                           f"{self.transfer.target}"})
            return
        if self.transfer is None:
            self.transfer = Transfer(target, self.ticks, [])
            self.explain("§3.10", f"hands leadership to {target}: takes no more writes and "
                                  f"brings its log up to date (it has "
                                  f"{self.match_index[target]} of {self.log.last_index})")
        self.transfer.request_ids.append(request_id)
        self.check_transfer()

    def check_transfer(self) -> None:
        transfer = self.transfer
        if transfer is None:
            return
        if self.ticks - transfer.started > self.config.election_timeout_ticks[1]:
            self.explain("§3.10", f"gives up handing leadership to {transfer.target} after "
                                  f"an election timeout, and takes writes again")
            for request_id in transfer.request_ids:
                self.answer(request_id, {"ok": False, "error": (
                    f"{transfer.target} did not catch up within an election timeout")})
            self.transfer = None
            self.step_down_if_removed()
            return
        if not transfer.sent and self.match_index.get(transfer.target) == self.log.last_index:
            self.send(transfer.target, TimeoutNow(self.current_term, self.id))
            transfer.sent = True
            self.explain("§3.10", f"sends TimeoutNow to {transfer.target}, which has all "
                                  f"{self.log.last_index} entries")
            for request_id in transfer.request_ids:
                self.answer(request_id, {"ok": True, "result": transfer.target})
            transfer.request_ids = []
            if not self.is_voter() and self.configs[-1][0] <= self.commit_index:
                self.explain("§4.2.2", "no longer a voter: steps down")
                self.become_follower(self.current_term, None, rule="§4.2.2")

    # -- [6.9] client commands and sessions (§6.3) ----------------------------
    def propose(self, request_id, client_id: str, seq: int, op: list) -> None:
        """A client asks for op, numbered seq in its session. Answered later,
        once applied, through collect_answers() (or at once if refused)."""
        if self.role is not Role.LEADER:
            self.answer(request_id, not_leader(self.leader_id, self.current_term))
            return
        if self.transfer is not None:
            # §3.10: no new writes while handing over; the client retries
            # and finds the new leader (named once TimeoutNow is out).
            self.answer(request_id, not_leader(self.transfer.target if self.transfer.sent
                                               else None, self.current_term))
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
        if command is None or "config" in command:
            return {"ok": True, "result": None}   # a leader's no-op; a configuration
                                                  # (in force since it was logged)
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

    # -- [6.10] linearizable reads (§6.4) -------------------------------------------
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

    # -- [6.11] outputs: what the cycle persists, sends, applies ------------------------
    def collect_messages(self) -> list[tuple[str, Any]]:
        """Everything to send, after batching this cycle's new entries:
        one AppendEntries per follower carries all of them."""
        if self.role is Role.LEADER:
            if self.pending_changes:
                self.advance_membership_changes()
            for learner in self.learners:
                if learner in self.match_index:
                    self.consider_promotion(learner)
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
            if self.on_apply is not None:
                self.on_apply(index, entry)
            if entry.command is not None and "client" in entry.command:
                self.proposed.pop((entry.command["client"], entry.command["seq"]), None)
            for request_id, term in self.waiting.pop(index, {}).items():
                self.answer(request_id, answer if term == entry.term
                            else not_leader(self.leader_id, self.current_term))
        if self.pending_reads:
            self.answer_ready_reads()
        self.step_down_if_removed()
        every = self.config.snapshot_every
        if (every and self.last_applied - self.log.snapshot_index >= every
                and not self.a_follower_still_needs_the_log()):
            self.take_snapshot()

    def collect_answers(self) -> list[tuple[Any, dict]]:
        answers, self.answers = self.answers, []
        return answers

    def status(self) -> dict:
        """This node's own view; no consensus involved."""
        return {"id": self.id, "role": self.role.value, "term": self.current_term,
                "voted_for": self.voted_for, "leader": self.leader_id,
                "commit_index": self.commit_index, "last_applied": self.last_applied,
                "last_log_index": self.log.last_index, "last_log_term": self.log.last_term,
                "members": list(self.members), "learners": list(self.learners),
                "snapshot_index": self.log.snapshot_index, "machine": self.machine.name,
                "sessions": len(self.sessions), "dropped": dict(self.counters)}


def message_sender(message) -> str:
    """The id of the node that sent a peer message."""
    if isinstance(message, RequestVote):
        return message.candidate_id
    if isinstance(message, AppendEntries):
        return message.leader_id
    if isinstance(message, (InstallSnapshot, TimeoutNow)):
        return message.leader_id
    if isinstance(message, RequestVoteReply):
        return message.voter_id
    return message.follower_id


def is_pre_vote(message) -> bool:
    """A pre-vote request, or a granted pre-vote: its term is only proposed
    (§9.6), so it must not make anyone adopt it (see [ALL-2])."""
    return ((isinstance(message, RequestVote) and message.pre_vote)
            or (isinstance(message, RequestVoteReply) and message.pre_vote
                and message.vote_granted))


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


def resolve_address(node_id: str, lookup: bool = True) -> tuple[str, int] | None:
    """A server's (IP, port), as a datagram from it shows its source. With
    lookup=False a host name is not looked up (None): a stranger's name
    must not make the owner thread wait on DNS."""
    try:
        host, port = split_address(node_id)
    except ValueError:
        return None
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        if not lookup:
            return None
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
        kind = "pre-vote, " if message.pre_vote else "transfer, " if message.transfer else ""
        return (f"RequestVote({kind}term {message.term}, last log term "
                f"{message.last_log_term} index {message.last_log_index})")
    if isinstance(message, RequestVoteReply):
        kind = "pre-vote, " if message.pre_vote else ""
        return f"RequestVoteReply({kind}term {message.term}, granted={message.vote_granted})"
    if isinstance(message, InstallSnapshot):
        return (f"InstallSnapshot(term {message.term}, up to {message.last_included_index}/"
                f"{message.last_included_term}, bytes {message.offset}.."
                f"{message.offset + len(message.data)}{', done' if message.done else ''})")
    if isinstance(message, InstallSnapshotReply):
        return (f"InstallSnapshotReply(term {message.term}, "
                + ("installed" if message.done else f"has {message.next_offset} bytes") + ")")
    if isinstance(message, TimeoutNow):
        return f"TimeoutNow(term {message.term})"
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
                 lab: bool = False, snapshot_every: int = 0):
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
            max_append_bytes=max_datagram_bytes - DATAGRAM_HEADROOM_BYTES,
            snapshot_every=snapshot_every)
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
        # Said before the threads run, so it is the node log's first line.
        self.logger.info("started: members %s, last log index %d, term %d",
                         ", ".join(self.node.members),
                         self.node.log.last_index, self.node.current_term)
        for target, name in ((self.receive_forever, "receiver"),
                             (self.own_forever, "owner")):
            thread = threading.Thread(target=target, name=f"{self.id} {name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def hand_over_leadership(self) -> str | None:
        """Before a planned stop: if we lead, hand leadership to an up-to-date
        voter (§3.10), so the cluster does not wait an election timeout for a
        new leader. Returns the new leader, or None if there was none to find."""
        if self.stopping.is_set():
            return None
        deadline = time.monotonic() + 2 * self.node.config.election_timeout_ticks[1] * TICK_MS / 1000
        try:
            is_leader = self.call(lambda node: node.role is Role.LEADER and len(node.members) > 1)
            if not is_leader:
                return None
            self.logger.info("stopping: hands leadership over first")
            self.call(lambda node: node.transfer_leadership(("local", "transfer"), None))
            while time.monotonic() < deadline:
                role, leader, handing_over = self.call(
                    lambda node: (node.role, node.leader_id, node.transfer is not None))
                if role is not Role.LEADER and leader is not None:
                    return leader              # the new leader's first heartbeat came
                if role is Role.LEADER and not handing_over:
                    return None                # refused or given up: no one to hand to
                time.sleep(0.01)
        except TimeoutError:
            pass
        return None

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
        if self.address_of(sender) != address:
            raise ProtocolError(f"{type(message).__name__} from {address[0]}:{address[1]} "
                                f"names {sender!r}", "not from a member")
        if self.lab is not None and sender in self.lab.cut_off:
            return                              # the lab's partition: never arrived
        if self.tracing:
            self.emit_event(f"<- {short_id(sender)} {describe_message(message)}")
        self.node.step(message)

    def address_of(self, server: str) -> tuple[str, int] | None:
        """Where datagrams from server come from; None: not to be heard.

        With a key, any key holder is heard from its own address (the core
        then processes RPCs from any server, §4.1). Without one, only
        servers some configuration in our log names (or anyone, while this
        node has no configuration yet, as when it --joins): otherwise anyone
        on the network could push our term up from an address of its own.
        Host names are looked up once, and only for named servers."""
        address = self.member_addresses.get(server)
        if address is None:
            known = any(server in config.servers for _, config in self.node.configs)
            if not known and self.key is None and self.node.configs[-1][1].servers:
                return None
            address = resolve_address(server, lookup=known)
            if known and address is not None:
                self.member_addresses[server] = address
        return address

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
        if op[0] in ADMIN_OPS:
            self.handle_admin_request(request_id, op)
        elif self.node.machine.is_read(op):       # read() and propose() check op
            self.node.read(request_id, op)
        else:
            self.node.propose(request_id, client_id, seq, op)

    def handle_admin_request(self, request_id, op: list) -> None:
        """Cluster changes (the leader's business) and snapshots (each node's own)."""
        verb, args = op[0], op[1:]
        try:
            if verb == "snapshot" and not args:
                self.deliver_answer(request_id, {"ok": True, "result": self.node.take_snapshot()})
                return
            if verb in ("add_member", "remove_member") and len(args) == 1:
                server = normalize_address(_check_field("server", args[0], "id"))
                self.node.change_membership(request_id, verb.split("_")[0], server)
                return
            if verb == "transfer" and len(args) == 1:
                target = args[0]
                target = None if target is None else normalize_address(
                    _check_field("target", target, "id"))
                self.node.transfer_leadership(request_id, target)
                return
        except ValueError as error:        # ProtocolError included: a bad address
            self.deliver_answer(request_id, {"ok": False, "error": str(error)})
            return
        usage = {"snapshot": "snapshot", "add_member": "add_member HOST:PORT",
                 "remove_member": "remove_member HOST:PORT", "transfer": "transfer HOST:PORT|null"}
        self.deliver_answer(request_id, {"ok": False, "error": f"usage: {usage[verb]}"})

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
        if request_id[0] == "local":
            return                       # asked from this process (hand_over_leadership)
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

    # -- cluster changes ----------------------------------------------------------------
    def add_member(self, server: str) -> None:
        """Add server (a running node, e.g. started with --join). It catches
        up as a learner first; returns once it is a voter, committed."""
        self.request(["add_member", normalize_address(server)])

    def remove_member(self, server: str) -> None:
        """Remove server; returns once the configuration without it is
        committed. Removing the leader makes it hand leadership on."""
        self.request(["remove_member", normalize_address(server)])

    def transfer_leadership(self, target: str | None = None) -> None:
        """Hand leadership to target (None: any up-to-date voter other than
        the current leader). Returns once the new leader leads."""
        target = normalize_address(target) if target is not None else None
        deadline = time.monotonic() + self.timeout
        first = None
        while time.monotonic() < deadline:
            leader = self.find_leader(deadline)
            if leader is None:
                break
            first = first or leader
            if leader == target or (target is None and leader != first):
                return
            # Asked of that leader only: a retry through a redirect could
            # reach the new leader and, with no target, move leadership again.
            reply = self.call_node(leader, ["transfer", target], deadline)
            if reply is None or reply.get("error") == "not_leader":
                continue
            if not reply.get("ok"):
                raise RaftError(str(reply.get("error")))
            chosen = reply.get("result")
            while time.monotonic() < deadline:
                if self.status_or_none(chosen, deadline).get("role") == "leader":
                    self.leader = chosen
                    return
                time.sleep(0.02)
        raise ClusterUnavailable(f"leadership did not move to {target or 'another node'} "
                                 f"within {self.timeout}s")

    def find_leader(self, deadline: float) -> str | None:
        """A node that says it leads, in the highest term seen (each node's own view)."""
        while time.monotonic() < deadline:
            views = [self.status_or_none(p, deadline) for p in self.peers]
            named = {v.get("leader") for v in views if v.get("leader")}
            for node in named - set(self.peers):   # a leader we were not told of
                views.append(self.status_or_none(node, deadline))
            leaders = [v for v in views if v.get("role") == "leader"]
            if leaders:
                return max(leaders, key=lambda v: v["term"])["id"]
            time.sleep(0.05)
        return None

    def status_or_none(self, node_id: str, deadline: float) -> dict:
        """One node's status, or {} if it is silent for a short while."""
        saved = self.timeout
        self.timeout = max(0.05, min(0.3, deadline - time.monotonic()))
        try:
            return self.status(node_id)
        except ClusterUnavailable:
            return {}
        finally:
            self.timeout = saved

    def call_node(self, node_id: str, op: list, deadline: float) -> dict | None:
        """Send op to one node, re-sending (same number) until it answers."""
        self.seq += 1
        seq = self.seq
        fields = {"type": "ClientRequest", "client_id": self.client_id, "seq": seq, "op": op}
        while time.monotonic() < deadline:
            reply = self.exchange(fields, split_address(node_id),
                                  min(deadline, time.monotonic() + 0.2),
                                  lambda r: (r.get("type") == "ClientReply"
                                             and r.get("seq") == seq
                                             and r.get("client_id") == self.client_id))
            if reply is not None:
                return reply
        return None

    def snapshot(self, node_id: str) -> int:
        """Make node_id take a snapshot now (each node compacts its own log);
        returns the index it covers."""
        reply = self.call_node(normalize_address(node_id), ["snapshot"],
                               time.monotonic() + self.timeout)
        if reply is None:
            raise ClusterUnavailable(f"{node_id} did not answer within {self.timeout}s")
        if not reply.get("ok"):
            raise RaftError(str(reply.get("error")))
        return reply.get("result")

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
                last_trouble = self.retrying(last_trouble, (
                    f"{target} knows no leader" + (f" in term {term}" if term else "")
                    + " (an election is under way, or it is cut off)"))
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

    # -- cluster changes (docs/cluster-changes.md) ----------------------------------------
    def do_add(self, arg):
        """add HOST:PORT: add a server to the cluster (§4.2.1).
        Start it first, empty, e.g. python raft.py 8003 --join 127.0.0.1:8000
        (a node started with --join asks for this itself). It catches up as
        a learner, with no vote, and becomes a voter once it is close to the
        leader's log. Prints OK once that configuration is committed."""
        self.change_members("add", arg)

    def do_remove(self, arg):
        """remove HOST:PORT: remove a server from the cluster (§4.1).
        Prints OK once the configuration without it is committed. Removing
        the leader makes it hand leadership to another voter first."""
        self.change_members("remove", arg)

    def change_members(self, verb: str, arg: str) -> None:
        words = arg.split()
        if len(words) != 1:
            print(f"error: usage: {verb} HOST:PORT (or PORT)")
            return
        try:
            server = normalize_address(words[0])
        except ValueError as error:
            print(f"error: {error}")
            return
        try:
            if verb == "add":
                self.client.add_member(server)
            else:
                self.client.remove_member(server)
            print("OK")
        except RaftError as error:
            print(f"error: {error}")

    def do_transfer(self, arg):
        """transfer [HOST:PORT]: hand leadership to that node (§3.10).
        With no node, to the most up-to-date other voter. The leader stops
        taking writes, brings the target's log up to date and tells it to
        stand for election at once (TimeoutNow): no election timeout lost."""
        words = arg.split()
        if len(words) > 1:
            print("error: usage: transfer [HOST:PORT]")
            return
        try:
            target = normalize_address(words[0]) if words else None
            self.client.transfer_leadership(target)
            print(f"OK: {self.client.leader or target} leads")
        except (ValueError, RaftError) as error:
            print(f"error: {error}")

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

    def do_snapshot(self, arg):
        """snapshot: compact this node's log now (dissertation ch. 5).
        The state machine and the client sessions go to snapshot.jsonl, and
        the log keeps only the entries after it. --snapshot-every N does this
        every N applied entries."""
        index = self.server.call(lambda node: node.take_snapshot())
        print(f"snapshot at index {index}" if index else "nothing applied yet to snapshot")

    def do_log(self, arg):
        """log [N]: the last N entries of this node's log (default 10)."""
        count = int(arg) if arg.strip().isdigit() else 10

        def last_entries(node: RaftNode):
            first = max(node.log.snapshot_index + 1, node.log.last_index - count + 1)
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
        self.founders = list(self.ports)             # the first configuration
        self.joined: dict[int, str] = {}             # port -> the node it joined through

    def join(self, port: int, contact: str) -> None:
        """Start a new, empty node that asks the cluster to add it (--join)."""
        self.ports.append(port)
        self.addresses.append(f"127.0.0.1:{port}")
        self.joined[port] = contact
        self.start(port)

    def forget(self, port: int) -> None:
        """A removed node: stop it and leave it out of the table."""
        self.stop(port)
        index = self.ports.index(port)
        del self.ports[index], self.addresses[index]

    def data_dir(self, port: int) -> str:
        return os.path.join(self.data_root, str(port))

    def start(self, port: int) -> None:
        if port in self.joined:
            where = ["--join", self.joined[port]]
        else:
            where = ["--peers", ",".join(str(p) for p in self.founders if p != port)]
        os.makedirs(self.data_dir(port), exist_ok=True)
        with open(os.path.join(self.data_dir(port), "stderr.txt"), "ab") as stderr:
            self.processes[port] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(port), *where,
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

    # -- cluster changes --------------------------------------------------------------------
    def do_add(self, arg):
        """add [PORT]: start a new node that joins the cluster (§4.2.1).
        The node starts empty on PORT (or a free port) with --join; it asks
        to be added, catches up as a learner, then becomes a voter."""
        words = arg.split()
        if len(words) > 1 or (words and not words[0].isdigit()):
            print("error: usage: add [PORT]")
            return
        port = int(words[0]) if words else free_udp_ports(1)[0]
        if port in self.cluster.ports:
            print(f"error: {port} is already in the demo")
            return
        contact = next((a for p, a in zip(self.cluster.ports, self.cluster.addresses)
                        if self.cluster.is_running(p)), self.cluster.addresses[0])
        self.cluster.join(port, contact)
        self.client.peers.append(f"127.0.0.1:{port}")
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + self.client.timeout * 2
        while time.monotonic() < deadline:
            status = self.cluster.statuses().get(port)
            if status and address in status["members"]:
                print(f"OK: {port} is a voter ({len(status['members'])} voters)")
                return
            time.sleep(0.1)
        print(f"error: {port} is not a voter yet; see status")

    def do_remove(self, arg):
        """remove PORT: remove that node from the cluster (§4.1), then stop it.
        Removing the leader makes it hand leadership to another voter first."""
        port = self.port_argument(arg)
        if port is None:
            return
        try:
            self.client.remove_member(f"127.0.0.1:{port}")
        except RaftError as error:
            print(f"error: {error}")
            return
        self.cluster.forget(port)
        if f"127.0.0.1:{port}" in self.client.peers and len(self.client.peers) > 1:
            self.client.peers.remove(f"127.0.0.1:{port}")
        if self.client.leader == f"127.0.0.1:{port}":
            self.client.leader = None          # it stepped down and is gone
        print(f"OK: {port} removed and stopped")

    def do_snapshot(self, arg):
        """snapshot [PORT]: compact that node's log now (default: every node).
        Dissertation ch. 5; prints the index each snapshot covers."""
        if arg.strip():
            port = self.port_argument(arg)
            if port is None:
                return
            ports = [port]
        else:
            ports = [p for p in self.cluster.ports if self.cluster.is_running(p)]
        for port in ports:
            try:
                print(f"{port}: snapshot at index {self.client.snapshot(f'127.0.0.1:{port}')}")
            except RaftError as error:
                print(f"{port}: error: {error}")

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
    parser.add_argument("--join", metavar="HOST:PORT",
                        help="start empty and ask the cluster that node belongs to to add "
                             "this one (it catches up as a learner, then votes)")
    parser.add_argument("--snapshot-every", type=int, default=0, metavar="N",
                        help="compact the log once N entries are applied since the last "
                             "snapshot (default: only on the prompt's snapshot)")
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
    if args.join is not None:
        if args.peers is not None:
            raise UsageError("--join and --peers do not go together: a joining node "
                             "learns the members from the cluster")
        try:
            join = normalize_address(args.join, host)
        except ValueError:
            raise UsageError(f"--join {args.join}: want HOST:PORT of a cluster node") from None
        if join == node_id:
            raise UsageError("--join names this node itself: name a node of the cluster")
        return node_id, []
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
    if args.snapshot_every < 0:
        raise UsageError("--snapshot-every must be 0 (off) or a positive number of entries")
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
                        lab=args.lab, snapshot_every=args.snapshot_every)
    server.node.explaining = args.explain
    server.event_sink = lambda text: print(f"  {short_id(node_id)} {text}",
                                           file=sys.stderr, flush=True)
    try:                      # from here on, a signal means a clean stop
        server.start()
        if args.parent_pid:
            watch_parent(args.parent_pid)
        contacts = [node_id, *[m for m in members if m != node_id]]
        if args.join:
            join = normalize_address(args.join)
            contacts.append(join)
            threading.Thread(target=join_cluster, args=(server, join, key),
                             daemon=True).start()
        if args.no_repl:
            while not server.stopping.wait(1.0):
                pass
        else:
            sys.stdout, sys.stderr = LineWriter(sys.stdout), LineWriter(sys.stderr)
            server.on_change = lambda text: print(f"* {text}", file=sys.stderr, flush=True)
            client = RaftClient(contacts, key=key)
            cluster = (f"joining the cluster of {args.join}" if args.join else
                       f"in a cluster of {len(server.node.members)}")
            print(f"Raft node {node_id} {cluster}; data in {data_dir}/. "
                  f"Type help, or Ctrl-D to stop.")
            NodePrompt(server, client).cmdloop()
            client.close()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A planned stop of the leader hands leadership over first (§3.10),
        # so clients wait for one TimeoutNow election, not a whole timeout.
        successor = server.hand_over_leadership()
        if successor:
            print(f"* handed leadership to {successor}", file=sys.stderr, flush=True)
        server.stop()
    return 0


def join_cluster(server: NodeServer, contact: str, key: bytes | None) -> None:
    """--join: ask the cluster (through contact, who redirects to the leader)
    to add this node, until it has or the node stops. Adding is idempotent:
    a node that restarts with --join and is already a voter is told OK."""
    with RaftClient([contact], timeout=10.0, key=key) as client:
        while not server.stopping.is_set():
            try:
                client.add_member(server.id)
                server.logger.info("joined the cluster: now a voter")
                print(f"* {server.id} joined the cluster: now a voter", file=sys.stderr,
                      flush=True)
                return
            except ClusterUnavailable:
                continue
            except RaftError as error:
                server.logger.error("cannot join through %s: %s", contact, error)
                return


def main_client(argv: list[str]) -> int:
    parser = Parser(prog="raft.py client", description="One request to the cluster: "
                    "set KEY VALUE | get KEY | incr KEY [N] | del KEY | status [HOST:PORT] | "
                    "add HOST:PORT | remove HOST:PORT | transfer [HOST:PORT] | "
                    "snapshot HOST:PORT")
    add_cluster_options(parser)
    parser.add_argument("words", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    key = read_key_file(args.key_file)
    words = args.words
    usage = {"set": (3, None, "set KEY VALUE"), "get": (2, 2, "get KEY"),
             "incr": (2, 3, "incr KEY [N]"), "del": (2, 2, "del KEY"),
             "status": (1, 2, "status [HOST:PORT]"), "add": (2, 2, "add HOST:PORT"),
             "remove": (2, 2, "remove HOST:PORT"), "transfer": (1, 2, "transfer [HOST:PORT]"),
             "snapshot": (2, 2, "snapshot HOST:PORT")}
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
        if verb in ("add", "remove", "transfer", "snapshot"):
            try:
                server = normalize_address(words[1]) if len(words) == 2 else None
            except ValueError as error:
                raise UsageError(f"{verb}: {error}") from None
            if verb == "add":
                client.add_member(server)
            elif verb == "remove":
                client.remove_member(server)
            elif verb == "transfer":
                client.transfer_leadership(server)
                server = client.leader or server
            else:
                print(f"snapshot at index {client.snapshot(server)}")
                return 0
            print("OK" if verb != "transfer" else f"OK: {server} leads")
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


def bench_failover(cluster: LocalCluster, kills: int, planned: bool = False) -> list[float]:
    """SIGKILL the leader (planned: SIGTERM, so it hands leadership over
    first); time until a write succeeds; restart it; repeat."""
    times = []
    with RaftClient(cluster.addresses, timeout=10.0, key=cluster.key) as client:
        for number in range(kills):
            leader = cluster.wait_for_leader()
            client.set("failover", str(number))
            if leader is None:
                break
            port = int(leader.rpartition(":")[2])
            started = time.perf_counter()
            if planned:
                cluster.processes[port].terminate()
            else:
                cluster.kill(port)
            client.set("failover", f"after-{number}")
            times.append(time.perf_counter() - started)
            if planned:
                cluster.stop(port)
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
    parser.add_argument("--restarts", type=int, default=5,
                        help="planned leader restarts: SIGTERM hands leadership over first "
                             "(local cluster only)")
    parser.add_argument("--snapshot-every", type=int, default=0, metavar="N",
                        help="local cluster nodes compact their logs every N entries")
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
                                   key_file=args.key_file,
                                   extra_args=["--snapshot-every", str(args.snapshot_every)])
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
        times = (bench_failover(cluster, args.restarts, planned=True)
                 if cluster and args.restarts > 0 else [])
        if times:
            print(f"  planned restart: SIGTERM leader (hands over) -> next write answered: "
                  f"median {percentile(times, 0.5) * 1000:.0f} ms over {len(times)} restarts "
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
