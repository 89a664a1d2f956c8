"""Real node processes over real UDP (raft.py [7]-[8], CONTRACT.md).

Each test starts its own three-node cluster on free ports with data dirs
under tmp_path, with short timings (election timeout 150-300 ms, heartbeat
30 ms), and the fixture stops every process by PID. SIGKILL here is the
crash of the contract: no chance to flush or say goodbye.
"""

import json
import random
import socket
import threading
import time

import pytest

import raft
from conftest import MAX_ELECTION_TIMEOUT_S, free_ports, run_raft, wait_until

pytestmark = pytest.mark.process

# The contract's failover bound: a new leader answers within 5 x the
# maximum election timeout while a majority is up.
FAILOVER_BOUND_S = 5 * MAX_ELECTION_TIMEOUT_S


def followers(cluster, leader):
    return [p for p in cluster.ports if p != leader]


def udp_socket(timeout=2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def exchange_raw(sock, port, payload: bytes, matches, timeout=3.0):
    """Send one raw datagram to a node; return the first decoded reply that
    matches, or None at the deadline."""
    sock.sendto(payload, ("127.0.0.1", port))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            return None
        reply = json.loads(data)
        if matches(reply):
            return reply
    return None


def total_dropped(status):
    return sum(status["dropped"].values())


# ---------------------------------------------------------------------------
# Any node's address will do
# ---------------------------------------------------------------------------

def test_status_reports_the_contract_fields_and_a_leader_names_itself(cluster):
    leader = cluster.wait_for_leader()
    for port in cluster.ports:
        status = cluster.wait_status(port)
        for field in ("id", "role", "term", "leader", "commit_index", "last_applied",
                      "last_log_index", "members"):
            assert field in status, (field, status)
        assert status["id"] == cluster.address(port)
        assert sorted(status["members"]) == sorted(cluster.addresses)
        assert status["role"] in ("leader", "follower", "candidate")
    assert cluster.status(leader)["leader"] == cluster.address(leader)


def test_status_of_a_silent_node_raises_cluster_unavailable_within_timeout():
    address = f"127.0.0.1:{free_ports(1)[0]}"
    with raft.RaftClient([address], timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(raft.ClusterUnavailable):
            client.status(address)
        assert time.monotonic() - started < 0.3 + 1.0


def test_write_through_a_client_that_knows_only_a_follower(cluster):
    leader = cluster.wait_for_leader()
    follower = followers(cluster, leader)[0]
    client = cluster.client([follower])
    client.set("x", "5")
    assert client.incr("hits") == 1
    assert client.incr("hits", 4) == 5
    assert client.get("x") == "5"
    assert client.delete("x") is True
    assert client.delete("x") is False
    assert client.get("x") is None


def test_write_through_the_cli_client_pointed_at_a_follower(cluster):
    leader = cluster.wait_for_leader()
    follower = followers(cluster, leader)[0]
    result = run_raft(["client", "--peers", str(follower), "set", "x", "42"], cwd=cluster.root)
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")
    assert cluster.client().get("x") == "42"


def test_reads_after_a_write_see_it_from_every_node_address(cluster):
    writer = cluster.client()
    readers = {port: cluster.client([port]) for port in cluster.ports}
    for round_number in range(5):
        writer.set("k", f"v{round_number}")
        counted = writer.incr("n")
        for port, reader in readers.items():
            assert reader.get("k") == f"v{round_number}", port
            assert reader.get("n") == counted, port


# ---------------------------------------------------------------------------
# Crashes: SIGKILL at any moment loses no acknowledged write
# ---------------------------------------------------------------------------

def test_sigkill_of_the_leader_a_new_leader_answers_writes_within_the_bound(cluster):
    client = cluster.client(timeout=10)
    client.set("before", "1")
    old_leader = cluster.wait_for_leader()
    old_term = cluster.status(old_leader)["term"]

    cluster.kill(old_leader)
    killed_at = time.monotonic()
    client.set("after", "2")
    elapsed = time.monotonic() - killed_at

    assert elapsed <= FAILOVER_BOUND_S, (
        f"the first write after the leader's SIGKILL took {elapsed:.2f}s; "
        f"the contract allows {FAILOVER_BOUND_S:.2f}s")
    new_leader = cluster.wait_for_leader(among=followers(cluster, old_leader))
    assert new_leader != old_leader
    assert cluster.status(new_leader)["term"] > old_term
    assert client.get("before") == "1"
    assert client.get("after") == "2"


def test_old_leader_restarted_on_its_data_dir_catches_up_and_holds_the_writes(cluster):
    client = cluster.client()
    client.set("before", "1")
    old_leader = cluster.wait_for_leader()
    cluster.kill(old_leader)

    for number in range(20):
        client.set(f"while-down-{number}", f"value-while-down-{number}")
        client.incr("down-count")
    new_leader = cluster.wait_for_leader(among=followers(cluster, old_leader))
    target = cluster.status(new_leader)["commit_index"]

    cluster.start(old_leader)
    caught_up = cluster.wait_applied(old_leader, target)
    assert caught_up["commit_index"] >= target
    durable = cluster.jsonl_text(old_leader)
    for number in range(20):
        assert f"value-while-down-{number}" in durable

    # The restarted node is now the only follower: a write needs its ack,
    # so its log must match the leader's.
    other = next(p for p in followers(cluster, old_leader) if p != new_leader)
    cluster.kill(other)
    client.set("with-restarted", "yes")
    assert client.incr("down-count") == 21
    assert cluster.wait_applied(old_leader, cluster.status(new_leader)["commit_index"])


def test_cluster_keeps_working_with_one_node_down_and_refuses_with_two_down(cluster):
    client = cluster.client()
    leader = cluster.wait_for_leader()
    first, second = followers(cluster, leader)

    cluster.kill(first)
    for number in range(10):
        client.set("k", str(number))
        assert client.get("k") == str(number)
    assert client.incr("c", 10) == 10

    cluster.kill(second)                         # no majority now
    with raft.RaftClient(cluster.addresses, timeout=1.0) as minority_client:
        started = time.monotonic()
        with pytest.raises(raft.ClusterUnavailable):
            minority_client.set("k", "lost?")
        assert time.monotonic() - started < 1.0 + 1.0

    cluster.start(first)                         # a majority again
    assert client.incr("c") == 11
    assert client.get("k") in ("9", "lost?")     # that outcome was unknown


def test_sigkill_of_all_nodes_and_restart_keeps_every_acknowledged_write(cluster):
    client = cluster.client()
    for number in range(50):
        assert client.incr("hits") == number + 1
        if number % 10 == 0:
            client.set(f"key-{number}", f"value-{number}")
    client.set("last", "written just before the crash")
    terms = {port: cluster.wait_status(port)["term"] for port in cluster.ports}

    for port in cluster.ports:
        cluster.kill(port)
    for port in cluster.ports:
        cluster.start(port)
    cluster.wait_for_leader(timeout=15)

    after = cluster.client()
    assert after.get("hits") == 50
    for number in range(0, 50, 10):
        assert after.get(f"key-{number}") == f"value-{number}"
    assert after.get("last") == "written just before the crash"
    assert after.incr("hits") == 51              # replayed once, not twice
    for port in cluster.ports:
        assert cluster.wait_status(port)["term"] >= terms[port]


# ---------------------------------------------------------------------------
# At most once (§6.3 sessions)
# ---------------------------------------------------------------------------

def test_a_retried_request_is_applied_at_most_once_and_gets_the_first_answer(cluster):
    client = cluster.client()
    assert client.incr("hits") == 1
    client.seq -= 1                              # resend the very same request
    assert client.incr("hits") == 1              # the first answer, not 2
    assert client.get("hits") == 1

    # The same retry through a follower's address (redirected to the leader).
    leader = cluster.wait_for_leader()
    assert client.incr("hits") == 2
    via_follower = cluster.client([followers(cluster, leader)[0]])
    via_follower.client_id = client.client_id
    via_follower.seq = client.seq - 1            # its next request reuses that incr's number
    assert via_follower.incr("hits") == 2
    assert client.get("hits") == 2


def test_a_duplicated_datagram_is_applied_once_and_answered(cluster):
    """Both copies reach the leader while the first is still pending: they
    share one waiter (bounded memory), so one answer comes back, and the
    increment is applied once."""
    leader = cluster.wait_for_leader()
    request = raft.encode_datagram({"type": "ClientRequest", "client_id": "duplicating-client",
                                    "seq": 1, "op": ["incr", "dup", 7]})
    with udp_socket() as sock:
        sock.sendto(request, ("127.0.0.1", leader))
        sock.sendto(request, ("127.0.0.1", leader))
        sock.settimeout(5)
        reply = json.loads(sock.recvfrom(65535)[0])
    assert reply.get("result") == 7, reply
    assert cluster.client().get("dup") == 7


def test_a_retry_after_leader_failover_is_applied_once(cluster):
    client = cluster.client(timeout=10)
    assert client.incr("hits", 5) == 5
    retry_seq = client.seq
    cluster.kill(cluster.wait_for_leader())

    client.seq = retry_seq - 1                   # the new leader gets the same request
    assert client.incr("hits", 5) == 5
    assert client.get("hits") == 5


# ---------------------------------------------------------------------------
# Hostile or oversized input
# ---------------------------------------------------------------------------

def largest_accepted_value_length(client_id: str) -> int:
    """Binary search, on a client with no live node, for the longest value
    that RaftClient.set does not refuse as too large (it checks the size
    before sending, so 'too large' comes at once and anything else times out)."""
    with raft.RaftClient([f"127.0.0.1:{free_ports(1)[0]}"], timeout=0.01,
                         client_id=client_id) as probe:
        def accepted(length):
            probe.seq = 0
            try:
                probe.set("big", "v" * length)
            except raft.ClusterUnavailable:
                return True
            except raft.RaftError as error:
                assert "too large" in str(error)
                return False
            raise AssertionError("no node is running, yet the set succeeded")
        low, high = 1, 70000
        assert accepted(low) and not accepted(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if accepted(middle) else (low, middle)
        return low


def test_a_command_too_large_for_a_datagram_is_a_clear_error_and_the_node_keeps_serving(
        cluster):
    client = cluster.client()
    with pytest.raises(raft.RaftError) as refused:
        client.set("big", "x" * 40000)
    assert not isinstance(refused.value, raft.ClusterUnavailable)
    assert "too large" in str(refused.value)

    # The same command sent raw, past the client's check, to the leader.
    leader = cluster.wait_for_leader()
    payload = raft.encode_datagram({"type": "ClientRequest", "client_id": "raw-client",
                                    "seq": 1, "op": ["set", "big", "x" * 40000]})
    assert len(payload) < 65000
    with udp_socket() as sock:
        reply = exchange_raw(sock, leader, payload,
                             lambda r: r.get("type") == "ClientReply" and r.get("seq") == 1)
    assert reply is not None, "the leader did not answer an oversized command"
    assert reply["ok"] is False and "too large" in reply["error"]

    client.set("small", "fine")
    assert client.get("small") == "fine"
    assert client.get("big") is None


def test_the_largest_command_the_client_accepts_is_committed_on_every_node(cluster):
    client = cluster.client()
    length = largest_accepted_value_length(client.client_id)
    value = "v" * length
    client.set("big", value)
    leader = cluster.wait_for_leader()
    target = cluster.status(leader)["commit_index"]
    for port in cluster.ports:
        cluster.wait_applied(port, target)
        assert cluster.client([port]).get("big") == value


def test_garbage_datagrams_do_not_kill_a_node_and_are_counted_as_dropped(cluster):
    leader = cluster.wait_for_leader()
    victims = [leader, followers(cluster, leader)[0]]
    rng = random.Random(1234)
    vote = {"type": "RequestVote", "term": 1, "candidate_id": "127.0.0.1:9",
            "last_log_index": 0, "last_log_term": 0}
    garbage = [
        b"", b"not json", b"{", b"[1, 2, 3]", b'"a string"', b"null", b"12",
        b"\xff\xfe\x00\x80 not utf-8",
        b"[" * 5000 + b"]" * 5000,                         # nested beyond recursion
        b'{"type": "StatusRequest", "nonce": -1' + b"0" * 5000 + b"}",  # huge, negative
        rng.randbytes(60000),
        *(rng.randbytes(rng.randrange(1, 300)) for _ in range(10)),
        json.dumps({"type": 5}).encode(),
        json.dumps({"no type": True}).encode(),
        json.dumps({"type": "NoSuchMessage"}).encode(),
        json.dumps({**vote, "term": "1"}).encode(),
        json.dumps({**vote, "term": -1}).encode(),
        json.dumps({**vote, "term": True}).encode(),
        json.dumps({**vote, "extra": 1}).encode(),
        json.dumps({k: v for k, v in vote.items() if k != "term"}).encode(),
        json.dumps({**vote, "candidate_id": "x" * 1000}).encode(),
        b'{"type": "RequestVote", "term": NaN, "candidate_id": "127.0.0.1:9",'
        b' "last_log_index": 0, "last_log_term": 0}',
        json.dumps({"type": "AppendEntries", "term": 1, "leader_id": "127.0.0.1:9",
                    "prev_log_index": 0, "prev_log_term": 0, "entries": "nope",
                    "leader_commit": 0}).encode(),
        json.dumps({"type": "AppendEntries", "term": 1, "leader_id": "127.0.0.1:9",
                    "prev_log_index": 0, "prev_log_term": 0, "leader_commit": 0,
                    "entries": [{"term": 0, "command": None}]}).encode(),
        json.dumps({"type": "AppendEntriesReply", "term": 1, "success": "yes",
                    "follower_id": "127.0.0.1:9"}).encode(),
        json.dumps({"type": "ClientRequest", "client_id": 5, "seq": 1,
                    "op": ["set", "a", "b"]}).encode(),
        json.dumps({"type": "ClientRequest", "client_id": "c", "seq": -1,
                    "op": ["set", "a", "b"]}).encode(),
        json.dumps({"type": "ClientRequest", "client_id": "c", "seq": 1,
                    "op": "set a b"}).encode(),
        json.dumps({"type": "ClientRequest", "client_id": "c", "seq": 1, "op": []}).encode(),
        json.dumps({"type": "ClientRequest", "client_id": "c", "seq": 1, "op": [1]}).encode(),
        json.dumps({"type": "StatusRequest", "nonce": "x"}).encode(),
    ]
    # Claiming to come from a member: a term too big to ever write back (it
    # once killed every node), and an AppendEntries whose terms go backwards.
    member = f"127.0.0.1:{followers(cluster, leader)[-1]}"
    garbage += [
        json.dumps({**vote, "candidate_id": member, "term": 10 ** 4300 - 1}).encode(),
        json.dumps({**vote, "candidate_id": member, "term": 2 ** 63}).encode(),
        json.dumps({"type": "AppendEntries", "term": 60, "leader_id": member,
                    "prev_log_index": 1, "prev_log_term": 1, "leader_commit": 0,
                    "entries": [{"term": 50, "command": None},
                                {"term": 1, "command": None}]}).encode(),
    ]
    # Well-formed, but from a stranger with a huge term: dropped too, and the
    # term must not be adopted.
    strangers = [json.dumps({**vote, "term": 10 ** 9}).encode()]

    before = {port: cluster.status(port) for port in victims}
    with udp_socket() as sock:
        for port in victims:
            for payload in garbage + strangers:
                sock.sendto(payload, ("127.0.0.1", port))

    expected = len(garbage) + len(strangers)
    for port in victims:
        def counted():
            status = cluster.status(port)
            return status if status and (total_dropped(status) - total_dropped(before[port])
                                         >= expected) else None
        status = wait_until(counted, 5, lambda: f"{port} to count {expected} dropped "
                            f"datagrams; status {cluster.status(port)}")
        assert status["term"] < 10 ** 9
        assert cluster.is_running(port), cluster.stderr_tail(port)

    client = cluster.client()
    with pytest.raises(raft.RaftError, match="64-bit"):
        client.incr("big", 10 ** 4299)           # refused, not a crash of the leader
    client.set("after-garbage", "still here")
    for port in victims:
        assert cluster.client([port]).get("after-garbage") == "still here"


# ---------------------------------------------------------------------------
# Regressions: bugs these tests found
# ---------------------------------------------------------------------------

def test_a_follower_that_missed_many_small_entries_catches_up(cluster):
    leader = cluster.wait_for_leader()
    lagging = followers(cluster, leader)[0]
    cluster.kill(lagging)

    # 8 clients with short (valid: 1-256 chars) client ids write 640 small entries.
    def write(number):
        with raft.RaftClient(cluster.addresses, timeout=10, client_id=chr(97 + number)) as c:
            for _ in range(80):
                c.incr("k")
    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert cluster.client().get("k") == 640
    target = cluster.status(leader)["commit_index"]

    cluster.start(lagging)
    cluster.wait_applied(lagging, target, timeout=3)
