"""RaftClient against fake nodes: plain UDP sockets that answer as scripted.

Real clusters are in test_process.py; here each node's answers are chosen,
so the client's retry and redirect rules can be checked one at a time.
"""

import json
import socket
import threading
import time

import pytest

import raft


class FakeNode:
    """A UDP socket on a free port that answers each ClientRequest with
    answer(number_of_requests_so_far, request), or stays silent (None)."""

    def __init__(self, answer=lambda count, request: None):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.05)
        self.address = f"127.0.0.1:{self.socket.getsockname()[1]}"
        self.answer, self.requests = answer, []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping.is_set():
            try:
                data, sender = self.socket.recvfrom(65535)
            except socket.timeout:
                continue
            request = json.loads(data)
            self.requests.append(request)
            reply = self.answer(len(self.requests), request)
            if reply is not None:
                fields = {"type": "ClientReply", "client_id": request["client_id"],
                          "seq": request["seq"], **reply}
                self.socket.sendto(json.dumps(fields).encode(), sender)

    def close(self):
        self.stopping.set()
        self.thread.join()
        self.socket.close()


@pytest.fixture
def fake_nodes():
    made = []

    def make(answer=lambda count, request: None):
        made.append(FakeNode(answer))
        return made[-1]
    yield make
    for node in made:
        node.close()


def test_a_hint_back_to_a_silent_node_is_not_followed(fake_nodes):
    """After the leader dies, its followers name it until their election
    timers fire. The client must not go back to it: it asks the followers
    again until one names the new leader."""
    dead = fake_nodes()                                    # never answers
    new_leader = fake_nodes(lambda count, request: {"ok": True, "result": "v"})
    follower = fake_nodes(lambda count, request: raft.not_leader(
        dead.address if count <= 5 else new_leader.address))
    # The new leader is not in the list: only the follower can lead the way.
    client = raft.RaftClient([dead.address, follower.address], timeout=5)
    try:
        client.leader = dead.address                       # it led until it died
        assert client.get("x") == "v"
    finally:
        client.close()
    assert len(dead.requests) == 1
    assert len(follower.requests) == 6
    assert client.leader == new_leader.address


def test_a_leader_not_in_the_peer_list_is_followed(fake_nodes):
    """A client that knows only a follower still reaches the leader it names."""
    leader = fake_nodes(lambda count, request: {"ok": True, "result": None})
    follower = fake_nodes(lambda count, request: raft.not_leader(leader.address))
    with raft.RaftClient([follower.address], timeout=5) as client:
        client.set("x", "1")
        assert client.leader == leader.address
    assert [r["op"] for r in leader.requests] == [["set", "x", "1"]]


def test_a_retry_keeps_its_sequence_number(fake_nodes):
    """The first copy is lost (no answer); the retry to the next node carries
    the same client id and seq, which is what makes it at-most-once."""
    silent = fake_nodes()
    leader = fake_nodes(lambda count, request: {"ok": True, "result": 3})
    with raft.RaftClient([silent.address, leader.address], timeout=5) as client:
        assert client.incr("n", 3) == 3
    (lost,), (retry,) = silent.requests, leader.requests
    assert (lost["client_id"], lost["seq"]) == (retry["client_id"], retry["seq"])


def test_an_error_answer_raises_raft_error_with_its_words(fake_nodes):
    leader = fake_nodes(lambda count, request: {"ok": False, "error": "the value is not an integer"})
    with raft.RaftClient([leader.address], timeout=5) as client:
        with pytest.raises(raft.RaftError, match="the value is not an integer"):
            client.incr("word")


def test_no_answer_at_all_is_cluster_unavailable_within_the_timeout(fake_nodes):
    silent = fake_nodes()
    with raft.RaftClient([silent.address], timeout=0.5) as client:
        with pytest.raises(raft.ClusterUnavailable, match="outcome is unknown"):
            client.get("x")


def test_a_leader_that_missed_one_reply_is_trusted_again(fake_nodes):
    """One lost datagram must not make the client shun a live leader for
    good: once the distrust expires, the followers' hint is followed."""
    leader = fake_nodes(lambda count, request: None if count == 1 else {"ok": True, "result": "v"})
    follower = fake_nodes(lambda count, request: raft.not_leader(leader.address))
    with raft.RaftClient([leader.address, follower.address], timeout=5) as client:
        started = time.monotonic()
        assert client.get("x") == "v"
        assert time.monotonic() - started < 2 * raft.RaftClient.DISTRUST_SECONDS + 0.5
    assert len(leader.requests) == 2
