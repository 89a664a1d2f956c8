"""kv.py: a key-value store, the default state machine of raft.py.

A state machine is anything with these six methods (see raft.py [5]):
check, is_read, apply, query, snapshot, restore. Raft makes every node call
apply() with the same operations in the same order, so every node's
self.data ends up the same. That only works if apply() is deterministic:
no clocks, no randomness, no iteration over unordered things.

Operations are JSON lists:
    ["set", key, value]   -> None             value is a string
    ["get", key]          -> value or None
    ["incr", key, n]      -> the new integer   missing counts as 0
    ["del", key]          -> True if the key existed, else False

Integers stay within 64 bits (as in Redis): a result outside that range is
refused, so no node ever has to store or send a number of unbounded size.
"""

import re

INTEGER = re.compile(r"-?[0-9]{1,19}")
LIMIT = 2 ** 63 - 1
MAX_KEY_CHARS = 1024


def check_key(op):
    if len(op) < 2 or type(op[1]) is not str or not 0 < len(op[1]) <= MAX_KEY_CHARS:
        raise ValueError(f"{op[0]} needs a key (a non-empty string)")


def as_integer(value, what):
    """An int, or a string spelling one, within 64 bits; else ValueError."""
    if type(value) is str and INTEGER.fullmatch(value):
        value = int(value)
    if type(value) is not int:
        raise ValueError(f"{what} is not an integer: {value!r}")
    if not -LIMIT <= value <= LIMIT:
        raise ValueError(f"{what} is outside the 64-bit range")
    return value


def check_amount(op):
    """incr/decr take an integer (not a string) within 64 bits."""
    if type(op[2]) is not int:
        raise ValueError(f"{op[0]} needs an integer amount")
    as_integer(op[2], f"{op[0]}'s amount")


def add(current, amount, key):
    """current + amount, refused if it would leave the 64-bit range."""
    total = as_integer(current, f"the value of {key!r}") + amount
    if not -LIMIT <= total <= LIMIT:
        raise ValueError(f"incr would take {key!r} outside the 64-bit range")
    return total


class KeyValueStore:
    name = "kv"
    ARITY = {"set": 3, "get": 2, "incr": 3, "del": 2}

    def __init__(self):
        self.data = {}

    def check(self, op):
        if (type(op) is not list or not op or type(op[0]) is not str
                or op[0] not in self.ARITY):
            raise ValueError(f"unknown command {op!r}: use set, get, incr or del")
        if len(op) != self.ARITY[op[0]]:
            raise ValueError(f"{op[0]} takes {self.ARITY[op[0]] - 1} argument(s)")
        check_key(op)
        if op[0] == "set" and type(op[2]) is not str:
            raise ValueError("set needs a string value")
        if op[0] == "incr":
            check_amount(op)

    def is_read(self, op):
        return op[0] == "get"

    def apply(self, op):
        verb, key = op[0], op[1]
        if verb == "set":
            self.data[key] = op[2]
            return None
        if verb == "incr":
            value = add(self.data.get(key, 0), op[2], key)
            self.data[key] = value
            return value
        if verb == "del":
            return self.data.pop(key, None) is not None
        return self.query(op)

    def query(self, op):
        return self.data.get(op[1])

    def snapshot(self):
        return {"data": dict(self.data)}

    def restore(self, snapshot):
        self.data = dict(snapshot["data"])
