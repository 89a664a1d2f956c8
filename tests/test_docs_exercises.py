"""docs/exercises.md stays true: every line it tells a reader to replace is
in raft.py as shown, and every test it names exists.

(Running each exercise's mutation is what a reader does; docs/exercises.md
records what the tests said when we did it.)"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXERCISES = (ROOT / "docs" / "exercises.md").read_text(encoding="utf-8")
RAFT = (ROOT / "raft.py").read_text(encoding="utf-8")


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_every_code_block_the_exercises_replace_is_in_raft_py():
    """An exercise that says "replace A with B" shows A first: A must still
    be in raft.py, word for word, or the reader cannot follow it."""
    originals = []
    for section in EXERCISES.split("\n## ")[1:]:
        blocks = python_blocks(section)
        if "replace" in section and len(blocks) >= 2:
            originals.append(blocks[0])
    assert len(originals) >= 2
    for block in originals:
        assert block in RAFT, f"docs/exercises.md quotes code raft.py no longer has:\n{block}"


def test_the_cycle_exercise_2_swaps_is_the_one_in_raft_py():
    assert ("    messages = node.collect_messages()\n"
            "    # [PERSIST] one flush + fsync for everything written, before any send.\n"
            "    node.storage.sync()\n"
            "    for destination, message in messages:\n"
            "        send(destination, message)\n") in RAFT


def test_every_test_the_exercises_name_exists():
    names = set(re.findall(r"`(test_\w+)`", EXERCISES))
    assert names
    sources = "\n".join(p.read_text(encoding="utf-8")
                        for p in (ROOT / "tests").glob("test_*.py"))
    for name in names:
        assert f"def {name}(" in sources, f"docs/exercises.md names a missing test {name}"


def test_every_function_the_exercises_name_exists():
    import raft
    for name in set(re.findall(r"`RaftNode\.(\w+)`", EXERCISES)):
        assert hasattr(raft.RaftNode, name), name
    for name in set(re.findall(r"`(\w+)` \(section", EXERCISES)):
        assert hasattr(raft, name), name
