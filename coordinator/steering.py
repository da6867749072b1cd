"""Steering sweeps, as the CLI exposes it: start, pause, resume, cancel, throttle, progress.

Each checks its input before writing anything, so a refused command leaves no trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from coordinator.context import Context
from coordinator.estimate import estimate
from coordinator.verify import ScanReport, count_document, scan_container
from tracker_reencrypt.audit import actor
from tracker_reencrypt.documents import MODES, partition_key_or_none
from tracker_reencrypt.errors import SweepError, UnknownNameError
from tracker_reencrypt.fleet import enqueue_slice
from tracker_reencrypt.pacing.limits import SWEEP_LIMITS
from tracker_reencrypt.sweep.records import (
    CANCELLING,
    PAUSED,
    PLANNED,
    RUNNING,
    Counts,
    Slice,
    Sweep,
    new_sweep_id,
    parse_utc,
    sum_counts,
    utc_now,
)

DEFAULT_SLICES = 16
#: More slices than this only adds per-slice overhead (records, messages, listings): a fleet
#: of 1,000 worker processes is already past what one container's throughput supports.
MAX_SLICES = 1024


def check_target(ctx: Context, to: str, sources: list[str]) -> None:
    versions = {v.kid: v for v in ctx.provider.versions()}
    known = ", ".join(versions) or "none"
    if to not in versions:
        raise UnknownNameError(f"target key {to!r} is unknown to {ctx.provider.describe()} (known: {known})")
    if not versions[to].enabled:
        raise SweepError(f"target key {to} is disabled: enable it with 'reencrypt keys enable {to}' first")
    for kid in sources:
        if kid not in versions:
            raise UnknownNameError(f"source key {kid!r} is unknown to {ctx.provider.describe()} (known: {known})")
        if kid == to:
            raise SweepError(f"source key {kid} is the target itself: drop it from --from")


@dataclass(frozen=True)
class LimitFlags:
    """The fleet-wide limits given on the command line; None means not given."""

    rate: float | None = None  # documents/s
    kv_ops_per_s: float | None = None  # Key Vault calls/s (unwraps, remote wraps)
    ru_per_s: float | None = None  # store request units/s

    FLAGS = {limit.key: limit.flag for limit in SWEEP_LIMITS}

    def given(self) -> dict[str, float]:
        """The limits that were set, checked positive."""
        values = {name: getattr(self, name) for name in self.FLAGS if getattr(self, name) is not None}
        for name, value in values.items():
            if value <= 0:
                raise SweepError(f"{self.FLAGS[name]} must be positive, got {value}")
        return values


def start(
    ctx: Context, *, to: str, sources: list[str], mode: str, slices: int, limits: LimitFlags = LimitFlags()
) -> Sweep:
    if mode not in MODES:
        raise SweepError(f"mode {mode!r} is unknown: use one of {', '.join(MODES)}")
    if not 1 <= slices <= MAX_SLICES:
        raise SweepError(f"--slices must be between 1 and {MAX_SLICES}, got {slices}")
    given = limits.given()
    check_target(ctx, to, sources)
    active = ctx.state.active_sweep_id()
    if active:
        raise SweepError(
            f"sweep {active} is still active on this container: wait for it, or 'reencrypt sweep cancel {active}'"
        )
    celery = ctx.celery  # fails here, before anything is written, when Redis is unreachable
    ctx.mark_store_with_key()
    feed_ranges = ctx.store.feed_ranges(slices)
    sweep = ctx.state.create_sweep(
        Sweep(
            id=new_sweep_id(),
            target_kid=to,
            source_kids=tuple(sources) or None,
            mode=mode,
            limits=given,
            status=RUNNING,
            started_by=actor(),
            started_at=utc_now(),
            documents_estimate=ctx.store.count(),
            store=ctx.store.describe(),
            sample=_sample(ctx, feed_ranges),
        ),
        feed_ranges,
    )
    ctx.audit.append(
        "sweep started",
        sweep_id=sweep.id,
        target_kid=to,
        source_kids=sources or "all others",
        mode=mode,
        slices=len(feed_ranges),
        **given,
    )
    for index in range(len(feed_ranges)):
        enqueue_slice(celery, sweep.id, index, 0)
    return sweep


def dry_run(ctx: Context, *, to: str, sources: list[str], limits: LimitFlags) -> dict:
    """What a sweep would change, and how long it would take under ``limits``; writes nothing.

    Fields under a kid the key provider does not know, or under a disabled one, cannot move
    (nothing can unwrap their data keys): they are reported apart, as ``unknown_kids`` and
    ``disabled_kids``, not counted as "would move"; the sweep records each as a failure."""
    given = limits.given()
    check_target(ctx, to, sources)
    enabled = {version.kid: version.enabled for version in ctx.provider.versions()}
    report = scan_container(ctx.store, keyring=None, sizing=True)
    touched = [kid for kid in report.kinds_by_kid if kid != to and (not sources or kid in sources)]
    moving = [kid for kid in touched if enabled.get(kid)]
    unknown = {kid: sum(report.kinds_by_kid[kid].values()) for kid in touched if kid not in enabled}
    disabled = {kid: sum(report.kinds_by_kid[kid].values()) for kid in touched if enabled.get(kid) is False}
    would = {kid: dict(report.kinds_by_kid[kid]) for kid in moving}
    distinct = report.distinct_deks(moving)
    guess = estimate(
        documents=report.documents,
        documents_to_write=report.documents_with_kids(moving),
        document_bytes=report.document_bytes,
        distinct_source_deks=distinct,
        limits=given,
    )
    return {
        "dry_run": True,
        "target_kid": to,
        "documents": report.documents,
        "fields_by_kid": dict(report.fields_by_kid),
        "would_move": would,
        "fields_to_move": sum(sum(kinds.values()) for kinds in would.values()),
        "unknown_kids": unknown,
        "disabled_kids": disabled,
        "distinct_source_deks": distinct,
        "limits": given,
        "estimate": {
            "seconds": guess.seconds,
            "bound_by": guess.bound_by,
            "request_units": round(guess.request_units),
            "kv_ops": guess.kv_ops,
            "text": guess.text(given),
        },
    }


SAMPLE_DOCUMENTS = 200


def _sample(ctx: Context, feed_ranges) -> dict:
    """Average document size and DEKs per document from one page: what the status estimate
    under budgets needs, for the price of one page instead of a full scan.

    A document bad as a whole (no partition key, no id, unreadable...) is sampled but not
    measured: it has no size or DEKs to speak of, and the sweep will not write it. Without a
    keyring such documents are all that ``undecryptable`` counts, so the averages are over the rest.
    """
    documents = [doc for rng in feed_ranges[:4] for doc in ctx.store.scan(rng, None, SAMPLE_DOCUMENTS // 4).documents]
    report = ScanReport(sizing=True)
    for doc in documents:
        count_document(report, doc.body, partition_key_or_none(ctx.store, doc.body), None, unreadable=doc.unreadable)
    count = max(1, report.documents - report.undecryptable)
    return {
        "documents": report.documents,
        "average_bytes": report.document_bytes / count,
        "deks_per_document": sum(len(deks) for deks in report.deks_by_kid.values()) / count,
    }


def limits_estimate(sweep: Sweep, remaining_documents: int) -> str:
    """Time left for ``remaining_documents`` under the sweep's limits ("" without limits)."""
    limits = dict(sweep.limits)
    if not limits:
        return ""
    sample = sweep.sample or {"average_bytes": 2048, "deks_per_document": 1.0}
    return estimate(
        documents=remaining_documents,
        documents_to_write=remaining_documents,
        document_bytes=round(remaining_documents * sample["average_bytes"]),
        distinct_source_deks=round(remaining_documents * sample["deks_per_document"]),
        limits=limits,
    ).text(limits)


def resolve(ctx: Context, sweep_id: str | None) -> Sweep:
    return ctx.state.get_sweep(sweep_id) if sweep_id else ctx.state.latest_sweep()


def pause(ctx: Context, sweep_id: str | None) -> Sweep:
    sweep = ctx.state.set_status(resolve(ctx, sweep_id).id, PAUSED, allowed_from=frozenset({RUNNING}))
    ctx.audit.append("sweep paused", sweep_id=sweep.id)
    return sweep


def resume(ctx: Context, sweep_id: str | None) -> tuple[Sweep, int]:
    """Set a paused sweep running and (re-)enqueue every unfinished slice.

    Also the recovery after Redis lost its queue (flushed, restarted without persistence):
    on a running sweep it enqueues the slices again from their durable checkpoints. Extra
    messages are harmless; the slice fences drop every duplicate.
    """
    sweep = resolve(ctx, sweep_id)
    if sweep.status not in (PAUSED, RUNNING):
        raise SweepError(f"sweep {sweep.id} is {sweep.status}; only a paused or running sweep can be resumed")
    celery = ctx.celery
    if sweep.status == PAUSED:
        # The reason it was paused for is the operator's to fix; resuming says it is fixed.
        sweep = ctx.state.update_sweep(
            sweep.id,
            lambda body: body.but(status=RUNNING, paused_reason=None, last_error=None),
            only_if=lambda body: body.status == PAUSED,
        )
    ctx.audit.append("sweep resumed", sweep_id=sweep.id)
    queued = kick(ctx, sweep.id, celery)
    # Its last slices may have finished while it was paused: then no message is left to settle it.
    finished = ctx.state.settle(sweep.id)
    if finished is not None:
        ctx.audit.append(f"sweep {finished.status}", sweep_id=sweep.id, totals=finished.totals)
        sweep = finished
    return sweep, queued


def kick(ctx: Context, sweep_id: str, celery=None) -> int:
    """Enqueue every unfinished slice not under a live lease, at its current fence."""
    celery = celery or ctx.celery
    now, queued = time.time(), 0
    for piece in ctx.state.slices(sweep_id):
        if piece.done or piece.lease_is_live(now):
            continue
        enqueue_slice(celery, sweep_id, piece.index, piece.fence)
        queued += 1
    return queued


def cancel(ctx: Context, sweep_id: str | None) -> Sweep:
    """Ask the sweep to stop, and settle it at once when no batch is in hand. Cancelling a
    sweep that is already cancelling settles it again: once its leases expired (its workers
    died), it becomes cancelled, so no sweep can block the container for ever."""
    sweep = resolve(ctx, sweep_id)
    if sweep.status != CANCELLING:
        sweep = ctx.state.set_status(sweep.id, CANCELLING, allowed_from=frozenset({PLANNED, RUNNING, PAUSED}))
        ctx.audit.append("sweep cancel requested", sweep_id=sweep.id)
    if ctx.state.settle(sweep.id) is not None:
        ctx.audit.append("sweep cancelled", sweep_id=sweep.id)
    return ctx.state.get_sweep(sweep.id)


def leases_in_hand(ctx: Context, sweep_id: str) -> tuple[int, float]:
    """(live leases, seconds until the last of them expires): what a cancel still waits on."""
    now = time.time()
    live = [piece.lease_expires for piece in ctx.state.slices(sweep_id) if piece.lease_is_live(now)]
    return len(live), max(live, default=now) - now


def throttle(ctx: Context, sweep_id: str | None, limits: LimitFlags, *, unlimited: bool = False) -> Sweep:
    """Change the given limits of a running sweep (``unlimited`` clears them all)."""
    changes = limits.given()
    if not changes and not unlimited:
        raise SweepError(f"give at least one of {', '.join(limit.flag for limit in SWEEP_LIMITS)}, or --unlimited")
    sweep = resolve(ctx, sweep_id)
    if sweep.finished:
        raise SweepError(f"sweep {sweep.id} is {sweep.status}; there is nothing to throttle")
    sweep = ctx.state.update_sweep(
        sweep.id, lambda body: body.but(limits={} if unlimited else {**body.limits, **changes})
    )
    ctx.audit.append(
        "sweep throttled", sweep_id=sweep.id, **(dict.fromkeys(LimitFlags.FLAGS) if unlimited else changes)
    )
    return sweep


@dataclass
class Progress:
    sweep: Sweep
    slices: list[Slice]
    totals: Counts
    elapsed_s: float
    docs_per_s: float
    eta_s: float | None
    active_leases: int
    budget_estimate: str = ""

    def as_json(self) -> dict:
        return {
            "sweep": self.sweep.to_record(),
            "totals": self.totals,
            "elapsed_s": round(self.elapsed_s, 1),
            "docs_per_s": round(self.docs_per_s, 1),
            "eta_s": None if self.eta_s is None else round(self.eta_s),
            "active_leases": self.active_leases,
            "budget_estimate": self.budget_estimate,
            "slices": [
                {"index": s.index, "done": s.done, "leased_by": s.lease_owner, "counts": s.counts} for s in self.slices
            ],
        }


def progress(ctx: Context, sweep: Sweep, previous: Progress | None = None) -> Progress:
    """Counts from the durable state; the rate from two samples when given, else since start."""
    slices = ctx.state.slices(sweep.id)
    totals = sum_counts(slices)
    started = parse_utc(sweep.started_at)
    end = parse_utc(sweep.finished_at) if sweep.finished and sweep.finished_at else time.time()
    elapsed = max(0.001, end - started)
    scanned = totals.get("documents_scanned", 0)
    rate = scanned / elapsed
    if previous is not None and previous.sweep.id == sweep.id:
        window = elapsed - previous.elapsed_s
        if window > 0.5:
            rate = (scanned - previous.totals.get("documents_scanned", 0)) / window
    remaining = max(0, sweep.documents_estimate - scanned)
    eta = remaining / rate if rate > 0 and sweep.status == RUNNING else None
    now = time.time()
    leases = sum(1 for s in slices if s.lease_is_live(now))
    return Progress(sweep, slices, totals, elapsed, rate, eta, leases, limits_estimate(sweep, remaining))
