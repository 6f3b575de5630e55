"""The bounded worker pool that parses messages off the event loop.

Parsing a 1 MB HL7 message or FHIR body takes hundreds of milliseconds of pure Python. On the
event loop that stalls every other connection (the first release: one 100 KB HL7 message
delayed other connections' ACKs by 5 s). In a thread pool it still holds the GIL, which the loop
gets back only at the switch interval: measured on loopback with the real broker, small MLLP
messages sent while a 1 MB message was parsed were ACKed in a median of 13–17 ms (p90 34–42 ms)
with threads, and 3–6 ms (p90 9–14 ms) with worker processes (baselines without the large
message 2–8 ms; a shared 2-core machine at load 6). So the default is processes (``spawn``: no
fork of a running event loop), each warmed up (imports done) before the listener accepts
connections and run at a lower priority (``jobs.lower_priority``), so that parsing yields the
CPU to the loop and the broker; a large message then takes longer itself (1.5–3 s instead of
0.9 s with threads), which is the trade. Threads remain an option (``--parse-mode thread``).

The pool is bounded twice: ``workers`` processes, and at most ``queue`` jobs admitted at once
(``try_acquire`` tells the FHIR gateway to answer 429; MLLP connections wait, one message each).
Each job has a time bound (``timeout_s``); a job past it is answered as rejected, and the pool is
replaced so the runaway worker cannot hold a slot.
"""

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Final, Literal, TypeVar

from streams.listeners.jobs import lower_priority, warm_up

log = logging.getLogger(__name__)

PoolMode = Literal["process", "thread"]
DEFAULT_WORKERS: Final = 2
DEFAULT_PARSE_TIMEOUT_S: Final = 10.0
#: Seconds each warm-up job holds its worker (so that every worker gets one).
WARM_UP_HOLD_S: Final = 0.3
T = TypeVar("T")


class ParseTimeout(Exception):
    """A job did not finish within the pool's time bound."""


class ParsePool:
    """``await pool.run(fn, *args)`` runs ``fn`` in a worker; see the module docstring."""

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        *,
        mode: PoolMode = "process",
        timeout_s: float = DEFAULT_PARSE_TIMEOUT_S,
        queue: int | None = None,
    ) -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError("a parse pool needs at least one worker and a positive timeout")
        self.workers = workers
        self.mode = mode
        self.timeout_s = timeout_s
        self.queue = queue if queue is not None else 4 * workers
        self._slots = asyncio.Semaphore(self.queue)
        self._executor: Executor | None = None

    def _new_executor(self) -> Executor:
        if self.mode == "thread":
            return ThreadPoolExecutor(self.workers, thread_name_prefix="carwatch-parse")
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=lower_priority)

    async def start(self) -> None:
        """Start the workers and wait until each has imported the parsers (``run`` starts a
        pool that was not started)."""
        self._executor = self._new_executor()
        loop = asyncio.get_running_loop()
        hold = WARM_UP_HOLD_S if self.mode == "process" else 0.0
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, warm_up, hold) for _ in range(self.workers))
        )

    async def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)

    @property
    def full(self) -> bool:
        return self._slots.locked()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker (waiting for a queue slot); ``ParseTimeout`` past the
        bound."""
        if self._executor is None:
            await self.start()
        async with self._slots:
            future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            try:
                return await asyncio.wait_for(future, self.timeout_s)
            except TimeoutError:
                log.error("a parse job ran past %.1f s; replacing the worker pool", self.timeout_s)
                await self._replace()
                raise ParseTimeout(f"not parsed within {self.timeout_s:g} s") from None

    async def _replace(self) -> None:
        old, self._executor = self._executor, self._new_executor()
        if isinstance(old, ProcessPoolExecutor):
            for process in list(getattr(old, "_processes", {}).values()):
                process.terminate()  # a runaway parse: no cooperative way to stop it
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
