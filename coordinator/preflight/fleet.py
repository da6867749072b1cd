"""Is the broker there, and a fleet to do the work? Redis must answer; the workers that answer
Celery's remote control (``inspect``) are counted with their concurrency, and only those
consuming this store's queue count: a worker started for another container never takes this
one's tasks (tracker_reencrypt.fleet)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from coordinator.context import Context
from coordinator.preflight.result import FAIL, PASS, CheckResult
from tracker_reencrypt.errors import ReencryptError, first_line, redact_url
from tracker_reencrypt.fleet import store_queue

#: How long workers have to answer the inspect broadcast: Celery's own default for
#: ``celery inspect`` (a worker answers in milliseconds; the broadcast waits it out in full).
INSPECT_TIMEOUT_S = 1.0


def check_broker(redis_url: Callable[[], str], configured: str) -> tuple[CheckResult, str | None]:
    """The broker's verdict, and its URL when it answers. ``redis_url`` pings REDIS_URL (or
    starts the embedded server when ``configured`` is empty)."""
    where = redact_url(configured) if configured else "embedded Redis"
    try:
        url = redis_url()
    except ReencryptError as error:
        return CheckResult("broker", where, FAIL, first_line(error), "start Redis or fix REDIS_URL"), None
    return CheckResult("broker", where, PASS, "Redis answers"), url


def check_fleet(app: Celery, queue: str, expect: int, timeout_s: float = INSPECT_TIMEOUT_S) -> CheckResult:
    """How many workers consume ``queue``; fails below ``expect`` (0 where workers start on
    demand, as under KEDA, which scales them from the queue's length)."""
    try:
        # Everyone may answer the first broadcast, so it waits out its timeout; the second asks
        # only the workers found and returns once they all have.
        queues: dict[str, list[dict[str, Any]]] = app.control.inspect(timeout=timeout_s).active_queues() or {}
        ours = sorted(node for node, consumed in queues.items() if any(q.get("name") == queue for q in consumed))
        stats: dict[str, dict[str, Any]] = {}
        if ours:
            stats = app.control.inspect(destination=ours, limit=len(ours), timeout=timeout_s).stats() or {}
    except Exception as error:  # kombu's and redis's own errors: the broker went away meanwhile
        return CheckResult("fleet", queue, FAIL, f"inspect failed: {type(error).__name__}", "check the broker")
    concurrency = {node: _concurrency(stats.get(node, {})) for node in ours}
    others = len(queues) - len(ours)
    figures = {"workers": len(ours), "concurrency": concurrency, "other_workers": others}
    processes = sum(concurrency.values())
    found = f"{len(ours)} worker(s) on queue {queue}, {processes} process(es)"
    if others:
        found += f"; {others} other worker(s) serve other stores"
    if len(ours) < expect:
        return CheckResult(
            "fleet",
            queue,
            FAIL,
            f"{found}; expected at least {expect}",
            "start workers with this REENCRYPT_STORE ('reencrypt worker', or scale the deployment), "
            "or pass --expect-workers 0 where they start on demand (KEDA)",
            figures,
        )
    return CheckResult("fleet", queue, PASS, found, "", figures)


def wait_for_workers(ctx: Context, count: int, timeout_s: float) -> None:
    """Until ``count`` workers answer on the store's queue, or ``timeout_s`` passed (the fleet
    check then reports how many did): for commands that start workers themselves."""
    deadline = time.monotonic() + timeout_s
    queue = store_queue(ctx.settings)
    while time.monotonic() < deadline:
        if not check_fleet(ctx.celery, queue, count, timeout_s=0.5).failed:
            return


def _concurrency(stats: dict[str, Any]) -> int:
    pool = stats.get("pool") or {}
    value = pool.get("max-concurrency")
    return value if isinstance(value, int) else 0
