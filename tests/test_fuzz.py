"""Fuzzing what comes from outside a node: datagrams and data files.

Issue "Prove it under faults", item 7. Every input here is a mutation of a
real one (byte flips, truncation, insertion, splices, non-UTF-8, fields
replaced by values of other types, huge and negative integers, NaN and
Infinity literals, deep nesting, long and unicode strings, missing and extra
fields, wrong type names) or plain random bytes. The property is the same
everywhere: an input is either accepted as a well-formed value or rejected
cleanly, and nothing else happens.

  wire      decode_datagram + decode_message return a well-formed message or
            raise raft.ProtocolError; what they accept re-encodes to itself.
  runtime   NodeServer.handle_datagram (the real one, called on this thread
            as its owner thread would) lets no exception out; each rejection
            counts once in status()["dropped"] under a fixed name and changes
            nothing else; what it accepts keeps the node's invariants.
  storage   JsonLinesStorage.load returns exactly what docs/storage.md says
            ("Recovery on start", re-implemented below as a reference) or
            raises raft.StorageError naming the file and the 1-based line;
            a cut anywhere always loads. (What this format cannot see, and
            so is not asserted: a whole line deleted, or a line changed into
            another well-formed record. It has no checksums.)
  live      three real nodes bombarded with fuzzed datagrams keep serving a
            client's read-after-write checks, and count the rejections.

Every case comes from random.Random(SEED); a failure names the seed and the
case number and shows the input. RAFT_FUZZ_SEED=N reruns with another seed.
Tests marked xfail(strict=True) are bugs these tests found, left for raft.py
to fix: each reason says what goes wrong.
"""

import collections
import copy
import dataclasses
import ipaddress
import json
import logging
import os
import random
import socket
import threading
import time

import pytest

import raft
from conftest import free_ports, wait_until
from raft import (AppendEntries, AppendEntriesReply, Entry, InstallSnapshot,
                  InstallSnapshotReply, RequestVote, RequestVoteReply, Role, TimeoutNow)

SEED = int(os.environ.get("RAFT_FUZZ_SEED", "7"))
MAX = raft.MAX_WIRE_INTEGER

# The only names a node counts drops under: the runtime's reasons, and the
# core's refusal of an AppendEntries that would overwrite a committed entry
# (counted by RaftNode itself, and not listed in raft.DROP_REASONS). A sender
# must never be able to add its own strings to this table.
DROP_REASONS = set(raft.DROP_REASONS) | {"refused: would overwrite a committed entry"}


# ---------------------------------------------------------------------------
# The mutation engine
# ---------------------------------------------------------------------------

class Raw:
    """JSON text that json.dumps would not write: a 5,000-digit literal, NaN
    spelled by hand, nesting deeper than any recursion limit."""

    def __init__(self, text: bytes):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text[:24]!r}...)"


RAW_LITERALS = [
    b"9" * 5000, b"-" + b"1" * 4400, b"1e999", b"-1E400", b"1.5e-400", b"-0", b"0.0",
    b"NaN", b"Infinity", b"-Infinity", b"0x10", b"01", b"+1", b"1.", b".5", b"'x'",
    b"undefined", b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"', b'"\\x41"', b"tru",
]
DEEP_NESTING = [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                b"[" * 3000]         # all beyond the recursion limit (1000)
NON_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
            b"\xc0\xaf", b"\x80", b"\xe2\x82"]
PUNCTUATION = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b" ", b"\n",
               b"\x00", b"null", b"1", b"-"]
TYPE_NAMES = [*raft.MESSAGE_TYPES, "ClientRequest", "StatusRequest", "ClientReply",
              "StatusReply", "requestvote", "RequestVote ", "", "Entry", "__class__",
              "type", "x" * 300]
FIELD_NAMES = ["extra", "type", "term", "", "entries", "command", "op", "seq", "nonce",
               "client_id", "leader_id", "index", "voted_for", "\u2603", "x" * 300]


def weird_value(rng, deep=True, depth=0):
    """A JSON value chosen to break a decoder that trusts its input."""
    pick = rng.randrange(13)
    if pick == 0:
        return rng.choice([0, 1, -1, MAX, MAX + 1, -MAX - 1, 2 ** 64, 10 ** 30, -(10 ** 30)])
    if pick == 1:
        return rng.randrange(-2 ** 70, 2 ** 70)
    if pick == 2:
        return rng.choice([0.0, -0.0, 0.5, 1.0, 3.0, 1e308, -1e-308,
                           float("nan"), float("inf"), float("-inf")])
    if pick == 3:
        return rng.choice([True, False, None])
    if pick == 4:
        return rng.choice(["", "1", "true", "null", "RequestVote", "\x00", "\ud800",
                           "\u00e9\u2603\U0001d11e", "   ", "127.0.0.1:8001"])
    if pick == 5:
        return rng.choice(["x", "\u00e9", "\u2603", "\U0001d11e", "\ud800"]) \
            * rng.randrange(1, 5000)
    if pick == 6:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 20)))
    if pick == 7:
        return Raw(rng.choice(RAW_LITERALS))
    if pick == 8:
        value = weird_value(rng, False, 3)
        for _ in range(rng.randrange(1, 60)):
            value = [value]
        return value
    if pick == 9 and depth < 3:
        return {rng.choice(FIELD_NAMES): weird_value(rng, deep, depth + 1)
                for _ in range(rng.randrange(3))}
    if pick == 10 and depth < 3:
        return [weird_value(rng, deep, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 11 and deep:
        return Raw(rng.choice(DEEP_NESTING))
    return rng.randrange(-3, 1000)


def near_integer(rng, value):
    """An integer close to a valid one: off by one, negated, at the limits."""
    return rng.choice([value + 1, value - 1, -value, value * 2, MAX - value, 0, MAX,
                       MAX + 1, -1, value + 2 ** 63])


def paths(value, prefix=()):
    """Every path into a JSON value (dict keys and list indexes), root first."""
    found = [prefix]
    if type(value) is dict:
        for key, item in value.items():
            found += paths(item, prefix + (key,))
    elif type(value) is list:
        for index, item in enumerate(value):
            found += paths(item, prefix + (index,))
    return found


def at(value, path):
    for key in path:
        value = value[key]
    return value


def mutate_structure(rng, value, deep=True):
    """One change to a copy of a JSON value: a field replaced, removed, added,
    swapped or copied, an integer nudged, the type renamed, or the whole
    value wrapped or replaced."""
    value = copy.deepcopy(value)
    inner = paths(value)[1:]
    operation = rng.randrange(8)
    if not inner or operation == 7:
        return rng.choice([[value], weird_value(rng, deep), {"type": value}, {}])
    path = rng.choice(inner)
    parent, key = at(value, path[:-1]), path[-1]
    if operation == 0:
        parent[key] = weird_value(rng, deep)
    elif operation == 1:
        current = parent[key]
        parent[key] = (near_integer(rng, current) if type(current) is int
                       else weird_value(rng, deep))
    elif operation == 2:
        del parent[key]
    elif operation == 3:
        containers = [p for p in paths(value) if type(at(value, p)) in (dict, list)]
        container = at(value, rng.choice(containers))
        extra = weird_value(rng, deep) if rng.random() < 0.7 or not inner else \
            copy.deepcopy(at(value, rng.choice(inner)))
        if type(container) is dict:
            container[rng.choice(FIELD_NAMES)] = extra
        else:
            container.insert(rng.randrange(len(container) + 1), extra)
    elif operation == 4:
        other = rng.choice(inner)
        if not (path[:len(other)] == other or other[:len(path)] == path):
            other_parent = at(value, other[:-1])
            parent[key], other_parent[other[-1]] = other_parent[other[-1]], parent[key]
    elif operation == 5 and type(value) is dict:
        value["type"] = rng.choice(TYPE_NAMES)
    else:
        source = at(value, rng.choice(inner))
        parent[key] = copy.deepcopy(source)
    return value


def serialize(rng, value) -> bytes:
    """JSON bytes for value, with Raw texts spliced in; sometimes real UTF-8
    (lone surrogates then become invalid UTF-8) instead of ASCII escapes."""
    raws = []

    def swap(item):
        if isinstance(item, Raw):
            raws.append(item.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if type(item) is dict:
            return {key: swap(part) for key, part in item.items()}
        if type(item) is list:
            return [swap(part) for part in item]
        return item

    ascii_only = rng.random() < 0.8
    separators = rng.choice([(",", ":"), (", ", ": ")])
    data = json.dumps(swap(value), ensure_ascii=ascii_only,
                      separators=separators).encode("utf-8", "surrogatepass")
    for number, raw in enumerate(raws):
        data = data.replace(f'"\\u0000raw{number}\\u0000"'.encode(), raw, 1)
    return data


def mutate_bytes(rng, data: bytes, donors) -> bytes:
    """One byte-level change: a bit flip, a byte set, bytes inserted or
    deleted, a truncation, a duplicated slice, a splice with another valid
    datagram, non-UTF-8, or JSON punctuation."""
    data = bytearray(data)
    operation = rng.randrange(9)
    position = rng.randrange(len(data) + 1)
    if operation == 0 and data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif operation == 1 and data:
        data[rng.randrange(len(data))] = rng.randrange(256)
    elif operation == 2:
        data[position:position] = rng.randbytes(rng.randrange(1, 9))
    elif operation == 3:
        del data[position:position + rng.randrange(1, 20)]
    elif operation == 4:
        del data[position:]
    elif operation == 5:
        data[position:position] = data[position:position + rng.randrange(1, 40)]
    elif operation == 6:
        donor = rng.choice(donors)
        data[position:] = donor[rng.randrange(len(donor) + 1):]
    elif operation == 7:
        data[position:position] = rng.choice(NON_UTF8)
    else:
        data[position:position] = rng.choice(PUNCTUATION)
    return bytes(data)


def fuzz_one(rng, template, donors) -> bytes:
    """One datagram: mostly a mutation of template (a JSON-ready dict),
    sometimes plain random bytes or random JSON punctuation."""
    roll = rng.random()
    if roll < 0.04:
        return rng.randbytes(rng.choice([0, 1, 2, 8, 64, 512, 4096]))
    if roll < 0.07:
        return b"".join(rng.choice(PUNCTUATION + donors[:1])
                        for _ in range(rng.randrange(1, 30)))
    value = template
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        value = mutate_structure(rng, value)
    data = serialize(rng, value)
    if rng.random() < 0.3:
        for _ in range(rng.randrange(1, 4)):
            data = mutate_bytes(rng, data, donors)
    return data


def fuzz_datagrams(rng, templates, count):
    donors = [raft.encode_datagram(t) for t in templates]
    for _ in range(count):
        yield fuzz_one(rng, rng.choice(templates), donors)


def shown(data: bytes, limit: int = 400) -> str:
    return repr(data[:limit]) + (f"... ({len(data)} bytes)" if len(data) > limit else "")


# ---------------------------------------------------------------------------
# Valid datagrams of every type, as the nodes and the client build them
# ---------------------------------------------------------------------------

def command(client, seq, op):
    return {"client": client, "seq": seq, "op": op}


def peer_templates(term, sender, last_index=7, last_term=None, receiver="127.0.0.1:8000"):
    """One valid message of each peer type (AppendEntries with and without
    entries, replies granted and refused, votes and pre-votes, a transfer's
    vote request), as encode_message writes them. The InstallSnapshot chunks
    add up to a damaged snapshot (its header is cut short), so no fuzzed case
    can install one: the invariants below compare log entries by position."""
    last_term = term if last_term is None else last_term
    snapshot_index = last_index + 2
    messages = [
        RequestVote(term, sender, last_index, last_term),
        RequestVote(term, sender, last_index, last_term, pre_vote=True),
        RequestVote(term, sender, last_index, last_term, transfer=True),
        RequestVoteReply(term, True, sender, receiver),
        RequestVoteReply(term, False, sender, receiver),
        RequestVoteReply(term, True, sender, receiver, pre_vote=True),
        RequestVoteReply(term, False, sender, receiver, pre_vote=True),
        AppendEntries(term, sender, 1, 1,
                      (Entry(1, None), Entry(term, command("c0ffee", 7, ["set", "k", "v"])),
                       Entry(term, command("c0ffee", 8, ["incr", "n", 2]))), 2, 3),
        AppendEntries(term, sender, last_index, last_term, (), last_index, 0),
        AppendEntriesReply(term, True, sender, last_index, 0, 0, 3),
        AppendEntriesReply(term, False, sender, 0, 2, 1, 0),
        InstallSnapshot(term, sender, snapshot_index, last_term, 0, '{"index":', False),
        InstallSnapshot(term, sender, snapshot_index, last_term, 9, f"{snapshot_index}}}\n",
                        True),
        InstallSnapshotReply(term, sender, snapshot_index, 0, 9, False),
        InstallSnapshotReply(term, sender, snapshot_index, 9, 12, True),
        TimeoutNow(term, sender),
        TimeoutNow(max(term - 1, 0), sender),       # a stale one, from an earlier term
    ]
    return [raft.encode_message(m) for m in messages]


def client_templates(client_id, key):
    """What RaftClient.request and RaftClient.status send."""
    ops = [["set", key, "v"], ["get", key], ["incr", key, 3], ["del", key]]
    return [*({"type": "ClientRequest", "client_id": client_id, "seq": seq, "op": op}
              for seq, op in enumerate(ops, 1)),
            {"type": "StatusRequest", "nonce": 3}]


WIRE_TEMPLATES = (peer_templates(5, "127.0.0.1:8001", 7, 4)
                  + client_templates("c0ffee", "k"))


# ---------------------------------------------------------------------------
# What a well-formed message is, and what the runtime should do with a datagram
# ---------------------------------------------------------------------------

def check_entry(entry):
    assert type(entry) is Entry
    assert type(entry.term) is int and 1 <= entry.term <= raft.MAX_TERM
    if type(entry.command) is dict and set(entry.command) == {"config"}:   # §4.1
        config = entry.command["config"]
        assert type(config) is dict and set(config) == {"voters", "learners"}
        for ids in config.values():
            assert type(ids) is list
            assert all(type(i) is str and 0 < len(i) <= raft.MAX_ID_CHARS for i in ids)
    elif entry.command is not None:
        assert type(entry.command) is dict and set(entry.command) == {"client", "seq", "op"}
        client, seq, op = entry.command["client"], entry.command["seq"], entry.command["op"]
        assert type(client) is str and 0 < len(client) <= raft.MAX_ID_CHARS
        assert type(seq) is int and 0 <= seq <= MAX
        assert type(op) is list and op


def check_well_formed(message):
    """What decode_message promises: strict types, 64-bit non-negative
    integers, short ids, entries of at least term 1 whose terms never fall
    and never pass the sender's term."""
    assert type(message) in raft.PEER_MESSAGES
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if field.type == "int":
            limit = raft.MAX_TERM if field.name.endswith("term") else MAX
            assert type(value) is int and 0 <= value <= limit, (field.name, value)
        elif field.type == "bool":
            assert type(value) is bool, (field.name, value)
        elif (type(message), field.name) == (InstallSnapshot, "data"):
            # A chunk of snapshot text: ASCII, as long as a datagram allows.
            assert type(value) is str and value.isascii(), field.name
            assert len(value) <= raft.MAX_RECEIVE_BYTES, field.name
        elif field.type == "str":
            assert type(value) is str and 0 < len(value) <= raft.MAX_ID_CHARS, field.name
        else:
            assert type(value) is tuple, (field.name, value)
    if isinstance(message, AppendEntries):
        for entry in message.entries:
            check_entry(entry)
        terms = [message.prev_log_term, *(e.term for e in message.entries), message.term]
        assert terms == sorted(terms), terms
    if isinstance(message, InstallSnapshot):
        assert message.last_included_term <= message.term


def wire_bytes(message) -> bytes:
    return raft.encode_datagram(raft.encode_message(message))


def check_round_trip(message, fields):
    """An accepted message says what its datagram said, and re-encodes to
    a datagram that decodes to the same message. (Compared as JSON text: a
    command may hold NaN, which is not equal to itself.)"""
    encoded = raft.encode_message(message)
    for name, value in fields.items():
        assert json.dumps(encoded[name], sort_keys=True) == json.dumps(value, sort_keys=True)
    data = wire_bytes(message)
    again = raft.decode_message(raft.decode_datagram(data))
    assert wire_bytes(again) == data


def is_wire_integer(value):
    return type(value) is int and 0 <= value <= MAX


def claimed_address(sender: str, member_addresses, hears_strangers=False):
    """Where a peer message naming sender must come from: the looked-up
    address of a server some configuration names (member_addresses). Any
    other server is heard only by a node that hears strangers (one with a
    cluster key, or with no configuration yet), from the sender id's own IP
    literal and port; a host name no configuration names is never looked
    up. None: no address matches."""
    if sender in (member_addresses or {}):
        return member_addresses[sender]
    if not hears_strangers:
        return None
    host, _, port = sender.rpartition(":")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


def expected_verdict(data: bytes, address=None, member_addresses=None, node_id=None,
                     hears_strangers=False):
    """What NodeServer.handle_datagram must do with data arriving from
    address, from the decoder's answer and the runtime's documented checks:
    ("peer" | "client" | "status", message) if it acts on it, else
    (the reason it must count the drop under, None)."""
    try:
        fields = raft.decode_datagram(data)
        kind = fields["type"]
        if kind in raft.MESSAGE_TYPES:
            message = raft.decode_message(fields)
            sender = raft.message_sender(message)
            # Peer messages count only from the claimed sender's own address
            # (a server our configurations do not name only with a key: see
            # claimed_address), and a node ignores messages naming itself.
            if (claimed_address(sender, member_addresses, hears_strangers) != address
                    or sender == node_id):
                return "not from a member", message
            return "peer", message
    except raft.ProtocolError as error:
        return error.reason, None
    if kind == "ClientRequest":
        client_id, op = fields.get("client_id"), fields.get("op")
        if (type(client_id) is str and 0 < len(client_id) <= raft.MAX_ID_CHARS
                and is_wire_integer(fields.get("seq"))
                and type(op) is list and op and type(op[0]) is str):
            return "client", None
        return "bad field", None
    if kind == "StatusRequest":
        return ("status", None) if is_wire_integer(fields.get("nonce")) else ("bad field", None)
    return "unknown type", None


# ---------------------------------------------------------------------------
# 1. The wire decoder
# ---------------------------------------------------------------------------

WIRE_CASES = 15000


def test_the_unmutated_templates_decode_to_the_messages_they_encode():
    for fields in WIRE_TEMPLATES:
        data = raft.encode_datagram(fields)
        if fields["type"] in raft.MESSAGE_TYPES:
            message = raft.decode_message(raft.decode_datagram(data))
            assert raft.encode_message(message) == fields
        else:
            assert raft.decode_datagram(data) == fields
            assert expected_verdict(data)[0] in ("client", "status")


def test_the_wire_decoder_returns_a_well_formed_message_or_raises_protocol_error():
    rng = random.Random(SEED)
    outcomes = collections.Counter()
    for number, data in enumerate(fuzz_datagrams(rng, WIRE_TEMPLATES, WIRE_CASES)):
        try:
            try:
                fields = raft.decode_datagram(data)
            except raft.ProtocolError as error:
                assert error.reason in raft.DROP_REASONS, error.reason
                outcomes["not a message object"] += 1
                continue
            assert type(fields) is dict and type(fields["type"]) is str
            if fields["type"] not in raft.MESSAGE_TYPES:
                outcomes["left to the runtime"] += 1
                continue
            try:
                message = raft.decode_message(fields)
            except raft.ProtocolError as error:
                assert error.reason in raft.DROP_REASONS, error.reason
                outcomes["rejected " + fields["type"]] += 1
                continue
            check_well_formed(message)
            check_round_trip(message, {k: v for k, v in fields.items() if k != "type"})
            outcomes["accepted " + fields["type"]] += 1
        except Exception as error:
            pytest.fail(f"seed {SEED}, case {number}: {type(error).__name__}: {error}\n"
                        f"datagram: {shown(data)}")
    # The fuzz reached every decision, not only the JSON parser.
    for name in raft.MESSAGE_TYPES:
        assert outcomes["accepted " + name] >= 100, outcomes
        assert outcomes["rejected " + name] >= 100, outcomes
    assert outcomes["not a message object"] >= 1000, outcomes
    assert outcomes["left to the runtime"] >= 1000, outcomes


# ---------------------------------------------------------------------------
# 2. NodeServer.handle_datagram, in this process, without its threads
# ---------------------------------------------------------------------------
# The server is built but not started: this thread plays its owner thread,
# calling handle_datagram for each datagram (with the source address the
# receiver thread would pass) and persist_send_apply every few datagrams, as
# run_owner_loop does for a batch. Its two peers and a client are sockets
# bound here on their addresses and never read: what the node sends them is
# dropped, and a datagram "from" a peer comes from that peer's real address.

RUNTIME_CASES = 4000
STRANGER = "127.0.0.1:9"               # a server no configuration names
STRANGER_ADDRESS = ("127.0.0.1", 9)    # ... and where its datagrams come from:
                                       # a node without a key still drops them


class InProcessServer:
    def __init__(self, data_dir):
        self.sinks = []
        ports = free_ports(4)
        self.members = [f"127.0.0.1:{port}" for port in ports[:3]]
        for port in ports[1:]:
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", port))
            self.sinks.append(sink)
        self.client_address = ("127.0.0.1", ports[3])
        self.server = raft.NodeServer(self.members[0], self.members, str(data_dir))
        self.node = self.server.node
        self.closed = False

    def address_of(self, node_id):
        if node_id == STRANGER:
            return STRANGER_ADDRESS
        return self.server.member_addresses.get(node_id, self.client_address)

    def deliver(self, message_or_fields):
        """A valid datagram, from the address of the member it names."""
        fields = message_or_fields
        address = self.client_address
        if not isinstance(fields, dict):
            address = self.address_of(raft.message_sender(fields))
            fields = raft.encode_message(fields)
        self.server.handle_datagram(raft.encode_datagram(fields), address)

    def cycle(self):
        raft.persist_send_apply(self.node, self.server.send_message,
                                self.server.deliver_answer)

    def close(self):
        self.closed = True
        self.server.stop()
        for sink in self.sinks:
            sink.close()


@pytest.fixture
def in_process(tmp_path):
    made = []

    def make():
        made.append(InProcessServer(tmp_path / f"node{len(made)}"))
        return made[-1]

    yield make
    for server in made:
        if not server.closed:
            server.close()


def become_follower_with_committed_log(s: InProcessServer):
    leader = s.members[1]
    s.deliver(AppendEntries(2, leader, 0, 0, (
        Entry(1, None), Entry(1, command("c1", 1, ["set", "a", "1"])),
        Entry(2, None), Entry(2, command("c1", 2, ["incr", "n", 5]))), 3))
    s.cycle()
    assert (s.node.role, s.node.commit_index, s.node.last_applied,
            s.node.log.last_index) == (Role.FOLLOWER, 3, 3, 4)


def become_leader_with_committed_log(s: InProcessServer):
    become_follower_with_committed_log(s)
    # Its timer runs out: a pre-vote round first (§9.6), then, with a
    # member's pre-vote, an election of term 3.
    for _ in range(s.node.config.election_timeout_ticks[1]):
        s.node.tick()
        if any(isinstance(m, RequestVote) and m.pre_vote for _, m in s.node.outbox):
            break
    s.cycle()
    assert (s.node.role, s.node.current_term) == (Role.FOLLOWER, 2)
    s.deliver(RequestVoteReply(3, True, s.members[1], s.node.id, pre_vote=True))
    assert s.node.role is Role.CANDIDATE
    s.cycle()
    s.deliver(RequestVoteReply(s.node.current_term, True, s.members[1], s.node.id))
    s.cycle()
    assert s.node.role is Role.LEADER
    for seq, op in enumerate([["set", "b", "2"], ["incr", "n", 1]], 1):
        s.deliver({"type": "ClientRequest", "client_id": "c2", "seq": seq, "op": op})
    s.cycle()
    s.deliver(AppendEntriesReply(s.node.current_term, True, s.members[1],
                                 s.node.log.last_index))
    s.cycle()
    assert s.node.commit_index == s.node.last_applied == s.node.log.last_index == 7


def node_templates(s: InProcessServer):
    """Valid datagrams that fit the node's state now, each with the address
    it comes from: peer messages naming each member and a stranger (each from
    its own address; this node has no key, so it hears only the servers its
    configurations name), and client requests."""
    node = s.node
    term, last_index, last_term = node.current_term, node.log.last_index, node.log.last_term
    templates = []
    for sender in [*s.members, STRANGER]:
        for message_term in (term, min(term + 1, MAX)):
            for fields in peer_templates(message_term, sender, last_index, last_term, node.id):
                templates.append((fields, s.address_of(sender)))
    # Client requests about as often as peer messages.
    clients = [(fields, s.client_address) for fields in client_templates("fuzz-client", "fz")]
    return templates + clients * (len(templates) // len(clients))


def source_address(rng, s: InProcessServer, usual):
    """Mostly the template's own address; sometimes another one, so that a
    valid message arrives from the wrong member or from a stranger."""
    if rng.random() < 0.85:
        return usual
    return rng.choice([*s.server.member_addresses.values(), s.client_address,
                       STRANGER_ADDRESS])


def node_state(node):
    """Everything a rejected datagram must leave alone."""
    return (node.current_term, node.voted_for, node.role, node.leader_id,
            node.commit_index, node.last_applied, list(node.log.entries),
            len(node.outbox), len(node.answers), len(node.pending_reads))


def check_node_invariants(node, before_term, before_vote, before_commit, committed):
    terms = [entry.term for entry in node.log.entries]
    assert terms == sorted(terms) and all(1 <= t <= node.current_term for t in terms)
    assert before_term <= node.current_term <= MAX
    if node.current_term == before_term and before_vote is not None:
        assert node.voted_for == before_vote, "a second vote in one term"
    assert before_commit <= node.commit_index <= node.log.last_index
    assert node.last_applied <= node.commit_index
    assert node.log.entries[:len(committed)] == committed, "a committed entry changed"
    assert set(node.counters) <= DROP_REASONS, node.counters


def counter_change(before, after):
    return {name: after[name] - before.get(name, 0)
            for name in after if after[name] != before.get(name, 0)}


def hears_a_leader(node):
    """§4.2.3: a leader, or a server that heard one within the minimum
    election timeout. Check-quorum (on in the runtime) makes such a server
    ignore vote requests that are neither pre-votes nor a transfer's."""
    return node.role is Role.LEADER or (
        node.leader_id is not None
        and node.election_elapsed < node.config.election_timeout_ticks[0])


def feed_one(s: InProcessServer, data: bytes, address):
    """Hand one datagram to handle_datagram; check what it must do. Returns
    the verdict and what the core itself counted (a refusal to overwrite a
    committed entry; a damaged or oversized snapshot, under "bad field")."""
    node = s.node
    verdict, message = expected_verdict(data, address, s.server.member_addresses, node.id,
                                        hears_strangers=s.server.key is not None)
    state, counters = node_state(node), dict(node.counters)
    committed = node.log.entries[:node.commit_index]
    ignored = (verdict == "peer" and isinstance(message, RequestVote)
               and not message.pre_vote and not message.transfer
               and node.config.check_quorum and hears_a_leader(node))
    s.server.handle_datagram(data, address)
    change = counter_change(counters, node.counters)
    if verdict not in ("peer", "client", "status"):
        assert change == {verdict: 1}, (verdict, change)
        assert node_state(node) == state, "a rejected datagram changed the node"
    elif ignored:
        assert change == {}, change
        assert node_state(node) == state, "a vote request during a leader's lease acted"
    else:
        core_counts = [{}, {"refused: would overwrite a committed entry": 1}]
        if isinstance(message, InstallSnapshot):
            core_counts.append({"bad field": 1})
        assert change in core_counts, change
        if (verdict == "peer" and isinstance(message, (RequestVote, AppendEntries,
                                                       InstallSnapshot))
                and not change):
            assert len(node.outbox) == state[7] + 1, "[FOL-1] an RPC went unanswered"
    check_node_invariants(node, state[0], state[1], state[4], committed)
    return verdict, change if verdict == "peer" else {}


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_handle_datagram_rejects_and_counts_or_keeps_the_invariants(in_process, role):
    s = in_process()
    if role == "follower":
        become_follower_with_committed_log(s)
    else:
        become_leader_with_committed_log(s)
    rng = random.Random(f"{SEED}-{role}")
    verdicts = collections.Counter()
    core_counted = collections.Counter()
    number, data, address = 0, b"", None
    try:
        for number in range(RUNTIME_CASES):
            if number % 200 == 0:
                templates = node_templates(s)
                donors = [raft.encode_datagram(fields) for fields, _ in templates]
            fields, usual = rng.choice(templates)
            data = fuzz_one(rng, fields, donors)
            address = source_address(rng, s, usual)
            verdict, counted = feed_one(s, data, address)
            verdicts[verdict] += 1
            core_counted.update(counted)
            if number % 10 == 9:
                s.cycle()
                assert s.node.last_applied == s.node.commit_index
                status = s.server.status()
                assert set(status["dropped"]) <= DROP_REASONS
                raft.encode_datagram({"type": "StatusReply", "nonce": 1, "status": status})
    except Exception as error:
        raise AssertionError(f"seed {SEED}, {role}, case {number}: {type(error).__name__}: "
                             f"{error}\ndatagram from {address}: {shown(data)}") from error
    s.cycle()
    dropped = s.server.status()["dropped"]
    for reason, count in verdicts.items():
        if reason not in ("peer", "client", "status"):
            assert dropped.get(reason) == count + core_counted[reason], \
                (reason, dropped, verdicts, core_counted)
    for verdict in ("not JSON", "unknown type", "bad field", "not from a member",
                    "peer", "client", "status"):
        assert verdicts[verdict] >= 30, verdicts

    # Everything the node accepted and synced loads back from its files.
    held = (s.node.current_term, s.node.voted_for,
            json.dumps([raft.encode_entry(e) for e in s.node.log.entries]))
    data_dir = s.server.storage.data_dir
    s.close()
    storage = raft.JsonLinesStorage(data_dir)
    try:
        term, voted_for, entries = storage.load()
    finally:
        storage.close()
    assert (term, voted_for, json.dumps([raft.encode_entry(e) for e in entries])) == held


def test_the_largest_accepted_term_leaves_a_node_that_can_always_restart(in_process):
    """Found by this file: terms up to 2**63-1 were accepted, so a node could
    adopt the largest and its next election took term 2**63, which its own
    state.jsonl then refused to load: the node could never restart. Terms on
    the wire now stop at raft.MAX_TERM (2**62), so the elections a node holds
    after adopting the largest stay within 64 bits and on disk for good.
    (Its peers drop messages beyond MAX_TERM: a member pushed that far by a
    forged message is out of service, which is denial of service, not lost
    data; a cluster key stops the forgery, see docs/security.md.)"""
    s = in_process()
    # Elections as in Figure 2, without pre-vote (§9.6): a pre-vote for
    # MAX_TERM + 1 is beyond the wire's limit, so no peer could grant it and
    # the node would never raise its term past MAX_TERM at all.
    s.node.config = dataclasses.replace(s.node.config, pre_vote=False)
    s.deliver(RequestVote(raft.MAX_TERM, s.members[1], 0, 0))     # the largest legal term
    s.cycle()
    assert (s.node.current_term, s.node.voted_for) == (raft.MAX_TERM, s.members[1])
    with pytest.raises(raft.ProtocolError):                       # one more is refused
        raft.decode_message(raft.encode_message(RequestVote(raft.MAX_TERM + 1, s.members[1],
                                                            0, 0)))
    elections = 0
    for _ in range(3 * s.node.config.election_timeout_ticks[1]):   # two elections time out
        term = s.node.current_term
        s.node.tick()
        elections += s.node.current_term > term
        if elections == 2:
            break
    assert elections == 2
    s.node.collect_messages()
    s.node.storage.sync()
    data_dir = s.server.storage.data_dir
    s.close()
    storage = raft.JsonLinesStorage(data_dir)
    try:
        term, voted_for, _ = storage.load()               # it can restart
    finally:
        storage.close()
    assert (term, voted_for) == (raft.MAX_TERM + 2, s.members[0])


# ---------------------------------------------------------------------------
# 3. The storage reader
# ---------------------------------------------------------------------------

STORAGE_CASES = 2500


def write_history(data_dir):
    """A realistic history written by JsonLinesStorage itself: term changes,
    votes, cleared votes, entries, and suffixes replaced (a line with index i
    replaces i onward). Returns the (term, vote, log) it must load as."""
    storage = raft.JsonLinesStorage(str(data_dir))
    storage.load()
    def c(seq, op):
        return command("c-\u00fc\u2603", seq, op)

    storage.save_term_and_vote(1, "127.0.0.1:8000")
    storage.write_entries(1, [Entry(1), Entry(1, c(1, ["set", "x", "5"])),
                              Entry(1, c(2, ["incr", "n", 3]))])
    storage.sync()
    storage.save_term_and_vote(2, None)
    storage.save_term_and_vote(2, "127.0.0.1:8001")
    storage.write_entries(3, [Entry(2), Entry(2, c(3, ["set", "k", "\u2603" * 40]))])
    storage.save_term_and_vote(4, None)
    storage.write_entries(5, [Entry(4), Entry(4, c(4, ["del", "x"])),
                              Entry(4, c(5, ["incr", "n", -2 ** 62]))])
    storage.save_term_and_vote(4, "127.0.0.1:8002")
    storage.save_term_and_vote(5, "127.0.0.1:8000")
    storage.write_entries(6, [Entry(5), Entry(5, c(6, ["get", "n"]))])
    storage.write_entries(8, [Entry(5, c(7, ["set", "y", ""]))])
    storage.sync()
    storage.close()
    log = [Entry(1), Entry(1, c(1, ["set", "x", "5"])), Entry(2),
           Entry(2, c(3, ["set", "k", "\u2603" * 40])), Entry(4), Entry(5),
           Entry(5, c(6, ["get", "n"])), Entry(5, c(7, ["set", "y", ""]))]
    return 5, "127.0.0.1:8000", log


# -- the reference: docs/storage.md "Recovery on start", written apart from raft.py --

def json_line(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def parse_state_line(raw):
    """{"term": T, "voted_for": ID or null}, T a 64-bit non-negative integer."""
    record = json_line(raw)
    if type(record) is not dict or not {"term", "voted_for"} <= set(record):
        return None
    term, vote = record["term"], record["voted_for"]
    if not is_wire_integer(term) or not (vote is None or type(vote) is str):
        return None
    return term, vote


def parse_log_line(raw):
    """{"index": I, "term": T, "command": null or {client, seq, op}}. Whether
    the index fits the log is judged later (a gap is damage, never a tear)."""
    record = json_line(raw)
    if type(record) is not dict or not {"index", "term", "command"} <= set(record):
        return None
    index, term, cmd = record["index"], record["term"], record["command"]
    if not is_wire_integer(index) or not is_wire_integer(term) or not 1 <= term <= raft.MAX_TERM:
        return None
    if cmd is not None:
        if type(cmd) is not dict or set(cmd) != {"client", "seq", "op"}:
            return None
        if (type(cmd["client"]) is not str or not 0 < len(cmd["client"]) <= raft.MAX_ID_CHARS
                or not is_wire_integer(cmd["seq"]) or type(cmd["op"]) is not list
                or not cmd["op"]):
            return None
    return index, Entry(term, cmd)


def read_records(data: bytes, parse):
    """(records, damaged line or None, bytes kept). Only the last line may be
    torn: one without a newline, or a final line that does not parse."""
    *complete, tail = data.split(b"\n")
    records, kept = [], 0
    for number, raw in enumerate(complete, 1):
        record = parse(raw)
        if record is None:
            if number == len(complete) and tail == b"":
                return records, None, kept
            return records, number, kept
        records.append(record)
        kept += len(raw) + 1
    return records, None, kept


def reference_load(state: bytes, log: bytes):
    """What loading these files must give, and what the files hold after:
    ("ok", (term, vote, entries), state after, log after) or
    ("error", "state" | "log", line, state after, log after). A torn last
    line is cut off its file as soon as that file is read, so a log whose
    complete lines leave a gap is refused with its torn tail already cut."""
    states, damaged, state_kept = read_records(state, parse_state_line)
    if damaged:
        return "error", "state", damaged, state, log
    state = state[:state_kept]
    records, damaged, log_kept = read_records(log, parse_log_line)
    if damaged:
        return "error", "log", damaged, state, log
    log = log[:log_kept]
    entries = []
    for number, (index, entry) in enumerate(records, 1):
        if not 1 <= index <= len(entries) + 1:
            return "error", "log", number, state, log         # a gap
        if index > 1 and entry.term < entries[index - 2].term:
            return "error", "log", number, state, log         # terms going backwards
        del entries[index - 1:]
        entries.append(entry)
    term, vote = states[-1] if states else (0, None)
    return "ok", (term, vote, entries), state, log


def as_json(loaded):
    term, vote, entries = loaded
    return json.dumps([term, vote, [raft.encode_entry(e) for e in entries]])


# -- damage ------------------------------------------------------------------------

def line_start(data: bytes, line: int) -> int:
    """Byte offset of 1-based line."""
    position = 0
    for _ in range(line - 1):
        position = data.index(b"\n", position) + 1
    return position


def mutate_file(rng, data: bytes, other: bytes, deep: bool = False):
    """One change to a data file; returns (bytes, what, damaged line or None)."""
    lines = data.split(b"\n")
    count = len(lines) - 1 if data.endswith(b"\n") else len(lines)    # lines with content
    operation = rng.randrange(14)
    position = rng.randrange(len(data) + 1)
    line_of = data[:position].count(b"\n") + 1
    if operation == 0:
        return data[:position], "truncate", None
    if operation == 1:
        return data[:position] + rng.choice(NON_UTF8) + data[position:], "non-utf8", line_of
    if operation in (2, 3, 4):
        return mutate_bytes(rng, data, [other]), "bytes", None
    if count == 0:
        return data + b"{\n", "append garbage", None
    number = rng.randrange(count)
    if operation in (5, 6, 7):                    # a value replaced inside one line
        record = json_line(lines[number])
        if record is None:
            return data, "none", None
        record = mutate_structure(rng, record, deep)
        lines[number] = serialize(rng, record)
        return b"\n".join(lines), "value", number + 1
    if operation == 8:
        lines.insert(number, lines[rng.randrange(count)])
        return b"\n".join(lines), "duplicate line", None
    if operation == 9:
        other_number = rng.randrange(count)
        lines[number], lines[other_number] = lines[other_number], lines[number]
        return b"\n".join(lines), "swap lines", None
    if operation == 10:
        del lines[number]
        return b"\n".join(lines), "delete line", None
    if operation == 11:
        lines.insert(number, rng.choice([b"", b" ", b"\r", b"\t"]))
        return b"\n".join(lines), "blank line", number + 1
    if operation == 12:
        return data.rstrip(b"\n"), "no final newline", None
    other_lines = [line for line in other.split(b"\n") if line]
    lines.insert(number, rng.choice(other_lines) if other_lines else b"{}")
    return b"\n".join(lines), "line from the other file", None


def damage(rng, state: bytes, log: bytes, deep: bool = False):
    """1-3 changes to one file, or to both; a file is sometimes missing."""
    files = {"state": state, "log": log}
    targets = rng.choice([["state"], ["log"], ["log"], ["state", "log"]])
    notes = []
    for target in targets:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            other = files["log" if target == "state" else "state"]
            files[target], what, line = mutate_file(rng, files[target], other, deep)
            notes.append((target, what, line))
    missing = {name for name in files if rng.random() < 0.02}
    return files, notes, missing


def load_files(data_dir, files, missing):
    """Write the files, load them with JsonLinesStorage; return the outcome."""
    data_dir.mkdir(exist_ok=True)
    for name, data in files.items():
        path = data_dir / f"{name}.jsonl"
        path.unlink(missing_ok=True)      # a new file: ext4 flushes a truncated one on close
        if name not in missing:
            path.write_bytes(data)
    storage = raft.JsonLinesStorage(str(data_dir))
    try:
        return storage.load()
    except raft.StorageError as error:
        return error
    finally:
        storage.close()


def check_case(data_dir, files, missing, notes):
    state = b"" if "state" in missing else files["state"]
    log = b"" if "log" in missing else files["log"]
    outcome = load_files(data_dir, files, missing)
    # Promises that need no reference, where one change was made: a cut
    # anywhere is a crash and always loads; a non-UTF-8 byte in a complete
    # line that is not the last one is always damage at that line.
    if len(notes) == 1:
        name, what, line = notes[0]
        data = state if name == "state" else log
        if what == "truncate":
            assert not isinstance(outcome, Exception), outcome
        elif what == "non-utf8" and line < data.count(b"\n") and not missing:
            assert isinstance(outcome, raft.StorageError), outcome
            assert (outcome.path, outcome.line) == (str(data_dir / f"{name}.jsonl"), line)
    expected = reference_load(state, log)
    state_after, log_after = expected[-2:]
    # The files hold what they held, less a torn last line (damage is left
    # for a human to look at).
    for name, after in (("state", state_after), ("log", log_after)):
        if name not in missing:
            assert (data_dir / f"{name}.jsonl").read_bytes() == after, name
    if expected[0] == "error":
        _, name, line, _, _ = expected
        path = str(data_dir / f"{name}.jsonl")
        assert isinstance(outcome, raft.StorageError), (expected[:3], outcome)
        assert (outcome.path, outcome.line) == (path, line)
        assert str(outcome).startswith(f"{path}:{line}: ")
        return "error in " + name
    assert not isinstance(outcome, Exception), (expected[:2], outcome)
    assert as_json(outcome) == as_json(expected[1])
    if (state_after, log_after) == (state, log):
        return "loaded"
    # The cut files load the same, with nothing more to cut.
    cut = {"state": state_after, "log": log_after}
    again = load_files(data_dir, cut, set())
    assert as_json(again) == as_json(expected[1]), "a second load differs"
    assert (data_dir / "log.jsonl").read_bytes() == log_after
    assert (data_dir / "state.jsonl").read_bytes() == state_after
    return "torn tail dropped"


@pytest.fixture
def history(tmp_path):
    expected = write_history(tmp_path / "pristine")
    state = (tmp_path / "pristine" / "state.jsonl").read_bytes()
    log = (tmp_path / "pristine" / "log.jsonl").read_bytes()
    assert reference_load(state, log) == ("ok", expected, state, log)
    return state, log, expected


@pytest.fixture
def fast_fsync(monkeypatch):
    """Parsing is under test here, not durability: fsync is skipped, and the
    thousands of torn-tail warnings are not logged."""
    monkeypatch.setattr(raft.os, "fsync", lambda fd: None)
    logger = logging.getLogger("raft")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def test_the_history_loads_as_written(tmp_path, history):
    state, log, expected = history
    outcome = load_files(tmp_path / "case", {"state": state, "log": log}, set())
    assert outcome == expected


def test_the_storage_reader_loads_what_the_format_says_or_names_the_damaged_line(
        tmp_path, history, fast_fsync):
    state, log, _ = history
    rng = random.Random(SEED)
    outcomes = collections.Counter()
    data_dir = tmp_path / "case"
    for number in range(STORAGE_CASES):
        files, notes, missing = damage(rng, state, log)
        try:
            outcomes[check_case(data_dir, files, missing, notes)] += 1
        except Exception as error:
            raise AssertionError(
                f"seed {SEED}, case {number}: {type(error).__name__}: {error}\n"
                f"changes: {notes}, missing: {missing}\n"
                f"state.jsonl: {shown(files['state'], 2000)}\n"
                f"log.jsonl: {shown(files['log'], 3000)}") from error
    for outcome in ("error in state", "error in log", "torn tail dropped", "loaded"):
        assert outcomes[outcome] >= 100, outcomes


def test_any_truncation_loads_the_complete_lines_before_the_cut(tmp_path, history, fast_fsync):
    """A crash can cut either file anywhere: what loads is exactly the history
    of the complete lines, the rest is dropped, and nothing raises."""
    state, log, _ = history
    data_dir = tmp_path / "case"
    states = [parse_state_line(line) for line in state.split(b"\n")[:-1]]
    records = [parse_log_line(line) for line in log.split(b"\n")[:-1]]
    # Every cut next to a line boundary, and every fifth byte in between.
    cuts = {i + d for i, byte in enumerate(log) if byte == ord("\n") for d in (-1, 0, 1, 2)}
    cuts |= set(range(0, len(log) + 1, 5))
    for cut in sorted(cuts & set(range(len(log) + 1))):
        complete = log[:cut].count(b"\n")
        entries = []
        for index, entry in records[:complete]:
            del entries[index - 1:]
            entries.append(entry)
        state_cut = cut * len(state) // max(1, len(log))
        term, vote = ([(0, None)] + states)[state[:state_cut].count(b"\n")]
        outcome = load_files(data_dir, {"state": state[:state_cut], "log": log[:cut]}, set())
        assert outcome == (term, vote, entries), f"log cut at byte {cut}"


def test_a_non_utf8_byte_in_any_line_but_the_last_names_that_line(tmp_path, history, fast_fsync):
    state, log, _ = history
    data_dir = tmp_path / "case"
    for name, data in (("state", state), ("log", log)):
        lines = data.split(b"\n")[:-1]
        for number in range(1, len(lines)):       # the last line would be a torn tail
            start = line_start(data, number)
            damaged = data[:start + 5] + b"\xff" + data[start + 5:]
            files = {"state": state, "log": log, name: damaged}
            outcome = load_files(data_dir, files, set())
            assert isinstance(outcome, raft.StorageError), (name, number, outcome)
            assert (outcome.path, outcome.line) == (str(data_dir / f"{name}.jsonl"), number)


DEEP = b"[" * 100000 + b"]" * 100000


def test_a_deeply_nested_middle_line_is_damage_naming_the_line(tmp_path, history):
    state, log, _ = history
    damaged = log.replace(b"\n", b"\n" + DEEP + b"\n", 1)        # becomes line 2
    outcome = load_files(tmp_path / "case", {"state": state, "log": damaged}, set())
    assert isinstance(outcome, raft.StorageError)
    assert outcome.line == 2


def test_a_deeply_nested_last_line_is_a_torn_tail(tmp_path, history):
    state, log, expected = history
    outcome = load_files(tmp_path / "case", {"state": state, "log": log + DEEP + b"\n"}, set())
    assert outcome == expected


# ---------------------------------------------------------------------------
# 4. A live cluster under a storm of fuzzed datagrams
# ---------------------------------------------------------------------------

LIVE_OPS = 200
LIVE_MIN_DATAGRAMS = 9000
LIVE_DEADLINE_S = 15.0


class Bombardier:
    """Sends fuzzed datagrams at every node from its own thread, until told to
    stop (and at least LIVE_MIN_DATAGRAMS are sent) or the deadline passes.
    Peer messages name the real members (with terms up to 2**63-1), but come
    from this thread's own address, so a node must drop them all; client
    requests use their own client id and key. Counts, per node and reason,
    the datagrams it must drop."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.templates = [*client_templates("fuzz-client", "fz")]
        for member in cluster.addresses:
            self.templates += peer_templates(10 ** 9, member, 5, 2)
        self.templates += peer_templates(3, STRANGER, 5, 2)
        self.expected = {port: collections.Counter() for port in cluster.ports}
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name="bombardier", daemon=True)

    def run(self):
        try:
            self.send_all()
        except BaseException as error:           # reported by the test thread
            self.error = error

    def send_all(self):
        rng = random.Random(f"{SEED}-live")
        deadline = time.monotonic() + LIVE_DEADLINE_S
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            source = sock.getsockname()
            members = {address: raft.resolve_address(address)
                       for address in self.cluster.addresses}
            while time.monotonic() < deadline:
                for data in fuzz_datagrams(rng, self.templates, 100):
                    port = self.cluster.ports[sent % len(self.cluster.ports)]
                    verdict, _ = expected_verdict(data, source, members,
                                                  self.cluster.address(port))
                    assert verdict != "peer", "a datagram from a stranger's address"
                    try:
                        sock.sendto(data, ("127.0.0.1", port))
                    except OSError:             # e.g. too big for one datagram
                        continue
                    self.expected[port][verdict] += 1
                    sent += 1
                    if sent % 20 == 0:
                        time.sleep(0.002)       # a storm, not a kernel buffer overflow
                if self.stop.is_set() and sent >= LIVE_MIN_DATAGRAMS:
                    return


def drops(status, before):
    return collections.Counter({reason: count - before["dropped"].get(reason, 0)
                                for reason, count in status["dropped"].items()})


@pytest.mark.process
def test_a_live_cluster_bombarded_with_fuzzed_datagrams_keeps_serving(cluster):
    before = {port: cluster.wait_status(port) for port in cluster.ports}
    bombardier = Bombardier(cluster)
    bombardier.thread.start()
    client = cluster.client(timeout=10)
    try:
        for number in range(1, LIVE_OPS + 1):
            assert client.incr("checked", 1) == number
            assert client.get("checked") == number
    finally:
        bombardier.stop.set()
        bombardier.thread.join(timeout=LIVE_DEADLINE_S + 5)
    assert bombardier.error is None, repr(bombardier.error)
    total_sent = sum(sum(c.values()) for c in bombardier.expected.values())
    assert total_sent >= LIVE_MIN_DATAGRAMS

    for port in cluster.ports:
        assert cluster.is_running(port), cluster.stderr_tail(port)
        expected = +collections.Counter({reason: count for reason, count
                                         in bombardier.expected[port].items()
                                         if reason not in ("client", "status")})
        # Each drop is counted once, under its reason: never more than were
        # sent, and (unless the kernel dropped many itself) nearly all.
        def counted_most(port=port, expected=expected):
            status = cluster.status(port)
            counted = drops(status, before[port]) if status else {}
            return status if sum(counted.values()) >= sum(expected.values()) / 2 else None
        status = wait_until(counted_most, 5, lambda: f"{port} to count about "
                            f"{dict(expected)} drops: {cluster.status(port)}")
        counted = drops(status, before[port])
        assert set(status["dropped"]) <= DROP_REASONS, status["dropped"]
        for reason, count in counted.items():
            assert count <= expected[reason], (port, reason, dict(counted), dict(expected))
        log = (cluster.data_dir(port) / "node.log").read_text(errors="replace")
        assert "Traceback" not in log and "CRITICAL" not in log, log[-2000:]
        print(f"node {port}: sent {dict(bombardier.expected[port])}, counted {dict(counted)}")
    assert client.get("checked") == LIVE_OPS
