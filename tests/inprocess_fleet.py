"""The fleet in one test process: real task code, a broker in memory, time that moves on demand.

As dramatiq's ``StubBroker.join`` and arq's burst-mode worker run real actors in the test
process, :class:`InProcessFleet` runs the worker's own message handler (``worker.tasks.handle``)
over a real SQLite store and keyring, with the in-memory pacing backend and an injected clock.
Claims, leases, fences, commits, continuations, pause, cancel and lease expiry are then tested
in milliseconds; the subprocess tests with real Celery workers stay as the small ``slow`` set.

The broker here is the in-memory twin of the part of Celery the handler uses: ``send_task``
and the app's default queue. A countdown is honoured by the clock: a message is not handled
before it is due, and waiting for it moves the clock forward instead of sleeping. Each message
has a Celery task id (a new one unless the sender names it, as a retry does) and its retries.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace

from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import StoreUnavailableError
from tracker_reencrypt.fleet import (
    PROCESS_SLICE,
    QUEUE_PREFIX,
    enqueue_slice,
    recover,
    store_queue,
)
from tracker_reencrypt.pacing.backends.memory import MemoryPacing
from tracker_reencrypt.sweep.records import RUNNING, Sweep, utc_now
from worker import tasks
from worker.runtime import Runtime


class Clock:
    """Seconds since the epoch that move only when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass(order=True)
class Message:
    due: float
    order: int
    queue: str = field(compare=False)
    args: list = field(compare=False)
    kwargs: dict = field(compare=False)
    task_id: str = field(compare=False)
    retries: int = field(compare=False, default=0)


class MemoryBroker:
    """What ``enqueue_slice`` needs of a Celery app, with the messages kept in a heap by due time."""

    def __init__(self, queue: str, clock: Clock) -> None:
        self.conf = SimpleNamespace(task_default_queue=queue)
        self.clock = clock
        self.messages: list[Message] = []
        self.published = 0
        self._order = itertools.count()

    def send_task(self, name: str, args=None, kwargs=None, countdown=None, queue=None, task_id=None, retries=0) -> None:
        assert name == PROCESS_SLICE, name
        due, order = self.clock() + (countdown or 0), next(self._order)
        heapq.heappush(
            self.messages,
            Message(
                due,
                order,
                queue or self.conf.task_default_queue,
                list(args or []),
                dict(kwargs or {}),
                task_id or f"task-{order}",
                retries,
            ),
        )
        self.published += 1

    def take(self) -> Message | None:
        return heapq.heappop(self.messages) if self.messages else None


class InProcessFleet:
    """One worker process's runtime and the broker, driven message by message."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.settings = settings
        self.broker = MemoryBroker(store_queue(settings), self.clock)
        self.runtime = Runtime(
            settings, None, pacing=MemoryPacing(clock=self.clock), clock=self.clock, sleep=self.clock.sleep
        )
        self._answering_scan = self.runtime.store.scan
        self.outcomes: list[str] = []
        #: How Celery would report each message (tasks.Outcome.verdict; None: not handled here).
        self.verdicts: list[str | None] = []

    @property
    def state(self):
        return self.runtime.state

    def step(self) -> str | None:
        """Handle the next message (moving the clock to it when it is not yet due); None when empty."""
        message = self.broker.take()
        if message is None:
            return None
        self.clock.now = max(self.clock.now, message.due)
        if message.queue != self.broker.conf.task_default_queue:
            # Another store's queue: no worker of this fleet listens there.
            self.outcomes.append(f"not ours: {message.queue[len(QUEUE_PREFIX) :]}")
            self.verdicts.append(None)
            return self.outcomes[-1]
        outcome = tasks.handle(
            self.broker, lambda: self.runtime, *message.args, **message.kwargs, task_id=message.task_id
        )
        self.outcomes.append(outcome.text)
        self.verdicts.append(outcome.verdict)
        return outcome.text

    def join(self, limit: int = 10_000) -> list[str]:
        """Handle messages until none is left (the lease watch looks whenever the queue is
        empty, as the workers' watch does every quarter lease, and the clock moves on to the
        next back-off's end while one is waited out); the outcomes, in order."""
        start = len(self.outcomes)
        for _ in range(limit):
            if self.step() is None and not self.watch():
                waits = [piece.retry_at for piece in self._running_slices() if piece.retry_at > self.clock.now]
                if not waits:
                    return self.outcomes[start:]
                self.clock.now = min(waits)
        raise AssertionError(f"the fleet did not drain in {limit} messages: {self.outcomes[-10:]}")

    def store_down(self, scans: int | None = None) -> None:
        """The store stops answering scans (the next ``scans`` of them; None: until
        :meth:`store_up`), as a Cosmos outage mid-batch looks to a worker."""
        scan, failed = self._answering_scan, []

        def scan_or_fail(*args, **kwargs):
            if scans is None or len(failed) < scans:
                failed.append(True)
                raise StoreUnavailableError("the store did not answer")
            return scan(*args, **kwargs)

        self.runtime.store.scan = scan_or_fail

    def store_up(self) -> None:
        self.runtime.store.scan = self._answering_scan

    def watch(self) -> bool:
        """One look of the lease watch (worker/lease_watch.py); whether it sent anything."""
        return recover(self.broker, self.state, lambda: len(self.broker.messages)) > 0

    def _running_slices(self):
        sweep_id = self.state.active_sweep_id()
        if not sweep_id or self.state.get_sweep(sweep_id).status != RUNNING:
            return []
        return self.state.slices(sweep_id)


def start_sweep(fleet: InProcessFleet, target_kid: str, slices: int, sweep_id: str) -> Sweep:
    """What 'sweep start' writes and sends, without the CLI's checks."""
    store = fleet.runtime.store
    sweep = fleet.state.create_sweep(
        Sweep(
            id=sweep_id,
            target_kid=target_kid,
            mode="reencrypt",
            status=RUNNING,
            started_at=utc_now(),
            documents_estimate=store.count(),
        ),
        store.feed_ranges(slices),
    )
    for index in range(sweep.slice_count):
        enqueue_slice(fleet.broker, sweep.id, index, 0)
    return sweep
