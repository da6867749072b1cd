"""The bench's one clock: every timed span of every run is measured here.

A run that times several spans (a page at a time, with the scan inside or outside the clock)
adds them up on one :class:`Stopwatch`, so every rate in the report divides by time taken the
same way: wall time by ``perf_counter``, this process's CPU time by ``process_time``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

from coordinator.bench.scrape import cpu_seconds, machine_busy_s


class Stopwatch:
    """Wall and CPU seconds, summed over every span timed with it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    @contextmanager
    def span(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu


@dataclass
class CpuShare:
    """CPU used during one span, in cores (CPU seconds / wall seconds)."""

    workers: float = 0.0  # by the watched worker process trees
    others: float = 0.0  # by everything else on the machine, Redis included, the bench itself left out
    bench: float = 0.0  # by the bench's own process (which serves the loopback vault in that mode)


@contextmanager
def cpu_share(worker_pids: Sequence[int] = ()) -> Iterator[CpuShare]:
    """The CPU the watched workers and every other process used during the ``with`` block.

    This machine may be shared (other test runs, other services): the CPU that other
    processes took while we measured says how far to trust a figure. The share is filled in
    when the block ends.
    """
    roots = [psutil.Process(pid) for pid in worker_pids]
    me = psutil.Process()

    def workers_s() -> float:
        return sum(cpu_seconds(root, tree=True) for root in roots)

    share, clock = CpuShare(), Stopwatch()
    machine, workers, bench = machine_busy_s(), workers_s(), cpu_seconds(me, tree=False)
    with clock.span():
        yield share
    wall = max(1e-9, clock.seconds)
    used, mine = workers_s() - workers, cpu_seconds(me, tree=False) - bench
    others = machine_busy_s() - machine - used - mine
    share.workers, share.others = round(used / wall, 2), round(max(0.0, others) / wall, 2)
    share.bench = round(mine / wall, 2)
