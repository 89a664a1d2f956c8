"""Tests of the linearizability checker (tests/linearizability.py).

Hand-written histories show each kind of violation it must catch (stale
read, lost write, doubled increment, an effect before its call) and each
kind of freedom it must allow (overlapping ops in either order, timed-out
ops that did or did not happen). Generated histories, made by running a real
sequential execution and giving each op an interval around its point, must
all pass; one impossible answer planted in each must fail. A brute-force
checker cross-checks the search on small histories.
"""

import itertools
import random

import pytest

import counter
import kv
import linearizability
from linearizability import Operation, check, check_key

K, C = kv.KeyValueStore, counter.Counters


def op(client, call, ret, *words, result=None, error=None):
    """Operation(client, [words], call, ret, result, error), shorter."""
    return Operation(client, list(words), call, ret, result, error)


def assert_linearizable(history, machine=K):
    verdict = check(history, machine)
    assert verdict.ok, verdict.explanation
    assert verdict.explanation == ""
    return verdict


def assert_not_linearizable(history, machine=K):
    verdict = check(history, machine)
    assert not verdict.ok, "expected a violation"
    assert verdict.explanation
    return verdict


# ---------------------------------------------------------------------------
# Hand-written histories
# ---------------------------------------------------------------------------

def test_a_sequential_history_that_follows_the_model_is_linearizable():
    assert_linearizable([
        op("a", 0, 1, "get", "x", result=None),
        op("a", 2, 3, "set", "x", "5"),
        op("b", 4, 5, "get", "x", result="5"),
        op("a", 6, 7, "incr", "x", 2, result=7),
        op("b", 8, 9, "get", "x", result=7),
        op("a", 10, 11, "del", "x", result=True),
        op("b", 12, 13, "get", "x", result=None),
    ])


def test_an_empty_history_is_linearizable():
    assert_linearizable([])


@pytest.mark.parametrize("first", ["a", "b"])
def test_overlapping_ops_may_take_effect_in_either_order(first):
    """Two overlapping sets, then a read: whichever set the read shows, it
    could have been the later one."""
    value = {"a": "2", "b": "1"}[first]      # the read sees the set that went second
    assert_linearizable([
        op("a", 0, 10, "set", "x", "1"),
        op("b", 1, 9, "set", "x", "2"),
        op("c", 11, 12, "get", "x", result=value),
    ])


def test_a_read_overlapping_a_write_may_see_either_value():
    for seen in (None, "5"):
        assert_linearizable([
            op("a", 0, 10, "set", "x", "5"),
            op("b", 2, 4, "get", "x", result=seen),
        ])


def test_a_stale_read_is_not_linearizable():
    """The write was acknowledged at t=5; a read started at t=6 returns the old value."""
    assert_not_linearizable([
        op("a", 0, 1, "set", "x", "old"),
        op("a", 2, 5, "set", "x", "new"),
        op("b", 6, 8, "get", "x", result="old"),
    ])


def test_a_lost_write_is_not_linearizable():
    """An acknowledged set that no later read ever sees, with no other writer."""
    assert_not_linearizable([
        op("a", 0, 2, "set", "x", "5"),
        op("b", 3, 4, "get", "x", result=None),
        op("c", 5, 6, "get", "x", result=None),
    ])


def test_two_increments_that_both_answer_one_are_not_linearizable():
    assert_not_linearizable([
        op("a", 0, 10, "incr", "x", 1, result=1),
        op("b", 0, 10, "incr", "x", 1, result=1),
    ])


def test_a_read_of_three_after_two_increments_from_zero_is_not_linearizable():
    """An increment applied twice (a retry counted twice) shows up in the read."""
    assert_not_linearizable([
        op("a", 0, 10, "incr", "x", 1, result=1),
        op("b", 0, 10, "incr", "x", 1, result=2),
        op("c", 11, 12, "get", "x", result=3),
    ])


def test_an_indeterminate_increment_that_happened_is_linearizable():
    assert_linearizable([
        op("a", 0, None, "incr", "x", 1),
        op("b", 5, 6, "incr", "x", 1, result=2),
        op("b", 7, 8, "get", "x", result=2),
    ])


def test_an_indeterminate_increment_that_never_happened_is_linearizable():
    assert_linearizable([
        op("a", 0, None, "incr", "x", 1),
        op("b", 5, 6, "incr", "x", 1, result=1),
        op("b", 7, 8, "get", "x", result=1),
    ])


def test_an_indeterminate_increment_may_take_effect_long_after_its_call():
    """A timed-out request may still be applied later: between two reads."""
    assert_linearizable([
        op("a", 0, None, "incr", "x", 1),
        op("b", 5, 6, "get", "x", result=None),
        op("b", 100, 101, "get", "x", result=1),
    ])


def test_an_indeterminate_op_whose_effect_appears_before_its_call_is_not_linearizable():
    assert_not_linearizable([
        op("b", 1, 3, "get", "x", result="5"),
        op("a", 10, None, "set", "x", "5"),
    ])


def test_an_error_for_incr_of_a_non_integer_is_linearizable():
    assert_linearizable([
        op("a", 0, 1, "set", "x", "hello"),
        op("a", 2, 3, "incr", "x", 1, error="the value of 'x' is not an integer: 'hello'"),
        op("b", 4, 5, "get", "x", result="hello"),
    ])


def test_errors_compare_by_kind_not_by_message():
    assert_linearizable([
        op("a", 0, 1, "set", "x", "hello"),
        op("a", 2, 3, "incr", "x", 1, error="any text at all"),
    ])


def test_a_number_for_incr_of_a_non_integer_is_not_linearizable():
    assert_not_linearizable([
        op("a", 0, 1, "set", "x", "hello"),
        op("a", 2, 3, "incr", "x", 1, result=1),
    ])


def test_an_error_where_the_model_succeeds_is_not_linearizable():
    assert_not_linearizable([
        op("a", 0, 1, "set", "x", "5"),
        op("a", 2, 3, "incr", "x", 1, error="not an integer"),
    ])


def test_incr_of_a_numeric_string_stores_an_integer_and_get_returns_it():
    history = [
        op("a", 0, 1, "set", "x", "5"),
        op("a", 2, 3, "incr", "x", 2, result=7),
        op("a", 4, 5, "get", "x", result=7),
    ]
    assert_linearizable(history)
    history[2].result = "7"              # the string is a different answer
    assert_not_linearizable(history)


def test_del_answers_whether_the_key_existed():
    history = [
        op("a", 0, 1, "del", "x", result=False),
        op("a", 2, 3, "set", "x", "1"),
        op("a", 4, 5, "del", "x", result=True),
        op("a", 6, 7, "del", "x", result=False),
        op("a", 8, 9, "get", "x", result=None),
    ]
    assert_linearizable(history)
    history[3].result = True             # deleted twice
    assert_not_linearizable(history)


def test_a_write_of_the_value_already_there_still_matters_where_it_goes():
    """b's set leaves x as it was if placed right after a's, but it must go
    after c's set for d's read: the search may not commit to it early."""
    assert_linearizable([
        op("a", 0, 1, "set", "x", "5"),
        op("b", 2, 10, "set", "x", "5"),
        op("c", 2, 10, "set", "x", "3"),
        op("d", 11, 12, "get", "x", result="5"),
    ])


def test_a_history_of_only_unanswered_ops_is_linearizable():
    assert_linearizable([op("a", 0, None, "incr", "x", 1), op("b", 1, None, "get", "x")])


def test_results_compare_with_their_type_so_true_is_not_one():
    assert_not_linearizable([
        op("a", 0, 1, "incr", "x", 1, result=True),
    ])


def test_counter_histories_use_the_counter_machine():
    history = [
        op("a", 0, 1, "set", "hits", "10"),
        op("a", 2, 3, "decr", "hits", 3, result=7),
        op("b", 2, 3, "incr", "hits", 1, result=8),
        op("a", 4, 5, "get", "hits", result=8),
        op("b", 4, 5, "del", "hits", result=True),
    ]
    assert_linearizable(history, C)
    history[3].result = 7                # the read missed an acknowledged incr
    assert_not_linearizable(history, C)


def test_counter_set_of_a_non_integer_is_an_error_there_but_not_in_kv():
    history = [op("a", 0, 1, "set", "x", "abc", error="not an integer")]
    assert_linearizable(history, C)
    assert_not_linearizable(history, K)


# ---------------------------------------------------------------------------
# The interval convention: ret_a <= call_b means a precedes b
# ---------------------------------------------------------------------------

def test_a_return_and_a_call_at_the_same_time_are_ordered_return_first():
    """a returned at t=5 and b was called at t=5: a took effect before b."""
    assert_not_linearizable([
        op("a", 0, 5, "set", "x", "1"),
        op("b", 5, 8, "get", "x", result=None),
    ])


def test_ops_that_overlap_by_any_amount_are_concurrent():
    assert_linearizable([
        op("a", 0, 5.001, "set", "x", "1"),
        op("b", 5, 8, "get", "x", result=None),
    ])


def test_an_instantaneous_op_follows_earlier_returns_and_precedes_later_calls():
    """call == ret (a coarse clock): it takes effect at that instant."""
    assert_linearizable([
        op("a", 0, 5, "set", "x", "1"),
        op("b", 5, 5, "get", "x", result="1"),
        op("c", 5, 6, "set", "x", "2"),
    ])
    assert_not_linearizable([
        op("a", 0, 5, "set", "x", "1"),
        op("b", 5, 5, "get", "x", result=None),
    ])
    assert_not_linearizable([
        op("b", 5, 5, "get", "x", result="2"),
        op("c", 5, 6, "set", "x", "2"),
    ])


def test_instantaneous_ops_at_the_same_instant_are_concurrent():
    for seen in (None, "1"):
        assert_linearizable([
            op("a", 5, 5, "set", "x", "1"),
            op("b", 5, 5, "get", "x", result=seen),
        ])


def test_a_return_before_its_call_is_refused():
    with pytest.raises(ValueError, match="returned before its call"):
        check([op("a", 5, 4, "get", "x")])


# ---------------------------------------------------------------------------
# Per-key checking and the explanation
# ---------------------------------------------------------------------------

def stale_read_on_y():
    return [
        op("a", 0, 1, "set", "x", "1"),
        op("a", 2, 3, "set", "y", "new"),
        op("b", 2, 3, "get", "x", result="1"),
        op("b", 4, 5, "get", "y", result=None),
        op("c", 4, 5, "incr", "z", 1, result=1),
    ]


def test_a_violation_on_one_key_is_reported_as_that_key():
    verdict = assert_not_linearizable(stale_read_on_y())
    assert verdict.key == "y"
    assert verdict.explanation.startswith("key 'y' is not linearizable")
    assert "set x" not in verdict.explanation and "incr z" not in verdict.explanation


def test_check_key_checks_one_keys_ops_alone():
    history = stale_read_on_y()
    assert check_key([o for o in history if o.op[1] == "x"], K).ok
    assert not check_key([o for o in history if o.op[1] == "y"], K).ok
    with pytest.raises(ValueError, match="one key"):
        check_key(history, K)


def test_every_failing_key_is_named():
    history = stale_read_on_y() + [op("d", 10, 11, "get", "w", result="never set")]
    verdict = assert_not_linearizable(history)
    assert verdict.key == "w"          # keys are checked in sorted order
    assert "keys 'y' are not linearizable either" in verdict.explanation


def test_the_explanation_names_the_key_the_op_and_the_deepest_linearization():
    verdict = assert_not_linearizable([
        op("a", 0, 1, "set", "x", "1"),
        op("a", 12, 19, "incr", "x", 1, result=2),
        op("b", 20, 21, "get", "x", result="1"),
    ])
    text = verdict.explanation
    assert "key 'x' is not linearizable" in text
    assert "client a  [t=12 .. t=19]  incr x 1 -> 2" in text
    assert ">> client b  [t=20 .. t=21]  get x -> '1'" in text
    assert "places 2 of 3 operations" in text
    assert "2. client a  incr x 1 -> 2   (x = 2)" in text
    assert "client b's `get x -> '1'` [t=20 .. t=21] could not be placed" in text
    assert "Placed next, the model answers 2." in text


def test_the_explanation_marks_indeterminate_ops_and_errors():
    verdict = assert_not_linearizable([
        op("a", 0, None, "set", "x", "1"),
        op("b", 1, 2, "incr", "x", 1, error="boom"),
        op("c", 3, 4, "get", "x", result="9"),
    ])
    assert "[t=0 .. t=?]  set x 1 -> ? (no answer" in verdict.explanation
    assert "incr x 1 -> error: boom" in verdict.explanation


def test_the_explanation_of_a_long_history_shows_only_the_ops_around_the_failure():
    history = [op("a", 2 * i, 2 * i + 1, "incr", "x", 1, result=i + 1) for i in range(5000)]
    history[2500].result = 0
    verdict = assert_not_linearizable(history)
    lines = verdict.explanation.splitlines()
    assert len(lines) < 80
    assert ">> client a  [t=5000 .. t=5001]  incr x 1 -> 0" in verdict.explanation
    assert "2480 earlier operations not shown" in verdict.explanation
    assert "places 2500 of 5000 operations" in verdict.explanation
    assert "first 2480 steps not shown" in verdict.explanation


# ---------------------------------------------------------------------------
# Generated histories
# ---------------------------------------------------------------------------

def random_op(rng, machine, key):
    """A random op on key; kv values are sometimes numeric, sometimes not."""
    verb = rng.choice(["set", "get", "get", "incr", "del"]
                      + (["decr", "incr"] if machine is C else []))
    if verb == "set":
        value = str(rng.randint(-3, 9)) if machine is C or rng.random() < 0.6 else "v"
        return ["set", key, value if machine is K else rng.choice([value, int(value)])]
    if verb in ("incr", "decr"):
        return [verb, key, rng.randint(-2, 3)]
    return [verb, key]


def linearizable_history(rng, machine=K, clients=5, per_client=8, keys=("x", "y"),
                         longest=6, timeouts=0.15):
    """Run a real execution: each client issues ops one after another, each
    op gets a linearization point strictly inside its interval, and the real
    machine applies them in point order to produce the answers. A timed-out
    op (ret None) was applied at some later point, or not at all."""
    history, points = [], []
    for c in range(clients):
        t = rng.randint(0, 3)
        for _ in range(per_client):
            call = t + rng.randint(0, 2)          # 0: called as the last one returned
            t = call + rng.randint(1, longest)
            o = Operation(f"c{c}", random_op(rng, machine, rng.choice(keys)), call, t)
            history.append(o)
            if rng.random() < timeouts:
                o.ret = None
                if rng.random() < 0.5:
                    points.append((rng.uniform(call, call + 3 * longest), o))
            else:
                points.append((rng.uniform(call, t), o))
    apply_in_order(machine(), [o for _, o in sorted(points, key=lambda p: p[0])])
    return history


def apply_in_order(machine, ops):
    """Run ops on the real machine one at a time; record each answer."""
    for o in ops:
        try:
            machine.check(o.op)
            o.result, o.error = machine.apply(o.op), None
        except ValueError as error:
            o.result, o.error = None, str(error)


def plant_impossible_answer(rng, history):
    """Give one answered op a result no op of either machine can return."""
    answered = [o for o in history if o.ret is not None and o.error is None]
    assert answered, "the generator made no answered op"
    rng.choice(answered).result = "never written"


@pytest.mark.parametrize("machine", [K, C], ids=["kv", "counter"])
def test_generated_linearizable_histories_all_pass(machine):
    for seed in range(150):
        history = linearizable_history(random.Random(seed), machine)
        verdict = check(history, machine)
        assert verdict.ok, f"seed {seed}:\n{verdict.explanation}"


@pytest.mark.parametrize("machine", [K, C], ids=["kv", "counter"])
def test_generated_histories_with_one_impossible_answer_all_fail(machine):
    for seed in range(150):
        rng = random.Random(seed)
        history = linearizable_history(rng, machine)
        plant_impossible_answer(rng, history)
        verdict = check(history, machine)
        assert not verdict.ok, f"seed {seed}: the planted answer went unnoticed"
        assert "never written" in verdict.explanation


def test_memoisation_keeps_a_long_heavily_overlapping_history_cheap():
    """200 ops from 10 clients, each overlapping a dozen others or more: the
    orders to consider number up to 200!, but the configurations (placed
    set, value) are far fewer and each is explored once. (This one takes
    about 7,000 model steps, 36 per op.)"""
    history = linearizable_history(random.Random(0), K, clients=10, per_client=20,
                                   keys=("x",), longest=20, timeouts=0)
    overlaps = [sum(a is not b and a.call < b.ret and b.call < a.ret for b in history)
                for a in history]
    assert sum(overlaps) / len(overlaps) > 12          # heavily concurrent indeed
    verdict = assert_linearizable(history)
    assert verdict.steps < 100 * len(history), verdict.steps


# ---------------------------------------------------------------------------
# A brute-force cross-check on small histories
# ---------------------------------------------------------------------------

def brute_force_ok(history, machine):
    """Try every order of every set of ops that contains all answered ones,
    keeping real-time order (ret_a <= call_b: a first), on the whole machine."""
    answered = [o for o in history if o.ret is not None]
    pending = [o for o in history if o.ret is None]
    for k in range(len(pending) + 1):
        for chosen in itertools.combinations(pending, k):
            for order in itertools.permutations(answered + list(chosen)):
                if respects_real_time(order) and gives_the_answers(order, machine):
                    return True
    return False


def respects_real_time(order):
    return all(not (b.ret is not None and b.ret <= a.call)
               for i, a in enumerate(order) for b in order[i + 1:])


def gives_the_answers(order, machine):
    m = machine()
    for o in order:
        try:
            m.check(o.op)
            result, failed = m.apply(o.op), False
        except ValueError:
            result, failed = None, True
        if o.ret is not None and (failed != (o.error is not None) or not failed and (
                type(result) is not type(o.result) or result != o.result)):
            return False
    return True


def test_the_search_agrees_with_brute_force_on_small_random_histories():
    """Small histories, some with an answer swapped for another op's answer
    (often still possible, often not): both checkers must say the same."""
    outcomes = {True: 0, False: 0}
    for seed in range(150):
        rng = random.Random(seed)
        machine = rng.choice([K, C])
        history = linearizable_history(rng, machine, clients=3, per_client=2,
                                       keys=("x", "y"), longest=4, timeouts=0.3)
        if rng.random() < 0.7:
            a, b = rng.sample(history, 2)
            a.result, a.error = b.result, b.error
        expected = brute_force_ok(history, machine)
        verdict = check(history, machine)
        assert verdict.ok == expected, f"seed {seed}: {verdict.explanation}"
        outcomes[expected] += 1
    assert min(outcomes.values()) > 20      # both kinds were exercised


def test_an_op_that_took_effect_with_its_answer_lost_must_be_placed_but_may_answer_anything():
    """outcome_unknown: the simulator saw the op applied by ret, but the
    client never heard the answer. It must take effect (unlike ret=None),
    so a later read must see it; its own result is not compared."""
    incr = Operation("a", ["incr", "x", 1], call=0, ret=5, result=None, outcome_unknown=True)
    sees_it = Operation("b", ["get", "x"], call=6, ret=7, result=1)
    misses_it = Operation("b", ["get", "x"], call=6, ret=7, result=None)
    assert check([incr, sees_it]).ok
    assert not check([incr, misses_it]).ok


def test_the_checker_gives_up_loudly_past_its_step_budget():
    history = [Operation(f"c{i}", ["incr", "x", 1], call=0, ret=None) for i in range(12)]
    history.append(Operation("r", ["get", "x"], call=1, ret=2, result=99))
    with pytest.raises(linearizability.CheckerGaveUp, match="no verdict for key 'x'"):
        check(history, max_steps=100)
