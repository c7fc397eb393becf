"""core.heap: long-lived objects are frozen out of the collector's walks."""

from __future__ import annotations

import gc
import weakref

from core.heap import freeze_long_lived


class _Node:
    """A GC-tracked object that can point at itself (a cycle only a collection frees)."""

    def __init__(self) -> None:
        self.other: object = self


def test_frozen_objects_are_left_out_of_collections_and_garbage_is_collected_first() -> None:
    gc.unfreeze()
    try:
        state = [_Node() for _ in range(10_000)]
        freed: list[object] = []
        garbage = _Node()
        gone = weakref.ref(garbage, freed.append)
        del garbage
        frozen = freeze_long_lived()
        assert frozen >= len(state)
        assert gone() is None and freed  # the cycle was collected, not frozen
        walked = {id(o) for o in gc.get_objects()}
        assert id(state) not in walked and id(state[0]) not in walked
        # Objects made afterwards are walked as usual.
        later = _Node()
        assert id(later) in {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()
