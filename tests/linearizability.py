"""linearizability.py: is a history of client operations linearizable?

Theory of operation
-------------------
Clients send operations to the cluster concurrently. For each one we record
when it was called and when its answer returned. The history is
*linearizable* (Herlihy & Wing 1990, "Linearizability: a correctness
condition for concurrent objects") if every operation can be given a single
instant, its linearization point, somewhere between its call and its return,
such that running the operations one at a time in the order of those points,
on the sequential state machine, gives exactly the answers the clients got.
Put another way: the cluster behaved like one machine that did one thing at a
time, and never answered before it had done the thing.

Locality (Herlihy & Wing's Theorem 1; "P-compositionality" in Horn &
Kroening 2015): a history is linearizable iff the sub-history of each object
is. Every operation of kv.py and counter.py touches exactly one key, op[1],
so each key is an object: check() splits the history by key and searches
each key's operations alone. That turns one search over n operations into
many small ones, which is the difference between hopeless and instant.

The search for one key is Wing & Gong's (1993, "Testing and verifying
concurrent objects") with Lowe's improvements (2017, "Testing for
linearizability"), the algorithm of the Porcupine and Knossos checkers:

  * Put every call and every return in one list sorted by time.
  * An operation may go next if it is *minimal*: its call comes before the
    return of every operation not yet placed. In the list that means: its
    call entry appears before the first return entry still in the list.
  * Walk the list from the front. At a call entry, try to linearize that
    operation: step the model; if the model's answer matches the client's,
    lift the op's call and return entries out of the list and start again
    from the front. If not, move on to the next entry.
  * Reaching a return entry means the operation it belongs to had to be
    placed by now and was not: undo the last placement (backtrack), put its
    entries back, and try the next entry after its call.
  * Lowe's memoisation: a configuration is (the set of operations placed, the
    model's state). Two different orders that reach the same configuration
    have the same future, so each configuration is explored at most once.
    The set is a Python int used as a bitset (bit i = operation i placed).

Indeterminate operations (ret None: the client timed out, so the cluster
may or may not have applied them, at any time after the call) have no return
entry. They never force a backtrack, so the search may place them anywhere
after their call or never; it succeeds once every *determinate* operation is
placed.

The interval convention: an operation takes effect strictly after its call
and strictly before its return, i.e. inside the open interval (call, ret).
So if a returned at time t and b was called at the same t, a precedes b in
real time (a took effect before t, b after). In the sorted list, returns come
before calls at equal times. One exception, for coarse clocks such as the
simulator's ticks: an operation answered at the very instant it was called
(call == ret) takes effect at that instant, after operations that returned
at t or earlier and before operations called at t or later, and concurrently
with the other such instantaneous operations at t.

The model is the real state machine (kv.KeyValueStore, counter.Counters), so
the checker can never drift from their semantics. A key's state is its value
(or ABSENT); one step builds a fresh machine, restores that one key, runs
check(op) and apply(op) (a ValueError is an error answer that changes
nothing, as in raft.py), and reads the key back from snapshot().
"""

from __future__ import annotations

import dataclasses

import kv

WINDOW = 40          # operations shown around a failure
PREFIX_SHOWN = 20    # steps of the deepest linearization shown


@dataclasses.dataclass
class Operation:
    client: str          # who issued it; one client has at most one op outstanding
    op: list             # e.g. ["set", "x", "5"], ["get", "x"], ["incr", "x", 2], ["del", "x"]
    call: float          # time the request was first sent (any monotone clock)
    ret: float | None    # time the answer arrived; None = indeterminate (timed out)
    result: object = None     # the answer's result when ret is not None
    error: str | None = None  # set when the cluster answered with an error
    # The op took effect by ret, but its answer never reached the client (a
    # simulator that saw it applied can say so): result and error unknown.
    outcome_unknown: bool = False


class CheckerGaveUp(Exception):
    """The search passed its step budget: the history is neither shown
    linearizable nor shown not to be. A test should fail on it, loudly."""


@dataclasses.dataclass
class Verdict:
    """check()'s answer. steps counts every time the search asked the model
    "can this op go next?": its total work, for tests of the memoisation."""
    ok: bool
    explanation: str = ""     # empty when ok
    steps: int = 0            # model steps the search tried (a measure of its work)
    key: object = None        # the (first) key found not linearizable


class _Absent:
    def __repr__(self):
        return "absent"


ABSENT = _Absent()    # the state of a key that holds no value


def key_of(operation: Operation):
    """The key an operation touches: op[1] (None for a malformed op)."""
    op = operation.op
    return op[1] if isinstance(op, list) and len(op) >= 2 else None


# ---------------------------------------------------------------------------
# The model: one key of the real state machine
# ---------------------------------------------------------------------------

class KeyModel:
    """The sequential specification of one key, borrowed from `machine`.

    step(value, op) -> ((is_error, result), new_value). Steps are memoised
    on (op index, value): the search asks the same question many times."""

    def __init__(self, machine, key):
        self.machine, self.key = machine, key
        (self.field,) = machine().snapshot()   # "data" (kv) or "counts" (counter)
        self.memo = {}
        self.reader = machine()

    def harmless(self, operation):
        """Answered, and can have changed nothing: an error, or a read.
        (Only asked once the op matched the model, so op is well formed.)"""
        return operation.ret is not None and not operation.outcome_unknown and (
            operation.error is not None or self.reader.is_read(operation.op))

    def step(self, value, op, index):
        memo_key = (index, value)
        if memo_key not in self.memo:
            self.memo[memo_key] = self._step(value, op)
        return self.memo[memo_key]

    def _step(self, value, op):
        machine = self.machine()
        machine.restore({self.field: {} if value is ABSENT else {self.key: value}})
        try:
            machine.check(op)
            result = machine.apply(op)
        except ValueError:
            return (True, None), value          # an error answer changes nothing
        return (False, result), machine.snapshot()[self.field].get(self.key, ABSENT)


def matches(operation: Operation, outcome) -> bool:
    """Does the model's outcome agree with what the client was told?
    Indeterminate ops agree with anything, and so do ops whose outcome is
    unknown. Errors compare by error-ness only; results compare exactly,
    type included ("7" is not 7, True is not 1)."""
    if operation.ret is None or operation.outcome_unknown:
        return True
    is_error, result = outcome
    if operation.error is not None:
        return is_error
    return (not is_error and type(result) is type(operation.result)
            and result == operation.result)


# ---------------------------------------------------------------------------
# The search (Wing & Gong, with Lowe's memoisation)
# ---------------------------------------------------------------------------

def events(ops):
    """Call and return entries sorted by time: (time, rank, op index, is_call).
    The rank orders equal times (see "the interval convention" above):
    0 returns, 1 calls of instantaneous ops, 2 their returns, 3 other calls."""
    entries = []
    for i, o in enumerate(ops):
        if o.ret is not None and o.ret < o.call:
            raise ValueError(f"operation {i} returned before its call: {o}")
        instant = o.ret is not None and o.ret == o.call
        entries.append((o.call, 1 if instant else 3, i, True))
        if o.ret is not None:
            entries.append((o.ret, 2 if instant else 0, i, False))
    return sorted(entries)


class EntryList:
    """A doubly linked list of the sorted entries: positions 1..n, with 0 the
    head and n+1 the tail (never reached: the search stops at a return entry
    first, and every op still to place has one). lift() unlinks an op's call and return entries; unlift() puts them
    back. Undoing in reverse order restores the list exactly ("dancing links")."""

    def __init__(self, entries):
        n = len(entries)
        self.op = [None] + [e[2] for e in entries] + [None]
        self.is_call = [False] + [e[3] for e in entries] + [False]
        self.next = list(range(1, n + 2)) + [None]
        self.prev = [None] + list(range(0, n + 1))
        self.return_of = {e[2]: p for p, e in enumerate(entries, 1) if not e[3]}

    def first(self):
        return self.next[0]

    def _unlink(self, p):
        self.next[self.prev[p]] = self.next[p]
        self.prev[self.next[p]] = self.prev[p]

    def _relink(self, p):
        self.next[self.prev[p]] = p
        self.prev[self.next[p]] = p

    def lift(self, p):
        self._unlink(p)
        if self.op[p] in self.return_of:
            self._unlink(self.return_of[self.op[p]])

    def unlift(self, p):
        if self.op[p] in self.return_of:
            self._relink(self.return_of[self.op[p]])
        self._relink(p)


@dataclasses.dataclass
class SearchResult:
    ok: bool
    steps: int
    deepest: list         # [(op index, value after)] of the longest linearization
    blocker: int | None   # the op whose return was reached right after it


def same(a, b) -> bool:
    """Equal values of the same type ("7" is not 7)."""
    return type(a) is type(b) and a == b


class Search:
    """The search for one key (see the module docstring), plus one pruning.

    A *harmless* op is an answered one that can have changed
    nothing: a read, or an op answered with an error. Suppose such an op r
    is minimal and the model gives r's answer in the current configuration
    (S, v). If any linearization exists from (S, v), one exists that places
    r first: moving r to the front breaks no real-time order (r is minimal)
    and changes no other answer (r changes no value, wherever it is). So when
    the search fails after placing r, configuration (S, v) fails too: the
    alternatives to r need not be tried. In the same spirit, an indeterminate
    op that would change nothing at this point is not placed here: leaving
    it out is as good."""

    def __init__(self, ops, model, max_steps=None):
        self.ops, self.model, self.max_steps = ops, model, max_steps
        self.entries = EntryList(events(ops))
        self.remaining = sum(o.ret is not None for o in ops)   # answered ops to place
        self.value, self.placed = ABSENT, 0
        self.stack = []          # (call position, value before, harmless?)
        self.seen, self.steps = set(), 0
        self.depth, self.deepest, self.blocker = 0, [], None   # for the explanation

    def run(self) -> SearchResult:
        p = self.entries.first()
        while self.remaining and p is not None:
            if self.entries.is_call[p]:
                p = self.try_to_place(p)
            else:          # op p had to be placed before its return: backtrack
                self.note_dead_end(self.entries.op[p])
                p = self.backtrack()
        return SearchResult(not self.remaining, self.steps, self.deepest, self.blocker)

    def try_to_place(self, p):
        """Place the op called at p next if the model agrees and the
        configuration is new. Returns the entry to look at next."""
        i, skip = self.entries.op[p], self.entries.next[p]
        self.steps += 1
        if self.max_steps is not None and self.steps > self.max_steps:
            raise CheckerGaveUp(f"no verdict for key {self.model.key!r} after "
                                f"{self.max_steps} steps ({len(self.ops)} operations)")
        outcome, after = self.model.step(self.value, self.ops[i].op, i)
        if not matches(self.ops[i], outcome):
            return skip
        if self.ops[i].ret is None and same(after, self.value):
            return skip
        harmless = self.model.harmless(self.ops[i])
        configuration = (self.placed | 1 << i, after)
        if configuration in self.seen:       # explored before, and it failed
            return self.backtrack() if harmless else skip
        self.seen.add(configuration)
        self.stack.append((p, self.value, harmless))
        self.placed, self.value = configuration
        self.remaining -= self.ops[i].ret is not None
        self.entries.lift(p)
        if len(self.stack) > self.depth:
            self.depth, self.blocker = len(self.stack), None
        return self.entries.first()

    def backtrack(self):
        """Undo the last placement; return the entry after its call, or None
        when there is nothing left to undo.
        Undoing a harmless placement means the configuration below failed
        too: keep undoing."""
        while self.stack:
            p, self.value, harmless = self.stack.pop()
            i = self.entries.op[p]
            self.placed &= ~(1 << i)
            self.remaining += self.ops[i].ret is not None
            self.entries.unlift(p)
            if not harmless:
                return self.entries.next[p]
        return None

    def note_dead_end(self, i):
        """The first dead end since the deepest point was reached: the stack
        is still that deepest linearization (only backtracking shrinks it)."""
        if self.blocker is None and len(self.stack) == self.depth:
            self.blocker = i
            afters = [before for _, before, _ in self.stack[1:]] + [self.value]
            self.deepest = [(self.entries.op[p], after)
                            for (p, *_), after in zip(self.stack, afters)]


def search(ops, model, max_steps=None) -> SearchResult:
    """Find a linearization of one key's ops, or show there is none."""
    return Search(ops, model, max_steps).run()


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

def check_key(ops, machine=kv.KeyValueStore, max_steps=None) -> Verdict:
    """Is this one key's history linearizable? ops must all touch one key."""
    ops = list(ops)
    keys = {repr(key_of(o)) for o in ops}
    if len(keys) > 1:
        raise ValueError(f"check_key needs the ops of one key; got keys {sorted(keys)}")
    if not ops:
        return Verdict(True)
    key = key_of(ops[0])
    model = KeyModel(machine, key)
    found = search(ops, model, max_steps)
    if found.ok:
        return Verdict(True, "", found.steps)
    return Verdict(False, explain(key, ops, model, found), found.steps, key)


def check(history, machine=kv.KeyValueStore, max_steps=None) -> Verdict:
    """Is the whole history linearizable? Checks each key alone (locality).
    With max_steps, raises CheckerGaveUp rather than search longer per key."""
    by_key = {}
    for operation in history:
        by_key.setdefault(key_of(operation), []).append(operation)
    steps, failures = 0, []
    for key in sorted(by_key, key=repr):
        verdict = check_key(by_key[key], machine, max_steps)
        steps += verdict.steps
        if not verdict.ok:
            failures.append(verdict)
    if not failures:
        return Verdict(True, "", steps)
    explanation = failures[0].explanation
    if len(failures) > 1:
        others = ", ".join(repr(v.key) for v in failures[1:])
        explanation += f"\n(keys {others} are not linearizable either)"
    return Verdict(False, explanation, steps, failures[0].key)


# ---------------------------------------------------------------------------
# Explaining a failure
# ---------------------------------------------------------------------------

def fmt_time(t) -> str:
    return "?" if t is None else str(round(t, 6) if isinstance(t, float) else t)


def fmt_op(o: Operation) -> str:
    """e.g. `incr x 1 -> 3`, `get x -> '5'`, `incr y 1 -> error: ...`."""
    text = " ".join(map(str, o.op)) if isinstance(o.op, list) else repr(o.op)
    if o.ret is None:
        return f"{text} -> ? (no answer: may or may not have happened)"
    if o.outcome_unknown:
        return f"{text} -> ? (no answer, but it took effect by then)"
    if o.error is not None:
        return f"{text} -> error: {o.error}"
    return f"{text} -> {o.result!r}"


def fmt_value(key, value) -> str:
    return f"{key} absent" if value is ABSENT else f"{key} = {value!r}"


def explain(key, ops, model, found: SearchResult) -> str:
    """The key, its ops as a timeline around the failure, the deepest
    linearization reached, and the op that could not be placed after it."""
    blocker = ops[found.blocker]
    lines = [f"key {key!r} is not linearizable: no order of its {len(ops)} operations "
             "fits both real time and the state machine."]
    lines += _timeline(ops, found.blocker)
    lines += _deepest(key, ops, found.deepest)
    state = found.deepest[-1][1] if found.deepest else ABSENT
    (is_error, result), _ = model.step(state, blocker.op, found.blocker)
    answer = "an error" if is_error else repr(result)
    where = "after it" if found.deepest else f"from the start ({fmt_value(key, state)})"
    lines.append(f"{where}, client {blocker.client}'s `{fmt_op(blocker)}` "
                 f"[t={fmt_time(blocker.call)} .. t={fmt_time(blocker.ret)}] could not be "
                 f"placed: it must take effect before its return at t={fmt_time(blocker.ret)}, "
                 "and no order of the operations that may come first gets there.")
    if matches(blocker, (is_error, result)):
        lines.append("  Placed next, the model agrees with its answer, but nothing fits after it.")
    else:
        lines.append(f"  Placed next, the model answers {answer}.")
    return "\n".join(lines)


def _timeline(ops, marked):
    """Ops in call order, at most WINDOW of them around the marked one."""
    order = sorted(range(len(ops)), key=lambda i: (ops[i].call, i))
    at = order.index(marked)
    start = max(0, min(at - WINDOW // 2, len(order) - WINDOW))
    shown = order[start:start + WINDOW]
    width = max(len(str(ops[i].client)) for i in shown)
    spans = {i: f"[t={fmt_time(ops[i].call)} .. t={fmt_time(ops[i].ret)}]" for i in shown}
    span_width = max(map(len, spans.values()))
    lines = [f"operations on {key_of(ops[marked])!r} in call order "
             f"({len(shown)} of {len(ops)} shown; >> marks the one that could not be placed):"]
    if start:
        lines.append(f"     ... {start} earlier operations not shown")
    for i in shown:
        mark = ">>" if i == marked else "  "
        lines.append(f"  {mark} client {str(ops[i].client):<{width}}  "
                     f"{spans[i]:<{span_width}}  {fmt_op(ops[i])}")
    if start + len(shown) < len(order):
        lines.append(f"     ... {len(order) - start - len(shown)} later operations not shown")
    return lines


def _deepest(key, ops, deepest):
    """The longest linearization found, its last PREFIX_SHOWN steps."""
    lines = [f"the longest linearization found places {len(deepest)} of {len(ops)} operations"
             + (":" if deepest else ".")]
    skipped = max(0, len(deepest) - PREFIX_SHOWN)
    if skipped:
        lines.append(f"     ... its first {skipped} steps not shown")
    for n, (i, after) in enumerate(deepest[skipped:], skipped + 1):
        lines.append(f"  {n:>4}. client {ops[i].client}  {fmt_op(ops[i])}"
                     f"   ({fmt_value(key, after)})")
    return lines
