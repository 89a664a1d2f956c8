"""docs/figure2.md and docs/design.md, checked against raft.py and tests/.

docs/figure2.md maps every Figure 2 rule tag to the function of raft.py that
implements it and to the tests that prove it. tests/test_figure2_tags.py
already checks that each tag of raft.py's legend marks exactly one place in
raft.py and is named by some test. This file checks the docs, so the map
fails as soon as code or tests drift from it:

  * every legend tag has exactly one row in figure2.md, and no row names a
    tag the legend lacks;
  * the function in a row's Code column exists in raft.py and its source
    holds that row's tag comment ('#', then the tag in brackets);
  * every test in a row's Tests column exists (its 'def' is in the named
    file), and each row lists at least one test that names the row's tag;
  * every test whose name starts with a tag (test_rv2_..., test_5_3_hint_...)
    is listed in that tag's row, so a new rule test cannot be left off;
  * the names in the State table are attributes of a RaftNode;
  * in both docs, every code name in backticks that is a call (`tick()`), a
    class or constant (`RaftNode`, `MAX_SESSIONS`) or a dotted name starting
    with one (`RaftNode.read`) exists in raft.py;
  * every tag in brackets in the docs' prose is a legend tag.

This file must not spell a tag in brackets itself: test_figure2_tags.py
counts any such text in tests/ as a test of that tag.
"""

import ast
import builtins
import functools
import inspect
import pathlib
import random
import re

import pytest

import kv
import raft
from test_figure2_tags import TAGS, name_form

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS_DIR = ROOT / "tests"
FIGURE2 = ROOT / "docs" / "figure2.md"
DESIGN = ROOT / "docs" / "design.md"
THIS_FILE = pathlib.Path(__file__).resolve()

TAG_TABLE_HEADER = ["Tag", "Rule", "Code", "Tests"]
STATE_TABLE_HEADER = ["Figure 2", "raft.py", "Kind"]
CODE_SPAN = re.compile(r"`([^`\n]+)`")
TEST_ID = re.compile(r"^(tests/[\w/]+\.py)::(test_\w+)$")
CODE_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\))?$")
BRACKETED_TAG = re.compile(r"\[((?:§|[A-Z]{2,})[^\]\s]*)\]")    # not log[N]


# ---------------------------------------------------------------------------
# Reading the docs
# ---------------------------------------------------------------------------

def tables(text: str) -> list[tuple[list[str], list[tuple[int, list[str]]]]]:
    """Every Markdown table: (header cells, [(line number, cells), ...])."""
    found, header, rows = [], None, []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not all(set(cell) <= set("-: ") for cell in cells):
                rows.append((number, cells))
        elif header is not None:
            found.append((header, rows))
            header, rows = None, []
    if header is not None:
        found.append((header, rows))
    return found


def tag_rows(text: str) -> list[tuple[int, list[str]]]:
    return [row for header, rows in tables(text) if header == TAG_TABLE_HEADER
            for row in rows]


def rows_by_tag(text: str) -> dict[str, list[tuple[int, list[str]]]]:
    by_tag: dict[str, list] = {}
    for number, cells in tag_rows(text):
        by_tag.setdefault(cells[0], []).append((number, cells))
    return by_tag


def code_spans(text: str) -> list[str]:
    return CODE_SPAN.findall(text)


def ids_in_cell(cell: str) -> list[tuple[str, str]]:
    """The (file, test name) pairs of a Tests cell; raises on anything else."""
    ids = []
    for span in code_spans(cell):
        match = TEST_ID.match(span)
        assert match, f"not a pytest node id (tests/FILE.py::test_name): {span!r}"
        ids.append((match.group(1), match.group(2)))
    return ids


# ---------------------------------------------------------------------------
# Looking things up in raft.py and tests/
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def sample_node() -> raft.RaftNode:
    return raft.RaftNode("n1", ["n1", "n2", "n3"], raft.MemoryStorage(),
                         kv.KeyValueStore(), random.Random(0))


def raft_classes() -> list[type]:
    return [value for value in vars(raft).values()
            if inspect.isclass(value) and value.__module__ == raft.__name__]


MISSING = object()


def resolve(name: str):
    """The object a code name in the docs refers to, or MISSING.

    'RaftNode.read', 'persist_send_apply', 'Role.FOLLOWER', 'MAX_SESSIONS'
    are walked from the raft module (a RaftNode attribute may also be one an
    instance sets in __init__). A name raft does not have at top level
    ('tick', 'storage.sync') counts if some class of raft.py defines its last
    part: the docs may say `tick()` for `RaftNode.tick`."""
    found = raft
    for part in name.split("."):
        if hasattr(found, part):
            found = getattr(found, part)
        elif found is raft.RaftNode and hasattr(sample_node(), part):
            found = getattr(sample_node(), part)
        else:
            found = MISSING
            break
    if found is not MISSING or name[0].isupper():
        return found
    last = name.split(".")[-1]
    for cls in raft_classes():
        if last in vars(cls) or last in getattr(cls, "__dataclass_fields__", {}):
            return getattr(cls, last, cls)
    return getattr(builtins, last, MISSING) if "." not in name else MISSING


def implementation_comment(tag: str) -> re.Pattern:
    return re.compile(r"#\s*\[" + re.escape(tag) + r"\]")


@functools.lru_cache(maxsize=None)
def functions_of(path: pathlib.Path) -> dict[str, str]:
    """Each top-level test function of a file -> its text, including the
    comments and decorators between it and the statement before it."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    functions, previous_end = {}, 0
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            functions[node.name] = "\n".join(lines[previous_end:node.end_lineno])
        previous_end = node.end_lineno
    return functions


def rule_test_files() -> list[pathlib.Path]:
    return [path for path in sorted(TESTS_DIR.glob("test_*.py"))
            if path.resolve() != THIS_FILE and path.name != "test_figure2_tags.py"]


def names_the_tag(tag: str, test_name: str, text: str) -> bool:
    """A test names a tag by its name's prefix, or by the tag as a word of
    its text (docstring, comments, or a message it expects)."""
    return bool(tag_prefix(tag).match(test_name)
                or re.search(r"(?<![\w-])" + re.escape(tag) + r"(?![\w-])", text))


def tag_prefix(tag: str) -> re.Pattern:
    """test_rv2_... and test_rv_2_... both start with RV-2 (not test_rv20_)."""
    words = [re.escape(word) for word in name_form(tag).split("_")]
    return re.compile(r"^test_" + "_?".join(words) + r"_")


# ---------------------------------------------------------------------------
# The checker checks itself: a parser that found nothing would pass vacuously
# ---------------------------------------------------------------------------

def test_the_table_parser_finds_tag_rows_and_state_rows():
    tag = TAGS[0]
    text = ("intro\n\n| Tag | Rule | Code | Tests |\n|---|---|---|---|\n"
            f"| {tag} | a rule | `persist_send_apply` | `tests/test_rules.py::test_x` |\n\n"
            "| Figure 2 | raft.py | Kind |\n|---|---|---|\n| votedFor | `voted_for` | p |\n")
    assert tag_rows(text) == [(5, [tag, "a rule", "`persist_send_apply`",
                                   "`tests/test_rules.py::test_x`"])]
    assert [header for header, _ in tables(text)] == [TAG_TABLE_HEADER, STATE_TABLE_HEADER]
    assert ids_in_cell("`tests/test_rules.py::test_a`<br>`tests/test_storage.py::test_b`") == [
        ("tests/test_rules.py", "test_a"), ("tests/test_storage.py", "test_b")]


def test_resolve_finds_real_names_and_refuses_made_up_ones():
    assert resolve("RaftNode.handle_request_vote") is raft.RaftNode.handle_request_vote
    assert resolve("persist_send_apply") is raft.persist_send_apply
    assert resolve("tick") is raft.RaftNode.tick
    assert resolve("MAX_SESSIONS") == raft.MAX_SESSIONS
    assert resolve("RaftNode.in_flight") == {}
    assert resolve("RaftNode.leader_id") is None          # exists, and is None
    for made_up in ("RaftNode.handle_nothing", "no_such_function", "NoSuchClass",
                    "RaftNode.tick.nothing"):
        assert resolve(made_up) is MISSING, made_up


def test_a_tag_prefix_is_whole_words():
    assert tag_prefix("LEAD-3").match("test_lead3_sends")
    assert not tag_prefix("LEAD-3").match("test_lead3a_success")
    assert tag_prefix("§5.3-HINT").match("test_5_3_hint_a_short_follower")
    assert not tag_prefix("§6.4").match("test_a_term_beyond_64_bits")


# ---------------------------------------------------------------------------
# docs/figure2.md: one row per tag; code and tests that exist
# ---------------------------------------------------------------------------

FIGURE2_TEXT = FIGURE2.read_text(encoding="utf-8")
ROWS = rows_by_tag(FIGURE2_TEXT)


def test_every_legend_tag_has_exactly_one_row_and_no_row_names_another_tag():
    missing = [tag for tag in TAGS if tag not in ROWS]
    repeated = [f"{tag} (lines {', '.join(str(n) for n, _ in rows)})"
                for tag, rows in ROWS.items() if len(rows) > 1]
    unknown = [f"{tag} (line {rows[0][0]})" for tag, rows in ROWS.items() if tag not in TAGS]
    assert not missing and not repeated and not unknown, (
        "docs/figure2.md must have one 'Tag | Rule | Code | Tests' row per legend tag:\n"
        f"  missing:  {', '.join(missing) or '-'}\n"
        f"  repeated: {', '.join(repeated) or '-'}\n"
        f"  unknown:  {', '.join(unknown) or '-'}")
    assert all(len(cells) == 4 and all(cells) for rows in ROWS.values() for _, cells in rows)


@pytest.mark.parametrize("tag", TAGS, ids=lambda tag: tag.replace("§", "sec"))
def test_the_code_column_names_the_function_holding_the_tag_comment(tag):
    if tag not in ROWS:
        pytest.fail(f"docs/figure2.md has no row for {tag}")
    (number, cells), *_ = ROWS[tag]
    names = code_spans(cells[2])
    assert len(names) == 1, (
        f"docs/figure2.md:{number}: the Code column of {tag} must name one function, "
        f"not {names}")
    function = resolve(names[0])
    assert callable(function), f"docs/figure2.md:{number}: raft.py has no {names[0]}"
    assert implementation_comment(tag).search(inspect.getsource(function)), (
        f"docs/figure2.md:{number}: {names[0]} does not hold the comment of {tag}; "
        f"find it with: grep -n '# .{tag}.' raft.py")


@pytest.mark.parametrize("tag", TAGS, ids=lambda tag: tag.replace("§", "sec"))
def test_the_tests_column_names_tests_that_exist_and_one_that_names_the_tag(tag):
    if tag not in ROWS:
        pytest.fail(f"docs/figure2.md has no row for {tag}")
    (number, cells), *_ = ROWS[tag]
    ids = ids_in_cell(cells[3])
    assert ids, f"docs/figure2.md:{number}: {tag} lists no tests"
    absent, naming = [], []
    for file, name in ids:
        path = ROOT / file
        functions = functions_of(path) if path.exists() else {}
        if name not in functions:
            absent.append(f"{file}::{name}")
        elif names_the_tag(tag, name, functions[name]):
            naming.append(name)
    assert not absent, (f"docs/figure2.md:{number}: {tag} lists tests that do not exist:\n  "
                        + "\n  ".join(absent))
    assert naming, (f"docs/figure2.md:{number}: none of the tests listed for {tag} names "
                    f"it (test_{name_form(tag)}_... or the tag in brackets in its docstring)")


def test_every_test_named_for_a_tag_is_listed_in_that_tags_row():
    listed = {tag: {name for _, cells in ROWS.get(tag, []) for _, name in ids_in_cell(cells[3])}
              for tag in TAGS}
    unlisted = []
    for path in rule_test_files():
        for name in functions_of(path):
            for tag in TAGS:
                if tag_prefix(tag).match(name) and name not in listed[tag]:
                    unlisted.append(f"{tag}: tests/{path.name}::{name}")
    assert not unlisted, ("add these tests to their rows in docs/figure2.md:\n  "
                          + "\n  ".join(unlisted))


def test_the_state_table_names_attributes_of_a_raft_node():
    node = sample_node()
    state_rows = [row for header, rows in tables(FIGURE2_TEXT)
                  if header == STATE_TABLE_HEADER for row in rows]
    assert len(state_rows) == 7, "the State table lists Figure 2's seven state variables"
    missing = [f"line {number}: {code_spans(cells[1])[0]}" for number, cells in state_rows
               if not hasattr(node, code_spans(cells[1])[0])]
    assert not missing, f"RaftNode has no attribute for: {', '.join(missing)}"


# ---------------------------------------------------------------------------
# Both docs: code names that exist, tags from the legend
# ---------------------------------------------------------------------------

def checked_code_names(text: str) -> list[str]:
    """Code spans that must name something in raft.py: calls, and names that
    start with a capital (classes, constants). Lower-case field names and file
    names are left alone."""
    names = []
    for span in code_spans(text):
        if CODE_NAME.match(span) and (span.endswith("()") or span[0].isupper()):
            names.append(span[:-2] if span.endswith("()") else span)
    return names


@pytest.mark.parametrize("doc", [FIGURE2, DESIGN], ids=lambda path: path.name)
def test_every_code_name_in_the_doc_exists_in_raft_py(doc):
    names = checked_code_names(doc.read_text(encoding="utf-8"))
    assert len(names) >= 10, f"{doc.name}: expected code names in backticks, found {names}"
    missing = sorted({name for name in names if resolve(name) is MISSING})
    assert not missing, f"docs/{doc.name} names what raft.py does not have: {missing}"


@pytest.mark.parametrize("doc", [FIGURE2, DESIGN], ids=lambda path: path.name)
def test_every_bracketed_tag_in_the_doc_is_a_legend_tag(doc):
    prose = CODE_SPAN.sub("", doc.read_text(encoding="utf-8"))
    mentioned = set(BRACKETED_TAG.findall(prose)) - {"TAG"}    # "see [TAG]", the pattern
    unknown = sorted(mentioned - set(TAGS))
    assert not unknown, f"docs/{doc.name} cites tags the legend of raft.py lacks: {unknown}"
    if doc == DESIGN:
        assert mentioned, "docs/design.md cites no rule tags at all"
