"""The worker's garbage-collector policy: long-lived patient states are frozen out of its scans.

A worker holds every owned patient's decoded state (``streams.pipeline.store``): with a year of
follow-up for a few thousand patients that is millions of container objects, and each of
CPython's full collections walks them all -- 0.8 to 1.5 s with the event loop stopped, measured
on the latency benchmark (docs/capacity.md), which every alert waiting in that moment pays.
Those objects are freed by reference counting (states, results and their encodings hold no
cycles), so the collector finds nothing among them.

``Heap.settle`` (the worker calls it every ``CARWATCH_GC_FREEZE_INTERVAL_SECONDS``) moves
everything alive into the collector's permanent generation (``gc.freeze``): later collections
scan only what was made since. Cyclic garbage among frozen objects is not reclaimed while
frozen, so once per ``full_every`` settles the heap is unfrozen and collected in full -- one
pause an hour, instead of one every 20-30 s under load.
"""

import gc
import logging
import time

log = logging.getLogger(__name__)


class Heap:
    """Freeze the live heap now and then; collect it in full every ``full_every`` settles."""

    def __init__(self, full_every: int) -> None:
        self.full_every = full_every
        self.settles = 0

    def settle(self) -> float:
        """Freeze (or, every ``full_every``-th call, unfreeze and collect first); seconds spent."""
        started = time.perf_counter()
        self.settles += 1
        if self.settles % self.full_every == 0:
            gc.unfreeze()
            found = gc.collect()
            log.info("full garbage collection: %d unreachable objects", found)
        gc.freeze()
        return time.perf_counter() - started
