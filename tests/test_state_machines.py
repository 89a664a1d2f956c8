"""The two state machines, kv.KeyValueStore and counter.Counters.

Each implements raft.py's StateMachine interface [5]: check(op) raises
ValueError for a malformed op before it is logged; is_read(op) says which ops
the leader may serve by ReadIndex; apply(op) changes the state and returns a
JSON value (a ValueError is an answer too); query(op) reads; snapshot() and
restore() round-trip the whole state.
"""

import json

import pytest

import counter
import kv


# ---------------------------------------------------------------------------
# kv.KeyValueStore
# ---------------------------------------------------------------------------

def test_kv_set_then_get_returns_the_value():
    store = kv.KeyValueStore()
    assert store.apply(["set", "x", "hello"]) is None
    assert store.apply(["get", "x"]) == "hello"
    assert store.query(["get", "x"]) == "hello"
    assert store.data == {"x": "hello"}


def test_kv_get_of_a_missing_key_is_none():
    store = kv.KeyValueStore()
    assert store.query(["get", "nope"]) is None
    assert store.apply(["get", "nope"]) is None
    assert store.data == {}


def test_kv_set_overwrites():
    store = kv.KeyValueStore()
    store.apply(["set", "x", "1"])
    store.apply(["set", "x", "2"])
    assert store.data == {"x": "2"}


def test_kv_incr_of_a_missing_key_counts_from_zero():
    store = kv.KeyValueStore()
    assert store.apply(["incr", "n", 5]) == 5
    assert store.apply(["incr", "n", -2]) == 3
    assert store.data == {"n": 3}


def test_kv_incr_on_a_string_spelling_an_integer_stores_an_int():
    store = kv.KeyValueStore()
    store.apply(["set", "n", "41"])
    assert store.apply(["incr", "n", 1]) == 42
    assert store.data == {"n": 42}
    assert type(store.data["n"]) is int
    store.apply(["set", "m", "-7"])
    assert store.apply(["incr", "m", 7]) == 0


@pytest.mark.parametrize("value", ["abc", "4.5", "", " 4", "4 ", "+4", "0x10", "١٢"])
def test_kv_incr_on_a_value_that_is_not_an_integer_raises_and_changes_nothing(value):
    store = kv.KeyValueStore()
    store.apply(["set", "x", value])
    with pytest.raises(ValueError, match="not an integer"):
        store.apply(["incr", "x", 1])
    assert store.data == {"x": value}


def test_kv_del_reports_whether_the_key_existed():
    store = kv.KeyValueStore()
    store.apply(["set", "x", "1"])
    assert store.apply(["del", "x"]) is True
    assert store.apply(["del", "x"]) is False
    assert store.data == {}


def test_kv_del_of_an_empty_string_value_still_reports_it_existed():
    store = kv.KeyValueStore()
    store.apply(["set", "x", ""])
    assert store.apply(["del", "x"]) is True


def test_kv_is_read_only_for_get():
    store = kv.KeyValueStore()
    assert store.is_read(["get", "x"]) is True
    assert [store.is_read(op) for op in (["set", "x", "1"], ["incr", "x", 1], ["del", "x"])] == [
        False, False, False]


@pytest.mark.parametrize("op", [
    ["set", "x", "1"], ["get", "x"], ["incr", "x", 1], ["incr", "x", -3], ["del", "x"],
    ["set", "k" * kv.MAX_KEY_CHARS, ""],
])
def test_kv_check_accepts_well_formed_ops(op):
    assert kv.KeyValueStore().check(op) is None


@pytest.mark.parametrize("op, message", [
    ("set x 1", "unknown command"),                 # not a list
    (("set", "x", "1"), "unknown command"),         # a tuple is not a JSON list
    ([], "unknown command"),
    (["put", "x", "1"], "unknown command"),
    ([None], "unknown command"),
    (["get"], "takes 1 argument"),
    (["get", "x", "y"], "takes 1 argument"),
    (["set", "x"], "takes 2 argument"),
    (["del"], "takes 1 argument"),
    (["get", ""], "needs a key"),
    (["get", 5], "needs a key"),
    (["get", "k" * (kv.MAX_KEY_CHARS + 1)], "needs a key"),
    (["set", "x", 1], "set needs a string value"),
    (["set", "x", None], "set needs a string value"),
    (["incr", "x", "1"], "incr needs an integer amount"),
    (["incr", "x", 1.5], "incr needs an integer amount"),
    (["incr", "x", True], "incr needs an integer amount"),   # bool is not an int here
])
def test_kv_check_rejects_malformed_ops(op, message):
    store = kv.KeyValueStore()
    with pytest.raises(ValueError, match=message):
        store.check(op)
    assert store.data == {}


def test_kv_snapshot_restore_round_trip_through_json():
    store = kv.KeyValueStore()
    for op in (["set", "a", "1"], ["incr", "b", 2], ["set", "c", "x"], ["del", "c"]):
        store.apply(op)
    snapshot = json.loads(json.dumps(store.snapshot()))
    copy = kv.KeyValueStore()
    copy.restore(snapshot)
    assert copy.data == store.data == {"a": "1", "b": 2}
    assert copy.query(["get", "b"]) == 2


def test_kv_snapshot_and_restore_do_not_share_state():
    store = kv.KeyValueStore()
    store.apply(["set", "a", "1"])
    snapshot = store.snapshot()
    store.apply(["set", "a", "2"])
    assert snapshot == {"data": {"a": "1"}}
    copy = kv.KeyValueStore()
    copy.restore(snapshot)
    copy.apply(["set", "b", "3"])
    assert snapshot == {"data": {"a": "1"}}


# ---------------------------------------------------------------------------
# counter.Counters
# ---------------------------------------------------------------------------

def test_counter_incr_and_decr_from_zero():
    counters = counter.Counters()
    assert counters.apply(["incr", "c", 5]) == 5
    assert counters.apply(["decr", "c", 2]) == 3
    assert counters.apply(["decr", "d", 1]) == -1
    assert counters.counts == {"c": 3, "d": -1}


def test_counter_get_of_a_missing_counter_is_none():
    counters = counter.Counters()
    assert counters.query(["get", "c"]) is None
    assert counters.apply(["get", "c"]) is None


def test_counter_set_takes_an_integer_or_a_string_spelling_one():
    counters = counter.Counters()
    assert counters.apply(["set", "c", 7]) is None
    assert counters.query(["get", "c"]) == 7
    assert counters.apply(["set", "d", "-12"]) is None
    assert counters.counts == {"c": 7, "d": -12}
    assert type(counters.counts["d"]) is int
    assert counters.apply(["incr", "d", 2]) == -10


@pytest.mark.parametrize("value", ["abc", "1.5", "", 1.5, None, True, [1]])
def test_counter_set_requires_an_integer(value):
    counters = counter.Counters()
    with pytest.raises(ValueError, match="not an integer"):
        counters.check(["set", "c", value])
    with pytest.raises(ValueError, match="not an integer"):
        counters.apply(["set", "c", value])
    assert counters.counts == {}


def test_counter_del_reports_whether_the_counter_existed():
    counters = counter.Counters()
    counters.apply(["set", "c", 0])
    assert counters.apply(["del", "c"]) is True
    assert counters.apply(["del", "c"]) is False
    assert counters.counts == {}


def test_counter_is_read_only_for_get():
    counters = counter.Counters()
    assert counters.is_read(["get", "c"]) is True
    assert [counters.is_read(op) for op in (
        ["incr", "c", 1], ["decr", "c", 1], ["set", "c", 1], ["del", "c"])] == [
        False, False, False, False]


@pytest.mark.parametrize("op", [
    ["incr", "c", 1], ["decr", "c", 1], ["get", "c"], ["set", "c", 3], ["set", "c", "3"],
    ["del", "c"],
])
def test_counter_check_accepts_well_formed_ops(op):
    assert counter.Counters().check(op) is None


@pytest.mark.parametrize("op, message", [
    ("incr c", "unknown command"),
    ([], "unknown command"),
    (["add", "c", 1], "unknown command"),
    (["incr", "c"], "takes 2 argument"),
    (["get", "c", 1], "takes 1 argument"),
    (["get", ""], "needs a key"),
    (["incr", 3, 1], "needs a key"),
    (["incr", "c", "1"], "incr needs an integer amount"),
    (["decr", "c", 2.0], "decr needs an integer amount"),
    (["incr", "c", False], "incr needs an integer amount"),
])
def test_counter_check_rejects_malformed_ops(op, message):
    with pytest.raises(ValueError, match=message):
        counter.Counters().check(op)


def test_counter_snapshot_restore_round_trip_through_json():
    counters = counter.Counters()
    for op in (["incr", "a", 3], ["set", "b", "9"], ["decr", "b", 1], ["set", "c", 1],
               ["del", "c"]):
        counters.apply(op)
    snapshot = json.loads(json.dumps(counters.snapshot()))
    copy = counter.Counters()
    copy.restore(snapshot)
    assert copy.counts == counters.counts == {"a": 3, "b": 8}
    copy.apply(["incr", "a", 1])
    assert counters.counts == {"a": 3, "b": 8}


# ---------------------------------------------------------------------------
# Both: the interface contract raft.py relies on
# ---------------------------------------------------------------------------

MACHINES = [kv.KeyValueStore, counter.Counters]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_apply_is_deterministic(machine):
    """Every node applies the same ops in the same order: same state, same answers."""
    ops = [["set", "a", "5"], ["incr", "a", 2], ["incr", "b", 1], ["del", "b"], ["get", "a"]]
    first, second = machine(), machine()
    assert [first.apply(op) for op in ops] == [second.apply(op) for op in ops]
    assert first.snapshot() == second.snapshot()


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_query_changes_nothing(machine):
    instance = machine()
    instance.apply(["set", "a", "5"])
    before = instance.snapshot()
    instance.query(["get", "a"])
    instance.query(["get", "missing"])
    assert instance.snapshot() == before


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
@pytest.mark.parametrize("op", [[["set"], "x", "1"], [{"op": "set"}, "x", "1"]])
def test_check_rejects_a_command_name_that_is_not_a_string(machine, op):
    with pytest.raises(ValueError, match="unknown command"):
        machine().check(op)
