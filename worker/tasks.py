"""The Celery task: a thin shell that claims a slice, runs one batch, commits, continues.

Whatever happens to the batch, the task ends by settling the sweep (``SweepState.settle``), so
a cancel or the last slice never waits on a path that forgot to. Errors are sorted by whether
retrying can help (``ReencryptError.transient``): an outage gives the slice back and tries
again with back-off; anything else (a disabled target key, a missing keyring, an unexpected
exception) pauses the sweep with the reason for the operator, instead of looping silently.

Each message ends with a verdict in Celery's own terms (:class:`Outcome`), so Flower and
``celery events`` count a failed batch as a failure or a retry, not as a success that says
"error": the Celery task (worker/app.py) raises :class:`BatchFailed` or Celery's ``Retry``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tracker_reencrypt.audit import AuditTrail
from tracker_reencrypt.errors import LeaseLostError, ReencryptError
from tracker_reencrypt.fleet import QUEUE_PREFIX, enqueue_slice
from tracker_reencrypt.sweep.records import CANCELLING, RUNNING, Sweep
from tracker_reencrypt.sweep.state import ERROR_BACKOFF_S, Claim
from worker import metrics
from worker.batch import BatchLimits, SliceBatch
from worker.check import SliceCheck
from worker.runtime import Runtime

log = logging.getLogger("reencrypt.worker")

#: How Celery is to report a message: SUCCESS, RETRY (a new try of it is on its way) or FAILURE
#: (nothing retries it: the sweep is paused with the reason, or the message cannot succeed).
Verdict = Literal["done", "retry", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What one message did: the text logged (and returned to Celery), whether its slice ended
    (after which a running sweep may have no slice left to do and is settled), and its verdict;
    for a retry, why and in how many seconds (the slice's back-off, recorded with it)."""

    text: str
    slice_ended: bool = False
    verdict: Verdict = "done"
    cause: str = ""
    retry_in: float = 0.0


class BatchFailed(Exception):
    """Raised to Celery by the task when its message failed (FAILURE, or the cause of a RETRY).
    Its text is the outcome's one line (our errors carry no secrets; others are named by type)."""


#: Sends the message again, naming ``fence``, ``delay`` seconds from now, for ``why``: Celery's
#: own retry in the task (the same task id, its retries counted); by default a new message (the
#: in-process fleet, direct calls). Only for an outage before the slice is claimed, when the
#: store cannot record a back-off; a failed batch's back-off is kept with its slice instead.
RetryLater = Callable[[int, float, str], None]


def handle(
    app,
    runtime_of: Callable[[], Runtime],
    sweep_id: str,
    index: int,
    fence: int,
    store: str | None = None,
    retry: RetryLater | None = None,
    task_id: str | None = None,
) -> Outcome:
    """One task message, as the Celery task (worker/app.py) and the tests' in-process fleet
    receive it: ours is worked, another store's is sent on to its own queue.

    Until a claim holds the slice nothing is held, so a failure there only has to bring the
    message back: later when retrying can help, never when it cannot (a sweep or slice that
    does not exist, a refused credential), which is logged and dropped instead of looping.
    ``task_id`` is the message's Celery task id: a failed batch is retried under it.
    """
    if store != app.conf.task_default_queue[len(QUEUE_PREFIX) :]:
        return forward_misrouted(app, sweep_id, index, fence, store)
    return _process(app, runtime_of, sweep_id, index, fence, retry or send_again(app, sweep_id, index), task_id)


def send_again(app, sweep_id: str, index: int) -> RetryLater:
    """The plain retry: a new message of the slice, ``delay`` seconds from now."""
    return lambda fence, delay, why: enqueue_slice(app, sweep_id, index, fence, countdown=delay)


def process_slice(app, runtime: Runtime, sweep_id: str, index: int, fence: int) -> str:
    """Advance one slice of this worker's own store by one batch; what happened, as text."""
    return _process(app, lambda: runtime, sweep_id, index, fence, send_again(app, sweep_id, index), None).text


def _process(
    app,
    runtime_of: Callable[[], Runtime],
    sweep_id: str,
    index: int,
    fence: int,
    retry: RetryLater,
    task_id: str | None,
) -> Outcome:
    try:
        runtime = runtime_of()
        outcome = _advance(app, runtime, sweep_id, index, fence, task_id)
    except ReencryptError as exc:
        if not exc.transient:
            log.error("slice %s/%d: %s; message dropped (it cannot succeed as it is)", sweep_id, index, exc)
            return Outcome(f"dropped: {exc}", verdict="failed")
        # Nothing is claimed and the store may be what is down: no back-off can be recorded,
        # so the message itself comes back later.
        log.error("slice %s/%d: %s; retrying in %.0fs", sweep_id, index, exc, ERROR_BACKOFF_S)
        retry(fence, ERROR_BACKOFF_S, str(exc))
        return Outcome("error: retrying", verdict="retry", cause=str(exc), retry_in=ERROR_BACKOFF_S)
    _settle(runtime, sweep_id, outcome)
    return outcome


def forward_misrouted(app, sweep_id: str, index: int, fence: int, store: str | None) -> Outcome:
    """A message of another store's sweep reached this worker (a queue shared by hand, an old
    message): send it on to its own queue rather than acknowledge and lose it."""
    if not store:
        log.error(
            "slice %s/%d: message names no store; dropped (re-queue it with 'reencrypt sweep resume')", sweep_id, index
        )
        return Outcome("dropped: message names no store", verdict="failed")
    enqueue_slice(app, sweep_id, index, fence, fingerprint=store)
    log.warning("slice %s/%d belongs to store %s, not ours: sent on to its queue", sweep_id, index, store)
    return Outcome("forwarded to its own store's queue")


def _advance(app, runtime: Runtime, sweep_id: str, index: int, fence: int, task_id: str | None) -> Outcome:
    state, settings = runtime.state, runtime.settings
    sweep = state.get_sweep(sweep_id)
    if sweep.status != RUNNING:
        # Paused or stopping: drop the message; 'sweep resume' enqueues the slice again.
        return Outcome(f"dropped: sweep is {sweep.status}")
    claim = state.claim_slice(sweep_id, index, fence, runtime.owner, settings.lease_seconds)
    if claim.action == "retry":
        enqueue_slice(app, sweep_id, index, fence, countdown=min(claim.retry_after + 0.5, settings.lease_seconds))
        return Outcome(f"retry later: {claim.why}")
    if claim.action == "drop":
        return Outcome(f"dropped: {claim.why}", slice_ended=claim.slice_done)
    return _work(app, runtime, sweep, index, claim, task_id)


def _work(app, runtime: Runtime, sweep: Sweep, index: int, claim: Claim, task_id: str | None) -> Outcome:
    state, settings, sweep_id = runtime.state, runtime.settings, sweep.id
    started = time.perf_counter()
    try:
        # Built inside the try: it reads the budget state from Redis, and an outage there must
        # give the claimed slice back like any other, not leave it leased until expiry. A verify
        # sweep's batch only reads (worker/check.py): no path of it can write a document.
        kind = SliceCheck if sweep.checks_only else SliceBatch
        batch = kind(
            runtime.store,
            state,
            runtime.keyring,
            sweep,
            BatchLimits(
                settings.batch_documents, settings.batch_seconds, settings.page_size, settings.conflict_retries
            ),
            runtime.pacer(sweep),
            runtime.targets(sweep),
        )
        assert claim.slice is not None  # a "work" claim always carries its slice
        report = batch.run(claim.slice)
        state.commit_slice(sweep_id, index, claim.fence, report.result)
    except LeaseLostError as exc:
        metrics.BATCHES.labels("lease_lost").inc()
        log.warning("slice %s/%d: %s; stopping", sweep_id, index, exc)
        return Outcome("lease lost")
    except Exception as exc:  # noqa: BLE001 - every failure gives the slice back; none may leave it leased
        metrics.BATCHES.labels("error").inc()
        return _give_back(runtime, sweep_id, index, claim.fence, exc, task_id)
    finally:
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        runtime.publish_metrics()
    _count(report, sweep.mode)
    metrics.BATCHES.labels("committed").inc()
    # Committed: the slice is free now and only a message moves it on, so the continuation is
    # sent first and unconditionally (a sweep paused meanwhile drops it, as any other message).
    if not report.result.done:
        enqueue_slice(app, sweep_id, index, claim.fence)
    if sweep.last_error:
        _clear_last_error(state, sweep_id)
    return Outcome("slice done", slice_ended=True) if report.result.done else Outcome("continued")


def _clear_last_error(state, sweep_id: str) -> None:
    """A batch committed: the error being retried is over. Best effort: the next one tries again."""
    try:
        state.update_sweep(
            sweep_id,
            lambda body: body.but(last_error=None),
            only_if=lambda body: body.status == RUNNING and body.last_error is not None,
        )
    except ReencryptError as exc:
        log.warning("sweep %s: could not clear its last error (%s)", sweep_id, exc)


def _give_back(runtime: Runtime, sweep_id: str, index: int, fence: int, exc: Exception, task_id: str | None) -> Outcome:
    """Give the slice back with its back-off recorded (SweepState.back_off_slice: the lease
    watch sends its retry when due), then pause the sweep if retrying cannot help."""
    state = runtime.state
    transient = isinstance(exc, ReencryptError) and exc.transient
    # Our errors are one line without secrets; anything else is named by its type only, since
    # its message could quote a document.
    message = (
        str(exc)
        if isinstance(exc, ReencryptError)
        else f"unexpected {type(exc).__name__} in a batch (a bug: see the worker log)"
    )
    if not isinstance(exc, ReencryptError):
        # Where it happened, frame by frame (file, line, function), one line: enough to find the
        # bug, and no frame's source text or values (a frame could hold a document's).
        frames = " < ".join(
            f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
            for frame in reversed(traceback.extract_tb(exc.__traceback__))
        )
        log.error("slice %s/%d: unexpected %s at %s", sweep_id, index, type(exc).__name__, frames)
    try:
        waiting = state.back_off_slice(sweep_id, index, fence, task_id)
    except LeaseLostError:
        return Outcome("lease lost")
    # Its retry is due then whatever happens next: if the sweep cannot be paused below (the
    # store failed again), the slice is still tried again, and 'sweep resume' makes it due now.
    delay = waiting.retry_at - state.clock()
    retrying = Outcome("error: retrying", verdict="retry", cause=message, retry_in=delay)
    if not transient:
        log.error("slice %s/%d: %s; pausing the sweep ('reencrypt sweep resume' once fixed)", sweep_id, index, message)
        try:
            state.pause_for(sweep_id, message)
        except ReencryptError as outage:
            log.error("sweep %s: could not be paused (%s); slice %d retried in %.0fs", sweep_id, outage, index, delay)
            return retrying
        return Outcome("paused: " + message, verdict="failed")
    log.error("slice %s/%d: %s; retrying in %.0fs", sweep_id, index, message, delay)
    try:
        state.update_sweep(
            sweep_id, lambda body: body.but(last_error=message), only_if=lambda body: body.status == RUNNING
        )
    except ReencryptError as outage:  # shown on the sweep when the store answers again
        log.warning("sweep %s: could not record its last error (%s)", sweep_id, outage)
    return retrying


def _settle(runtime: Runtime, sweep_id: str, outcome: Outcome) -> None:
    """Finish the sweep if it reached its end (audited once, by whichever task got there).

    A cancelling sweep is settled after every task; a running one only when this task saw its
    slice end, since only then can every slice be done (the rest would be a wasted listing).
    """
    state = runtime.state
    try:
        status = state.get_sweep(sweep_id).status
        if status != CANCELLING and not (status == RUNNING and outcome.slice_ended):
            return
        finished = state.settle(sweep_id)
    except ReencryptError as exc:  # the store is down: the next task or 'sweep cancel' settles
        log.warning("sweep %s: could not settle (%s)", sweep_id, exc)
        return
    if finished is not None:
        AuditTrail(runtime.store.records()).append(
            f"sweep {finished.status}",
            runtime.owner,
            sweep_id=sweep_id,
            totals=finished.totals,
        )


def _count(report, mode: str) -> None:
    counts = report.result.counts
    metrics.DOCUMENTS_SCANNED.inc(counts["documents_scanned"])
    metrics.DOCUMENTS_WRITTEN.inc(counts["documents_written"])
    metrics.DOCUMENTS_SKIPPED.inc(report.documents_skipped)
    metrics.CONFLICTS.inc(counts["conflicts"])
    for kind, moved in report.fields_by_kind.items():
        metrics.FIELDS_REENCRYPTED.labels(kind, mode).inc(moved)
    for reason, failed in report.failures_by_reason.items():
        metrics.FAILURES.labels(reason).inc(failed)
