"""The agent's collector policy (heap.py), in a process of its own: freezing
is for the whole interpreter, and pytest's must not keep it."""

from __future__ import annotations

from processes import script_json

SCRIPT = r"""
import gc, json, weakref
from mosto.agent.heap import Heap

class Node:
    pass

def cycle():
    n = Node()
    n.me = n
    return n

heap = Heap(full_pass_s=3600)
alive = [cycle() for _ in range(1000)]  # what the agent holds at start
heap.settle()
out = {"frozen_at_start": gc.get_freeze_count()}

young = cycle()
young_ref = weakref.ref(young)
del young
heap.tick()
out["young_cycle_collected_at_tick"] = young_ref() is None

kept = cycle()
heap.tick()  # alive at the tick: frozen
kept_ref = weakref.ref(kept)
del kept
heap.tick()
out["frozen_cycle_kept_until_the_full_pass"] = kept_ref() is not None
heap.full_pass_s = 0
heap.tick()
out["frozen_cycle_collected_at_the_full_pass"] = kept_ref() is None
out["frozen_after_the_full_pass"] = gc.get_freeze_count()
out["alive"] = len(alive)
print(json.dumps(out))
"""


def test_the_heap_is_frozen_at_start_and_each_tick_collects_only_what_came_since():
    got, _ = script_json(SCRIPT)
    assert got["frozen_at_start"] >= 1000  # the start-up objects are never walked again
    assert got["young_cycle_collected_at_tick"]
    assert got["frozen_cycle_kept_until_the_full_pass"]
    assert got["frozen_cycle_collected_at_the_full_pass"]
    assert got["frozen_after_the_full_pass"] >= 1000  # and frozen again after it
