"""A deterministic simulated cluster on the real RaftNode core.

Every node is a real raft.RaftNode on MemoryStorage, driven through the same
raft.persist_send_apply() cycle as the UDP runtime. The network is a list of
in-flight messages, each with a delivery tick; a seeded random.Random decides
drops, duplicates and delays, so one seed replays exactly.

After every delivered message the checker verifies Raft's safety properties
(paper Figure 3). A violation raises SafetyViolation with the seed, the tick,
the property and the recent events.
"""

import collections
import dataclasses
import random

import raft
import kv


class SafetyViolation(AssertionError):
    pass


@dataclasses.dataclass
class Faults:
    drop: float = 0.0          # probability a message is lost
    duplicate: float = 0.0     # probability a message is delivered twice
    delay: tuple = (1, 1)      # delivery delay in ticks, uniform in the range


class SimCluster:
    def __init__(self, size=3, seed=0, faults=None, config=None, machine=kv.KeyValueStore):
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.config = config or raft.Config()
        self.machine_factory = machine
        self.ids = [f"n{i + 1}" for i in range(size)]
        self.storage = {i: raft.MemoryStorage() for i in self.ids}
        self.nodes = {}
        self.down = set()
        self.cut = set()                 # (sender, receiver) pairs that drop
        self.in_flight = []              # [deliver_tick, order, destination, message]
        self.order = 0
        self.now = 0
        self.events = collections.deque(maxlen=40)
        self.answers = {}
        self.applied = {i: {} for i in self.ids}     # node -> {index: entry}
        self.leaders_by_term = {}
        self.commits = {}                # index -> entry committed there
        self.last_state = {}
        for node_id in self.ids:
            self.start(node_id)

    # -- running nodes ----------------------------------------------------------
    def start(self, node_id):
        node = raft.RaftNode(node_id, self.ids, self.storage[node_id],
                             self.machine_factory(), random.Random(self.rng.random()),
                             self.config)
        self.nodes[node_id] = node
        self.applied[node_id] = {}
        self.down.discard(node_id)
        self.cycle(node_id)

    def crash(self, node_id):
        """Power cut: everything not yet synced is lost."""
        self.storage[node_id].crash()
        self.down.add(node_id)
        self.nodes.pop(node_id, None)
        self.log_event(f"{node_id} crashes")

    def restart(self, node_id):
        self.log_event(f"{node_id} restarts")
        self.start(node_id)

    def cycle(self, node_id):
        node = self.nodes[node_id]
        raft.persist_send_apply(
            node, lambda destination, message: self.transmit(node_id, destination, message),
            lambda request_id, answer: self.answers.__setitem__(request_id, answer))
        self.record_applied(node)
        self.check_safety()

    def transmit(self, sender, destination, message):
        if (sender, destination) in self.cut or self.rng.random() < self.faults.drop:
            return
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            self.order += 1
            delay = self.rng.randint(*self.faults.delay)
            self.in_flight.append([self.now + delay, self.order, destination, message])

    # -- time -------------------------------------------------------------------
    def tick(self, ticks=1):
        for _ in range(ticks):
            self.now += 1
            due = sorted((m for m in self.in_flight if m[0] <= self.now), key=lambda m: m[:2])
            self.in_flight = [m for m in self.in_flight if m[0] > self.now]
            for _when, _order, destination, message in due:
                if destination in self.nodes:
                    self.nodes[destination].step(message)
                    self.log_event(f"{destination} <- {type(message).__name__} {message}")
                    self.cycle(destination)
            for node_id in list(self.nodes):
                self.nodes[node_id].tick()
                self.cycle(node_id)

    def run_until(self, predicate, max_ticks=2000):
        for _ in range(max_ticks):
            if predicate():
                return True
            self.tick()
        return predicate()

    def partition(self, *groups):
        """Only nodes in the same group can talk."""
        group_of = {n: i for i, group in enumerate(groups) for n in group}
        self.cut = {(a, b) for a in self.ids for b in self.ids
                    if a != b and group_of.get(a) != group_of.get(b)}
        self.log_event(f"partition {groups}")

    def heal(self):
        self.cut = set()
        self.log_event("heal")

    # -- clients ----------------------------------------------------------------
    def leader(self):
        leaders = [n for n in self.nodes.values() if n.role is raft.Role.LEADER]
        return max(leaders, key=lambda n: n.current_term) if leaders else None

    def propose(self, node_id, request_id, client_id, seq, op):
        self.nodes[node_id].propose(request_id, client_id, seq, op)
        self.cycle(node_id)

    def read(self, node_id, request_id, op):
        self.nodes[node_id].read(request_id, op)
        self.cycle(node_id)

    # -- checking ----------------------------------------------------------------
    def log_event(self, text):
        self.events.append(f"t={self.now} {text}")

    def fail(self, prop, detail):
        timeline = "\n  ".join(self.events)
        raise SafetyViolation(
            f"{prop} violated at tick {self.now} (seed {self.seed}): {detail}\n"
            f"last events:\n  {timeline}")

    def record_applied(self, node):
        applied = self.applied[node.id]
        for index in range(len(applied) + 1, node.last_applied + 1):
            applied[index] = node.log.entry(index)

    def check_safety(self):
        for node in self.nodes.values():
            # Election Safety: at most one leader per term.
            if node.role is raft.Role.LEADER:
                other = self.leaders_by_term.setdefault(node.current_term, node.id)
                if other != node.id:
                    self.fail("Election Safety",
                              f"{other} and {node.id} both lead term {node.current_term}")
            # Persisted term and vote never go backwards within a term.
            storage = self.storage[node.id]
            previous = self.last_state.get(node.id, (0, None))
            if storage.term < previous[0] or (
                    storage.term == previous[0] and previous[1] is not None
                    and storage.voted_for != previous[1]):
                self.fail("durable vote", f"{node.id} went from {previous} to "
                          f"{(storage.term, storage.voted_for)}")
            self.last_state[node.id] = (storage.term, storage.voted_for)
            # State Machine Safety: one entry per index across all nodes.
            for index, entry in self.applied[node.id].items():
                first = self.commits.setdefault(index, entry)
                if first != entry:
                    self.fail("State Machine Safety",
                              f"index {index}: {first} vs {entry} on {node.id}")
