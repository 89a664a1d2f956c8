"""The Figure 2 tag legend is a contract between raft.py and tests/.

raft.py's module docstring lists every rule tag between the headings
"Figure 2 rule tags" and "Glossary". This file checks that

  * each tag is implemented in exactly ONE place in raft.py: one comment of
    the form "# [TAG] ..." (elsewhere the code says "see [TAG]"), and
  * each tag is tested somewhere in tests/: a test function whose name holds
    the tag lower-cased with non-alphanumerics as underscores (lead_3a,
    ae_5, 5_3_hint; the underscore between letters and digits may be left
    out: lead3a, ae5), or the tag in brackets in a docstring or comment.

A failure names every tag that breaks the contract, and why.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RAFT_SOURCE = (ROOT / "raft.py").read_text(encoding="utf-8")
TESTS_DIR = ROOT / "tests"
THIS_FILE = pathlib.Path(__file__).resolve()

# A tag line in the legend: two spaces, the tag, then its description.
# Description continuation lines are indented further and never match.
LEGEND_LINE = re.compile(r"^  (?P<tag>[A-Z§][A-Za-z0-9§.\-]*)\s{2,}\S")
TEST_NAME = re.compile(r"^\s*def (test_\w+)", re.MULTILINE)


def legend_tags(source: str) -> list[str]:
    docstring = source.split('"""', 2)[1]
    start = docstring.index("Figure 2 rule tags")
    end = docstring.index("Glossary", start)
    return [match.group("tag") for line in docstring[start:end].splitlines()
            if (match := LEGEND_LINE.match(line))]


TAGS = legend_tags(RAFT_SOURCE)


def implementation_count(tag: str) -> int:
    """How many '# [TAG]' comments raft.py has ('see [TAG]' does not count)."""
    return len(re.findall(r"#\s*\[" + re.escape(tag) + r"\]", RAFT_SOURCE))


def name_form(tag: str) -> str:
    """'LEAD-3a' -> 'lead_3a', '§5.3-HINT' -> '5_3_hint'."""
    return re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_")


def is_tested(tag: str, directory: pathlib.Path = TESTS_DIR) -> bool:
    """Does a test name, docstring or comment in directory name the tag?

    The name form must be whole underscore-separated words of a test name,
    its inner underscores optional: test_lead_3a_... and test_lead3a_...
    both name LEAD-3a, and neither names LEAD-3."""
    words = name_form(tag).split("_")
    pattern = re.escape(words[0])
    for before, word in zip(words, words[1:]):
        # Between two numbers the underscore is required: test_6_4_ names
        # §6.4, test_..._64_bits does not.
        pattern += ("_" if before.isdigit() and word.isdigit() else "_?") + re.escape(word)
    in_name = re.compile(r"(?:^|_)" + pattern + r"(?:_|$)")
    in_text = "[" + tag + "]"
    for path in sorted(directory.glob("*.py")):
        if path.resolve() == THIS_FILE:
            continue
        text = path.read_text(encoding="utf-8")
        if in_text in text or any(in_name.search(name) for name in TEST_NAME.findall(text)):
            return True
    return False


# ---------------------------------------------------------------------------
# The checker checks itself: a parser that found nothing would pass vacuously
# ---------------------------------------------------------------------------

def test_the_legend_is_found_and_lists_the_figure2_rules():
    expected = {"PERSIST", "ALL-1", "ALL-2", "FOL-1", "FOL-2", "CAN-1", "CAN-2", "CAN-3",
                "CAN-4", "LEAD-1", "LEAD-2", "LEAD-3", "LEAD-3a", "LEAD-3b", "LEAD-4",
                "AE-1", "AE-2", "AE-3", "AE-4", "AE-5", "RV-1", "RV-2",
                "§5.3-HINT", "§8-NOOP", "§6.3", "§6.4"}
    assert expected <= set(TAGS), f"the legend parser missed {sorted(expected - set(TAGS))}"
    assert len(TAGS) == len(set(TAGS)), f"the legend lists a tag twice: {TAGS}"


def test_the_name_form_of_a_tag():
    assert [name_form(t) for t in ("LEAD-3a", "AE-5", "§5.3-HINT", "§6.4")] == [
        "lead_3a", "ae_5", "5_3_hint", "6_4"]


def test_a_test_name_names_its_tag_and_not_a_neighbour(tmp_path):
    (tmp_path / "test_example.py").write_text(
        "def test_lead3a_success():\n    pass\n\n"
        "def test_ae_5_takes_the_minimum():\n    pass\n\n"
        "def test_5_3_hint_skips_a_term():\n    pass\n\n"
        "# a comment naming [CAN-2]\n", encoding="utf-8")
    tags = ("LEAD-3a", "AE-5", "§5.3-HINT", "CAN-2", "LEAD-3", "AE-1", "§6.4", "CAN-3")
    assert [is_tested(tag, tmp_path) for tag in tags] == [
        True, True, True, True, False, False, False, False]


def test_implementation_comments_are_counted_and_see_remarks_are_not():
    assert implementation_count("LEAD-4") == 1
    assert "see [FOL-2]" in RAFT_SOURCE        # present, and not counted as FOL-2's home
    assert implementation_count("FOL-2") == 1


# ---------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tag", TAGS, ids=lambda tag: tag.replace("§", "sec"))
def test_tag_is_implemented_exactly_once_in_raft_py(tag):
    count = implementation_count(tag)
    assert count == 1, f"'# [{tag}]' appears {count} times in raft.py, want exactly 1"


def test_every_tag_is_implemented_exactly_once_in_raft_py():
    counts = {tag: implementation_count(tag) for tag in TAGS}
    missing = [tag for tag, count in counts.items() if count == 0]
    repeated = [f"{tag} ({count} times)" for tag, count in counts.items() if count > 1]
    assert not missing and not repeated, (
        "each Figure 2 tag must mark exactly one place in raft.py as '# [TAG] ...':\n"
        f"  missing:  {', '.join(missing) or '-'}\n"
        f"  repeated: {', '.join(repeated) or '-'}")


def test_every_tag_is_tested():
    untested = [tag for tag in TAGS if not is_tested(tag)]
    assert not untested, (
        f"no test in tests/ names these Figure 2 tags: {', '.join(untested)}\n"
        f"(name a test like test_{name_form(untested[0])}_..., or write "
        f"[{untested[0]}] in its docstring)")
