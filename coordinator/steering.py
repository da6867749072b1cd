"""Steering sweeps, as the CLI exposes it: start, pause, resume, cancel, throttle, progress.

Each checks its input before writing anything, so a refused command leaves no trace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.context import Context
from coordinator.estimate import estimate, unwrap_pace
from coordinator.throughput import Throughput, ThroughputWindow, over_run
from coordinator.verify import ScanReport, count_document, documents_in_scope, scan_container, verify_scope
from tracker_reencrypt.audit import actor
from tracker_reencrypt.custody import VERIFY_STARTED
from tracker_reencrypt.documents import MODES, partition_key_or_none
from tracker_reencrypt.errors import (
    InputError,
    KeyNotFoundError,
    KeyringFileError,
    ReencryptError,
    SweepError,
    UnknownNameError,
)
from tracker_reencrypt.fleet import enqueue_slice
from tracker_reencrypt.keys import KeyProvider
from tracker_reencrypt.keys.products import CurrentKids
from tracker_reencrypt.pacing.limits import SWEEP_LIMITS
from tracker_reencrypt.stores import FeedRange, product_of_range
from tracker_reencrypt.sweep.records import (
    CANCELLING,
    PAUSED,
    PLANNED,
    RUNNING,
    TARGET_CURRENT,
    VERIFY,
    Counts,
    Slice,
    Sweep,
    add_counts,
    new_sweep_id,
    parse_utc,
    stale_write_examples,
    sum_counts,
    utc_now,
    zero_counts,
)

DEFAULT_SLICES = 16
#: More slices than this only adds per-slice overhead (records, messages, listings): a fleet
#: of 1,000 worker processes is already past what one container's throughput supports.
MAX_SLICES = 1024


@dataclass(frozen=True)
class Plan:
    """What a sweep moves where: its target (a kid, or TARGET_CURRENT) and the products it reads."""

    target_kid: str
    products: tuple[str, ...] | None


def plan_target(ctx: Context, to: str, sources: list[str], products: list[str]) -> Plan:
    """Check ``--to``, ``--from`` and ``--product`` before anything is written.

    ``--to current``: with one key, its current version (exactly ``--to <that kid>``); with
    per-product keys, each document's own product's current version. A fixed kid under
    per-product keys belongs to one product: the sweep reads that product only, since moving
    another product's fields onto it would hand them to the wrong key."""
    keys = ctx.keys
    chosen = tuple(keys.naming.check_products(products)) if products else None
    if to == TARGET_CURRENT and keys.per_product:
        for product in chosen or ():
            _require_current(ctx, product)
        target = TARGET_CURRENT
    else:
        target = keys.root.current_kid() if to == TARGET_CURRENT else to
        provider = _known(ctx, target, "target")
        version = next(v for v in provider.versions() if v.kid == target)
        if not version.enabled:
            raise InputError(f"target key {target} is disabled: enable it with 'reencrypt keys enable {target}' first")
        owner = keys.product_of_kid(target)
        if keys.per_product:
            if chosen is not None and chosen != (owner,):
                raise InputError(
                    f"target key {target} is product {owner}'s: a sweep towards it reads product {owner} alone "
                    f"(drop the other --product values, or use --to current to move each product to its own key)"
                )
            chosen = (str(owner),)
    for kid in sources:
        _known(ctx, kid, "source")
        if kid == target:
            raise InputError(f"source key {kid} is the target itself: drop it from --from")
    return Plan(target, chosen)


def _known(ctx: Context, kid: str, role: str) -> KeyProvider:
    try:
        provider = ctx.keys.provider_of_kid(kid)
    except UnknownNameError:
        raise UnknownNameError(f"{role} key {kid!r} is not a version of {ctx.keys.describe()}") from None
    versions = [v.kid for v in provider.versions()]
    if kid not in versions:
        known = ", ".join(versions) or "none"
        raise UnknownNameError(f"{role} key {kid!r} is unknown to {provider.describe()} (known: {known})")
    return provider


def _require_current(ctx: Context, product: str) -> None:
    """A product named for a sweep to current must have a key with a usable current version."""
    provider = ctx.keys.provider_for(product)
    try:
        provider.current_kid()
    except (KeyNotFoundError, KeyringFileError):
        raise UnknownNameError(
            f"product {product} has no key {provider.key_name} in {ctx.keys.describe()}: create it with "
            f"'reencrypt keys init --product {product}'"
        ) from None


def plan_slices(ctx: Context, plan: Plan, slices: int) -> list[FeedRange]:
    """The work slices: EPK ranges of the whole container, or each product's own partition split
    by id ranges so that about ``slices`` slices share the products' documents (a product never
    shares a slice with another; one of many documents is cut into several)."""
    if plan.products is None:
        return ctx.store.feed_ranges(slices)
    counts = {product: ctx.store.count(product) for product in plan.products}
    per_slice = max(ctx.settings.batch_documents, -(-sum(counts.values()) // slices))
    return [piece for product in plan.products for piece in ctx.store.product_ranges(product, per_slice)]


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
                raise InputError(f"{self.FLAGS[name]} must be positive, got {value}")
        return values


def start(
    ctx: Context,
    *,
    to: str,
    sources: list[str],
    mode: str,
    slices: int,
    limits: LimitFlags = LimitFlags(),
    products: Sequence[str] = (),
) -> Sweep:
    if mode not in MODES:
        raise InputError(f"mode {mode!r} is unknown: use one of {', '.join(MODES)}")
    if not 1 <= slices <= MAX_SLICES:
        raise InputError(f"--slices must be between 1 and {MAX_SLICES}, got {slices}")
    given = limits.given()
    plan = plan_target(ctx, to, sources, list(products))
    celery, feed_ranges = _slices_when_free(ctx, plan, slices, "sweep")
    ctx.mark_store_with_keys(_keys_written(ctx, plan))
    sweep = _create(ctx, plan, feed_ranges, mode=mode, limits=given, source_kids=tuple(sources) or None)
    ctx.audit.append(
        "sweep started",
        sweep_id=sweep.id,
        target_kid=plan.target_kid,
        source_kids=sources or "all others",
        products=list(plan.products) if plan.products is not None else None,
        mode=mode,
        slices=len(feed_ranges),
        **given,
    )
    for index in range(len(feed_ranges)):
        enqueue_slice(celery, sweep.id, index, 0)
    return sweep


def start_verify(
    ctx: Context,
    *,
    expect: str | None,
    products: Sequence[str],
    slices: int,
    allow_empty: bool = False,
    limits: LimitFlags = LimitFlags(),
) -> Sweep:
    """Start a verify sweep (``verify --fleet``): the documents one-process verify would read,
    cut into slices as a sweep's are, for the fleet to check. It writes no document, so it marks
    no key; it holds the container's one active-sweep lock like any sweep. ``expect`` None: each
    product's current version, resolved by the workers as a sweep to current resolves it.

    Audited as "verify started", never "sweep started": the disable gate must not count it as
    a sweep that writes (custody.write_window), and its result proves what it read from here on."""
    if not 1 <= slices <= MAX_SLICES:
        raise InputError(f"--slices must be between 1 and {MAX_SLICES}, got {slices}")
    given = limits.given()
    scope, _ = verify_scope(ctx, expect, list(products) or None)
    plan = Plan(expect or TARGET_CURRENT, tuple(scope) if scope is not None else None)
    celery, feed_ranges = _slices_when_free(ctx, plan, slices, "verify")
    sweep = _create(ctx, plan, feed_ranges, mode=VERIFY, limits=given)
    ctx.audit.append(
        VERIFY_STARTED,
        sweep_id=sweep.id,
        expect=plan.target_kid,
        products=scope,
        slices=len(feed_ranges),
        allow_empty=allow_empty,
        **given,
    )
    for index in range(len(feed_ranges)):
        enqueue_slice(celery, sweep.id, index, 0)
    return sweep


def _slices_when_free(ctx: Context, plan: Plan, slices: int, what: str):
    """The broker and the plan's slices, once the container has no active sweep (one at a time)
    and Redis answers: both checked before anything is written."""
    active = ctx.state.active_sweep_id()
    if active:
        raise SweepError(
            f"sweep {active} is still active on this container: wait for it, or 'reencrypt sweep cancel {active}'"
        )
    celery = ctx.celery  # fails here, before anything is written, when Redis is unreachable
    feed_ranges = plan_slices(ctx, plan, slices)
    if len(feed_ranges) > MAX_SLICES:
        raise InputError(
            f"{len(feed_ranges)} slices for {len(plan.products or ())} products is more than {MAX_SLICES}: "
            f"{what} fewer products at a time, or lower --slices"
        )
    return celery, feed_ranges


def _create(
    ctx: Context,
    plan: Plan,
    feed_ranges: list[FeedRange],
    *,
    mode: str,
    limits: dict[str, float],
    source_kids: tuple[str, ...] | None = None,
) -> Sweep:
    """The sweep record and its slices, running from now."""
    return ctx.state.create_sweep(
        Sweep(
            id=new_sweep_id(),
            target_kid=plan.target_kid,
            source_kids=source_kids,
            products=plan.products,
            key_name=ctx.keys.naming.template,
            mode=mode,
            limits=limits,
            status=RUNNING,
            started_by=actor(),
            started_at=utc_now(milliseconds=True),  # a sweep can take under a second
            documents_estimate=documents_in_scope(ctx.store, plan.products),
            store=ctx.store.describe(),
            sample=_sample(ctx, feed_ranges),
        ),
        feed_ranges,
    )


def _keys_written(ctx: Context, plan: Plan) -> list[KeyProvider]:
    """The keys the sweep writes under, to mark this store with (custody: the disable gate checks
    every store a key marks): the target's, each named product's, or for a whole-container sweep
    to current every key of a product the container holds. A metadata read per key, and a write
    the first time: never skipped, or another container's disable gate would not see this one."""
    keys = ctx.keys
    if not keys.per_product:
        return [keys.root]
    if plan.target_kid != TARGET_CURRENT:
        return [keys.provider_of_kid(plan.target_kid)]
    if plan.products is not None:
        return [keys.provider_for(product) for product in plan.products]
    with_keys = {product.lower() for product in keys.products_with_keys()}  # Key Vault names ignore case
    return [keys.provider_for(product) for product in ctx.store.products() if product.lower() in with_keys]


def dry_run(ctx: Context, *, to: str, sources: list[str], limits: LimitFlags, products: Sequence[str] = ()) -> dict:
    """What a sweep would change, and how long it would take under ``limits``; writes nothing.

    Fields under a kid the key provider does not know, or under a disabled one, cannot move
    (nothing can unwrap their data keys): they are reported apart, as ``unknown_kids`` and
    ``disabled_kids``, not counted as "would move"; the sweep records each as a failure."""
    given = limits.given()
    plan = plan_target(ctx, to, sources, list(products))
    current = CurrentKids(ctx.keys) if plan.target_kid == TARGET_CURRENT else None
    expected = current.of if current is not None else (lambda _product: plan.target_kid)
    report = scan_container(ctx.store, keyring=None, sizing=True, products=plan.products, expected=expected)
    enabled = _enabled_by_kid(ctx, report.kinds_by_kid)
    staying = _current_kids(ctx, current, report) if current is not None else set()
    touched = [
        kid
        for kid in report.kinds_by_kid
        if kid != plan.target_kid and (not sources or kid in sources) and kid not in staying
    ]
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
        pace=unwrap_pace(ctx, plan.products, moving),
    )
    return {
        "dry_run": True,
        "target_kid": plan.target_kid,
        "products": list(plan.products) if plan.products is not None else None,
        "documents": report.documents,
        "fields_by_kid": dict(report.fields_by_kid),
        "would_move": would,
        "fields_to_move": sum(sum(kinds.values()) for kinds in would.values()),
        "unknown_kids": unknown,
        "disabled_kids": disabled,
        "products_without_key": report.products_without_target,
        "distinct_source_deks": distinct,
        "limits": given,
        "estimate": guess.as_json(given),
    }


def _enabled_by_kid(ctx: Context, kids) -> dict[str, bool]:
    """Whether each kid is enabled, for the kids the provider knows (others are left out)."""
    enabled: dict[str, bool] = {}
    for kid in kids:
        try:
            provider = ctx.keys.provider_of_kid(kid)
        except UnknownNameError:
            continue
        enabled.update((v.kid, v.enabled) for v in provider.versions() if v.kid == kid)
    return enabled


def _current_kids(ctx: Context, current: CurrentKids, report: ScanReport) -> set[str]:
    """Under a sweep to current, the kids that are some product's current version: their fields
    stay (a field on another product's current version is rare, and counted by verify --current).
    Looked up through the scan's own ``current``: each product's key is asked once."""
    staying = set()
    for kid in report.kinds_by_kid:
        product = ctx.keys.product_of_kid(kid)
        if product is None:
            continue
        try:
            if current.of(product) == kid:
                staying.add(kid)
        except ReencryptError as error:
            if error.transient:
                raise
    return staying


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
    """Set a paused sweep running and (re-)enqueue every unfinished slice, back-offs ended.

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
    # Resuming says the cause is fixed: slices waiting out a back-off go now, with the rest.
    ctx.state.clear_back_offs(sweep.id)
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
        raise InputError(f"give at least one of {', '.join(limit.flag for limit in SWEEP_LIMITS)}, or --unlimited")
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
    throughput: Throughput
    eta_s: float | None
    active_leases: int
    budget_estimate: str = ""

    @property
    def docs_per_s(self) -> float | None:
        """Documents per second (coordinator.throughput: over the last minute, or since the
        start, or over the whole run once finished); None over less than a second."""
        return self.throughput.docs_per_s

    @property
    def stale_writes(self) -> int:
        """Documents the sweep found written after rotation under a retired version."""
        return self.totals.get("stale_writes", 0)

    def as_json(self) -> dict:
        return {
            "sweep": self.sweep.to_record(),
            "totals": self.totals,
            # Up front, not only in the totals: a tracker instance on the old key id is the one
            # thing a sweep cannot fix by itself (tracker_reencrypt.stale).
            "stale_writes": self.stale_writes,
            "stale_write_examples": [example.as_json() for example in stale_write_examples(self.slices)],
            "elapsed_s": round(self.elapsed_s, 3),
            "docs_per_s": None if self.docs_per_s is None else round(self.docs_per_s, 1),
            # What docs_per_s is measured over: "window" (the last minute), "since start" or "run".
            "docs_per_s_basis": self.throughput.basis,
            "eta_s": None if self.eta_s is None else round(self.eta_s),
            "active_leases": self.active_leases,
            "budget_estimate": self.budget_estimate,
            "slices": [
                {
                    "index": s.index,
                    "done": s.done,
                    "leased_by": s.lease_owner,
                    "counts": s.counts,
                    # After a failed batch: when its retry is due (seconds since the epoch), and
                    # how many batches failed in a row; 0 and 0 otherwise.
                    "retry_at": s.retry_at,
                    "error_retries": s.error_retries,
                }
                for s in self.slices
            ],
            "products": self.by_product(),
        }

    def by_product(self) -> dict[str, dict] | None:
        """Per-product progress of a sweep scoped to products (None for a whole-container sweep,
        whose slices are EPK ranges that do not map to products)."""
        return products_progress(self.slices) if self.sweep.products is not None else None


def products_progress(slices: list[Slice]) -> dict[str, dict]:
    """Each product's slices (done of all) and the counts they committed, in slice order."""
    progress: dict[str, dict] = {}
    for piece in slices:
        product = product_of_range(dict(piece.feed_range))
        if product is None:
            continue
        entry = progress.setdefault(product, {"slices": 0, "slices_done": 0, "counts": zero_counts()})
        entry["slices"] += 1
        entry["slices_done"] += int(piece.done)
        entry["counts"] = add_counts(entry["counts"], piece.counts)
    for entry in progress.values():
        entry["done"] = entry["slices_done"] == entry["slices"]
    return progress


#: Where a product of a product-scoped sweep is: every slice scanned to its end, some batch
#: of it committed, or nothing of it read yet.
PRODUCT_STATES = ("done", "in_progress", "pending")


def product_state(entry: dict) -> str:
    """The PRODUCT_STATES value of one products_progress entry."""
    if entry["done"]:
        return "done"
    return "in_progress" if entry["slices_done"] or entry["counts"].get("documents_scanned") else "pending"


def throughput_window(sweep: Sweep) -> ThroughputWindow:
    """Where a reader following ``sweep`` keeps its reads of the committed counts (give the
    same one to every progress() call of that sweep)."""
    return ThroughputWindow(parse_utc(sweep.started_at))


def progress(
    ctx: Context, sweep: Sweep, window: ThroughputWindow | None = None, *, now: float | None = None
) -> Progress:
    """Counts from the durable state; the throughput over the reader's ``window`` of earlier
    reads (throughput_window), or, for a single read, since the sweep started."""
    now = time.time() if now is None else now
    slices = ctx.state.slices(sweep.id)
    totals = sum_counts(slices)
    scanned = totals.get("documents_scanned", 0)
    started = parse_utc(sweep.started_at)
    if sweep.finished:
        end = ended_at(sweep, slices, now)
        rate = over_run(started, end, scanned, sweep.time_paused(end))
    else:
        end = now
        rate = (window or throughput_window(sweep)).observe(now, scanned, sweep.time_paused(now))
    remaining = max(0, sweep.documents_estimate - scanned)
    eta = rate.eta_s(remaining, running=sweep.status == RUNNING)
    leases = sum(1 for s in slices if s.lease_is_live(now))
    return Progress(
        sweep, slices, totals, max(0.0, end - started), rate, eta, leases, limits_estimate(sweep, remaining)
    )


def ended_at(sweep: Sweep, slices: list[Slice], now: float) -> float:
    """When a finished sweep ended, to the millisecond where the records allow: ``finished_at``
    is whole seconds (the true end lies within the second after it), and its last slice
    commit, to the microsecond, is the end of a sweep that completed."""
    if not sweep.finished_at:
        return now
    second = parse_utc(sweep.finished_at)
    last_commit = max((piece.updated_at for piece in slices), default=0.0)
    return max(second, min(last_commit, second + 1.0))
