"""Real faults on real processes: a cluster partitioned by taking links down.

Three `python raft.py PORT --host ADDRESS` processes, each in its own network
namespace with its own address, joined by a bridge that lives in a fourth
namespace. The tests' clients run in that bridge namespace too, so no link or
address is added to the machine's own namespace, and two runs (names carry
the pid and a random part) never share a name or a link:

      namespace rb-ID (clients)              namespace rnK-ID (node K)
    +----------------------------+          +-------------------------+
    | bridge br-ID 10.A.B.100/24 |          |                         |
    |   port vK-ID  <--- veth ---+----------+-> eK-ID  10.A.B.K/24    |
    | agent: RaftClient threads  |          | python raft.py PORT     |
    +----------------------------+          |   --host 10.A.B.K       |
                                            +-------------------------+

A partition is `ip link set vK-ID down` on the bridge side: node K hears
nobody and nobody hears it. A heal is `up` again. Clients in the bridge
namespace run random set/get/incr/del on two keys before, during and after
the partition; a client in the cut-off node's namespace keeps asking that node
alone (it must never get an answer); the whole history must be linearizable
(tests/linearizability.py), and after the heal every node must reach the same
commit index and apply it.

The test process stays in its own namespace: it talks to the nodes through
"agents", small processes started by `ip netns exec NS python THIS_FILE agent`
that take one JSON command per line on stdin and answer one JSON line on
stdout. They are stopped by PID, and every namespace is deleted (taking its
links with it) when the test ends, passed or not.

Needs root, iproute2 (`ip`), and a kernel that lets us create namespaces,
bridges and veth pairs; otherwise the tests are skipped with the reason.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parent.parent
for path in (str(ROOT), str(HERE.parent)):      # when run as an agent script
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402

import kv  # noqa: E402
import linearizability  # noqa: E402
import raft  # noqa: E402
from conftest import FAST, RAFT_PY, stop_process, wait_until  # noqa: E402

IP_TIMEOUT_S = 10.0             # one `ip` command
AGENT_REPLY_S = 10.0            # one agent command (a status sweep, or stop)
STATUS_TIMEOUT_S = 0.3          # one status() probe from an agent
CLIENT_TIMEOUT_S = 1.5          # each workload call; then ClusterUnavailable
MINORITY_TIMEOUT_S = 1.0        # the cut-off node's client
PHASE_TIMEOUT_S = 10.0          # each wait for progress
OPS_PER_PHASE = 20              # acknowledged writes wanted in each phase
KEYS = ("a", "b")


# ===========================================================================
# The agent: runs inside a namespace, drives RaftClients, answers on stdout
# ===========================================================================

class Workload:
    """Client threads, one RaftClient each, running random operations and
    recording each as {client, op, call, ret, result, error}: ret is None
    when the call raised ClusterUnavailable (its outcome is unknown)."""

    def __init__(self, peers, clients: int, timeout: float, label: str):
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.history: list[dict] = []
        self.threads = [threading.Thread(target=self.run, args=(peers, timeout, f"{label}{n}"),
                                         daemon=True) for n in range(1, clients + 1)]
        for thread in self.threads:
            thread.start()

    def run(self, peers, timeout: float, name: str) -> None:
        rng = random.Random()
        with raft.RaftClient(peers, timeout=timeout) as client:
            while not self.stopping.is_set():
                self.record(name, client, self.random_op(rng))
                self.stopping.wait(rng.uniform(0.002, 0.01))    # pacing, not synchronisation

    @staticmethod
    def random_op(rng: random.Random) -> list:
        key = rng.choice(KEYS)
        verb = rng.choices(["get", "set", "incr", "del"], weights=[4, 3, 3, 1])[0]
        if verb == "set":
            return ["set", key, str(rng.randrange(100))]
        if verb == "incr":
            return ["incr", key, rng.randrange(1, 4)]
        return [verb, key]

    def record(self, name: str, client: raft.RaftClient, op: list) -> None:
        entry = {"client": name, "op": op, "call": time.monotonic(), "ret": None,
                 "result": None, "error": None}
        try:
            if op[0] == "set":
                entry["result"] = client.set(op[1], op[2])
            elif op[0] == "get":
                entry["result"] = client.get(op[1])
            elif op[0] == "incr":
                entry["result"] = client.incr(op[1], op[2])
            else:
                entry["result"] = client.delete(op[1])
            entry["ret"] = time.monotonic()
        except raft.ClusterUnavailable:
            pass                                                # indeterminate
        except raft.RaftError as error:
            entry["ret"], entry["error"] = time.monotonic(), str(error)
        with self.lock:
            self.history.append(entry)

    def counts(self, since: float) -> dict:
        with self.lock:
            done = list(self.history)
        answered = [e for e in done if e["ret"] is not None and e["error"] is None]
        return {"done": len(done), "answered": len(answered),
                "writes_since": sum(1 for e in answered
                                    if e["op"][0] != "get" and e["call"] >= since)}

    def stop(self) -> list[dict]:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        with self.lock:
            return list(self.history)


def probe(address: str, timeout: float) -> dict | None:
    with raft.RaftClient([address], timeout=timeout) as client:
        try:
            return client.status(address)
        except raft.ClusterUnavailable:
            return None


def agent_main() -> int:
    """One JSON command per stdin line, one JSON reply per stdout line."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    workload: Workload | None = None
    for line in iter(sys.stdin.readline, ""):
        command = json.loads(line)
        what = command["cmd"]
        if what == "statuses":
            reply = {"statuses": [probe(a, command["timeout"]) for a in command["addresses"]]}
        elif what == "start":
            workload = Workload(command["peers"], command["clients"], command["timeout"],
                                command["label"])
            reply = {"started": True}
        elif what == "counts":
            reply = workload.counts(command["since"])
        elif what == "stop":
            reply = {"history": workload.stop()}
        elif what == "exit":
            return 0
        else:
            reply = {"error": f"unknown command {what!r}"}
        print(json.dumps(reply), flush=True)
    return 0


# ===========================================================================
# The test side: namespaces, links, node processes, agents
# ===========================================================================

def ip(*args: str) -> str:
    """Run one `ip` command; raise with its stderr if it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def run_id() -> str:
    """8 hex characters: this process's pid and a random part, so that two
    runs (even two pytest processes at once) never pick the same names, and
    interface names stay within Linux's 15 characters."""
    return f"{os.getpid():x}"[-5:].rjust(5, "0") + f"{random.randrange(16 ** 3):03x}"


@functools.lru_cache(maxsize=None)
def netns_unavailable() -> str | None:
    """Why these tests cannot run here, or None if they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` command"
    name = f"rp-{run_id()}"
    try:
        ip("netns", "add", name)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"cannot create a network namespace: {error}"
    try:
        ip("-n", name, "link", "add", "pb", "type", "bridge")
        ip("-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pz")
        subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", "pass"],
                       check=True, capture_output=True, timeout=IP_TIMEOUT_S)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        return f"a network namespace works only in part here: {error}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=IP_TIMEOUT_S)
    return None


class Agent:
    """A process in one namespace that runs status probes and workloads."""

    def __init__(self, namespace: str, stderr_path: pathlib.Path, cwd: pathlib.Path):
        self.namespace = namespace
        self.stderr_path = stderr_path
        with open(stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, str(HERE), "agent"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                cwd=cwd, start_new_session=True)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self) -> None:
        for line in self.process.stdout:
            self.replies.put(json.loads(line))
        self.replies.put(None)

    def call(self, reply_within: float = AGENT_REPLY_S, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        try:
            reply = self.replies.get(timeout=reply_within)
        except queue.Empty:
            reply = None
        if reply is None:
            pytest.fail(f"agent in {self.namespace} gave no answer to {command['cmd']} "
                        f"within {reply_within}s; its stderr:\n{self.stderr_tail()}")
        return reply

    def stderr_tail(self) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.process.stdin.flush()
        except OSError:
            pass
        stop_process(self.process, timeout=2.0)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class NetnsCluster:
    """Three nodes in namespaces rn1-ID..rn3-ID on 10.A.B.1..3, bridged in rb-ID."""

    SIZE = 3

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.id = run_id()
        self.bridge_namespace = f"rb-{self.id}"
        self.bridge = f"br-{self.id}"
        self.node_namespaces = [f"rn{k}-{self.id}" for k in range(1, self.SIZE + 1)]
        subnet = f"10.{random.randrange(16, 255)}.{random.randrange(256)}"
        self.port = random.randrange(20000, 60000)      # fresh namespaces: every port is free
        self.hosts = [f"{subnet}.{k}" for k in range(1, self.SIZE + 1)]
        self.addresses = [f"{host}:{self.port}" for host in self.hosts]
        self.bridge_address = f"{subnet}.100/24"
        self.namespaces: list[str] = []     # created so far, deleted at close
        self.nodes: list[subprocess.Popen] = []
        self.agents: list[Agent] = []
        self.ports = self.addresses         # what conftest's failure report looks for

    # -- building -------------------------------------------------------------
    def veth(self, k: int) -> str:
        """Node k's link, bridge side: taking it down cuts node k off."""
        return f"v{k}-{self.id}"

    def build(self) -> None:
        for namespace in [self.bridge_namespace, *self.node_namespaces]:
            ip("netns", "add", namespace)
            self.namespaces.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
        rb = self.bridge_namespace
        ip("-n", rb, "link", "add", self.bridge, "type", "bridge")
        ip("-n", rb, "addr", "add", self.bridge_address, "dev", self.bridge)
        ip("-n", rb, "link", "set", self.bridge, "up")
        for k, (namespace, host) in enumerate(zip(self.node_namespaces, self.hosts), start=1):
            inside = f"e{k}-{self.id}"
            ip("-n", rb, "link", "add", self.veth(k), "type", "veth",
               "peer", "name", inside, "netns", namespace)
            ip("-n", rb, "link", "set", self.veth(k), "master", self.bridge)
            ip("-n", rb, "link", "set", self.veth(k), "up")
            ip("-n", namespace, "addr", "add", f"{host}/24", "dev", inside)
            ip("-n", namespace, "link", "set", inside, "up")

    def cut(self, k: int) -> None:
        ip("-n", self.bridge_namespace, "link", "set", self.veth(k), "down")

    def heal(self, k: int) -> None:
        ip("-n", self.bridge_namespace, "link", "set", self.veth(k), "up")

    # -- processes ------------------------------------------------------------
    def data_dir(self, address: str) -> pathlib.Path:
        return self.root / address.replace(":", "_")

    def start_nodes(self) -> None:
        for namespace, host, address in zip(self.node_namespaces, self.hosts, self.addresses):
            data_dir = self.data_dir(address)
            data_dir.mkdir(parents=True, exist_ok=True)
            others = [a for a in self.addresses if a != address]
            with open(data_dir / "stderr", "ab") as stderr:
                self.nodes.append(subprocess.Popen(
                    ["ip", "netns", "exec", namespace, sys.executable, RAFT_PY, str(self.port),
                     "--host", host, "--peers", ",".join(others), "--no-repl",
                     "--data-dir", str(data_dir), "--log-file", str(data_dir / "node.log"),
                     *FAST],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    cwd=self.root, start_new_session=True))

    def agent(self, namespace: str) -> Agent:
        agent = Agent(namespace, self.root / f"agent-{len(self.agents)}-{namespace}.stderr",
                      self.root)
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        """Stop every process by PID, then delete every namespace (and so
        every link) this cluster created. Tries everything; raises last."""
        problems = []
        try:
            for agent in self.agents:
                agent.close()
            for process in self.nodes:
                if process.poll() is None:
                    process.terminate()
        finally:
            for process in self.nodes:
                try:
                    stop_process(process)
                except (OSError, subprocess.SubprocessError) as error:
                    problems.append(f"pid {process.pid}: {error}")
            self.delete_namespaces(problems)
        if problems:
            raise RuntimeError("teardown: " + "; ".join(problems))

    def delete_namespaces(self, problems: list[str]) -> None:
        for namespace in self.namespaces:
            try:                # anything still inside is ours: the namespace is this run's
                for pid in ip("netns", "pids", namespace).split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                problems.append(str(error))
            try:
                ip("netns", "del", namespace)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                problems.append(str(error))

    def node_stderr(self) -> str:
        parts = []
        for address in self.addresses:
            try:
                text = (self.data_dir(address) / "stderr").read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append(f"{address} stderr:\n{text[-2000:]}")
        return "\n".join(parts)


@pytest.fixture
def netns_cluster(tmp_path, request):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = NetnsCluster(tmp_path)
    request.node.raft_clusters = [cluster]      # node logs in the report on failure
    try:
        cluster.build()
        yield cluster
    finally:
        cluster.close()


# ---------------------------------------------------------------------------
# Observing the cluster through the bridge agent
# ---------------------------------------------------------------------------

def statuses(agent: Agent, addresses) -> list[dict | None]:
    return agent.call(cmd="statuses", addresses=list(addresses),
                      timeout=STATUS_TIMEOUT_S)["statuses"]


def wait_for_leader(agent: Agent, addresses, above_term: int = -1) -> dict:
    """The status of a leader among addresses whose term exceeds above_term."""
    def leader():
        leaders = [s for s in statuses(agent, addresses)
                   if s and s["role"] == "leader" and s["term"] > above_term]
        return max(leaders, key=lambda s: s["term"]) if leaders else None
    return wait_until(leader, PHASE_TIMEOUT_S,
                      lambda: f"a leader among {list(addresses)} in a term above {above_term}; "
                              f"they say {statuses(agent, addresses)}")


def wait_for_writes(agent: Agent, since: float, count: int, what: str) -> None:
    def counts():
        return agent.call(cmd="counts", since=since)
    wait_until(lambda: counts()["writes_since"] >= count, PHASE_TIMEOUT_S,
               lambda: f"{count} acknowledged writes {what}; have {counts()}")


def converged(agent: Agent, addresses):
    """Every node answers, names the same leader, and has applied the same,
    whole commit index."""
    seen = statuses(agent, addresses)
    if any(s is None for s in seen):
        return None
    marks = {(s["leader"], s["commit_index"], s["last_applied"]) for s in seen}
    leader, commit_index, last_applied = next(iter(marks))
    if len(marks) == 1 and leader is not None and commit_index == last_applied:
        return seen
    return None


def check_linearizable(history: list[dict]) -> None:
    operations = [linearizability.Operation(e["client"], e["op"], e["call"], e["ret"],
                                            e["result"], e["error"]) for e in history]
    verdict = linearizability.check(operations, machine=kv.KeyValueStore)
    assert verdict.ok, verdict.explanation


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------

@pytest.mark.process
@pytest.mark.parametrize("victim", ["leader", "follower"])
def test_a_node_cut_off_by_a_downed_link_stays_safe_and_the_majority_goes_on(netns_cluster,
                                                                              victim):
    cluster = netns_cluster
    cluster.start_nodes()
    bridge = cluster.agent(cluster.bridge_namespace)
    wait_for_leader(bridge, cluster.addresses)

    # Before: three clients on the whole cluster.
    started = time.monotonic()
    bridge.call(cmd="start", peers=cluster.addresses, clients=3, timeout=CLIENT_TIMEOUT_S,
                label="c")
    wait_for_writes(bridge, started, OPS_PER_PHASE, "before the partition")

    # During: cut one node's link; a client beside it asks it alone.
    leader = wait_for_leader(bridge, cluster.addresses)
    if victim == "leader":
        k = cluster.addresses.index(leader["id"]) + 1
    else:
        k = next(n for n, a in enumerate(cluster.addresses, start=1) if a != leader["id"])
    cut_off = cluster.addresses[k - 1]
    majority = [a for a in cluster.addresses if a != cut_off]
    cluster.cut(k)
    cut_at = time.monotonic()           # calls from now on cannot reach the cut-off node
    beside = cluster.agent(cluster.node_namespaces[k - 1])
    beside.call(cmd="start", peers=[cut_off], clients=2, timeout=MINORITY_TIMEOUT_S, label="m")

    wait_for_leader(bridge, majority,
                    above_term=leader["term"] if victim == "leader" else leader["term"] - 1)
    wait_for_writes(bridge, cut_at, OPS_PER_PHASE, f"by the majority while {cut_off} is cut off")
    wait_until(lambda: beside.call(cmd="counts", since=cut_at)["done"] >= 4, PHASE_TIMEOUT_S,
               f"four calls by the clients beside {cut_off} to end")
    minority_history = beside.call(cmd="stop")["history"]
    healed_at = time.monotonic()
    cluster.heal(k)

    # After: the clients go on; every node catches up.
    wait_for_writes(bridge, healed_at, OPS_PER_PHASE, f"after {cut_off} is back")
    history = bridge.call(cmd="stop")["history"]
    wait_until(lambda: converged(bridge, cluster.addresses), PHASE_TIMEOUT_S,
               lambda: f"every node to apply the same commit index; they say "
                       f"{statuses(bridge, cluster.addresses)}\n{cluster.node_stderr()}")

    check_linearizable(history + minority_history)
    answered_alone = [e for e in minority_history if e["ret"] is not None]
    assert not answered_alone, (
        f"{cut_off}, cut off from the others, answered {answered_alone}")
    during = [e for e in history if e["ret"] is not None and e["error"] is None
              and e["op"][0] != "get" and cut_at <= e["call"] and e["ret"] <= healed_at]
    assert during, "no write was acknowledged while the majority could still talk"
    refused = [e for e in history if e["error"]]
    assert not refused, f"the cluster refused operations that cannot fail: {refused}"


if __name__ == "__main__" and sys.argv[1:] == ["agent"]:
    sys.exit(agent_main())
