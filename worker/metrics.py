"""Worker metrics (prometheus-client), correct under Celery's prefork pool.

Each pool child writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by
``reencrypt worker`` before Python starts, wiped at start); the worker's main process serves
them all, merged by a ``MultiProcessCollector``, on one port. A child that exits is marked
dead so its live gauges vanish while its counters keep counting. Label values come from
fixed sets (field kinds, modes, failure reasons, operations): never ids or kids.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

DOCUMENTS_SCANNED = Counter("reencrypt_documents_scanned_total", "Documents read by the sweep")
DOCUMENTS_WRITTEN = Counter("reencrypt_documents_written_total", "Documents rewritten under the target key")
DOCUMENTS_SKIPPED = Counter(
    "reencrypt_documents_skipped_total", "Documents needing no write (already on target, or nothing to move)"
)
FIELDS_REENCRYPTED = Counter("reencrypt_fields_reencrypted_total", "Fields moved onto the target key", ["kind", "mode"])
CONFLICTS = Counter("reencrypt_conflicts_total", "Conditional writes lost to a concurrent tracker write (then redone)")
FAILURES = Counter("reencrypt_failures_total", "Fields that could not be moved, by reason", ["reason"])
BATCH_SECONDS = Histogram(
    "reencrypt_batch_duration_seconds",
    "Wall time of one slice batch",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
)
BATCHES = Counter("reencrypt_batches_total", "Slice batches by outcome", ["outcome"])
KEY_CALLS = Counter("reencrypt_keyvault_calls_total", "Calls that reached the key provider", ["operation", "outcome"])
KEY_LATENCY = Histogram(
    "reencrypt_keyvault_latency_seconds",
    "Latency of key provider calls",
    ["operation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DEK_CACHE = Counter("reencrypt_dek_cache_total", "Data-key unwrap cache lookups", ["result"])
REQUEST_UNITS = Counter(
    "reencrypt_store_request_units_total", "Request units charged by the store (estimated on SQLite)"
)
THROTTLES = Counter("reencrypt_store_throttles_total", "Store requests answered 429 (retried)")
BUDGET_FACTOR = Gauge(
    "reencrypt_budget_factor",
    "Share of each budget the fleet currently uses (adaptive back-off after 429s)",
    ["resource"],
    multiprocess_mode="livemostrecent",
)
RATE_LIMIT_WAIT = Counter(
    "reencrypt_ratelimit_wait_seconds_total", "Seconds spent waiting on fleet-wide rate limits", ["limit"]
)


def observe_key_call(operation: str, seconds: float, succeeded: bool) -> None:
    KEY_CALLS.labels(operation, "ok" if succeeded else "error").inc()
    KEY_LATENCY.labels(operation).observe(seconds)


class DeltaTracker:
    """Turns monotonic totals kept elsewhere (keyring stats, store cost, provider calls) into
    increments: counters, or the pacer's charges. Totals not given at the start count from 0."""

    def __init__(self, **start: float) -> None:
        self._last: dict[str, float] = dict(start)

    def since(self, name: str, total: float) -> float:
        """How much ``total`` grew since the last call for ``name``."""
        delta = total - self._last.get(name, 0.0)
        self._last[name] = total
        return delta

    def add(self, counter, name: str, total: float) -> None:
        delta = self.since(name, total)
        if delta > 0:
            counter.inc(delta)


def serve(port: int) -> None:
    """Serve every pool child's samples from the worker's main process (before the pool forks).

    Raises SystemExit, which Celery's signal dispatch lets through (it logs and swallows any
    other error, and with it the only sign that metrics are missing): without multiprocess
    mode the children's samples would never reach this process, and a taken port serves nothing.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not os.path.isdir(directory):
        raise SystemExit(
            f"metrics port {port} needs PROMETHEUS_MULTIPROC_DIR set to a directory before Python starts: "
            "start workers with 'reencrypt worker --metrics-port N', which sets it up"
        )
    _remove_stale_files(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise SystemExit(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from None


def _remove_stale_files(directory: str) -> None:
    """Drop sample files of earlier processes (a reused directory would count them again).

    Called in the main process before the pool starts, so every other pid's file is stale.
    """
    own = f"_{os.getpid()}.db"
    for name in os.listdir(directory):
        if name.endswith(".db") and not name.endswith(own):
            os.remove(os.path.join(directory, name))


def mark_child_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
