"""Cluster changes with real node processes over real UDP (CONTRACT.md,
"Cluster changes"): log compaction (--snapshot-every, InstallSnapshot),
single-server membership changes (--join, add_member, remove_member),
pre-vote with the §4.2.3 lease, and leadership transfer (also on SIGTERM).

Every node is a `python raft.py` process on a free port with its data dir
under tmp_path; every process is stopped by PID at teardown (conftest's
Cluster and spawn); every wait has a deadline (wait_until). SIGKILL is a
crash; SIGTERM is a planned stop. Figures worth knowing (handover time,
catch-up time) are printed: run with -s to see them.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import raft
from conftest import FAST, RAFT_PY, Cluster, LineReader, free_ports, run_raft, wait_until

pytestmark = pytest.mark.process


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

class ElasticCluster(Cluster):
    """conftest's Cluster, plus nodes started later with --join. The founders
    keep their --peers (each other); a joined node names only its contact."""

    def __init__(self, root, n, extra_args):
        super().__init__(root, n, extra_args)
        self.founders = list(self.ports)
        self.joined: dict[int, str] = {}

    def command(self, port: int) -> list[str]:
        if port in self.joined:
            where = ["--join", self.joined[port]]
        else:
            where = ["--peers", ",".join(str(p) for p in self.founders if p != port)]
        return [sys.executable, RAFT_PY, str(port), *where, "--no-repl",
                "--data-dir", str(self.data_dir(port)), *self.extra_args]

    def join(self, contact_port: int) -> int:
        """Start a new, empty node with --join 127.0.0.1:CONTACT; its port."""
        port = free_ports(1)[0]
        while port in self.ports:
            port = free_ports(1)[0]
        self.ports.append(port)
        self.addresses.append(self.address(port))
        self.joined[port] = self.address(contact_port)
        self.start(port)
        return port

    def evidence(self, ports=None) -> str:
        """The last lines of each node's stderr and node.log, for a failure message."""
        parts = []
        for port in self.ports if ports is None else ports:
            parts.append(f"--- {port} stderr ---\n{self.stderr_tail(port, 10)}")
            try:
                log = (self.data_dir(port) / "node.log").read_text(errors="replace")
            except OSError:
                log = "(no node.log)"
            parts.append(f"--- {port} node.log ---\n" + "\n".join(log.splitlines()[-15:]))
        return "\n".join(parts)


@pytest.fixture
def make_cluster(tmp_path, request):
    """make(n, extra_args, start=True) -> an ElasticCluster with a leader
    elected. Registered with conftest's failure report (node logs shown);
    every process of every cluster is stopped by PID at teardown."""
    clusters: list[ElasticCluster] = []
    request.node.raft_clusters = clusters

    def make(n: int = 3, extra_args=FAST, start: bool = True) -> ElasticCluster:
        cluster = ElasticCluster(tmp_path / f"cluster{len(clusters)}", n, extra_args)
        clusters.append(cluster)
        if start:
            cluster.start_all()
            cluster.wait_for_leader(timeout=15)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


class Load:
    """One thread per key, each with its own RaftClient, doing incr on its
    key in a loop and recording every acknowledged value. ClusterUnavailable
    is an unknown outcome (counted); any other exception is a failure."""

    def __init__(self, addresses, keys, timeout: float = 5.0):
        self.addresses = list(addresses)
        self.keys = list(keys)
        self.timeout = timeout
        self.stopping = threading.Event()
        self.acked = {key: [] for key in self.keys}
        self.unknown = {key: 0 for key in self.keys}
        self.failures = {key: [] for key in self.keys}
        self.threads = [threading.Thread(target=self.run, args=(key,), daemon=True,
                                         name=f"load {key}") for key in self.keys]

    def run(self, key: str) -> None:
        with raft.RaftClient(self.addresses, timeout=self.timeout) as client:
            while not self.stopping.is_set():
                try:
                    value = client.incr(key)
                except raft.ClusterUnavailable:
                    self.unknown[key] += 1
                except Exception as error:              # noqa: BLE001 - recorded, then checked
                    self.failures[key].append(f"{time.monotonic():.3f}: {error!r}")
                else:
                    self.acked[key].append(value)

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the threads; each finishes its call within the client's timeout."""
        self.stopping.set()
        deadline = time.monotonic() + self.timeout + 3.0
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"load threads did not stop within the client timeout: {alive}"

    def count(self) -> int:
        return sum(len(values) for values in self.acked.values())

    def wait_for_progress(self, more: int, timeout: float = 10.0) -> None:
        """Wait until every thread has had `more` more increments acknowledged."""
        targets = {key: len(self.acked[key]) + more for key in self.keys}
        wait_until(lambda: all(len(self.acked[k]) >= targets[k] for k in self.keys), timeout,
                   lambda: f"load to make progress: {self.summary()}")

    def summary(self) -> str:
        return ", ".join(f"{k}: {len(self.acked[k])} acked, {self.unknown[k]} unknown, "
                         f"{len(self.failures[k])} failed" for k in self.keys)

    def check(self, client: raft.RaftClient) -> dict:
        """Nothing acknowledged is lost, nothing is applied twice: each
        final value is the number of acknowledged incrs, plus at most the
        number of calls whose outcome is unknown. Returns the final values."""
        finals = {}
        for key in self.keys:
            assert not self.failures[key], (key, self.failures[key])
            acked = self.acked[key]
            assert acked, f"no incr of {key} was acknowledged"
            assert all(a < b for a, b in zip(acked, acked[1:])), (
                f"{key}: acknowledged values not strictly increasing: {acked}")
            final = client.get(key)
            assert len(acked) <= final <= len(acked) + self.unknown[key], (
                f"{key}: final value {final}, {len(acked)} acknowledged, "
                f"{self.unknown[key]} unknown")
            assert acked[-1] <= final, (key, acked[-1], final)
            finals[key] = final
        return finals


def read_snapshot_file(data_dir) -> tuple[dict, dict]:
    """The header and the state-machine record of a node's snapshot.jsonl."""
    lines = (data_dir / "snapshot.jsonl").read_text().splitlines()
    return json.loads(lines[0]), json.loads(lines[1])["state"]


def log_indexes(data_dir) -> list[int]:
    path = data_dir / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["index"] for line in path.read_text().splitlines() if line]


def assert_nodes_agree(cluster: ElasticCluster, ports, admin: raft.RaftClient,
                       timeout: float = 15.0) -> tuple[int, dict, dict]:
    """After a write, every node in ports applies the same last index, and
    each node's own state machine (made to compact now, so its snapshot file
    shows its state) holds the same data. Returns (index, header, data)."""
    admin.set("agreement-marker", str(time.monotonic()))
    leader = cluster.wait_for_leader(among=ports)
    target = cluster.wait_status(leader)["commit_index"]

    def agreed():
        statuses = [cluster.status(p) for p in ports]
        if any(s is None for s in statuses):
            return None
        applied = {s["last_applied"] for s in statuses}
        return statuses if len(applied) == 1 and min(applied) >= target else None
    wait_until(agreed, timeout, lambda: "every node to apply the same last index >= "
               f"{target}: " + str({p: (cluster.status(p) or {}).get("last_applied")
                                    for p in ports}) + "\n" + cluster.evidence(ports))

    indexes, headers, states = {}, {}, {}
    for port in ports:
        indexes[port] = admin.snapshot(cluster.address(port))
        headers[port], states[port] = read_snapshot_file(cluster.data_dir(port))
        assert headers[port]["index"] == indexes[port], (port, headers[port], indexes[port])
    assert len(set(indexes.values())) == 1, f"snapshot indexes differ: {indexes}"
    first = ports[0]
    for port in ports[1:]:
        assert states[port] == states[first], (
            f"state machines differ at index {indexes[first]}: "
            f"{first}: {states[first]} vs {port}: {states[port]}")
        assert headers[port]["config"] == headers[first]["config"], (port, headers)
    return indexes[first], headers[first], states[first]["data"]


def report(text: str) -> None:
    print(f"\n[measured] {text}", flush=True)


# ---------------------------------------------------------------------------
# 1. Grow 3 -> 5 under client load
# ---------------------------------------------------------------------------

def test_grow_from_three_to_five_with_join_under_load_loses_nothing(make_cluster):
    cluster = make_cluster(3, [*FAST, "--snapshot-every", "50"])
    founders = list(cluster.ports)
    admin = cluster.client(timeout=10)

    with Load(cluster.addresses, ["grow-a", "grow-b", "grow-c"]) as load:
        load.wait_for_progress(40)        # > 100 entries: the founders have compacted
        leader = cluster.wait_for_leader()
        started = time.monotonic()
        joiners = [cluster.join(founders[0]), cluster.join(founders[1])]
        everyone = sorted(cluster.addresses)

        def grown():
            status = cluster.status(cluster.wait_for_leader(among=founders))
            return (status and sorted(status["members"]) == everyone
                    and not status["learners"])
        wait_until(grown, 20, lambda: f"the leader to list 5 voters: "
                   f"{cluster.status(leader)}\n{cluster.evidence(joiners)}")
        for port in joiners:          # the founders compacted: a snapshot came first
            node_log = (cluster.data_dir(port) / "node.log").read_text(errors="replace")
            assert "installs the leader's snapshot" in node_log, cluster.evidence([port])
        report(f"two --join nodes became voters {time.monotonic() - started:.2f}s after "
               f"starting, under load ({load.summary()})")
        load.wait_for_progress(20)        # the five-node cluster takes writes too
    assert load.count() > 0

    for port in cluster.ports:
        def lists_five(port=port):
            status = cluster.status(port)
            return status if status and sorted(status["members"]) == everyone else None
        status = wait_until(lists_five, 10, lambda: f"{port} to list 5 voters: "
                            f"{cluster.status(port)}")
        assert status["learners"] == [], status
    for port in joiners:
        stderr = cluster.stderr_path(port).read_text(errors="replace")
        assert "joined the cluster: now a voter" in stderr, cluster.evidence([port])

    finals = load.check(admin)
    index, header, data = assert_nodes_agree(cluster, cluster.ports, admin)
    assert sorted(header["config"]["voters"]) == everyone, header
    for key, final in finals.items():
        assert data[key] == final, (key, data.get(key), final)
    report(f"grow: all 5 nodes applied up to {index}; finals {finals}; "
           f"unknown outcomes {load.unknown}")

    # The CLI client, through a node that joined, reads the same values.
    for key, final in finals.items():
        result = run_raft(["client", "--peers", str(joiners[-1]), "get", key],
                          cwd=cluster.root)
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{final}\n", ""), result


# ---------------------------------------------------------------------------
# 2. Shrink 5 -> 3 under client load; the removed nodes keep running
# ---------------------------------------------------------------------------

def test_shrink_from_five_to_three_under_load_and_the_removed_nodes_do_not_disturb(
        make_cluster):
    cluster = make_cluster(5, [*FAST, "--snapshot-every", "50"])
    admin = cluster.client(timeout=10)

    with Load(cluster.addresses, ["shrink-a", "shrink-b", "shrink-c"]) as load:
        load.wait_for_progress(10)
        old_leader = cluster.wait_for_leader()
        follower = next(p for p in cluster.ports if p != old_leader)
        admin.remove_member(cluster.address(follower))
        load.wait_for_progress(5)
        started = time.monotonic()
        admin.remove_member(cluster.address(old_leader))   # it steps down once committed
        removed = [follower, old_leader]
        remaining = [p for p in cluster.ports if p not in removed]
        leader = cluster.wait_for_leader(among=remaining)
        report(f"removing the leader: {cluster.address(leader)} led "
               f"{time.monotonic() - started:.2f}s after remove_member was called")
        three = sorted(cluster.address(p) for p in remaining)
        for port in remaining:
            wait_until(lambda port=port: sorted((cluster.status(port) or {}).get("members", []))
                       == three,
                       10, lambda port=port: f"{port} to list 3 voters: {cluster.status(port)}")
        load.wait_for_progress(5)

        # The removed nodes, still running, hear no leader: their elections
        # must not disturb the three (pre-vote, and the lease of §4.2.3).
        term = cluster.status(leader)["term"]
        removed_terms = {p: cluster.status(p)["term"] for p in removed}
        quiet_until = time.monotonic() + 3.0
        while time.monotonic() < quiet_until:
            for port in remaining:
                status = cluster.status(port)
                assert status is not None, f"{port} stopped answering"
                assert status["term"] == term, (
                    f"term moved from {term} to {status['term']} on {port} after the removal:"
                    f"\n{cluster.evidence()}")
                assert status["role"] == ("leader" if port == leader else "follower"), status
            for port in removed:
                assert cluster.is_running(port), cluster.evidence([port])
            time.sleep(0.1)
        load.wait_for_progress(5)
    after = {p: cluster.status(p)["term"] for p in removed}
    report(f"shrink: leader term {term} unchanged for 3s; removed nodes' terms "
           f"{removed_terms} before, {after} after")
    # They may learn the cluster's term from refusals, never go past it.
    assert all(t <= term for t in after.values()), (term, after)

    with raft.RaftClient([cluster.address(p) for p in remaining], timeout=10) as reader:
        load.check(reader)
        assert_nodes_agree(cluster, remaining, reader)
    for port in remaining:
        assert sorted(cluster.status(port)["members"]) == three


# ---------------------------------------------------------------------------
# 3. A follower's data dir is wiped: it comes back through InstallSnapshot
# ---------------------------------------------------------------------------

def write_entries_and_wipe_a_follower(cluster: ElasticCluster) -> tuple[int, int, int]:
    """~220 entries on a cluster compacting every 20, then SIGKILL a follower
    and delete its data dir. Returns (leader, wiped follower, commit index)."""
    writers = [cluster.client(timeout=10) for _ in range(4)]

    def write(client, number):
        for step in range(50):
            client.incr("wiped-count")
            if step % 10 == 0:
                client.set(f"wiped-{number}-{step}", f"value-{number}-{step}")
    threads = [threading.Thread(target=write, args=(c, n)) for n, c in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert writers[0].get("wiped-count") == 200

    leader = cluster.wait_for_leader()
    follower = next(p for p in cluster.ports if p != leader)
    target = cluster.wait_status(leader)["commit_index"]
    assert target >= 220
    assert cluster.wait_status(leader)["snapshot_index"] > 0
    cluster.wait_applied(follower, target)

    cluster.kill(follower)                                 # SIGKILL
    shutil.rmtree(cluster.data_dir(follower))
    assert not cluster.data_dir(follower).exists()
    return leader, follower, target


def assert_came_back_through_a_snapshot(cluster: ElasticCluster, port: int, status: dict):
    """Its state came as the leader's snapshot, its log holds only what came
    after, and reads after a write through it see everything."""
    assert status["snapshot_index"] > 0, status
    header, _ = read_snapshot_file(cluster.data_dir(port))
    indexes = log_indexes(cluster.data_dir(port))
    assert header["index"] >= status["snapshot_index"]
    assert all(index > header["index"] for index in indexes), (header, indexes)
    assert len(indexes) < 40, f"log.jsonl holds {len(indexes)} entries after the wipe"
    node_log = (cluster.data_dir(port) / "node.log").read_text(errors="replace")
    assert "installs the leader's snapshot" in node_log, node_log[-3000:]

    via_wiped = cluster.client([port])
    assert via_wiped.incr("wiped-count") == 201
    assert via_wiped.get("wiped-count") == 201
    assert via_wiped.get("wiped-3-40") == "value-3-40"
    assert_nodes_agree(cluster, cluster.ports, via_wiped)


def test_a_wiped_follower_restarted_with_the_same_peers_comes_back_through_a_snapshot(
        make_cluster):
    cluster = make_cluster(3, [*FAST, "--snapshot-every", "20"])
    leader, follower, target = write_entries_and_wipe_a_follower(cluster)
    started = time.monotonic()
    cluster.start(follower)                                # same port, same --peers
    status = cluster.wait_applied(follower, target, timeout=5)
    report(f"wiped follower (same --peers): caught up to index {target} in "
           f"{time.monotonic() - started:.2f}s")
    assert_came_back_through_a_snapshot(cluster, follower, status)


def test_a_wiped_follower_removed_and_rejoined_comes_back_through_a_snapshot(make_cluster):
    """The way Raft supports: a server that lost its disk is a new server.
    Remove it, then start it empty on the same port with --join."""
    cluster = make_cluster(3, [*FAST, "--snapshot-every", "20"])
    leader, follower, target = write_entries_and_wipe_a_follower(cluster)
    admin = cluster.client(timeout=10)
    admin.remove_member(cluster.address(follower))
    remaining = sorted(cluster.address(p) for p in cluster.ports if p != follower)
    assert sorted(cluster.status(leader)["members"]) == remaining

    cluster.joined[follower] = cluster.address(leader)
    started = time.monotonic()
    cluster.start(follower)                                # same port, --join
    status = cluster.wait_applied(follower, target, timeout=10)
    caught_up = time.monotonic() - started
    everyone = sorted(cluster.addresses)
    wait_until(lambda: sorted((cluster.status(leader) or {}).get("members", [])) == everyone,
               10, lambda: f"the rejoined node to be a voter: {cluster.status(leader)}")
    voter = time.monotonic() - started
    report(f"wiped follower (removed, rejoined with --join): applied up to index {target} "
           f"{caught_up:.2f}s after its start (process start included), a voter after "
           f"{voter:.2f}s; its snapshot_index is {status['snapshot_index']}")
    assert_came_back_through_a_snapshot(cluster, follower, status)


# ---------------------------------------------------------------------------
# 4. Transfer, then SIGTERM the leader: no client request fails
# ---------------------------------------------------------------------------

# Slow elections: without a handover the cluster would wait at least 1 s
# (the minimum election timeout) for a new leader after the SIGTERM, so a
# new leader within 1 s shows the stopping leader handed leadership over.
SLOW_ELECTIONS = ["--election-timeout", "1000,2000", "--heartbeat", "50"]


def test_transfer_then_sigterm_of_the_leader_hands_over_and_no_request_fails(make_cluster):
    cluster = make_cluster(3, SLOW_ELECTIONS)
    admin = cluster.client(timeout=5)
    with Load(cluster.addresses, ["transfer-count"], timeout=5.0) as load:
        load.wait_for_progress(10)
        first_leader = cluster.wait_for_leader()
        chosen = next(p for p in cluster.ports if p != first_leader)
        admin.transfer_leadership(cluster.address(chosen))
        status = cluster.status(chosen)
        assert status["role"] == "leader", status
        term = status["term"]
        load.wait_for_progress(10)

        assert cluster.status(chosen)["role"] == "leader"
        others = [p for p in cluster.ports if p != chosen]
        cluster.processes[chosen].send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        def new_leader():
            for port in others:
                status = cluster.status(port)
                if status and status["role"] == "leader" and status["term"] > term:
                    return status
            return None
        successor = wait_until(new_leader, 5, interval=0.005,
                               message=lambda: f"a new leader after the SIGTERM\n"
                                               f"{cluster.evidence()}")
        handover = time.monotonic() - stopped_at
        report(f"SIGTERM of the leader -> {successor['id']} leads in term "
               f"{successor['term']} after {handover * 1000:.0f} ms")
        assert handover < 1.0, f"no new leader within 1s of the SIGTERM ({handover:.2f}s)"
        assert successor["term"] == term + 1, (term, successor)

        assert cluster.processes[chosen].wait(timeout=5) == 0
        node_log = (cluster.data_dir(chosen) / "node.log").read_text(errors="replace")
        assert "stopping: hands leadership over first" in node_log, cluster.evidence([chosen])
        assert "sends TimeoutNow to" in node_log.split("stopping: hands leadership")[-1]

        load.wait_for_progress(10)
        successor_port = cluster.port_of(successor["id"])
        cluster.start(chosen)                              # same data dir
        cluster.wait_applied(chosen, cluster.wait_status(successor_port)["commit_index"],
                             timeout=10)
        load.wait_for_progress(10)
        assert cluster.wait_for_leader() == successor_port

    assert load.failures == {"transfer-count": []}, load.failures
    assert load.unknown == {"transfer-count": 0}, load.unknown
    acked = load.acked["transfer-count"]
    assert acked == list(range(1, len(acked) + 1)), "an increment was lost or doubled"
    assert load.check(admin) == {"transfer-count": len(acked)}
    report(f"transfer/restart: {len(acked)} increments, none failed")


# ---------------------------------------------------------------------------
# 5. The command line and the node prompt
# ---------------------------------------------------------------------------

def test_join_with_peers_is_a_usage_error(tmp_path):
    port, contact, other = free_ports(3)
    result = run_raft([port, "--join", f"127.0.0.1:{contact}", "--peers", str(other),
                       "--data-dir", tmp_path / "data"], cwd=tmp_path, timeout=15)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "--join" in lines[0] and "--peers" in lines[0], lines
    assert result.stdout == ""


class Prompt:
    """A node started with its prompt on a pipe: one command at a time, each
    answered by one line on stdout."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.reader = LineReader(process.stdout)

    def ask(self, command: str, timeout: float = 15.0) -> str:
        seen = len(self.reader.lines)
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        wait_until(lambda: len(self.reader.lines) > seen, timeout,
                   lambda: f"an answer to {command!r}; stdout so far:\n{self.reader.text()}")
        return self.reader.lines[seen]


def test_node_prompt_snapshot_add_transfer_and_remove(make_cluster, spawn, request):
    cluster = make_cluster(3, FAST, start=False)
    prompt_port, *others = cluster.ports
    for port in others:
        cluster.start(port)
    cluster.wait_for_leader(among=others)

    with open(cluster.stderr_path(prompt_port), "ab") as stderr:
        process = spawn([prompt_port, "--peers", ",".join(map(str, others)),
                         "--data-dir", cluster.data_dir(prompt_port), *FAST],
                        cwd=cluster.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=stderr, text=True)
    prompt = Prompt(process)
    prompt.reader.wait_for(f"Raft node 127.0.0.1:{prompt_port}", 10)

    # A new, empty node that cannot add itself: its --join contact is a port
    # this test holds and never answers on, so the prompt's `add` adds it.
    silent_contact = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    request.addfinalizer(silent_contact.close)
    silent_contact.bind(("127.0.0.1", 0))
    new_port = free_ports(1)[0]
    cluster.ports.append(new_port)
    cluster.addresses.append(cluster.address(new_port))
    cluster.joined[new_port] = f"127.0.0.1:{silent_contact.getsockname()[1]}"
    cluster.start(new_port)
    new = cluster.address(new_port)
    founders = sorted(cluster.address(p) for p in cluster.founders)

    assert prompt.ask("set k v") == "OK"
    wait_until(lambda: (cluster.status(prompt_port) or {}).get("last_applied", 0) >= 1, 5,
               "the prompt's node to apply the write")
    answer = prompt.ask("snapshot")
    match = re.fullmatch(r"snapshot at index (\d+)", answer)
    assert match and int(match.group(1)) >= 1, answer
    assert cluster.status(prompt_port)["snapshot_index"] == int(match.group(1))

    assert prompt.ask(f"add {new}") == "OK"
    four = sorted(founders + [new])
    wait_until(lambda: sorted((cluster.status(new_port) or {}).get("members", [])) == four, 10,
               lambda: f"the new node to list 4 voters: {cluster.status(new_port)}")
    assert cluster.client([new_port]).get("k") == "v"

    leader = cluster.wait_for_leader(among=cluster.founders)
    target = cluster.address(next(p for p in others if p != leader))
    assert prompt.ask(f"transfer {target}") == f"OK: {target} leads"
    assert cluster.status(cluster.port_of(target))["role"] == "leader"

    assert prompt.ask(f"remove {new}") == "OK"
    wait_until(lambda: sorted((cluster.status(prompt_port) or {}).get("members", []))
               == founders, 10,
               lambda: f"the prompt's node to list 3 voters: {cluster.status(prompt_port)}")

    stranger = f"127.0.0.1:{free_ports(1)[0]}"
    for non_member in (stranger, new):
        answer = prompt.ask(f"transfer {non_member}")
        assert answer.startswith("error: "), answer
    assert cluster.status(cluster.port_of(target))["role"] == "leader"

    process.stdin.write("quit\n")
    process.stdin.flush()
    assert process.wait(timeout=10) == 0
    prompt.reader.thread.join(timeout=5)
    lines = prompt.reader.lines
    assert len(lines) == 1 + 7, lines          # the banner, then one line per command
    assert sum(line.startswith("error:") for line in lines) == 2, lines
