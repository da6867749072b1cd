"""``reencrypt exporter``: sweep-level Prometheus metrics from the durable sweep state and the broker.

The workers' counters (``worker/metrics.py``) say how each process works right now; they
start from zero when a worker restarts and vanish when the fleet scales down. How far a
rotation is, what it moved and what failed are kept in the sweep state in the store, so this
exporter reads them there: its counters *are* the durable totals and never reset.

A background loop reads a :class:`Snapshot` every ``--interval`` seconds; a scrape only turns
the latest snapshot into metric families (:func:`families`, pure). Scrapes therefore cost the
store nothing, and two Prometheus replicas cost what one does.

Label sets are bounded: ``sweep`` (only the active sweep and the most recent finished one are
exported), ``slice`` (up to the sweep's slice count), ``status``, ``limit`` and ``state`` (fixed
sets), ``target_kid``, ``mode`` and ``products`` once per sweep on an info gauge, and ``product``
only on the per-product series of a sweep scoped to at most :data:`MAX_PRODUCT_SERIES` products.
Never document ids, and never a product on a series of a whole-container sweep: a tracker has
thousands of products. The workers' per-document metrics carry no product either.

Per-product progress, for a sweep scoped with ``--product``:

- ``reencrypt_sweep_products{sweep, state}``: how many of its products are ``done`` (every slice
  scanned to its end), ``in_progress`` (a batch committed) or ``pending``; three series whatever
  the number of products;
- ``reencrypt_sweep_product_documents_scanned_total{sweep, product}`` and
  ``reencrypt_sweep_product_done{sweep, product}``: one each per product, only when the sweep
  names at most MAX_PRODUCT_SERIES products (else ``reencrypt sweep status`` lists them).

A whole-container sweep reads the container by EPK ranges that do not map to products: it has
none of these series, and ``products="all"`` on its info gauge.

Throughput and ETA (``reencrypt_sweep_documents_per_second``, ``reencrypt_sweep_eta_seconds``) are
coordinator.throughput's: the documents committed over the last minute of the exporter's reads
(since the start until it has read for a minute), what ``sweep status --watch`` shows and what
the dashboards compute with ``rate(reencrypt_sweep_documents_scanned_total[1m])``.

Sweep events (started, paused, paused_by_error, resumed, throttled, cancelling, cancelled,
completed, failed) are ``reencrypt_sweep_event_timestamp_seconds{sweep, event}``: when each last
happened, from the audit trail (the fleet's own pause, which is not audited, from the sweep
record). At most EVENTS series per exported sweep; the dashboards draw them as annotations.

HTTP: ``/metrics`` serves the metrics, ``/healthz`` answers 200 while the sweep state was read
recently and 503 when it cannot be (a probe that restarts nothing by itself: the last good values
are still served); any other path is 404.

Stale writes (documents the tracker wrote after rotation under a retired version of their
product's key, tracker_reencrypt.stale) are ``reencrypt_stale_writes_total{sweep}``: the durable
count a sweep or verify sweep found, named apart from the ``reencrypt_sweep_*`` totals because it
is the tracker's problem, not the sweep's. Its examples (document ids) stay in ``sweep status``.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from urllib.parse import urlparse

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from coordinator import steering
from coordinator.context import Context, state_dir
from coordinator.throughput import ThroughputWindow
from tracker_reencrypt import embedded_redis
from tracker_reencrypt.custody import VERIFY_STARTED
from tracker_reencrypt.errors import ConfigError, ReencryptError
from tracker_reencrypt.fleet import pending_messages, store_queue
from tracker_reencrypt.pacing.limits import SWEEP_LIMITS
from tracker_reencrypt.plaintext_http import send_text
from tracker_reencrypt.sweep.records import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    COUNTERS,
    FAILED,
    PAUSED,
    PLANNED,
    RUNNING,
    Counts,
    Sweep,
    parse_utc,
)

log = logging.getLogger("reencrypt.exporter")

DEFAULT_PORT = 9809
#: Every interface: in Kubernetes the kubelet's probes and Prometheus reach the pod's IP.
#: On a shared host, --bind 127.0.0.1 keeps it to the machine.
DEFAULT_BIND = "0.0.0.0"
DEFAULT_INTERVAL_S = 5.0
#: /healthz fails once the sweep state has not been read for this many intervals (at least
#: HEALTHY_FOR_MIN_S): a read that hangs is as bad as one that fails.
HEALTHY_FOR_INTERVALS = 3
HEALTHY_FOR_MIN_S = 30.0
#: Per-product series only for a sweep over at most this many products. Rotating one product
#: (a suspected leak, a customer's request) or a few is what an on-call watches product by
#: product; a sweep over hundreds of products (up to steering.MAX_SLICES) would add two series
#: per product to every scrape and every dashboard, so it gets only the counts by state
#: (three series), and 'reencrypt sweep status' lists its unfinished products.
MAX_PRODUCT_SERIES = 20

STATUSES = (PLANNED, RUNNING, PAUSED, CANCELLING, CANCELLED, COMPLETED, FAILED)
#: A sweep's limit fields, by the ``limit`` label the workers' rate-limit wait counter uses too.
LIMITS = {limit.key: limit.label for limit in SWEEP_LIMITS}
#: Help texts of the durable totals, by their name in the sweep state (state.COUNTERS).
TOTAL_HELP = {
    "documents_scanned": "Documents the sweep has read, from its durable slice checkpoints",
    "documents_written": "Documents rewritten under the target key",
    "documents_failed": "Documents left untouched because a field could not be moved",
    "fields_reencrypted": "Fields moved onto the target key",
    "fields_on_target": "Fields found already on the target key",
    "fields_not_source": "Fields on a key the sweep was not asked to move",
    "conflicts": "Conditional writes lost to a concurrent tracker write (then redone)",
    "failures": "Fields that could not be moved (see 'reencrypt sweep failures')",
    "stale_writes": "Documents the tracker wrote after rotation under a retired version of their product's key "
    "(a tracker instance still uses the old key id: 'reencrypt sweep status' names examples)",
}
#: Totals not named reencrypt_sweep_<counter>_total.
TOTAL_NAMES = {"stale_writes": "reencrypt_stale_writes_total"}

#: Sweep events (the ``event`` label), by the audit action that records each. A sweep paused by
#: the fleet (a problem only a person can fix) is not audited: it is "paused_by_error", from the
#: sweep record.
EVENT_OF_ACTION = {
    "sweep started": "started",
    VERIFY_STARTED: "started",
    "sweep paused": "paused",
    "sweep resumed": "resumed",
    "sweep throttled": "throttled",
    "sweep cancel requested": "cancelling",
    "sweep cancelled": "cancelled",
    "sweep completed": "completed",
    "sweep failed": "failed",
}
EVENTS = (
    "started",
    "paused",
    "paused_by_error",
    "resumed",
    "throttled",
    "cancelling",
    "cancelled",
    "completed",
    "failed",
)


def total_metric_name(counter: str) -> str:
    return TOTAL_NAMES.get(counter, f"reencrypt_sweep_{counter}_total")


@dataclass(frozen=True)
class ProductView:
    """One product of a product-scoped sweep: its state (steering.PRODUCT_STATES) and documents read."""

    product: str
    state: str
    documents_scanned: int


@dataclass(frozen=True)
class SweepView:
    """What the exporter knows about one sweep at one moment."""

    sweep: Sweep
    totals: Counts
    slices: list[dict]
    docs_per_s: float | None  # None: measured over less than a second
    eta_s: float | None
    elapsed_s: float
    leases: int
    workers: int
    #: None for a whole-container sweep.
    products: tuple[ProductView, ...] | None = None
    #: When each of its EVENTS last happened (seconds since the epoch).
    events: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, progress: steering.Progress, now: float, events: Mapping[str, float] | None = None) -> SweepView:
        live_owners = {s.lease_owner for s in progress.slices if s.lease_is_live(now)}
        return cls(
            sweep=progress.sweep,
            totals=progress.totals,
            slices=[
                {"index": s.index, "done": s.done, "documents_scanned": s.counts.get("documents_scanned", 0)}
                for s in progress.slices
            ],
            docs_per_s=progress.docs_per_s,
            eta_s=progress.eta_s,
            elapsed_s=progress.elapsed_s,
            leases=progress.active_leases,
            workers=len(live_owners),
            products=product_views(progress),
            events=dict(events or {}),
        )


def product_views(progress: steering.Progress) -> tuple[ProductView, ...] | None:
    by_product = progress.by_product()
    if by_product is None:
        return None
    return tuple(
        ProductView(product, steering.product_state(entry), entry["counts"].get("documents_scanned", 0))
        for product, entry in by_product.items()
    )


@dataclass(frozen=True)
class Snapshot:
    sweeps: list[SweepView] = field(default_factory=list)
    queue_messages: int | None = None  # None: the broker was unreachable
    unacked_messages: int | None = None
    store_up: bool = False
    redis_up: bool = False
    refreshed_at: float = 0.0  # last successful read of the store (0: never)
    refresh_seconds: float = 0.0
    queue: str = ""  # the store's task queue (tracker_reencrypt.fleet.store_queue)


def sweep_events(sweep: Sweep, audit_entries: list[dict]) -> dict[str, float]:
    """When each of the sweep's EVENTS last happened: from its audit entries, its start from the
    record (to the millisecond), its end from the record when the audit lacks it, and a pause by
    the fleet (never audited) from the record while it lasts (pure)."""
    events: dict[str, float] = {}
    for entry in audit_entries:
        event = EVENT_OF_ACTION.get(entry.get("action", ""))
        if event is None or (entry.get("details") or {}).get("sweep_id") != sweep.id:
            continue
        try:
            at = parse_utc(entry["at"])
        except (KeyError, TypeError, ValueError):
            continue
        events[event] = max(events.get(event, at), at)
    if sweep.started_at:
        events["started"] = parse_utc(sweep.started_at)
    if sweep.finished and sweep.finished_at:
        events.setdefault(sweep.status, parse_utc(sweep.finished_at))
    if sweep.status == PAUSED and sweep.paused_reason:
        # When it paused, which a throttle of the paused sweep (a later update) does not move;
        # a record from before paused_since was kept has only its last update to go by.
        if sweep.paused_since is not None:
            events["paused_by_error"] = sweep.paused_since
        elif sweep.updated_at:
            events["paused_by_error"] = parse_utc(sweep.updated_at)
    return events


def slice_ratio(done: bool, scanned: int, per_slice: float) -> float:
    """A slice's progress: 1 once scanned to its end, else its documents over the sweep's estimate
    shared evenly by its slices, below 1 (a slice's own size is not known until it ends)."""
    return 1.0 if done else min(0.99, scanned / max(1.0, per_slice))


def exported_sweeps(all_sweeps: list[Sweep], active_id: str | None) -> list[Sweep]:
    """The sweeps worth a series: the active one and the most recent finished one.

    ``all_sweeps`` is ordered oldest first (as SweepState.sweeps returns them).
    """
    chosen = []
    unfinished = [s for s in all_sweeps if not s.finished]
    active = next((s for s in unfinished if s.id == active_id), unfinished[-1] if unfinished else None)
    if active is not None:
        chosen.append(active)
    finished = [s for s in all_sweeps if s.finished]
    if finished:
        chosen.append(finished[-1])
    return chosen


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (pure: no I/O)."""
    totals = {
        name: CounterMetricFamily(total_metric_name(name), TOTAL_HELP.get(name, name), labels=["sweep"])
        for name in COUNTERS
    }
    info = GaugeMetricFamily(
        "reencrypt_sweep_info",
        "One per exported sweep: its target key, mode and products ('all', or how many it is scoped to) (always 1)",
        labels=["sweep", "target_kid", "mode", "products"],
    )
    status = GaugeMetricFamily(
        "reencrypt_sweep_status", "1 for the sweep's current status, 0 for the others", labels=["sweep", "status"]
    )
    estimate = GaugeMetricFamily(
        "reencrypt_sweep_documents_estimate", "Documents in the container when the sweep started", labels=["sweep"]
    )
    progress = GaugeMetricFamily(
        "reencrypt_sweep_progress_ratio",
        "Documents scanned over the estimate, capped at 1 (1 once the sweep completed)",
        labels=["sweep"],
    )
    throughput = GaugeMetricFamily(
        "reencrypt_sweep_documents_per_second",
        "Documents committed per second over the last minute (since the start until the exporter has read "
        "for a minute; over the whole run once finished); the dashboards' rate(...documents_scanned_total[1m])",
        labels=["sweep"],
    )
    eta = GaugeMetricFamily(
        "reencrypt_sweep_eta_seconds",
        "Documents left over reencrypt_sweep_documents_per_second (only while running and moving)",
        labels=["sweep"],
    )
    elapsed = GaugeMetricFamily(
        "reencrypt_sweep_elapsed_seconds",
        "Seconds since the sweep started (to its end once finished)",
        labels=["sweep"],
    )
    started = GaugeMetricFamily(
        "reencrypt_sweep_start_time_seconds", "When the sweep started, seconds since the epoch", labels=["sweep"]
    )
    ended = GaugeMetricFamily(
        "reencrypt_sweep_end_time_seconds", "When the sweep finished, seconds since the epoch", labels=["sweep"]
    )
    slice_count = GaugeMetricFamily("reencrypt_sweep_slices", "Slices (feed ranges) of the sweep", labels=["sweep"])
    slices_done = GaugeMetricFamily("reencrypt_sweep_slices_done", "Slices scanned to their end", labels=["sweep"])
    slice_scanned = CounterMetricFamily(
        "reencrypt_sweep_slice_documents_scanned_total",
        "Documents scanned in one slice, from its durable checkpoint",
        labels=["sweep", "slice"],
    )
    slice_done = GaugeMetricFamily(
        "reencrypt_sweep_slice_done", "1 once the slice is scanned to its end", labels=["sweep", "slice"]
    )
    slice_ratio_family = GaugeMetricFamily(
        "reencrypt_sweep_slice_progress_ratio",
        "1 once the slice is scanned to its end, else its documents over the estimate shared evenly by the "
        "sweep's slices (at most 0.99)",
        labels=["sweep", "slice"],
    )
    events = GaugeMetricFamily(
        "reencrypt_sweep_event_timestamp_seconds",
        "When the sweep last was started, paused, paused_by_error, resumed, throttled, cancelling, cancelled, "
        "completed or failed (audit trail), seconds since the epoch: the dashboards' annotations",
        labels=["sweep", "event"],
    )
    leases = GaugeMetricFamily("reencrypt_sweep_leases_active", "Slices under a live worker lease", labels=["sweep"])
    workers = GaugeMetricFamily(
        "reencrypt_sweep_workers_active", "Distinct worker processes holding a live lease", labels=["sweep"]
    )
    limits = GaugeMetricFamily(
        "reencrypt_sweep_limit_per_second",
        "Fleet-wide limits set on the sweep (absent: unlimited)",
        labels=["sweep", "limit"],
    )
    paused_by_error = GaugeMetricFamily(
        "reencrypt_sweep_paused_by_error",
        "1 if the fleet paused the sweep on a problem only a person can fix ('reencrypt sweep status' says why)",
        labels=["sweep"],
    )
    last_error = GaugeMetricFamily(
        "reencrypt_sweep_last_error",
        "1 while the sweep records an error since its last committed batch (retried)",
        labels=["sweep"],
    )
    products = GaugeMetricFamily(
        "reencrypt_sweep_products",
        "Products of a sweep scoped to products, by state: done, in_progress, pending (none for the whole container)",
        labels=["sweep", "state"],
    )
    product_scanned = CounterMetricFamily(
        "reencrypt_sweep_product_documents_scanned_total",
        f"Documents scanned in one product (only for a sweep over at most {MAX_PRODUCT_SERIES} products)",
        labels=["sweep", "product"],
    )
    product_done = GaugeMetricFamily(
        "reencrypt_sweep_product_done",
        f"1 once every slice of the product is scanned to its end (only for a sweep over at most "
        f"{MAX_PRODUCT_SERIES} products)",
        labels=["sweep", "product"],
    )

    for view in snapshot.sweeps:
        sweep, sid = view.sweep, view.sweep.id
        for name in COUNTERS:
            totals[name].add_metric([sid], view.totals.get(name, 0))
        info.add_metric([sid, sweep.target_kid, sweep.mode, products_label(sweep)], 1)
        for name in STATUSES:
            status.add_metric([sid, name], 1 if sweep.status == name else 0)
        documents = sweep.documents_estimate
        scanned = view.totals.get("documents_scanned", 0)
        estimate.add_metric([sid], documents)
        ratio = 1.0 if sweep.status == COMPLETED else min(1.0, scanned / documents) if documents else 0.0
        progress.add_metric([sid], ratio)
        if view.docs_per_s is not None:
            throughput.add_metric([sid], view.docs_per_s)
        if view.eta_s is not None:
            eta.add_metric([sid], view.eta_s)
        elapsed.add_metric([sid], view.elapsed_s)
        if sweep.started_at:
            started.add_metric([sid], parse_utc(sweep.started_at))
        if sweep.finished and sweep.finished_at:
            ended.add_metric([sid], parse_utc(sweep.finished_at))
        slice_count.add_metric([sid], len(view.slices))
        slices_done.add_metric([sid], sum(1 for s in view.slices if s["done"]))
        per_slice = documents / max(1, len(view.slices))
        for s in view.slices:
            slice_scanned.add_metric([sid, str(s["index"])], s["documents_scanned"])
            slice_done.add_metric([sid, str(s["index"])], 1 if s["done"] else 0)
            slice_ratio_family.add_metric(
                [sid, str(s["index"])], slice_ratio(s["done"], s["documents_scanned"], per_slice)
            )
        for event in EVENTS:
            if event in view.events:
                events.add_metric([sid, event], view.events[event])
        leases.add_metric([sid], view.leases)
        workers.add_metric([sid], view.workers)
        for key, label in LIMITS.items():
            if sweep.limit(key):
                limits.add_metric([sid, label], float(sweep.limits[key]))
        paused_by_error.add_metric([sid], 1 if sweep.status == PAUSED and sweep.paused_reason else 0)
        last_error.add_metric([sid], 1 if sweep.last_error else 0)
        if view.products is not None:
            for state in steering.PRODUCT_STATES:
                products.add_metric([sid, state], sum(1 for p in view.products if p.state == state))
            if len(view.products) <= MAX_PRODUCT_SERIES:
                for p in view.products:
                    product_scanned.add_metric([sid, p.product], p.documents_scanned)
                    product_done.add_metric([sid, p.product], 1 if p.state == "done" else 0)

    yield from totals.values()
    yield from (
        info,
        status,
        estimate,
        progress,
        throughput,
        eta,
        elapsed,
        started,
        ended,
        slice_count,
        slices_done,
        slice_scanned,
        slice_done,
        slice_ratio_family,
        events,
        leases,
        workers,
        limits,
        paused_by_error,
        last_error,
        products,
        product_scanned,
        product_done,
    )

    queue = GaugeMetricFamily(
        "reencrypt_queue_messages", "Task messages waiting in the broker queue (Redis LLEN)", labels=["queue"]
    )
    if snapshot.queue_messages is not None:
        queue.add_metric([snapshot.queue], snapshot.queue_messages)
    yield queue
    unacked = GaugeMetricFamily(
        "reencrypt_queue_unacked_messages",
        "Task messages delivered to workers and not yet acknowledged (running, or waiting on a countdown)",
    )
    if snapshot.unacked_messages is not None:
        unacked.add_metric([], snapshot.unacked_messages)
    yield unacked
    yield GaugeMetricFamily(
        "reencrypt_exporter_store_up",
        "1 if the last read of the sweep state succeeded",
        value=1 if snapshot.store_up else 0,
    )
    yield GaugeMetricFamily(
        "reencrypt_exporter_redis_up", "1 if the last read of the broker succeeded", value=1 if snapshot.redis_up else 0
    )
    yield GaugeMetricFamily(
        "reencrypt_exporter_last_refresh_timestamp_seconds",
        "When the sweep state was last read successfully (0: never)",
        value=snapshot.refreshed_at,
    )
    yield GaugeMetricFamily(
        "reencrypt_exporter_refresh_duration_seconds", "How long the last read took", value=snapshot.refresh_seconds
    )


def products_label(sweep: Sweep) -> str:
    """The info gauge's ``products``: 'all', or how many products the sweep is scoped to. A count,
    not the names: one value per sweep whatever the products (the names are on the per-product
    series when there are few, and in 'reencrypt sweep status')."""
    return "all" if sweep.products is None else str(len(sweep.products))


class SweepCollector:
    """A custom collector serving the latest snapshot of ``source`` (anything with ``.snapshot``)."""

    def __init__(self, source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        return families(self.source.snapshot)

    def describe(self) -> list:
        return []  # the families depend on the data; registering must not trigger a read


class Exporter:
    """Reads the durable state and the broker into snapshots."""

    def __init__(
        self, ctx: Context, *, interval: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.queue = store_queue(ctx.settings)
        try:
            ctx.store  # noqa: B018 - a store that does not exist or is not ours refuses the start
        except ReencryptError as exc:
            if not exc.transient:
                raise
            # An outage at start is served as store_up 0 until the store answers.
        self.ctx = ctx
        self.interval = interval
        self.clock = clock  # seconds since the epoch; injectable, so rates are tested without sleeping
        self.snapshot = Snapshot()
        self._windows: dict[str, ThroughputWindow] = {}
        self._events: dict[str, dict[str, float]] = {}
        self._events_read_for: dict[str, str] = {}  # sweep id -> the record version its events were read at
        self._redis: redis.Redis | None = None
        self._last_problem: dict[str, str] = {}

    def refresh(self) -> Snapshot:
        started = time.perf_counter()
        views, store_up, refreshed_at = self.snapshot.sweeps, False, self.snapshot.refreshed_at
        try:
            views = self._read_sweeps()
            store_up, refreshed_at = True, self.clock()
            self._recovered("store")
        except Exception as exc:  # noqa: BLE001 - a failed read must never stop the exporter; it shows as store_up 0
            self._problem("store", exc)
        messages = unacked = None
        try:
            messages, unacked = pending_messages(self._broker(), self.queue)
            self._recovered("redis")
        except Exception as exc:  # noqa: BLE001 - as above, shows as redis_up 0
            self._redis = None
            self._problem("redis", exc)
        self.snapshot = Snapshot(
            views,
            messages,
            unacked,
            store_up,
            messages is not None,
            refreshed_at,
            time.perf_counter() - started,
            self.queue,
        )
        return self.snapshot

    def health(self, now: float | None = None) -> tuple[int, str]:
        """/healthz: 200 while the sweep state was read within HEALTHY_FOR_INTERVALS intervals
        (HEALTHY_FOR_MIN_S at least), else 503 and why."""
        now = self.clock() if now is None else now
        snapshot = self.snapshot
        if not snapshot.refreshed_at:
            return 503, "the sweep state has not been read yet"
        age = now - snapshot.refreshed_at
        if not snapshot.store_up:
            return 503, f"the last read of the sweep state failed (last good read {age:.0f} s ago; see the log)"
        if age > max(HEALTHY_FOR_MIN_S, HEALTHY_FOR_INTERVALS * self.interval):
            return 503, f"the sweep state was last read {age:.0f} s ago"
        return 200, f"ok: sweep state read {age:.0f} s ago"

    def _read_sweeps(self) -> list[SweepView]:
        state = self.ctx.state
        chosen = exported_sweeps(state.sweeps(), state.active_sweep_id())
        now, views = self.clock(), []
        windows = {sweep.id: self._windows.get(sweep.id) or steering.throughput_window(sweep) for sweep in chosen}
        events = self._sweep_events(chosen)
        for sweep in chosen:
            progress = steering.progress(self.ctx, sweep, windows[sweep.id], now=now)
            views.append(SweepView.of(progress, now, events.get(sweep.id)))
        self._windows = windows
        return views

    def _sweep_events(self, chosen: list[Sweep]) -> dict[str, dict[str, float]]:
        """The chosen sweeps' events. The audit trail is read only when a sweep's record changed
        since the last read (each event also rewrites the record), not every interval; an event's
        time never goes back (a fleet pause stays drawn once resumed)."""
        versions = {sweep.id: f"{sweep.status} {sweep.updated_at}" for sweep in chosen}
        stale = [sweep for sweep in chosen if self._events_read_for.get(sweep.id) != versions[sweep.id]]
        if stale:
            try:
                entries = self.ctx.audit.entries()
            except Exception as exc:  # noqa: BLE001 - events are extras: the totals are served without them
                self._problem("audit trail", exc)
            else:
                self._recovered("audit trail")
                for sweep in stale:
                    known = self._events.get(sweep.id, {})
                    found = sweep_events(sweep, entries)
                    self._events[sweep.id] = {e: max(known.get(e, at), at) for e, at in {**known, **found}.items()}
                    self._events_read_for[sweep.id] = versions[sweep.id]
        self._events = {sweep.id: self._events.get(sweep.id, {}) for sweep in chosen}
        self._events_read_for = {k: v for k, v in self._events_read_for.items() if k in versions}
        return self._events

    def _broker(self) -> redis.Redis:
        if self._redis is None:
            # Never start the embedded server from here: without REDIS_URL, read the one the
            # other commands share if it runs (else the broker shows as down).
            url = self.ctx.settings.redis_url or embedded_redis.url_for(state_dir())
            self._redis = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        return self._redis

    def _problem(self, what: str, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if self._last_problem.get(what) != text:  # log each new problem once, not every interval
            log.warning("reading the %s failed (%s); serving the last good values", what, text)
            self._last_problem[what] = text

    def _recovered(self, what: str) -> None:
        if self._last_problem.pop(what, None) is not None:
            log.warning("reading the %s works again", what)


def _handler(registry: CollectorRegistry, health: Callable[[], tuple[int, str]]) -> type[MetricsHandler]:
    """/metrics (prometheus_client's own handler: content negotiation, gzip, name[] filters),
    /healthz, and 404 for any other path."""

    class Handler(MetricsHandler):
        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path == "/metrics":
                super().do_GET()
                return
            code, text = health() if path == "/healthz" else (404, "not found: metrics on /metrics, health on /healthz")
            send_text(self, code, text)

    Handler.registry = registry
    return Handler


def listen(bind: str, port: int, exporter: Exporter) -> ThreadingHTTPServer:
    """The exporter's HTTP server on ``bind:port`` (IPv4 or IPv6; port 0: any free one), not yet
    serving. A port taken or an address this host does not have is a ConfigError (one line,
    exit 2), not a traceback."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SweepCollector(exporter))
    handler = _handler(registry, exporter.health)
    try:
        family, _, _, _, address = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        raise ConfigError(f"--bind {bind}: not an address of this host") from None

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    try:
        return Server((str(address[0]), int(address[1])), handler)
    except OSError as exc:
        where = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{where} is already in use (another exporter, or another program): stop it or choose another --port"
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ConfigError(f"{where}: not allowed to listen there (a port under 1024 needs privileges)") from None
        raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None


def serve(
    ctx: Context,
    *,
    port: int = DEFAULT_PORT,
    interval: float = DEFAULT_INTERVAL_S,
    bind: str = DEFAULT_BIND,
    ready: Callable[[str], object] | None = None,
) -> None:
    """Serve /metrics and /healthz on ``bind:port`` and refresh every ``interval`` s until SIGTERM or
    SIGINT. The port is taken before the first read, so a port in use fails at once; ``ready``
    gets the address served ("host:port")."""
    exporter = Exporter(ctx, interval=interval)
    server = listen(bind, port, exporter)
    exporter.refresh()  # the first scrape already has data
    thread = threading.Thread(target=server.serve_forever, name="reencrypt-exporter-http", daemon=True)
    thread.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if ready is not None:
        host, bound = server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        ready(f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}")
    try:
        while not stop.wait(interval):
            exporter.refresh()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
