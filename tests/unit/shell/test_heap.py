"""The worker's collector policy: live objects frozen out of scans, a full collection now and then."""

import gc
import weakref

from streams.shell.heap import Heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_frozen_garbage_waits_for_the_full_collection() -> None:
    heap = Heap(full_every=2)
    try:
        node = Node()
        gone = weakref.ref(node)
        heap.settle()  # node is alive: frozen
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert gone() is not None  # a frozen cycle is not scanned
        heap.settle()  # the second settle collects in full first
        assert gone() is None
        assert gc.get_freeze_count() > 0  # and freezes what is still alive
    finally:
        gc.unfreeze()
