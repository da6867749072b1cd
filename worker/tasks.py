"""The Celery task: a thin shell that claims a slice, runs one batch, commits, continues."""

from __future__ import annotations

import logging
import time

from tracker_reencrypt.audit import AuditTrail
from tracker_reencrypt.errors import LeaseLostError, ReencryptError
from tracker_reencrypt.fleet import enqueue_slice
from tracker_reencrypt.sweep.state import CANCELLING, RUNNING
from worker import metrics
from worker.batch import BatchLimits, SliceBatch
from worker.runtime import Runtime

log = logging.getLogger("reencrypt.worker")

#: After a transient failure (vault or store unreachable), try the slice again this late.
ERROR_BACKOFF_S = 10.0


def process_slice(app, runtime: Runtime, sweep_id: str, index: int, fence: int) -> str:
    """Advance one slice by one batch. Returns what happened, for logs and tests."""
    state, settings = runtime.state, runtime.settings
    sweep = state.get_sweep(sweep_id)
    if sweep["status"] != RUNNING:
        # Paused or stopping: drop the message; 'sweep resume' enqueues the slice again.
        if sweep["status"] == CANCELLING:
            state.settle_cancel(sweep_id)
        return f"dropped: sweep is {sweep['status']}"
    claim = state.claim_slice(sweep_id, index, fence, runtime.owner, settings.lease_seconds)
    if claim.action == "retry":
        enqueue_slice(app, sweep_id, index, fence, countdown=min(claim.retry_after + 0.5, settings.lease_seconds))
        return f"retry later: {claim.why}"
    if claim.action == "drop":
        return f"dropped: {claim.why}"

    started = time.perf_counter()
    try:
        # Built inside the try: it reads the budget state from Redis, and an outage there must
        # give the claimed slice back like any other, not leave it leased until expiry.
        batch = SliceBatch(
            runtime.store, state, runtime.keyring, sweep,
            BatchLimits(settings.batch_documents, settings.batch_seconds, settings.page_size, settings.conflict_retries),
            runtime.pacer(sweep),
        )
        report = batch.run(claim.slice)
        state.commit_slice(sweep_id, index, claim.fence, report.result)
    except LeaseLostError as exc:
        metrics.BATCHES.labels("lease_lost").inc()
        log.warning("slice %s/%d: %s; stopping", sweep_id, index, exc)
        return "lease lost"
    except ReencryptError as exc:
        # A vault or store outage: give the slice back untouched and try again later.
        # Documents already rewritten in this batch are on target and will be skipped.
        metrics.BATCHES.labels("error").inc()
        log.error("slice %s/%d: %s; retrying in %.0fs", sweep_id, index, exc, ERROR_BACKOFF_S)
        state.release_slice(sweep_id, index, claim.fence)
        message = str(exc)
        state.update_sweep(sweep_id, lambda body: {**body, "last_error": message})
        enqueue_slice(app, sweep_id, index, claim.fence, countdown=ERROR_BACKOFF_S)
        return "error"
    finally:
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        runtime.publish_metrics()
    _count(report, sweep["mode"])
    metrics.BATCHES.labels("committed").inc()

    if report.result.done:
        finished = state.finish_if_done(sweep_id)
        if finished is not None:
            AuditTrail(runtime.store.records()).append(
                f"sweep {finished['status']}", who=runtime.owner, sweep_id=sweep_id, totals=finished["totals"]
            )
        return "slice done"
    if state.get_sweep(sweep_id)["status"] == RUNNING:
        enqueue_slice(app, sweep_id, index, claim.fence)
        return "continued"
    state.settle_cancel(sweep_id)
    return "stopped: sweep no longer running"


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
