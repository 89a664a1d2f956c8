"""The command line (raft.py [9]-[10], CONTRACT.md): `client`, `check`,
the node prompt, `demo`, signals, and the one-line `error:` for bad input.

Every process runs with cwd under tmp_path, on free ports, and is stopped
by PID at teardown (fixtures in conftest.py).
"""

import json
import re
import signal
import socket
import subprocess
import time

import pytest

import raft
from conftest import (FAST, LineReader, free_ports, consecutive_free_ports, pid_is_alive,
                      pids_with_parent_pid_argument, probe_status, run_raft, stop_process,
                      wait_until)

pytestmark = pytest.mark.process


def peers_arg(cluster, ports=None):
    return ",".join(map(str, cluster.ports if ports is None else ports))


def client_cli(cluster, *words, ports=None, timeout=None):
    args = ["client", "--peers", peers_arg(cluster, ports)]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    return run_raft([*args, *words], cwd=cluster.root)


def assert_one_error_line(result):
    """Non-zero exit, nothing on stdout, exactly one stderr line: error: ..."""
    lines = result.stderr.splitlines()
    assert result.returncode != 0, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == "", result.stdout
    return lines[0]


# ---------------------------------------------------------------------------
# python raft.py client
# ---------------------------------------------------------------------------

def test_client_prints_the_contract_words_and_exits_0(cluster):
    expected = [
        (("set", "x", "5"), "OK"),
        (("get", "x"), "5"),
        (("get", "missing"), "(nil)"),
        (("incr", "hits"), "1"),
        (("incr", "hits", "5"), "6"),
        (("incr", "hits", "-2"), "4"),
        (("del", "x"), "OK"),
        (("del", "x"), "(nil)"),
        (("get", "x"), "(nil)"),
    ]
    for words, output in expected:
        result = client_cli(cluster, *words)
        assert (result.returncode, result.stdout, result.stderr) == (0, output + "\n", ""), words


def test_client_against_a_follower_only_and_incr_of_a_non_integer(cluster):
    leader = cluster.wait_for_leader()
    follower = [p for p in cluster.ports if p != leader][0]
    assert client_cli(cluster, "set", "s", "hello", ports=[follower]).stdout == "OK\n"
    assert client_cli(cluster, "get", "s", ports=[follower]).stdout == "hello\n"
    result = client_cli(cluster, "incr", "s", ports=[follower])
    assert_one_error_line(result)


def test_client_against_a_dead_cluster_fails_with_one_error_line_within_its_timeout(tmp_path):
    ports = free_ports(3)
    started = time.monotonic()
    result = run_raft(["client", "--peers", ",".join(map(str, ports)), "--timeout", "1",
                       "get", "x"], cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert_one_error_line(result)
    assert elapsed < 1 + 2.0, f"took {elapsed:.2f}s with --timeout 1 (allowing 2s to start)"

    result = run_raft(["check", "--peers", ",".join(map(str, ports)), "--timeout", "0.5",
                       "--ops", "3", "--log-file", tmp_path / "check.log"], cwd=tmp_path)
    assert result.returncode != 0
    assert [l for l in result.stderr.splitlines() if l.startswith("error:")], result.stderr


# ---------------------------------------------------------------------------
# python raft.py check
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("ops_option", ["--ops", "--num-operations"])
def test_check_passes_against_a_live_cluster_and_writes_its_log(cluster, tmp_path, ops_option):
    log_file = tmp_path / f"check{ops_option}.log"
    result = run_raft(["check", "--peers", peers_arg(cluster), ops_option, "20",
                       "--log-file", log_file], cwd=tmp_path)
    assert result.returncode == 0, result
    assert "check passed" in result.stdout
    assert log_file.exists() and log_file.stat().st_size > 0
    assert cluster.client().get("counter") == 20


# ---------------------------------------------------------------------------
# The node prompt, fed through stdin
# ---------------------------------------------------------------------------

def test_node_prompt_through_stdin_prints_one_result_per_line_and_exits_0(cluster_factory):
    cluster = cluster_factory(start=False)
    prompt_port, *others = cluster.ports
    for port in others:
        cluster.start(port)
    cluster.wait_for_leader(among=others)
    commands = "set x 5\nget x\nincr hits\nget missing\ndel x\ndel x\nstatus\nlog 3\nquit\n"
    result = run_raft([prompt_port, "--peers", peers_arg(cluster, others),
                       "--data-dir", cluster.data_dir(prompt_port), *FAST],
                      cwd=cluster.root, input=commands)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Raft node 127.0.0.1:%d" % prompt_port), lines
    assert lines[1:7] == ["OK", "5", "1", "(nil)", "OK", "(nil)"], lines
    # status and log are this node's own view: a follower's log may still be
    # a heartbeat behind the leader's, so the log shows up to 3 entries.
    status_lines = [line for line in lines[7:] if re.match(r"[a-z_]+: ", line)]
    log_lines = [line for line in lines[7:] if re.match(r"\d+ term=\d+ ", line)]
    assert len(status_lines) + len(log_lines) == len(lines) - 7, lines
    status = dict(line.split(": ", 1) for line in status_lines)
    assert status["id"] == f"127.0.0.1:{prompt_port}"
    assert status["role"] in ("leader", "follower", "candidate")
    assert len(log_lines) <= 3, lines
    assert all(line.endswith(("(committed)", "(not committed)")) for line in log_lines), lines
    assert not any(line.startswith("error:") for line in lines)


def test_node_prompt_stops_cleanly_at_end_of_input_and_reports_errors_in_one_line(
        cluster_factory):
    cluster = cluster_factory(start=False)
    prompt_port, *others = cluster.ports
    for port in others:
        cluster.start(port)
    result = run_raft([prompt_port, "--peers", peers_arg(cluster, others),
                       "--data-dir", cluster.data_dir(prompt_port), *FAST],
                      cwd=cluster.root, input="incr x notanumber\nfrobnicate\nset y 1\nget y\n")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()[1:]
    assert len(lines) == 4, lines
    assert lines[0].startswith("error:") and lines[1].startswith("error:"), lines
    assert lines[2:] == ["OK", "1"]


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("mode", ["no-repl", "prompt"])
def test_a_signal_stops_a_node_with_exit_status_0(spawn, tmp_path, sig, mode):
    port, *others = free_ports(3)
    args = ["--port", port, "--peers", ",".join(map(str, others)),
            "--data-dir", tmp_path / "data", *FAST]
    if mode == "no-repl":
        process = spawn([*args, "--no-repl"])
    else:                    # the prompt, waiting on an open, silent stdin
        process = spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    wait_until(lambda: probe_status(f"127.0.0.1:{port}") or process.poll() is not None, 10,
               "the node to answer status()")
    assert process.poll() is None
    process.send_signal(sig)
    try:
        assert process.wait(timeout=5) == 0
    finally:
        stop_process(process, signal.SIGKILL)


def test_sigint_stops_a_no_repl_node_even_if_it_was_started_with_sigint_ignored(
        spawn, tmp_path):
    port, *others = free_ports(3)
    process = spawn([port, "--peers", ",".join(map(str, others)), "--no-repl",
                     "--data-dir", tmp_path / "data", *FAST],
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    wait_until(lambda: probe_status(f"127.0.0.1:{port}"), 10, "the node to answer status()")
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(timeout=3) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("SIGINT did not stop the node within 3s")
    finally:
        stop_process(process, signal.SIGKILL)


# ---------------------------------------------------------------------------
# python raft.py demo
# ---------------------------------------------------------------------------

def wait_demo_nodes(demo, count=3):
    return wait_until(lambda: len(pids_with_parent_pid_argument(demo.pid)) == count
                      and pids_with_parent_pid_argument(demo.pid), 15,
                      f"the demo to start {count} node processes")


def test_demo_through_stdin_works_and_leaves_no_node_running(spawn, tmp_path):
    base = consecutive_free_ports(3)
    victim = base + 1
    commands = (f"set x 1\nget x\nstatus\nkill {victim}\nstatus\nget x\nincr n\n"
                f"start {victim}\nquit\n")
    demo = spawn(["demo", "--base-port", base, "--data-dir", tmp_path / "demo"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    children = wait_demo_nodes(demo)
    out, err = demo.communicate(commands, timeout=30)
    assert demo.returncode == 0, (out, err)
    lines = out.splitlines()
    results = [l for l in lines if l in ("OK", "1") or l.startswith(("killed", "started",
                                                                      "error"))]
    assert results == ["OK", "1", f"killed {victim}", "1", "1", f"started {victim}"], out
    stopped = [l for l in lines if l.split()[:2] == [str(victim), "stopped"]]
    assert stopped, out
    assert all(not pid_is_alive(pid) for pid in children)
    assert pids_with_parent_pid_argument(demo.pid) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_demo_stopped_by_a_signal_leaves_no_node_running(spawn, tmp_path, sig):
    base = consecutive_free_ports(3)
    demo = spawn(["demo", "--base-port", base, "--data-dir", tmp_path / "demo"],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reader = LineReader(demo.stdout)
    children = wait_demo_nodes(demo)
    reader.wait_for("Leader", timeout=15)
    demo.send_signal(sig)
    status = demo.wait(timeout=10)
    if sig == signal.SIGINT:
        assert status in (0, 130), status
    # SIGINT: the demo stops its nodes; SIGKILL: each node notices its parent is gone.
    wait_until(lambda: not any(pid_is_alive(pid) for pid in children), 5,
               lambda: f"the demo's nodes {children} to stop")


# ---------------------------------------------------------------------------
# Bad arguments: one line on stderr starting with error:, non-zero exit
# ---------------------------------------------------------------------------

def write_configs(directory, ports):
    a, b, c = ports
    (directory / "good.json").write_text(json.dumps(
        {"nodes": {"n1": f"localhost:{a}", "n2": f"127.0.0.1:{b}", "n3": f"localhost:{c}"}}))
    (directory / "notjson.json").write_text('{"nodes": {"n1": ')
    (directory / "shape.json").write_text(json.dumps({"nodes": ["127.0.0.1:1"]}))
    (directory / "badaddr.json").write_text(json.dumps({"nodes": {"n1": "127.0.0.1:notaport"}}))


BAD_ARGUMENTS = {
    "no arguments at all": ([], None),
    "unknown option": (["{a}", "--peers", "{b},{c}", "--no-such-option"], None),
    "port not in the default cluster": (["{a}"], "--peers"),
    "peers include the node itself": (["{a}", "--peers", "{a},{b}"], None),
    "peers include the node as localhost": (["{a}", "--peers", "localhost:{a},{b}"], None),
    "a repeated peer": (["{a}", "--peers", "{b},{b}"], None),
    "a peer repeated in another spelling": (["{a}", "--peers", "{b},localhost:{b}"], None),
    "a malformed peer": (["{a}", "--peers", "{b},notaport"], None),
    "missing config file": (["--config", "missing.json", "--id", "n1"], "missing.json"),
    "config not JSON": (["--config", "notjson.json", "--id", "n1"], "notjson.json"),
    "config of the wrong shape": (["--config", "shape.json", "--id", "n1"], "shape.json"),
    "config with a bad address": (["--config", "badaddr.json", "--id", "n1"], "badaddr.json"),
    "config without --id": (["--config", "good.json"], "--id"),
    "an --id not in the file": (["--config", "good.json", "--id", "n9"], "n9"),
    "bad election timeout": (["{a}", "--peers", "{b},{c}", "--election-timeout", "300,150"],
                             None),
    "heartbeat not below the election timeout": (["{a}", "--peers", "{b},{c}",
                                                  "--heartbeat", "200"], "--heartbeat"),
    "client with a missing config file": (["client", "--config", "missing.json", "get", "x"],
                                          "missing.json"),
    "client with no command": (["client", "--peers", "{a}"], None),
    "client with an unknown command": (["client", "--peers", "{a}", "frob", "x"], None),
    "client incr by a non-number": (["client", "--peers", "{a}", "incr", "x", "notanumber"],
                                    None),
    "client unknown option": (["client", "--peers", "{a}", "--no-such-option", "get", "x"],
                              None),
    "check without --ops": (["check", "--peers", "{a}"], None),
    "client incr by a digit that is not ASCII": (["client", "--peers", "{a}", "incr", "x", "²"],
                                                 None),
    "heartbeat as long as the election timeout in ticks": (
        ["{a}", "--peers", "{b},{c}", "--election-timeout", "15,20", "--heartbeat", "11"],
        "--heartbeat"),
    "client to an address this host cannot send to": (
        ["client", "--peers", "255.255.255.255:{a}", "--timeout", "0.5", "get", "x"],
        "cannot send"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_give_one_error_line_and_a_non_zero_exit(tmp_path, case):
    ports = free_ports(3)
    write_configs(tmp_path, ports)
    names = dict(zip("abc", map(str, ports)))
    args, must_mention = BAD_ARGUMENTS[case]
    result = run_raft([arg.format(**names) for arg in args], cwd=tmp_path, timeout=15)
    line = assert_one_error_line(result)
    if must_mention:
        assert must_mention in line


@pytest.mark.parametrize("command", ["node", "demo"])
def test_a_port_in_use_by_another_process_is_one_error_line(tmp_path, command):
    base = consecutive_free_ports(3)
    port = base + 1
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        holder.bind(("127.0.0.1", port))
        if command == "node":
            args = [port, "--peers", f"{base},{base + 2}", "--no-repl",
                    "--data-dir", tmp_path / "data", *FAST]
        else:
            args = ["demo", "--base-port", base, "--data-dir", tmp_path / "demo"]
        result = run_raft(args, cwd=tmp_path, timeout=15, input="")
    finally:
        holder.close()
    line = assert_one_error_line(result)
    assert str(port) in line


def start_then_reuse_data_dir(spawn, tmp_path):
    a, b, c = free_ports(3)
    data = tmp_path / "shared"
    spawn([a, "--peers", f"{b},{c}", "--no-repl", "--data-dir", data, *FAST])
    wait_until(lambda: probe_status(f"127.0.0.1:{a}"), 10, "the first node to answer")
    return run_raft([b, "--peers", f"{a},{c}", "--no-repl", "--data-dir", data, *FAST],
                    cwd=tmp_path, timeout=15)


def test_a_data_dir_in_use_by_a_running_node_is_one_error_line(spawn, tmp_path):
    line = assert_one_error_line(start_then_reuse_data_dir(spawn, tmp_path))
    assert "in use" in line and "shared" in line


def test_a_data_dir_in_use_is_not_reported_as_damaged_data(spawn, tmp_path):
    line = assert_one_error_line(start_then_reuse_data_dir(spawn, tmp_path))
    assert "damaged" not in line


# ---------------------------------------------------------------------------
# --config FILE --id NAME, localhost, and the option aliases
# ---------------------------------------------------------------------------

def test_a_cluster_from_a_config_file_with_localhost_and_the_option_aliases(spawn, tmp_path):
    ports = free_ports(3)
    write_configs(tmp_path, ports)
    config = str(tmp_path / "good.json")
    spawn(["--config", config, "--id", "n1", "--data-dir", tmp_path / "d1", "--no-repl", *FAST])
    spawn(["--config", config, "--node-id", "n2", "--storage-dir", tmp_path / "d2",
           "--no-repl", *FAST])
    spawn(["--config", config, "--node-id", "n3", "--storage-dir", tmp_path / "d3",
           "--no-repl", *FAST])
    addresses = [f"127.0.0.1:{p}" for p in ports]
    for address in addresses:
        status = wait_until(lambda: probe_status(address), 10, f"{address} to answer")
        assert status["id"] == address                     # localhost -> 127.0.0.1
        assert sorted(status["members"]) == sorted(addresses)

    result = run_raft(["client", "--config", config, "set", "x", "5"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "OK\n"), result
    result = run_raft(["client", "--config", config, "get", "x"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "5\n"), result
    with raft.RaftClient([f"localhost:{p}" for p in ports]) as client:
        assert client.get("x") == "5"
    for number in (1, 2, 3):                                # the aliases took effect
        assert list((tmp_path / f"d{number}").glob("*.jsonl")), number


# ---------------------------------------------------------------------------
# bench: a smoke run (its figures are measured by hand, never asserted)
# ---------------------------------------------------------------------------

@pytest.mark.process
def test_bench_reports_throughput_latency_and_failover_and_leaves_no_node(tmp_path):
    result = run_raft(["bench", "--clients", "2", "--seconds", "0.5", "--kills", "1"],
                      cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("writes") and "ops/s" in line and "p99" in line
               for line in lines), result.stdout
    assert any(line.strip().startswith("reads") and "ops/s" in line for line in lines)
    assert any("failover: SIGKILL leader -> next write answered: median" in line
               for line in lines), result.stdout
    assert not list(tmp_path.iterdir())          # nothing left in the working dir


def test_log_level_is_accepted_in_any_case(spawn, tmp_path):
    port, *others = free_ports(3)
    process = spawn([port, "--peers", ",".join(map(str, others)), "--no-repl",
                     "--data-dir", tmp_path / "data", "--log-level", "debug", *FAST])
    wait_until(lambda: probe_status(f"127.0.0.1:{port}") or process.poll() is not None, 10,
               "the node to answer status()")
    assert process.poll() is None
