"""Shared helpers for the tests that run real node processes over real UDP.

Rules every helper here keeps, so two test runs never collide and a failing
test never leaves a process behind:

  * ports come from the kernel (bind UDP port 0 on 127.0.0.1, read, close);
  * every process started is stopped by its PID at teardown: SIGTERM, then
    SIGKILL if it has not exited within a deadline;
  * every wait polls a condition with a deadline; no bare sleep synchronises;
  * data dirs live under pytest's tmp_path.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import raft

# Children inherit an ignored SIGINT (a runner started in the background by a
# script has one); the tests that send SIGINT need its default disposition.
# A Python-level handler here becomes SIG_DFL in every child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = pathlib.Path(__file__).resolve().parent.parent
RAFT_PY = str(ROOT / "raft.py")

# Short timings keep the suite fast; every bound below is derived from them.
ELECTION_TIMEOUT_MS = (150, 300)
HEARTBEAT_MS = 30
MAX_ELECTION_TIMEOUT_S = ELECTION_TIMEOUT_MS[1] / 1000
FAST = ["--election-timeout", "%d,%d" % ELECTION_TIMEOUT_MS, "--heartbeat", str(HEARTBEAT_MS)]

POLL_S = 0.02                  # how often a wait looks at its condition
STATUS_TIMEOUT_S = 0.3         # one status() probe; RaftClient.status sends once
STOP_TIMEOUT_S = 5.0           # SIGTERM, then SIGKILL after this


# ---------------------------------------------------------------------------
# Ports, waits, processes
# ---------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """n distinct free UDP ports on 127.0.0.1 (all bound at once, then closed)."""
    return raft.free_udp_ports(n)


def consecutive_free_ports(n: int, attempts: int = 200) -> int:
    """A base port B such that B .. B+n-1 are all free UDP ports (for demo)."""
    for _ in range(attempts):
        base = free_ports(1)[0]
        if base + n - 1 > 65535:
            continue
        held = []
        try:
            for port in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {n} consecutive free UDP ports found")


def wait_until(predicate, timeout: float, message: str = "condition", interval: float = POLL_S):
    """Poll predicate() until it returns something truthy; return that.
    Fails the test (naming message and timeout) at the deadline; message may
    be a callable, evaluated then (to show the state at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:g}s waiting for {text}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM,
                 timeout: float = STOP_TIMEOUT_S) -> int:
    """Send sig to this PID; SIGKILL if it has not exited by the deadline.
    Returns the exit status (negative: killed by that signal)."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return process.returncode


def run_raft(args, *, cwd, input: str | None = None, timeout: float = 30.0,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python raft.py ARGS` to completion (killed if it overruns timeout)."""
    return subprocess.run([sys.executable, RAFT_PY, *map(str, args)], cwd=cwd, input=input,
                          capture_output=True, text=True, timeout=timeout, env=env)


def pid_is_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rpartition(b")")[2].split()[0]
    return state not in (b"Z", b"X")


def pids_with_parent_pid_argument(parent_pid: int) -> list[int]:
    """Live processes whose command line holds `--parent-pid PARENT_PID`:
    the nodes that `raft.py demo` (or bench) started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for i, word in enumerate(argv[:-1]):
            if word == b"--parent-pid" and argv[i + 1] == str(parent_pid).encode():
                if pid_is_alive(int(entry)):
                    found.append(int(entry))
                break
    return found


def kill_pids(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LineReader:
    """Collects a Popen pipe's lines on a thread, so tests can wait for a
    line with a deadline instead of blocking in readline()."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> str:
        def found():
            with self.lock:
                return next((line for line in self.lines if needle in line), None)
        return wait_until(found, timeout, f"a line containing {needle!r}; got:\n{self.text()}")


# ---------------------------------------------------------------------------
# Status probes
# ---------------------------------------------------------------------------

def probe_status(address: str, timeout: float = STATUS_TIMEOUT_S) -> dict | None:
    """One node's status(), or None if it does not answer within timeout."""
    with raft.RaftClient([address], timeout=timeout) as client:
        try:
            return client.status(address)
        except raft.ClusterUnavailable:
            return None


def find_leader(addresses, timeout: float = 10.0) -> str:
    """The id of a node that says it leads (the highest term if several do:
    a deposed leader may not know yet). Fails the test at the deadline."""
    def leader():
        statuses = [s for s in (probe_status(a) for a in addresses) if s]
        leaders = [s for s in statuses if s["role"] == "leader"]
        return max(leaders, key=lambda s: s["term"])["id"] if leaders else None
    return wait_until(leader, timeout, f"a leader among {list(addresses)}")


# ---------------------------------------------------------------------------
# A cluster of real node processes
# ---------------------------------------------------------------------------

class Cluster:
    """N `python raft.py PORT --peers ... --no-repl` processes on free ports,
    each with its own data dir under root. Nodes are named by port."""

    def __init__(self, root: pathlib.Path, n: int = 3, extra_args=FAST):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ports = free_ports(n)
        self.addresses = [f"127.0.0.1:{port}" for port in self.ports]
        self.extra_args = list(extra_args)
        self.processes: dict[int, subprocess.Popen] = {}
        self.clients: list[raft.RaftClient] = []

    # -- naming ---------------------------------------------------------------
    @staticmethod
    def port_of(node_id: str) -> int:
        return int(node_id.rpartition(":")[2])

    @staticmethod
    def address(port: int) -> str:
        return f"127.0.0.1:{port}"

    def data_dir(self, port: int) -> pathlib.Path:
        return self.root / str(port)

    def stderr_path(self, port: int) -> pathlib.Path:
        return self.root / f"{port}.stderr"

    def others(self, port: int) -> list[int]:
        return [p for p in self.ports if p != port]

    # -- processes ------------------------------------------------------------
    def command(self, port: int) -> list[str]:
        return [sys.executable, RAFT_PY, str(port),
                "--peers", ",".join(map(str, self.others(port))),
                "--no-repl", "--data-dir", str(self.data_dir(port)), *self.extra_args]

    def start(self, port: int) -> subprocess.Popen:
        assert not self.is_running(port), f"{port} is already running"
        with open(self.stderr_path(port), "ab") as stderr:
            process = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=stderr,
                                       cwd=self.root, start_new_session=True)
        self.processes[port] = process
        return process

    def start_all(self) -> None:
        for port in self.ports:
            if not self.is_running(port):
                self.start(port)

    def is_running(self, port: int) -> bool:
        process = self.processes.get(port)
        return process is not None and process.poll() is None

    def pid(self, port: int) -> int:
        return self.processes[port].pid

    def kill(self, port: int) -> None:
        """SIGKILL, like a power cut for that process; reaped at once."""
        process = self.processes[port]
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, port: int, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.processes[port], sig)

    def restart(self, port: int) -> subprocess.Popen:
        if self.is_running(port):
            self.kill(port)
        return self.start(port)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for process in self.processes.values():     # signal all, then wait for each
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            stop_process(process)

    # -- observing ------------------------------------------------------------
    def status(self, port: int, timeout: float = STATUS_TIMEOUT_S) -> dict | None:
        return probe_status(self.address(port), timeout)

    def wait_status(self, port: int, timeout: float = 10.0) -> dict:
        return wait_until(lambda: self.status(port), timeout, f"{port} to answer status()")

    def wait_for_leader(self, timeout: float = 10.0, among=None) -> int:
        """The port of the leader (among the given ports, default all running)."""
        ports = among if among is not None else [p for p in self.ports if self.is_running(p)]
        return self.port_of(find_leader([self.address(p) for p in ports], timeout))

    def wait_applied(self, port: int, index: int, timeout: float = 10.0) -> dict:
        """Wait until port's last_applied reaches index; return its status."""
        def reached():
            status = self.status(port)
            return status if status and status["last_applied"] >= index else None
        return wait_until(reached, timeout,
                          lambda: f"{port} to apply up to {index} (now {self.status(port)})")

    def client(self, ports=None, timeout: float = 5.0) -> raft.RaftClient:
        """A RaftClient on the given ports (default: all); closed at teardown."""
        ports = self.ports if ports is None else ports
        client = raft.RaftClient([self.address(p) for p in ports], timeout=timeout)
        self.clients.append(client)
        return client

    def stderr_tail(self, port: int, lines: int = 20) -> str:
        try:
            text = self.stderr_path(port).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def jsonl_text(self, port: int) -> str:
        """Everything in the node's *.jsonl files (the durable state)."""
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.data_dir(port).glob("*.jsonl")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a test with real nodes fails, show the end of every node's log."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for cluster in getattr(item, "raft_clusters", []):
        for port in cluster.ports:
            log = cluster.data_dir(port) / "node.log"
            try:
                tail = log.read_text(errors="replace").splitlines()[-40:]
            except OSError:
                continue
            report.sections.append((f"node {port} log (last 40 lines)", "\n".join(tail)))


@pytest.fixture
def cluster_factory(tmp_path, request):
    """make(n=3, extra_args=FAST, start=True) -> a Cluster, with a leader
    elected when started. Every process of every cluster is stopped at teardown."""
    clusters: list[Cluster] = []
    request.node.raft_clusters = clusters

    def make(n: int = 3, extra_args=FAST, start: bool = True) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", n, extra_args)
        clusters.append(cluster)
        if start:
            cluster.start_all()
            cluster.wait_for_leader(timeout=15)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def cluster(cluster_factory) -> Cluster:
    """Three running nodes with an elected leader."""
    return cluster_factory()


@pytest.fixture
def spawn(tmp_path):
    """spawn(args, **popen_kwargs) -> Popen of `python raft.py ARGS` (cwd
    tmp_path, its own session). Stopped by PID at teardown, and so are any
    node processes it started with --parent-pid (demo)."""
    started: list[subprocess.Popen] = []

    def run(args, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("cwd", tmp_path)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen([sys.executable, RAFT_PY, *map(str, args)], **kwargs)
        started.append(process)
        return process

    yield run
    for process in started:
        children = pids_with_parent_pid_argument(process.pid)
        stop_process(process)
        kill_pids(children + pids_with_parent_pid_argument(process.pid))
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream:
                stream.close()
