"""counter.py: named counters, the state machine of the first seed README.

The same six methods as kv.py (see raft.py [5]); every value is an integer
within 64 bits.
    ["incr", name, n]  -> the new value (a missing counter counts as 0)
    ["decr", name, n]  -> the new value
    ["get", name]      -> the value, or None if never set
    ["set", name, v]   -> None; v is an integer or a string spelling one
    ["del", name]      -> True if the counter existed, else False
"""

from kv import add, as_integer, check_amount, check_key


class Counters:
    name = "counter"
    ARITY = {"incr": 3, "decr": 3, "get": 2, "set": 3, "del": 2}

    def __init__(self):
        self.counts = {}

    def check(self, op):
        if (type(op) is not list or not op or type(op[0]) is not str
                or op[0] not in self.ARITY):
            raise ValueError(f"unknown command {op!r}: use incr, decr, get, set or del")
        if len(op) != self.ARITY[op[0]]:
            raise ValueError(f"{op[0]} takes {self.ARITY[op[0]] - 1} argument(s)")
        check_key(op)
        if op[0] in ("incr", "decr"):
            check_amount(op)
        if op[0] == "set":
            as_integer(op[2], "a counter's value")

    def is_read(self, op):
        return op[0] == "get"

    def apply(self, op):
        verb, name = op[0], op[1]
        if verb in ("incr", "decr"):
            step = op[2] if verb == "incr" else -op[2]
            self.counts[name] = add(self.counts.get(name, 0), step, name)
            return self.counts[name]
        if verb == "set":
            self.counts[name] = as_integer(op[2], "a counter's value")
            return None
        if verb == "del":
            return self.counts.pop(name, None) is not None
        return self.query(op)

    def query(self, op):
        return self.counts.get(op[1])

    def snapshot(self):
        return {"counts": dict(self.counts)}

    def restore(self, snapshot):
        self.counts = dict(snapshot["counts"])
