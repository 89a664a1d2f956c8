"""docs/walkthrough.md, replayed: every transcript in it is run again here.

The walkthrough's transcripts are fenced `console` blocks, each preceded by
an HTML comment naming the session it belongs to:

    <!-- replay: demo -->
    ```console
    $ python raft.py demo
    Started nodes on ports 8000, 8001, 8002 (data and logs in raft-data/demo/PORT/).
    raft demo> set x 5
    OK
    ```

Blocks of one session run in document order, in one temporary directory,
against one set of processes. A line is a command if it starts with

    $ CMD                  a shell command: python raft.py demo | PORT | client |
                           check, or cat | head -n N | tail -n N | grep WORD FILE
    raft demo> CMD         typed at the demo's prompt
    raft HOST:PORT> CMD    typed at that node's prompt (python raft.py PORT)

and the lines after it, up to the next command, are what it printed.

How the replay copes with what legitimately varies between runs:

  * Ports. The doc uses 8000-8002; the test uses free ports. Which node wins
    an election is chance, so the doc's ports map to the real ones by ROLE:
    the replay keeps every bijection doc port -> real port still consistent
    with what it has seen (a status table, a "Leader:" line, who printed an
    explain line) and drops the others after each step. A command naming a
    port (kill 8001) is sent through the first consistent bijection, which is
    then fixed for that port.
  * Prompt output (results, status, banners) is compared line by line, ports
    mapped, numbers EXACT: OK, 5, (nil), "killed 8001" are what a learner
    must see. Status tables are the exception: terms and log positions vary,
    so the table is compared cell by cell (roles, leader, network exactly)
    and its numbers by their order: two cells equal, or one below the other,
    in the doc must be so in the real table ("it has caught up", "its log is
    longer than its commit index"). status is re-run until it matches, with
    a deadline, since an election takes a moment.
  * Terms in answers. A term in prompt output, `(term 2)` as in `ask`'s "not
    the leader (term 2)", is a number the run decides, like a status table's
    terms. Each status table the replay has matched pairs the doc's terms
    with the real ones (doc term 2 is real term 3 if a split vote cost one),
    and a `(term N)` is translated through those pairs, as ports are, then
    compared exactly; a term no table has shown must match as it is.
  * Explain lines (`  8001 commits up to ...`) and notices (`* ...`) arrive
    on other threads, in any order. Each one the doc shows must arrive
    after its command is sent, within a deadline, in shape: numbers and
    client ids normalised, the first port (who speaks) mapped, other ports
    left open, and for explain lines (`decision: reason [TAG]`) the reason
    compared only when both lines give one.
  * Files (cat, grep) are compared in order, as a subsequence of the real
    lines, in the same shape, and their numbers (a [COMMIT] line's index and
    term, every integer in a JSON line) by their order, as in status tables:
    index 7 twice in log.jsonl must be one number twice in the real file.
    The strings of a JSON line are exact ("set y 1" is not "set y 2"); of
    the node addresses in it, only "this node" or "another node" counts.
  * Elections between two nodes that the doc's last status table shows
    alike (same row but the port) go either way. When a step agrees with
    the doc under no mapping left, the replay may swap two such nodes, unless
    a command has named one since (see Replay.widen).

The engine is tested on its own (tests at the end of this file, no
processes), so a replay that compares nothing cannot pass in silence.

To refresh the doc after a change: run the demo (python raft.py demo
--base-port 8000 if free), type the commands, paste what it prints. A
failing replay prints the real transcript with ports mapped back to the
doc's, ready to compare.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import re
import shlex
import subprocess
import threading
import time

import pytest

from conftest import consecutive_free_ports, pids_with_parent_pid_argument, run_raft
from test_figure2_tags import TAGS

ROOT = pathlib.Path(__file__).resolve().parent.parent
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
DOC_PORTS = (8000, 8001, 8002)

MARKER_TIMEOUT_S = 20.0        # one prompt command, ask's 2 s and a client retry included
RETRY_TIMEOUT_S = 10.0         # re-running status or re-reading a file until it matches
EVENT_TIMEOUT_S = 5.0          # explain lines and notices to arrive
EXIT_TIMEOUT_S = 15.0          # quit: the demo stops its nodes
POLL_S = 0.05


# ---------------------------------------------------------------------------
# Reading the walkthrough
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Step:
    session: str
    line: int                  # 1-based line of the command in the markdown
    kind: str                  # "shell", "demo" or "node"
    command: str
    expected: list[str]
    prompt_port: int | None = None     # the doc port of a node prompt

    def where(self) -> str:
        return f"docs/walkthrough.md:{self.line}"


REPLAY_COMMENT = re.compile(r"^<!--\s*replay:\s*([\w-]+)\s*-->$")
FENCE = re.compile(r"^(`{3,})\s*(\S*)")
NODE_PROMPT = re.compile(r"^raft (?:[\w.-]+):(\d+)> (.*)$")


def fenced_blocks(text: str):
    """(info string, session or None, line number of the first content line,
    content lines) for every fenced block."""
    lines = text.splitlines()
    number, previous = 0, ""
    while number < len(lines):
        opening = FENCE.match(lines[number])
        if not opening:
            if lines[number].strip():
                previous = lines[number].strip()
            number += 1
            continue
        fence, info = opening.groups()
        end = number + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        comment = REPLAY_COMMENT.match(previous)
        yield info, comment.group(1) if comment else None, number + 2, lines[number + 1:end]
        previous, number = "", end + 1


def parse_block(session: str, first_line: int, lines: list[str]) -> list[Step]:
    steps: list[Step] = []
    for offset, line in enumerate(lines):
        node = NODE_PROMPT.match(line)
        if line.startswith("$ "):
            steps.append(Step(session, first_line + offset, "shell", line[2:].strip(), []))
        elif line.startswith("raft demo> "):
            steps.append(Step(session, first_line + offset, "demo",
                              line[len("raft demo> "):].strip(), []))
        elif node:
            steps.append(Step(session, first_line + offset, "node", node.group(2).strip(), [],
                              int(node.group(1))))
        elif line.strip():
            if not steps:
                raise ValueError(f"docs/walkthrough.md:{first_line + offset}: output before "
                                 f"any command in a replayed block: {line!r}")
            steps[-1].expected.append(line)
    return steps


def read_sessions(text: str) -> dict[str, list[Step]]:
    """Every replayed step, by session, in document order."""
    sessions: dict[str, list[Step]] = {}
    for _info, session, first_line, lines in fenced_blocks(text):
        if session:
            sessions.setdefault(session, []).extend(parse_block(session, first_line, lines))
    return sessions


# ---------------------------------------------------------------------------
# Splitting what a prompt printed: output proper vs. events
# ---------------------------------------------------------------------------
# The demo prints explain lines from its listener thread while the prompt
# thread prints results, and print() writes a line and its newline in two
# calls: "  8001 ... [TAG]" and "1" can land on one line, with an empty
# line after. unsplice() cuts such a line apart again.

STRICT_TAG = re.compile(r"\[(?:[A-Z]+-\d+[a-z]?|§[\d.]+(?:-[A-Z]+)?|PERSIST)\]")
EVENT_START = re.compile(r"  \d{1,5} (?=[a-z<-]|\d{1,5} [a-z])")


def unsplice(line: str) -> list[tuple[str, str]]:
    """[(kind, text)] with kind "main" or "event"."""
    if line.startswith("* "):
        return [("event", line)]
    start = EVENT_START.search(line)
    if start is None:
        return [("main", line)] if line.strip() else []
    parts = [("main", line[:start.start()])] if line[:start.start()].strip() else []
    event = line[start.start():]
    tag = STRICT_TAG.search(event)
    if tag and event[tag.end():].strip():
        parts += [("event", event[:tag.end()]), ("main", event[tag.end():])]
    else:
        parts.append(("event", event))
    return parts


def split_output(lines) -> tuple[list[str], list[str]]:
    main, events = [], []
    for line in lines:
        for kind, text in unsplice(line):
            (main if kind == "main" else events).append(text)
    return main, events


# ---------------------------------------------------------------------------
# Normalising a line
# ---------------------------------------------------------------------------

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
TOKEN = re.compile(r"(?<![0-9A-Za-z])(?:(?P<hex>[0-9a-f]{16,})|(?P<number>\d+))(?![0-9A-Za-z])")
PORT_UNIT = r"(?:(?:127\.0\.0\.1|<n>\.<n>\.<n>\.<n>):)?<(?:\d+|port)>"
PORT_RUN = re.compile(PORT_UNIT + r"(?:(?:, | )" + PORT_UNIT + r")+")
END_TAG = re.compile(r" \[([A-Z§][A-Za-z0-9§.\-]*)\]$")


def normalise(line: str, labels: dict[int, int], numbers: bool = False,
              ports: str = "all") -> str:
    """labels: real port -> doc port. ports="all": every port becomes
    <DOCPORT>; "first": only the first (who speaks), later ones <port>;
    "none": every one <port>. With numbers, other numbers become <n> and
    client ids <hex>. Runs of ports are sorted: the demo sorts real ports."""
    line = TIMESTAMP.sub("<time> ", line)
    labelled = 0

    def token(match):
        nonlocal labelled
        if match.group("hex"):
            return "<hex>" if numbers else match.group(0)
        value = int(match.group("number"))
        if value in labels:
            labelled += 1
            keep = ports == "all" or (ports == "first" and labelled == 1)
            return f"<{labels[value]}>" if keep else "<port>"
        return "<n>" if numbers else match.group(0)
    line = TOKEN.sub(token, line)
    return PORT_RUN.sub(lambda run: sort_run(run.group(0)), line)


def sort_run(run: str) -> str:
    separator = ", " if ", " in run else " "
    return separator.join(sorted(run.split(separator)))


def identity_labels() -> dict[int, int]:
    return {port: port for port in DOC_PORTS}


def real_labels(mapping: dict[int, int]) -> dict[int, int]:
    return {real: doc for doc, real in mapping.items()}


@dataclasses.dataclass(frozen=True)
class Shape:
    """An event or file line reduced to what must not vary."""
    head: str                  # the decision (all of a line without a tag)
    tag: str | None
    reason: str | None         # after "decision: ", before the tag

    def matches(self, other: "Shape") -> bool:
        if (self.head, self.tag) != (other.head, other.tag):
            return False
        return self.reason is None or other.reason is None or self.reason == other.reason


def shape(line: str, labels: dict[int, int], own: str | None = None) -> Shape:
    """Numbers and client ids normalised; the first port (who speaks) kept,
    the others open. A JSON line keeps its strings ("set y 1" is not
    "set y 2"), and of the node addresses in it only whether each is own,
    the node whose file it is: a vote for another node names one the replay
    may have relabelled (see Replay.widen)."""
    tag = END_TAG.search(line)             # before normalising: LEAD-4 keeps its 4
    if not tag:
        text = normalise(line, labels, numbers=True,
                         ports="none" if line.startswith("{") else "first")
        return Shape(text + json_structure(line, own), None, None)
    text = normalise(line[:tag.start()], labels, numbers=True, ports="first")
    head, _, reason = text.partition(": ")
    return Shape(head, tag.group(1), reason or None)


ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+:\d+$")


def json_structure(line: str, own: str | None = None) -> str:
    """The JSON that ends a line (a log entry, a [COMMIT] line's command),
    with its integers, node addresses and client ids left open; "" if none."""
    brace = line.find("{")
    if brace < 0:
        return ""
    try:
        value = json.loads(line[brace:])
    except ValueError:
        return ""

    def canonical(item):
        if isinstance(item, dict):
            return {key: canonical(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [canonical(inner) for inner in item]
        if type(item) is int:
            return "<n>"
        if isinstance(item, str) and ADDRESS.match(item):
            return "<own address>" if item == own else "<address>"
        if isinstance(item, str) and re.fullmatch(r"[0-9a-f]{16,}", item):
            return "<hex>"
        return item
    return " " + json.dumps(canonical(value))


# ---------------------------------------------------------------------------
# Comparing one step's output (pure functions: tested below without processes)
# ---------------------------------------------------------------------------

STATUS_HEADER_WORDS = ["node", "role", "term", "leader", "log", "commit", "applied", "network"]
ROW_UP = re.compile(r"^(?P<port>\d+)\s+(?P<role>leader|follower|candidate)\s+(?P<term>\d+)\s+"
                    r"(?P<leader>\S+)\s+(?P<log>\d+)\s+(?P<commit>\d+)\s+(?P<applied>\d+)\s+"
                    r"(?P<network>.+)$")
ROW_DOWN = re.compile(r"^(?P<port>\d+)\s+(?P<role>stopped|paused|no answer)\s+(?P<network>.+)$")
NUMBER_GROUPS = (("term",), ("log", "commit", "applied"))
FILE_COMMANDS = ("cat", "head", "tail", "grep")


def is_status(step: Step) -> bool:
    return step.kind in ("demo", "node") and step.command == "status"


def is_file_command(step: Step) -> bool:
    return step.kind == "shell" and step.command.split()[0] in FILE_COMMANDS


def check_step(step: Step, main: list[str], events: list[str],
               mapping: dict[int, int], terms: dict[int, int] | None = None) -> list[str]:
    """What differs between the doc and a real run of step under mapping
    (doc port -> real port) and terms (doc term -> real term, from the status
    tables matched so far); empty if they agree."""
    return check_main(step, main, mapping, terms) + check_events(step, events, mapping)


def check_main(step: Step, main: list[str], mapping: dict[int, int],
               terms: dict[int, int] | None = None) -> list[str]:
    expected = split_output(step.expected)[0]
    if is_status(step):
        return compare_table(expected, main, mapping)
    if is_file_command(step):
        own = doc_port_pattern().search(step.command)
        return compare_file(expected, main, mapping, int(own.group(1)) if own else None)
    return compare_exact([in_terms(line, terms or {}) for line in expected], main, mapping)


TERM_IN_ANSWER = re.compile(r"\(term (\d+)\)")


def in_terms(line: str, terms: dict[int, int]) -> str:
    """A doc line with each `(term N)` replaced by the real term that status
    tables have paired with N (unchanged if none has)."""
    return TERM_IN_ANSWER.sub(
        lambda m: f"(term {terms.get(int(m.group(1)), int(m.group(1)))})", line)


def term_pairs(doc_table: list[str], real_table: list[str],
               mapping: dict[int, int]) -> dict[int, int]:
    """doc term -> real term, cell by cell, of two status tables that agree."""
    doc, real = parse_table(doc_table), parse_table(real_table)
    if isinstance(doc, str) or isinstance(real, str):
        return {}
    return {int(row["term"]): int(real[1][mapping[port]]["term"])
            for port, row in doc[1].items()
            if row.get("term") and mapping[port] in real[1]
            and real[1][mapping[port]].get("term")}


def check_events(step: Step, events: list[str], mapping: dict[int, int]) -> list[str]:
    return missing_events(split_output(step.expected)[1], events, mapping)


def compare_exact(expected: list[str], actual: list[str], mapping) -> list[str]:
    want = [normalise(line, identity_labels()) for line in expected]
    got = [normalise(line, real_labels(mapping)) for line in actual]
    if want == got:
        return []
    return [f"output differs:\n  doc:  {expected}\n  real: {actual}"]


def missing_events(expected: list[str], actual: list[str], mapping) -> list[str]:
    """Each documented event must have a real one of its shape (a set
    inclusion: the real run may print more, and in another order)."""
    real = [shape(line, real_labels(mapping)) for line in actual]
    return [f"missing event: {line!r}" for line in expected
            if not any(shape(line, identity_labels()).matches(other) for other in real)]


def parse_table(lines: list[str]) -> tuple[list[str], dict[int, dict]] | str:
    """(header words, {port: row}) or a string saying what is wrong."""
    if not lines or lines[0].split() != STATUS_HEADER_WORDS:
        return f"not a status table (header {lines[:1]})"
    rows = {}
    for line in lines[1:]:
        match = ROW_UP.match(line) or ROW_DOWN.match(line)
        if not match:
            return f"status row not understood: {line!r}"
        rows[int(match.group("port"))] = match.groupdict()
    return lines[0], rows


def compare_table(expected: list[str], actual: list[str], mapping) -> list[str]:
    doc, real = parse_table(expected), parse_table(actual)
    if isinstance(doc, str):
        return [f"the doc's {doc}"]
    if isinstance(real, str):
        return [f"the real {real}:\n" + "\n".join(actual)]
    if doc[0] != real[0]:
        return [f"status header changed:\n  doc:  {doc[0]!r}\n  real: {real[0]!r}"]
    doc_rows, real_rows = doc[1], real[1]
    if sorted(mapping[port] for port in doc_rows) != sorted(real_rows):
        return [f"status rows: doc {sorted(doc_rows)}, real {sorted(real_rows)}"]
    labels = real_labels(mapping)
    problems = []
    for port, row in doc_rows.items():
        other = real_rows[mapping[port]]
        for column in ("role", "leader", "network"):
            want = normalise(row.get(column) or "", identity_labels())
            got = normalise(other.get(column) or "", labels)
            if want != got:
                problems.append(f"status of {port}: {column} {row.get(column)!r} in the doc, "
                                f"{other.get(column)!r} in the real table")
    paired = [(row, real_rows[mapping[port]]) for port, row in doc_rows.items()]
    for group in NUMBER_GROUPS:
        problems += order_problems(
            [((port, column), row[column], other[column])
             for (row, other), port in zip(paired, doc_rows) for column in group
             if row.get(column) is not None and other.get(column) is not None],
            "status")
    return problems


def order_problems(cells, what: str) -> list[str]:
    """cells: [(name, doc value, real value)]. Every pair of cells must
    compare the same way (<, =, >) in the doc and in the real run."""
    def sign(a, b):
        return (int(a) > int(b)) - (int(a) < int(b))
    problems = []
    for (name_a, doc_a, real_a), (name_b, doc_b, real_b) in itertools.combinations(cells, 2):
        if sign(doc_a, doc_b) != sign(real_a, real_b):
            problems.append(f"{what}: {name_a}={doc_a} vs {name_b}={doc_b} in the doc, but "
                            f"{real_a} vs {real_b} in the real run")
    return problems


def compare_file(expected: list[str], actual: list[str], mapping,
                 own: int | None = None) -> list[str]:
    """The doc's lines, in order, among the real ones; their numbers keep
    their order (index 7 twice in the doc: one number twice in the real
    file). own: the doc port of the node whose file this is."""
    doc_own = f"127.0.0.1:{own}" if own else None
    real_own = f"127.0.0.1:{mapping[own]}" if own else None
    real_shapes = [shape(line, real_labels(mapping), real_own) for line in actual]
    matched, position = [], 0
    for line in expected:
        want = shape(line, identity_labels(), doc_own)
        while position < len(actual) and not want.matches(real_shapes[position]):
            position += 1
        if position == len(actual):
            return [f"file line not found (in order): {line!r}"]
        matched.append((line, actual[position]))
        position += 1
    by_name: dict[str, list] = {}
    for number, (doc_line, real_line) in enumerate(matched):
        real_numbers = line_numbers(real_line)
        for name, value in line_numbers(doc_line).items():
            if name in real_numbers:
                by_name.setdefault(name, []).append(
                    (f"line {number + 1} {name}", value, real_numbers[name]))
    return [problem for cells in by_name.values() for problem in order_problems(cells, "file")]


COMMIT_LINE = re.compile(r"\[COMMIT\] (\d+) (\d+) ")


def line_numbers(line: str) -> dict[str, int]:
    """{name: integer} of a file line: a [COMMIT] line's index and term, and
    every integer of the JSON it ends with, by dotted path."""
    found = {}
    commit = COMMIT_LINE.search(line)
    if commit:
        found["index"], found["term"] = int(commit.group(1)), int(commit.group(2))
    brace = line.find("{")
    try:
        value = json.loads(line[brace:]) if brace >= 0 else None
    except ValueError:
        return found

    def walk(item, path):
        if isinstance(item, dict):
            for key, inner in item.items():
                walk(inner, f"{path}.{key}" if path else key)
        elif isinstance(item, list):
            for index, inner in enumerate(item):
                walk(inner, f"{path}.{index}")
        elif type(item) is int:
            found.setdefault(path, item)
    walk(value, "")
    return found


def alike_pairs(step: Step) -> list[frozenset[int]]:
    """Pairs of doc ports whose rows in this status step's doc table are
    equal but for the port."""
    table = parse_table(split_output(step.expected)[0])
    if isinstance(table, str):
        return []
    rows = {port: tuple((k, v) for k, v in row.items() if k != "port")
            for port, row in table[1].items()}
    return [frozenset(pair) for pair in itertools.combinations(sorted(rows), 2)
            if rows[pair[0]] == rows[pair[1]]]


def swap(mapping: dict[int, int], pair: frozenset[int]) -> dict[int, int]:
    a, b = sorted(pair)
    return {**mapping, a: mapping[b], b: mapping[a]}


def in_ports(text: str, mapping: dict[int, int]) -> str:
    """text with each doc port replaced by its real port under mapping."""
    return doc_port_pattern().sub(lambda m: str(mapping[int(m.group(1))]), text)


def same_command(one: str, other: str, real_ports) -> bool:
    """Do two real commands name the same ports in the same roles (runs of
    ports, as in partition, compared as sets)?"""
    labels = {port: port for port in real_ports}
    return normalise(one, labels) == normalise(other, labels)


def mappings(real_ports) -> list[dict[int, int]]:
    return [dict(zip(DOC_PORTS, order)) for order in itertools.permutations(real_ports)]


def doc_port_pattern() -> re.Pattern:
    return re.compile(r"(?<![0-9A-Za-z])(" + "|".join(map(str, DOC_PORTS)) + r")(?![0-9A-Za-z])")


# ---------------------------------------------------------------------------
# Running the steps against real processes
# ---------------------------------------------------------------------------

class PromptProcess:
    """A process with a prompt on stdin. Both output streams are collected
    in arrival order by two threads; a command's output ends where the
    prompt answers the unknown command sent after it (a marker)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.markers = 0
        self.readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                        for stream in (process.stdout, process.stderr)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream):
        for line in stream:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def mark(self) -> int:
        with self.lock:
            return len(self.lines)

    def since(self, start: int, end: int | None = None) -> list[str]:
        with self.lock:
            return self.lines[start:end]

    def send(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def execute(self, command: str | None) -> list[str]:
        """Send command (None: nothing, just wait for the prompt); return
        every line printed up to the marker's answer."""
        start = self.mark()
        if command is not None:
            self.send(command)
        self.markers += 1
        token = re.compile(rf"replay-marker-{self.markers}(?!\d)")
        self.send(f"replay-marker-{self.markers}")
        deadline = time.monotonic() + MARKER_TIMEOUT_S
        while True:
            lines = self.since(start)
            for number, line in enumerate(lines):
                if token.search(line):       # keep only events glued to the marker's answer
                    return lines[:number] + [text for kind, text in unsplice(line)
                                             if kind == "event"]
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no answer to {command!r} within {MARKER_TIMEOUT_S:g}s (exit "
                            f"status {self.process.poll()}); it printed:\n" + "\n".join(lines))
            time.sleep(POLL_S)


class Replay:
    """One session of the walkthrough against real processes."""

    def __init__(self, spawn, cwd: pathlib.Path):
        self.spawn, self.cwd = spawn, cwd
        base = consecutive_free_ports(3)      # demo needs consecutive ports; nodes are happy too
        self.real_ports = [base, base + 1, base + 2]
        self.candidates = mappings(self.real_ports)
        self.demo: PromptProcess | None = None
        self.nodes: dict[int, PromptProcess] = {}
        self.pending: list[Step] = []          # node terminals, checked once all are up
        self.alike: list[frozenset[int]] = []  # doc port pairs, equal rows in the last status
        self.terms: dict[int, int] = {}        # doc term -> real term, from status tables
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    # -- ports ------------------------------------------------------------------
    def translate(self, text: str) -> str:
        """Doc ports -> real ports, fixing each one named. A command has
        effects: two alike nodes stay swappable only if swapping them does
        not change the command (partition 8000 | 8001 8002 vs kill 8001)."""
        mapping = self.candidates[0]
        for doc in {int(port) for port in doc_port_pattern().findall(text)}:
            self.candidates = [m for m in self.candidates if m[doc] == mapping[doc]]
        real = in_ports(text, mapping)
        self.alike = [pair for pair in self.alike
                      if same_command(real, in_ports(text, swap(mapping, pair)), self.real_ports)]
        return real

    def widen(self, candidates) -> list[dict[int, int]]:
        """The mappings that swap two nodes the doc's last status table showed
        alike (same role, term, leader, log, commit, network). Which of two
        such nodes wins the next election is chance, so either may be the
        doc's winner from then on."""
        swapped = []
        for mapping in candidates:
            for pair in self.alike:
                other = swap(mapping, pair)
                if other not in candidates and other not in swapped:
                    swapped.append(other)
        return swapped

    def consistent(self, agrees, may_swap: bool = True) -> list[dict[int, int]]:
        """The mappings under which agrees(mapping) holds: among the current
        ones, or if none (and may_swap), among those that swap two alike nodes."""
        return ([m for m in self.candidates if agrees(m)]
                or [m for m in (self.widen(self.candidates) if may_swap else []) if agrees(m)])

    def settle(self, step: Step, outputs) -> None:
        """outputs(mapping) -> (main, events). Keep the mappings under which
        the step's output agrees with the doc; fail if none does. Two alike
        nodes are alike now, not in their pasts: no swap to read a file."""
        passing = self.consistent(lambda m: not check_step(step, *outputs(m), m, self.terms),
                                  may_swap=not is_file_command(step))
        if not passing:
            mapping = self.candidates[0]
            main, events = outputs(mapping)
            pytest.fail(failure_report(step, main, events, mapping,
                                       check_step(step, main, events, mapping, self.terms)))
        self.candidates = passing
        if is_status(step):
            self.alike = alike_pairs(step)
            self.terms.update(term_pairs(split_output(step.expected)[0],
                                         outputs(passing[0])[0], passing[0]))

    # -- steps ------------------------------------------------------------------
    def run(self, steps: list[Step]) -> None:
        for step in steps:
            if not self.is_node_start(step):
                self.check_pending()
            if step.kind == "shell":
                self.run_shell(step)
            elif step.kind == "demo":
                assert self.demo is not None, f"{step.where()}: demo prompt before the demo starts"
                self.run_prompt(step, self.demo, step.command)
            else:
                real = int(self.translate(str(step.prompt_port)))
                assert real in self.nodes, f"{step.where()}: no node started on {step.prompt_port}"
                self.run_prompt(step, self.nodes[real], step.command)
        self.check_pending()
        self.close()

    @staticmethod
    def is_node_start(step: Step) -> bool:
        words = step.command.split()
        return step.kind == "shell" and words[:2] == ["python", "raft.py"] and words[2].isdigit()

    def run_shell(self, step: Step) -> None:
        words = shlex.split(step.command)
        if words[:2] == ["python", "raft.py"] and words[2] == "demo":
            process = self.spawn(["demo", "--base-port", self.real_ports[0], *words[3:]],
                                 **self.pipes())
            self.demo = PromptProcess(process)
            self.run_prompt(step, self.demo, None)
        elif self.is_node_start(step):
            self.start_node(step, words)
        elif words[:2] == ["python", "raft.py"] and words[2] in ("client", "check"):
            peers = ",".join(map(str, self.real_ports))
            args = [words[2], "--peers", peers, *shlex.split(self.translate(shlex.join(words[3:])))]
            result = run_raft(args, cwd=self.cwd, timeout=30)
            lines = result.stdout.splitlines() + result.stderr.splitlines()
            self.settle(step, lambda m: split_output(lines))
        elif words[0] in FILE_COMMANDS:
            self.run_file_command(step)
        else:
            pytest.fail(f"{step.where()}: the replay cannot run {step.command!r}")

    def pipes(self) -> dict:
        return dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, env=self.env)

    def start_node(self, step: Step, words: list[str]) -> None:
        """python raft.py PORT: the prompt of one node. Nodes are alike until
        one wins an election, so any free real port will do; its output is
        compared once all are up (check_pending)."""
        real = next(p for p in self.real_ports if p not in self.nodes)
        others = ",".join(str(p) for p in self.real_ports if p != real)
        process = self.spawn([real, "--peers", others, *words[3:]], **self.pipes())
        self.nodes[real] = PromptProcess(process)
        self.pending.append(step)

    def check_pending(self) -> None:
        if not self.pending:
            return

        def outputs_for(step):
            return lambda m: split_output(self.nodes[m[int(step.command.split()[2])]].since(0))
        deadline = time.monotonic() + RETRY_TIMEOUT_S
        while time.monotonic() < deadline:
            if any(all(not check_step(step, *outputs_for(step)(m), m, self.terms)
                       for step in self.pending)
                   for m in self.candidates):
                break
            time.sleep(POLL_S)
        for step in self.pending:
            self.settle(step, outputs_for(step))
        self.pending = []

    def run_prompt(self, step: Step, prompt: PromptProcess, command: str | None) -> None:
        if command == "quit":
            return self.quit(step, prompt)
        real_command = None if command is None else self.translate(command)
        start = prompt.mark()
        deadline = time.monotonic() + RETRY_TIMEOUT_S
        while True:
            main, _ = split_output(prompt.execute(real_command))
            passing = self.consistent(lambda m: not check_main(step, main, m, self.terms))
            if passing or not is_status(step) or time.monotonic() > deadline:
                break
            time.sleep(0.2)            # an election or a catch-up still under way
        # Events keep arriving after the output: wait for the documented ones.
        event_deadline = time.monotonic() + EVENT_TIMEOUT_S
        while passing and time.monotonic() < event_deadline:
            events = split_output(prompt.since(start))[1]
            if any(not check_events(step, events, m)
                   for m in passing + self.widen(passing)):
                break
            time.sleep(POLL_S)
        self.candidates = passing or self.candidates
        self.settle(step, lambda m: (main, split_output(prompt.since(start))[1]))

    def quit(self, step: Step, prompt: PromptProcess) -> None:
        start = prompt.mark()
        prompt.send("quit")
        try:
            status = prompt.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{step.where()}: quit did not stop the process within "
                        f"{EXIT_TIMEOUT_S:g}s")
        for reader in prompt.readers:   # the pipes close: the last lines are in
            reader.join(timeout=EXIT_TIMEOUT_S)
        assert status == 0, f"{step.where()}: quit: exit status {status}"
        assert pids_with_parent_pid_argument(prompt.process.pid) == [], "nodes left running"
        self.settle(step, lambda m: split_output(prompt.since(start)))

    def run_file_command(self, step: Step) -> None:
        """Read-only, so it is tried under every mapping still open (the doc's
        8000 may be either real follower) and re-read until it matches."""
        cache: dict[str, list[str]] = {}

        def output(mapping):
            command = in_ports(step.command, mapping)
            if command not in cache:
                cache[command] = split_output(read_file_command(shlex.split(command),
                                                                self.cwd))[0]
            return cache[command]
        deadline = time.monotonic() + RETRY_TIMEOUT_S
        while not self.consistent(lambda m: not check_main(step, output(m), m), may_swap=False):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)            # a follower learns of a commit one heartbeat later
            cache.clear()
        self.settle(step, lambda m: (output(m), []))

    def close(self) -> None:
        for prompt in self.nodes.values():
            if prompt.process.poll() is None:
                prompt.process.stdin.close()       # Ctrl-D: the node stops cleanly
        for prompt in self.nodes.values():
            try:
                prompt.process.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass                                # the spawn fixture kills it


def read_file_command(words: list[str], cwd: pathlib.Path) -> list[str]:
    """cat FILE... | head -n N FILE | tail -n N FILE | grep WORD FILE..., in Python."""
    def lines_of(names):
        found = []
        for name in names:
            try:
                found += (cwd / name).read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                pass
        return found
    name, args = words[0], words[1:]
    if name == "cat":
        return lines_of(args)
    if name in ("head", "tail") and len(args) == 3 and args[0] == "-n":
        lines, count = lines_of(args[2:]), int(args[1])
        return lines[:count] if name == "head" else lines[-count:]
    if name == "grep" and len(args) >= 2:
        return [line for line in lines_of(args[1:]) if re.search(args[0], line)]
    pytest.fail(f"the replay does not know {' '.join(words)!r}")


def failure_report(step: Step, main, events, mapping, problems) -> str:
    back = real_labels(mapping)
    pattern = re.compile(r"(?<![0-9A-Za-z])(" + "|".join(map(str, back)) + r")(?![0-9A-Za-z])")

    def to_doc(line):
        return pattern.sub(lambda m: str(back[int(m.group(1))]), line)
    real = "\n".join(to_doc(line) for line in main + events)
    return (f"{step.where()}: {step.command!r} no longer prints what the walkthrough shows.\n"
            + "\n".join(problems)
            + "\n--- the walkthrough:\n" + "\n".join(step.expected)
            + "\n--- the real run (ports mapped back to the doc's; events last):\n" + real
            + f"\n--- port mapping doc -> real: {mapping}")


# ---------------------------------------------------------------------------
# The replay
# ---------------------------------------------------------------------------

def walkthrough_text() -> str:
    return WALKTHROUGH.read_text(encoding="utf-8")


def session_names() -> list[str]:
    try:
        return list(read_sessions(walkthrough_text()))
    except FileNotFoundError:
        return []


@pytest.mark.process
@pytest.mark.parametrize("session", session_names())
def test_walkthrough_transcripts_replay(session, spawn, tmp_path):
    Replay(spawn, tmp_path).run(read_sessions(walkthrough_text())[session])


# ---------------------------------------------------------------------------
# The walkthrough's own shape
# ---------------------------------------------------------------------------

def test_the_walkthrough_has_replayed_sessions_and_every_console_block_is_replayed():
    text = walkthrough_text()
    sessions = read_sessions(text)
    assert {"demo", "terminals"} <= set(sessions), sorted(sessions)
    unreplayed = [line for info, session, line, _ in fenced_blocks(text)
                  if info == "console" and session is None]
    assert not unreplayed, (f"console blocks without <!-- replay: SESSION --> at lines "
                            f"{unreplayed}: replay them, or use another info string")
    commands = [step.command for steps in sessions.values() for step in steps]
    for needed in ("explain on", "status", "quit", "heal"):
        assert needed in commands, needed
    assert any(c.startswith("kill ") for c in commands)
    assert any(c.startswith("partition ") for c in commands)
    assert any(c.startswith("python raft.py client ") for c in commands)


def prose(text: str) -> str:
    """The markdown without its fenced blocks."""
    kept, fence = [], None
    for line in text.splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None and line.startswith(fence):
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


def test_the_walkthrough_cites_only_tags_of_the_legend():
    text = re.sub(r"`[^`\n]*`", "", prose(walkthrough_text()))      # not `[COMMIT]`
    cited = set(re.findall(r"\[((?:§|[A-Z]{2,})[^\]\s]*)\]", text))
    assert cited, "the walkthrough cites no Figure 2 tag"
    assert cited <= set(TAGS), f"not in raft.py's legend: {sorted(cited - set(TAGS))}"


# ---------------------------------------------------------------------------
# The engine, tested on its own: a replay that compares nothing must not pass
# ---------------------------------------------------------------------------
# Tags here are made up (XX-1), so this file names no real rule.

SAMPLE = """
Some prose.

<!-- replay: lab -->
```console
$ python raft.py demo
Leader: 127.0.0.1:8001
raft demo> status
node   role        term  leader    log  commit  applied  network
8000   follower       1  8001        4       4        4  ok
8001   leader         1  8001        4       4        4  ok
8002   stopped                                           ok
raft demo> incr hits
* 127.0.0.1:8002 did not answer (down, cut off, or a leader without a majority); retrying
  8001 appends incr hits 1 at index 5 (term 1); answers once applied [XX-1]
3
  8000 steps down from leader to follower in term 3: 8001 leads it [XX-2]
```

```console
$ not replayed
```

<!-- replay: lab -->
```console
$ cat raft-data/demo/8000/log.jsonl
{"index":6,"term":2,"command":{"client":"a5390a97832745818e4812296373a1d8","seq":7}}
{"index":6,"term":3,"command":null}
raft 127.0.0.1:8002> get x
5
```
"""

# The doc's 8000 is real 9001, 8001 is 9000, 8002 is 9002.
MAPPING = {8000: 9001, 8001: 9000, 8002: 9002}


def sample_steps() -> list[Step]:
    return read_sessions(SAMPLE)["lab"]


def test_engine_reads_commands_outputs_and_sessions():
    steps = sample_steps()
    assert [(s.kind, s.command) for s in steps] == [
        ("shell", "python raft.py demo"), ("demo", "status"), ("demo", "incr hits"),
        ("shell", "cat raft-data/demo/8000/log.jsonl"), ("node", "get x")]
    assert steps[4].prompt_port == 8002 and steps[4].expected == ["5"]
    assert steps[0].expected == ["Leader: 127.0.0.1:8001"]
    assert steps[1].line == SAMPLE.splitlines().index("raft demo> status") + 1
    blocks = list(fenced_blocks(SAMPLE))
    assert [session for _, session, _, _ in blocks] == ["lab", None, "lab"]


def test_engine_compares_results_exactly_and_ports_by_mapping():
    leader = sample_steps()[0]
    assert check_step(leader, ["Leader: 127.0.0.1:9000"], [], MAPPING) == []
    assert check_step(leader, ["Leader: 127.0.0.1:9001"], [], MAPPING)      # another node
    incr = sample_steps()[2]
    events = ["* 127.0.0.1:9002 did not answer (down, cut off, or a leader without a "
              "majority); retrying",
              "  9000 appends incr hits 1 at index 9 (term 4); answers once applied [XX-1]",
              "  9001 steps down from leader to follower in term 5 [XX-2]"]
    assert check_step(incr, ["3"], events, MAPPING) == []
    assert check_step(incr, ["4"], events, MAPPING)          # a result differs: must fail
    assert check_step(incr, ["3", "3"], events, MAPPING)
    assert check_step(incr, [], events, MAPPING)


def test_engine_requires_each_documented_event_in_shape():
    incr = sample_steps()[2]
    base = ["* 127.0.0.1:9002 did not answer (down, cut off, or a leader without a "
            "majority); retrying",
            "  9000 appends incr hits 1 at index 9 (term 4); answers once applied [XX-1]",
            "  9001 steps down from leader to follower in term 5: 9002 leads it [XX-2]"]
    assert check_step(incr, ["3"], base, MAPPING) == []
    assert check_step(incr, ["3"], list(reversed(base)) + ["  9002 other [XX-3]"], MAPPING) == []
    assert check_step(incr, ["3"], base[1:], MAPPING)                         # notice missing
    wrong_speaker = base[:1] + [base[1].replace("9000", "9002", 1)] + base[2:]
    assert check_step(incr, ["3"], wrong_speaker, MAPPING)
    wrong_tag = base[:2] + [base[2].replace("XX-2", "XX-9")]
    assert check_step(incr, ["3"], wrong_tag, MAPPING)
    wrong_reason = base[:2] + [base[2].replace("leads it", "is gone")]
    assert check_step(incr, ["3"], wrong_reason, MAPPING)
    wrong_words = base[:1] + [base[1].replace("appends", "drops")] + base[2:]
    assert check_step(incr, ["3"], wrong_words, MAPPING)


def test_engine_compares_status_tables_by_role_and_number_order():
    status = sample_steps()[1]
    real = ["node   role        term  leader    log  commit  applied  network",
            "9000   leader         7  9000       12      12       12  ok",
            "9001   follower       7  9000       12      12       12  ok",
            "9002   stopped                                           ok"]
    assert check_step(status, real, [], MAPPING) == []
    assert check_step(status, real, [], {8000: 9000, 8001: 9001, 8002: 9002})
    lagging = real[:2] + [real[2].replace("      12       12  ok", "      11       11  ok")]
    assert check_step(status, lagging, [], MAPPING)                     # not caught up
    assert check_step(status, real[:3], [], MAPPING)                    # a row missing
    assert check_step(status, [real[0].replace("applied", "applied_")] + real[1:], [], MAPPING)
    newer_term = real[:2] + [real[2].replace("       7  9000", "       8  9000")]
    assert check_step(status, newer_term, [], MAPPING)


def test_engine_finds_file_lines_in_order_and_keeps_json_numbers_in_order():
    cat = sample_steps()[3]
    good = ['{"index":1,"term":1,"command":null}',
            '{"index":8,"term":4,"command":{"client":"0123456789abcdef0123456789abcdef",'
            '"seq":9}}',
            '{"index":8,"term":5,"command":null}']
    assert check_step(cat, good, [], MAPPING) == []
    assert check_step(cat, [good[0], good[2], good[1]], [], MAPPING)          # order
    assert check_step(cat, good[:2] + [good[2].replace('"index":8', '"index":9')], [],
                      MAPPING)                                                 # not a replacement
    assert check_step(cat, good[:2], [], MAPPING)


def test_engine_cuts_apart_lines_printed_at_once_by_two_threads():
    assert unsplice("  8001 commits up to index 3 (term 1): a majority of 3 holds it "
                    "[XX-4]1") == [
        ("event", "  8001 commits up to index 3 (term 1): a majority of 3 holds it [XX-4]"),
        ("main", "1")]
    assert unsplice("OK  8002 commits up to index 2: the leader has committed 2 [XX-5]") == [
        ("main", "OK"), ("event", "  8002 commits up to index 2: the leader has committed 2 "
                                  "[XX-5]")]
    row = "8000   follower       1  8001        4       4        4  ok"
    assert unsplice(row) == [("main", row)]
    assert unsplice("") == []
    assert split_output(["5", "", "* notice"]) == (["5"], ["* notice"])


def test_engine_sorts_runs_of_ports_after_mapping():
    labels = {9001: 8000, 9000: 8001, 9002: 8002}
    assert normalise("partitioned: 9000 | 9001 9002", labels) == \
        "partitioned: <8001> | <8000> <8002>"
    assert normalise("cut off from 9000 9001", labels) == "cut off from <8000> <8001>"
    assert normalise("Started nodes on ports 9000, 9001, 9002 (x)", labels) == \
        "Started nodes on ports <8000>, <8001>, <8002> (x)"


def test_engine_keeps_strings_in_json_lines_exact():
    cat = sample_steps()[3]
    good = ['{"index":8,"term":4,"command":{"client":"0123456789abcdef0123456789abcdef",'
            '"seq":9}}',
            '{"index":8,"term":5,"command":null}']
    assert check_step(cat, good, [], MAPPING) == []
    assert check_step(cat, [good[0].replace('"seq":9', '"seq":"9"'), good[1]], [], MAPPING)
    op = Step("lab", 1, "shell", "cat log.jsonl", ['{"index":2,"op":["set","y","2"]}'])
    assert check_step(op, ['{"index":5,"op":["set","y","2"]}'], [], MAPPING) == []
    assert check_step(op, ['{"index":5,"op":["set","y","1"]}'], [], MAPPING)
    assert check_step(op, ['{"index": 5, "op": ["set", "y", "2"]}'], [], MAPPING)  # format


def test_engine_swaps_two_nodes_only_if_the_last_status_showed_them_alike(tmp_path):
    status = Step("lab", 1, "demo", "status", [
        "node   role        term  leader    log  commit  applied  network",
        "8000   leader         2  8000        6       6        6  ok",
        "8001   follower       2  8000        6       6        6  ok",
        "8002   follower       2  8000        6       6        6  ok"])
    assert alike_pairs(status) == [{8001, 8002}]
    election = Step("lab", 2, "demo", "partition 8000 | 8001 8002", [
        "partitioned: 8000 | 8001 8002",
        "  8002 becomes leader of term 3: votes from 8001, 8002, a majority of 3 [XX-2]"])
    main = ["partitioned: 9001 | 9000 9002"]
    events = ["  9000 becomes leader of term 4: votes from 9000, 9002, a majority of 3 [XX-2]"]
    replay = Replay(spawn=None, cwd=tmp_path)
    replay.candidates = [MAPPING]                  # 8001 is 9000: the doc's loser won
    with pytest.raises(pytest.fail.Exception, match="becomes leader"):
        replay.settle(election, lambda m: (main, events))
    table = ["node   role        term  leader    log  commit  applied  network",
             "9001   leader         2  9001        6       6        6  ok",
             "9000   follower       2  9001        6       6        6  ok",
             "9002   follower       2  9001        6       6        6  ok"]
    replay.settle(status, lambda m: (table, []))
    replay.settle(election, lambda m: (main, events))
    assert replay.candidates == [{8000: 9001, 8001: 9002, 8002: 9000}]


def test_engine_keeps_commit_numbers_in_order_and_knows_a_vote_for_oneself():
    grep = Step("lab", 1, "shell", "grep COMMIT raft-data/demo/8002/node.log", [
        "2026-11-23 16:48:03,470 INFO 127.0.0.1:8002 [COMMIT] 1 1 null",
        "2026-11-23 16:48:10,661 INFO 127.0.0.1:8002 [COMMIT] 1 1 null",
        "2026-11-23 16:48:10,662 INFO 127.0.0.1:8002 [COMMIT] 5 2 null"])
    real = ["2031-01-01 00:00:00,000 INFO 127.0.0.1:9002 [COMMIT] 1 1 null",
            "2031-01-01 00:00:01,000 INFO 127.0.0.1:9002 [COMMIT] 1 1 null",
            "2031-01-01 00:00:01,000 INFO 127.0.0.1:9002 [COMMIT] 6 3 null"]
    assert check_step(grep, real, [], MAPPING) == []
    assert check_step(grep, [real[0], real[1].replace("] 1 1", "] 2 1"), real[2]], [], MAPPING)
    assert check_step(grep, [line.replace("9002", "9000") for line in real], [], MAPPING)
    state = Step("lab", 1, "shell", "cat raft-data/demo/8000/state.jsonl", [
        '{"term": 1, "voted_for": "127.0.0.1:8002"}',
        '{"term": 2, "voted_for": "127.0.0.1:8000"}'])
    assert check_step(state, ['{"term": 1, "voted_for": "127.0.0.1:9000"}',
                              '{"term": 3, "voted_for": "127.0.0.1:9001"}'], [], MAPPING) == []
    assert check_step(state, ['{"term": 1, "voted_for": "127.0.0.1:9000"}',
                              '{"term": 3, "voted_for": "127.0.0.1:9000"}'], [], MAPPING)


def test_engine_never_swaps_a_node_a_command_has_named_alone(tmp_path):
    replay = Replay(spawn=None, cwd=tmp_path)
    replay.real_ports, replay.candidates = [9000, 9001, 9002], [MAPPING]
    replay.alike = [frozenset({8001, 8002})]
    assert replay.translate("partition 8000 | 8001 8002") == "partition 9001 | 9000 9002"
    assert replay.alike == [frozenset({8001, 8002})]        # the same cut either way
    assert replay.translate("ask 8002 get y") == "ask 9002 get y"
    assert replay.alike == []


def test_engine_translates_a_term_in_an_answer_through_the_status_tables(tmp_path):
    status = Step("lab", 1, "demo", "status", [
        "node   role        term  leader    log  commit  applied  network",
        "8000   leader         2  8000        6       6        6  ok",
        "8001   follower       2  8000        6       6        6  ok",
        "8002   follower       1  -           4       4        4  ok"])
    table = ["node   role        term  leader    log  commit  applied  network",
             "9001   leader         3  9001        6       6        6  ok",
             "9000   follower       3  9001        6       6        6  ok",
             "9002   follower       1  -           4       4        4  ok"]
    ask = Step("lab", 2, "demo", "ask 8000 set y 1",
               ["8000: not the leader (term 2); it knows no leader"])
    real = ["9001: not the leader (term 3); it knows no leader"]
    replay = Replay(spawn=None, cwd=tmp_path)
    replay.candidates = [MAPPING]
    assert check_step(ask, real, [], MAPPING)                 # no table seen: as it is
    replay.settle(status, lambda m: (table, []))
    assert replay.terms == {2: 3, 1: 1}
    replay.settle(ask, lambda m: (real, []))                  # doc term 2 is real term 3
    for wrong in ("(term 2)", "(term 4)", "(term 1)"):
        with pytest.raises(pytest.fail.Exception, match="no longer prints"):
            replay.settle(ask, lambda m: ([real[0].replace("(term 3)", wrong)], []))
    unseen = Step("lab", 3, "demo", "ask 8000 set y 1",
                  ["8000: not the leader (term 7); it knows no leader"])
    assert check_step(unseen, [real[0].replace("(term 3)", "(term 7)")], [], MAPPING,
                      replay.terms) == []
    assert check_step(unseen, real, [], MAPPING, replay.terms)
