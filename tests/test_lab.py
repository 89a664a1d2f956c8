"""The demo's lab: faults a learner switches on (raft.py [7.2], DemoPrompt).

In-process, a NodeServer started with lab=True takes LabRequests from
loopback and applies them to the peer messages it sends and receives; a
node without lab drops them as an unknown type. Through the demo's stdin,
every lab command answers, and the status table shows what was set."""

import random
import subprocess

import pytest

import raft
from conftest import consecutive_free_ports, free_ports
from test_cli import wait_demo_nodes


@pytest.fixture
def lab_server(tmp_path):
    """A lab node that is never started: the test plays its owner thread,
    and captures what it would send instead of sending it."""
    ports = free_ports(3)
    members = [f"127.0.0.1:{port}" for port in ports]
    server = raft.NodeServer(members[0], members, str(tmp_path), lab=True)
    sent = []
    server.send_bytes = lambda data, address: sent.append((address, data))
    yield server, members, sent
    server.stop()


def lab_request(server, **settings):
    fields = {"type": "LabRequest", "nonce": 1, **settings}
    server.handle_datagram(raft.encode_datagram(fields), ("127.0.0.1", 50000))


def heartbeat(members):
    return raft.AppendEntries(1, members[0], 0, 0, (), 0, 0)


def test_a_cut_off_peer_is_neither_reached_nor_heard(lab_server):
    server, members, sent = lab_server
    lab_request(server, cut_off=[members[1]])
    sent.clear()                                     # the LabReply
    server.send_message(members[1], heartbeat(members))
    server.send_message(members[2], heartbeat(members))
    assert [address for address, _ in sent] == [raft.split_address(members[2])]
    vote = raft.RequestVote(7, members[1], 0, 0)
    server.handle_datagram(raft.encode_datagram(raft.encode_message(vote)),
                           server.member_addresses[members[1]])
    assert server.node.current_term == 0             # never arrived


def test_drop_and_duplicate_apply_to_each_message_sent(lab_server):
    server, members, sent = lab_server
    lab_request(server, links={"*": {"drop": 1.0, "duplicate": 0.0, "delay_ms": 0}})
    sent.clear()
    server.send_message(members[1], heartbeat(members))
    assert sent == []
    lab_request(server, links={members[1]: {"drop": 0.0, "duplicate": 1.0, "delay_ms": 0}})
    sent.clear()
    server.send_message(members[1], heartbeat(members))
    server.send_message(members[2], heartbeat(members))   # no "*" any more
    assert [address for address, _ in sent] == [raft.split_address(members[1])] * 2 + [
        raft.split_address(members[2])]


def test_delayed_messages_leave_only_when_due(lab_server):
    server, members, sent = lab_server
    lab_request(server, links={"*": {"drop": 0, "duplicate": 0, "delay_ms": 1000}})
    sent.clear()
    server.lab.rng = random.Random(1)
    server.send_message(members[1], heartbeat(members))
    assert sent == [] and len(server.lab.delayed) == 1
    due = server.lab.delayed[0][0]
    server.send_delayed(due - 0.001)
    assert sent == []
    server.send_delayed(due)
    assert len(sent) == 1 and server.lab.delayed == []


@pytest.mark.parametrize("settings", [
    {"cut_off": ["127.0.0.1:1"]},                              # not a peer
    {"links": {"*": {"drop": 2}}},                             # not a probability
    {"links": {"*": {"delay_ms": -1}}},
    {"links": {"*": {"speed": 1}}},
    {"explain": "yes"},
])
def test_a_bad_lab_request_is_dropped_and_counted(lab_server, settings):
    server, _members, _sent = lab_server
    lab_request(server, **settings)
    assert server.node.counters["bad field"] == 1


def test_explain_and_trace_lines_reach_the_event_sink(lab_server):
    server, members, _sent = lab_server
    lines = []
    lab_request(server, explain=True, trace=True)
    server.event_sink = lines.append
    vote = raft.RequestVote(3, members[1], 0, 0)
    server.handle_datagram(raft.encode_datagram(raft.encode_message(vote)),
                           server.member_addresses[members[1]])
    assert any(line.startswith("<- ") and "RequestVote(term 3" in line for line in lines)
    assert any("grants its vote" in line and line.endswith("[RV-2]") for line in lines)


def test_a_node_without_the_lab_drops_lab_requests(tmp_path):
    ports = free_ports(3)
    members = [f"127.0.0.1:{port}" for port in ports]
    server = raft.NodeServer(members[0], members, str(tmp_path))
    try:
        lab_request(server, cut_off=[members[1]])
        assert server.node.counters["unknown type"] == 1
    finally:
        server.stop()


@pytest.mark.process
def test_every_lab_command_answers_and_status_shows_the_network(spawn, tmp_path):
    base = consecutive_free_ports(3)
    a, b, c = base, base + 1, base + 2
    commands = "\n".join([
        f"partition {a} | {b} {c}", "status", "heal",
        "drop 20%", f"delay 30ms {b} {c}", "duplicate 10%", "status", "set x 1",
        "drop 0", "delay 0", "duplicate 0", f"delay 0 {b} {c}",
        f"pause {c}", "status", f"resume {c}", f"ask {a} get x",
        "partition", "drop 200%", "help partition", "quit", ""])
    demo = spawn(["demo", "--base-port", base, "--data-dir", tmp_path / "demo"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    wait_demo_nodes(demo)
    out, err = demo.communicate(commands, timeout=60)
    assert demo.returncode == 0, (out, err)
    lines = out.splitlines()
    assert f"partitioned: {a} | {b} {c}" in lines
    assert any(line.split()[:1] == [str(a)] and line.endswith(f"cut off from {b} {c}")
               for line in lines), out
    assert "healed" in lines and "drop 20% on every link" in lines
    assert f"delay 30ms on {b} <-> {c}" in lines
    assert any(line.split()[:1] == [str(b)]
               and line.endswith(f"drop 20%, duplicate 10%, delay 30ms to {c}")
               for line in lines), out
    assert "OK" in lines                             # writes go through a lossy network
    assert f"paused {c}" in lines and f"resumed {c}" in lines
    assert any(line.split()[:2] == [str(c), "paused"] for line in lines), out
    assert any(line.startswith(f"{a}: ") for line in lines), out
    assert "error: usage: partition PORT [PORT...] | PORT [PORT...] (each port once)" in lines
    assert any(line.startswith("error: usage: drop N%") for line in lines), out
    assert "partition PORTS | PORTS: cut the network between groups of nodes." in lines
