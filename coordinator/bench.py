"""``reencrypt bench``: how fast a sweep is, against what, and how it scales.

Every figure comes from one invocation, on one data set:

- **fleet**: the real distributed sweep (``sweep start`` -> Celery on Redis -> W worker
  processes -> store) from MEK v1 to v2, with W=1 and W=2, timed from sweep start until the
  sweep record says it finished. Key provider calls, DEK cache lookups, batch time and store
  request units are scraped from each worker's Prometheus port when the sweep is done; peak
  RSS comes from psutil on each worker's process tree (Celery main process + pool child),
  sampled while the sweep runs.
- **naive**: one process, one document at a time, each field's data key unwrapped by the
  MEK (no cache) and a fresh data key wrapped per field, each document rewritten with
  ``store.replace``.
- **bound**: :func:`rekey_document` over every document of the container, each already
  loaded (scanned and parsed outside the clock), with a keyring that starts cold as a
  worker's does, so each distinct source DEK is unwrapped once: no store, no queue, no
  worker; what one core can do at best with this data.
- **re-keying, keys warm**: the same function over the sample with every DEK already
  unwrapped; the pure CPU cost of re-keying (used to split the fleet's time).
- **store only**: the container's documents scanned and written back unchanged, one process:
  what the store alone costs per document (used to split the fleet's time).

Naive and re-keying with warm keys run on the first ``--sample`` documents (the naive way
over 100k documents would take minutes on its own); the output says so. The bound and store
only run over the whole container on SQLite and over the sample on a remote store.

Data. On SQLite (the default) a container of N documents is seeded once under a local MEK v1
and cached under ``$REENCRYPT_HOME/bench/cache`` keyed by (docs, dek-share, seed); every
measured run works on a fresh copy of that file, so each starts from v1, with v2 created in
a copy of the cached keyring. With ``--store cosmos://...`` the (empty) container is seeded
once and swept once from v1 to v2, so only the largest fleet is measured and a rerun needs a
fresh container. With ``--keys https://...vault...`` the vault's key is used (rotated once
per invocation when the seeded version is still current).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import socket
import sqlite3
import time
import urllib.request
from contextlib import closing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from coordinator import render, sweeps
from coordinator.context import Context, state_dir
from coordinator.launch import WorkerFleet
from coordinator.verify import scan_container
from tracker_reencrypt import embedded_redis
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.documents import partition_key_or_none, rekey_document
from tracker_reencrypt.errors import ConfigError, KeyNotFoundError, SweepError
from tracker_reencrypt.keys import open_key_provider
from tracker_reencrypt.keys.keyring import DEFAULT_UNWRAP_CACHE_ENTRIES, Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.seed import seed_store, seeding_keyring
from tracker_reencrypt.stores import DocumentStore, StoredDocument, open_store
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.state import COMPLETED, FINISHED

WORKER_COUNTS = (1, 2)
DEFAULT_SAMPLE = 2_000
#: The container size the targets are stated for.
TARGET_DOCS = 100_000
SCAN_PAGE = 100
POLL_S = 0.02  # sweep status (SQLite: a one-row read); the fleet's end is seen at most this late
REMOTE_POLL_S = 1.0  # sweep status on a billed store
SAMPLE_RSS_S = 0.5
READY_TIMEOUT_S = 60.0
METRICS_SETTLE_S = 5.0
#: A benchmark sweep that scans nothing for this long is reported as stuck.
STALL_S = 120.0
#: The warm re-keying passes repeat until this much time has been measured.
WARM_MIN_S = 1.0
#: "Bounded" RSS: one worker (main process + pool child) stays under this...
RSS_LIMIT_MB = 300.0
#: ...and grows by at most this much between 10% of the sweep and its end.
RSS_GROWTH_LIMIT_MB = 16.0
#: Memory of one unwrap-cache entry (kid, 256-byte wrapped DEK, DEK, time), measured with tracemalloc.
UNWRAP_ENTRY_KB = 0.6

#: Other processes using more CPU than this (in cores) during a measurement disturb it.
BUSY_CORES = 0.15

MB = 1024 * 1024
#: Columns of the report when it is not printed to a terminal.
WIDE = 170


# -- what is measured ----------------------------------------------------------------------

@dataclass
class Container:
    """The seeded data every run starts from."""

    documents: int
    fields: int
    document_bytes: int
    distinct_source_deks: int
    source_kid: str
    seed_seconds: float = 0.0


@dataclass
class FleetRun:
    workers: int
    seconds: float
    documents: int
    fields: int
    document_bytes: int
    unwraps: int
    wraps: int
    dek_cache_hits: int
    dek_cache_misses: int
    request_units: float
    batch_seconds: float
    batches: int
    key_seconds: float
    peak_rss_mb_per_worker: list[float]
    rss_growth_mb_per_worker: list[float]
    status: str
    failures: int
    worker_cores: float  # CPU the worker processes used, in cores (CPU seconds / wall seconds)
    other_cores: float  # CPU used meanwhile by everything else on the machine, Redis included

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds

    @property
    def docs_per_cpu_s(self) -> float:
        """Documents per CPU-second of the worker processes: what a core does, however busy the machine."""
        return self.documents / max(1e-9, self.worker_cores * self.seconds)

    def as_json(self) -> dict:
        docs = max(1, self.documents)
        lookups = self.dek_cache_hits + self.dek_cache_misses
        slot_s = self.workers * self.seconds
        return {
            **_rate_figures(self),
            "dek_cache_hit_ratio": round(self.dek_cache_hits / lookups, 4) if lookups else None,
            "key_calls_per_doc": round((self.unwraps + self.wraps) / docs, 4),
            "time_shares": {
                "in_batches": round(self.batch_seconds / slot_s, 3),
                "key_provider": round(self.key_seconds / slot_s, 3),
                "outside_batches": round(max(0.0, 1 - self.batch_seconds / slot_s), 3),
            },
        }


@dataclass
class InProcessRun:
    name: str
    documents: int
    fields: int
    document_bytes: int
    seconds: float
    cpu_seconds: float
    unwraps: int
    store_seconds: float = 0.0
    request_units: float = 0.0
    other_cores: float = 0.0  # CPU used meanwhile by other processes on the machine
    span_docs_per_s: list[float] = field(default_factory=list)  # each span's own rate: how much the machine drifted

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds

    @property
    def docs_per_cpu_s(self) -> float:
        return self.documents / max(1e-9, self.cpu_seconds)

    def as_json(self) -> dict:
        return _rate_figures(self)


def _rate_figures(run) -> dict:
    """A run's own fields plus the per-second and per-document figures every run reports."""
    docs = max(1, run.documents)
    return {
        **asdict(run),
        "docs_per_s": round(run.docs_per_s, 1),
        "docs_per_cpu_s": round(run.docs_per_cpu_s, 1),
        "fields_per_s": round(run.fields / run.seconds, 1),
        "bytes_per_s": round(run.document_bytes / run.seconds),
        "unwraps_per_1000_docs": round(1000 * run.unwraps / docs, 2),
        "request_units_per_doc": round(run.request_units / docs, 2),
    }


@dataclass
class References:
    """The in-process runs the fleets are compared with, each combined over its spans."""

    bound: InProcessRun
    warm: InProcessRun
    store_only: InProcessRun
    naive: InProcessRun


@dataclass
class Target:
    name: str
    measured: str
    goal: str
    result: str  # PASS, MISS or n/a
    note: str = ""


@dataclass
class BenchOptions:
    docs: int
    dek_share: int
    seed: int
    sample: int = DEFAULT_SAMPLE
    slices: int = sweeps.DEFAULT_SLICES


# -- the whole benchmark -------------------------------------------------------------------

def run_bench(parent: Context, options: BenchOptions, progress: Console | None) -> dict:
    """Seed (or reuse), measure bound, naive and the fleet at each size; return the report."""
    home = state_dir() / "bench"
    run_dir = home / "last"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    redis_was_running = embedded_redis.is_running(state_dir())
    try:
        bench = _Bench(parent, options, home, run_dir, progress)
        return bench.run()
    finally:
        if not parent.settings.redis_url and not redis_was_running:
            embedded_redis.stop(state_dir())


class _Bench:
    def __init__(self, parent: Context, options: BenchOptions, home: Path, run_dir: Path, progress: Console | None) -> None:
        self.parent, self.options, self.home, self.run_dir, self.progress = parent, options, home, run_dir, progress
        settings = parent.settings
        self.remote_store = bool(settings.store) and not settings.store.startswith("sqlite:")
        self.remote_keys = bool(settings.keys) and not settings.keys.startswith("local:")
        self.notes: list[str] = []
        if settings.store and not self.remote_store:
            self.notes.append(f"the configured SQLite store ({settings.store}) is not touched: the bench seeds its own")
        if settings.keys and not self.remote_keys:
            self.notes.append("the configured local keyring is not touched: the bench keeps its own")

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.print(text, markup=False, highlight=False)

    # -- orchestration -----------------------------------------------------------------------

    def run(self) -> dict:
        options = self.options
        if self.remote_store:
            keys_url = self.parent.settings.keys if self.remote_keys else f"local:{(self.home / 'remote-keyring.json').resolve()}"
            store_url = self.parent.settings.store
            container = self._seed_remote(store_url, keys_url)
        else:
            cache, container = self._seeded_sqlite()
            keys_url = self._run_keyring(cache)
            store_url = None
        provider = open_key_provider(keys_url)
        target_kid = self._target(provider, container.source_kid)
        self.say(f"sweeping {container.source_kid} -> {target_kid}")

        # The in-process references run in spans around the fleets (before W=1, between, after
        # W=2): this machine's speed drifts, and each reference should see it as the fleets did.
        counts = WORKER_COUNTS[-1:] if self.remote_store else WORKER_COUNTS
        work = self._working_store(store_url, "in-process")
        references = _References(work, _load_sample(work, options.sample), provider, target_kid, self.parent.settings,
                                 spans=1 if self.remote_store else len(counts) + 1,
                                 container_documents=options.sample if self.remote_store else container.documents)
        references.measure_span(self.say)
        if self.remote_store:
            self.notes.append(f"store only and naive ran first on the same container: the {options.sample} sample documents "
                              f"were already on {target_kid} when the fleet scanned them (skipped, counted as scanned)")

        fleets: dict[int, FleetRun] = {}
        for workers in counts:
            name = f"fleet-w{workers}"
            ctx = Context(load_settings(store=store_url or self._working_copy(name), keys=keys_url,
                                        redis_url=self.parent.settings.redis_url))
            fleets[workers] = self._fleet(ctx, workers, target_kid, container)
            ctx.store.close()
            self._drop_working_copy(name)
            self.say(f"fleet W={workers}: {fleets[workers].docs_per_s:,.0f} docs/s")
            if not references.done:
                references.measure_span(self.say)
        work.close()
        self._drop_working_copy("in-process")
        refs = references.results()
        if self.remote_store:
            self.notes.append(f"only W={counts[0]} measured: the container was swept once ({container.source_kid} -> "
                              f"{target_kid}); a rerun needs a fresh, empty container")
        return self._report(container, target_kid, provider, refs, fleets)

    # -- data ---------------------------------------------------------------------------------

    def _cache_dir(self) -> Path:
        o = self.options
        name = f"docs{o.docs}-share{o.dek_share}-seed{o.seed}"
        if self.remote_keys:
            name += "-" + hashlib.sha256(self.parent.settings.keys.encode()).hexdigest()[:8]
        return self.home / "cache" / name

    def _seeded_sqlite(self) -> tuple[Path, Container]:
        """The cached seeded container, made on first use (``container.json`` is written last)."""
        cache = self._cache_dir()
        meta = cache / "container.json"
        if meta.exists():
            self.say(f"reusing the seeded container in {cache}")
            _settled_file(cache / "tracker.db")  # a cache from an older layout is migrated once, not in every copy
            return cache, Container(**json.loads(meta.read_text()))
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        if self.remote_keys:
            provider = _existing_key(open_key_provider(self.parent.settings.keys))
        else:
            provider = LocalKeyProvider(cache / "keyring.json")
            provider.init()
        store = SqliteStore(cache / "tracker.db")
        container = self._seed(store, provider)
        store.close()
        _settled_file(cache / "tracker.db")
        meta.write_text(json.dumps(asdict(container)))
        return cache, container

    def _seed_remote(self, store_url: str, keys_url: str) -> Container:
        store = open_store(store_url, partition_key_field=self.parent.settings.partition_key_field)
        if store.count():
            raise ConfigError(f"{store.describe()} is not empty: the bench seeds and sweeps a container once "
                              "(v1 -> v2), so every run needs a fresh, empty container")
        provider = open_key_provider(keys_url)
        if self.remote_keys:
            _existing_key(provider)
        elif not Path(keys_url[len("local:"):]).exists():
            provider.init()
        container = self._seed(store, provider)
        store.close()
        return container

    def _seed(self, store: DocumentStore, provider) -> Container:
        o = self.options
        keyring = seeding_keyring(provider)
        started = time.perf_counter()
        with render.counter_progress(self.progress or Console(quiet=True), "seeding", o.docs, enabled=self.progress is not None) as advance:
            seed_store(store, keyring, o.docs, seed=o.seed, dek_share=o.dek_share, progress=advance)
        seconds = time.perf_counter() - started
        source_kid = keyring.current_kid()
        report = scan_container(store, keyring=None, sizing=True)
        return Container(documents=report.documents, fields=report.fields, document_bytes=report.document_bytes,
                         distinct_source_deks=report.distinct_deks([source_kid]), source_kid=source_kid,
                         seed_seconds=round(seconds, 1))

    def _run_keyring(self, cache: Path) -> str:
        """The keys URL of this invocation: a copy of the cached local keyring, or the vault."""
        if self.remote_keys:
            return self.parent.settings.keys
        copy = self.run_dir / "keyring.json"
        descriptor = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # as secret as the MEK
        with os.fdopen(descriptor, "wb") as handle:
            handle.write((cache / "keyring.json").read_bytes())
        return f"local:{copy.resolve()}"

    def _target(self, provider, source_kid: str) -> str:
        """The version to sweep to: a new one, unless a newer one than the data's exists."""
        if provider.current_kid() == source_kid:
            return provider.rotate().kid
        return provider.current_kid()

    def _working_copy(self, name: str) -> str:
        """A fresh copy of the seeded SQLite file: every run starts from v1."""
        target = self.run_dir / f"{name}.db"
        shutil.copyfile(self._cache_dir() / "tracker.db", target)
        return f"sqlite:///{target.resolve()}"

    def _working_store(self, store_url: str | None, name: str) -> DocumentStore:
        url = store_url or self._working_copy(name)
        return open_store(url, partition_key_field=self.parent.settings.partition_key_field)

    def _drop_working_copy(self, name: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            (self.run_dir / f"{name}.db{suffix}").unlink(missing_ok=True)

    # -- the fleet ----------------------------------------------------------------------------

    def _fleet(self, ctx: Context, workers: int, target_kid: str, container: Container) -> FleetRun:
        ports = [_free_port() for _ in range(workers)]
        log_dir = self.run_dir / f"logs-w{workers}"
        poll_s = REMOTE_POLL_S if self.remote_store else POLL_S
        peak = [0.0] * workers
        at_tenth: list[float | None] = [None] * workers
        with WorkerFleet(ctx, workers, log_dir=log_dir, metrics_ports=ports) as fleet:
            _wait_ready(fleet, log_dir)
            self.say(f"fleet W={workers}: workers ready, sweep starts")
            watch = _CpuWatch([process.pid for process in fleet.processes])
            started = time.perf_counter()
            sweep = sweeps.start(ctx, to=target_kid, sources=[], mode="reencrypt", slices=self.options.slices)
            sampled, scanned, moved_at = 0.0, -1, time.perf_counter()
            while True:
                status = ctx.state.get_sweep(sweep["id"])["status"]
                now = time.perf_counter()
                if status in FINISHED:
                    break
                _check_alive(fleet, log_dir)
                if now - sampled >= SAMPLE_RSS_S:
                    sampled = now
                    before, scanned = scanned, ctx.state.totals(sweep["id"])["documents_scanned"]
                    if scanned != before:
                        moved_at = now
                    elif now - moved_at > STALL_S:
                        raise SweepError(f"benchmark sweep {sweep['id']} made no progress for {STALL_S:.0f}s; "
                                         f"worker logs in {log_dir}")
                    for number, process in enumerate(fleet.processes):
                        rss = _tree_rss_mb(process.pid)
                        peak[number] = max(peak[number], rss)
                        if at_tenth[number] is None and scanned >= container.documents / 10:
                            at_tenth[number] = rss
                time.sleep(poll_s)
            seconds = time.perf_counter() - started
            worker_cores, other_cores = watch.cores()
            for number, process in enumerate(fleet.processes):
                peak[number] = max(peak[number], _tree_rss_mb(process.pid))
            totals = ctx.state.totals(sweep["id"])
            scraped = _scrape_settled(ports, totals["documents_scanned"])
        if status != COMPLETED:
            raise SweepError(f"benchmark sweep {sweep['id']} ended {status} ({totals['failures']} failures); "
                             f"worker logs in {log_dir}")

        def total(name: str, **labels: str) -> float:
            return sum(_metric(samples, name, **labels) for samples in scraped)

        return FleetRun(
            workers=workers, seconds=round(seconds, 3), documents=totals["documents_scanned"],
            fields=totals["fields_reencrypted"], document_bytes=container.document_bytes,
            unwraps=int(total("reencrypt_keyvault_calls_total", operation="unwrap")),
            wraps=int(total("reencrypt_keyvault_calls_total", operation="wrap")),
            dek_cache_hits=int(total("reencrypt_dek_cache_total", result="hit")),
            dek_cache_misses=int(total("reencrypt_dek_cache_total", result="miss")),
            request_units=total("reencrypt_store_request_units_total"),
            batch_seconds=round(total("reencrypt_batch_duration_seconds_sum"), 3),
            batches=int(total("reencrypt_batch_duration_seconds_count")),
            key_seconds=round(total("reencrypt_keyvault_latency_seconds_sum"), 3),
            peak_rss_mb_per_worker=[round(mb, 1) for mb in peak],
            rss_growth_mb_per_worker=[round(p - (t if t is not None else p), 1) for p, t in zip(peak, at_tenth)],
            status=status, failures=totals["failures"], worker_cores=worker_cores, other_cores=other_cores,
        )

    # -- the report ---------------------------------------------------------------------------

    def _report(self, container: Container, target_kid: str, provider, refs: References,
                fleets: dict[int, FleetRun]) -> dict:
        options, settings = self.options, self.parent.settings
        bound, naive, store = refs.bound, refs.naive, refs.store_only
        fleet = fleets[max(fleets)]
        w1 = fleets.get(1)
        cores = os.cpu_count() or 1
        per_core = fleet.docs_per_s / min(fleet.workers, cores)
        distinct_per_1000 = 1000 * container.distinct_source_deks / max(1, container.documents)
        # Re-keying plus the store's own cost, serially, in one process: the best a core could do
        # with no queue, checkpoint or contention at all. The bound leaves the store out.
        rekey_and_store = 1 / (1 / bound.docs_per_s + 1 / store.docs_per_s)
        ratios = {
            "fleet_vs_naive": round(fleet.docs_per_s / naive.docs_per_s, 2),
            "naive_vs_fleet": round(naive.docs_per_s / fleet.docs_per_s, 4),
            "bound_vs_fleet": round(bound.docs_per_s / fleet.docs_per_s, 3),
            "fleet_per_core_vs_bound": round(per_core / bound.docs_per_s, 3),
            "fleet_per_cpu_s_vs_bound": round(fleet.docs_per_cpu_s / bound.docs_per_cpu_s, 3),
            "rekey_and_store_docs_per_s": round(rekey_and_store, 1),
            "rekey_and_store_vs_bound": round(rekey_and_store / bound.docs_per_s, 3),
            "fleet_per_core_vs_rekey_and_store": round(per_core / rekey_and_store, 3),
            "w2_vs_w1": round(fleet.docs_per_s / w1.docs_per_s, 3) if w1 and fleet is not w1 else None,
            # One worker on one core: the bound plus the queue, checkpoint and store, nothing else.
            "w1_per_core_vs_bound": round(w1.docs_per_s / bound.docs_per_s, 3) if w1 and fleet is not w1 else None,
        }
        # Where the largest fleet's worker time went. Batch and key provider time are measured
        # by the workers themselves; re-keying and store time are estimated from the in-process
        # runs (same functions, same data, one process, no contention). Re-keying with warm keys,
        # on the sample: the workers' unwraps are already in the key provider's share.
        slot_s = fleet.workers * fleet.seconds
        rekey_s = fleet.documents / refs.warm.docs_per_s
        store_s = fleet.documents / store.docs_per_s
        shares = {
            "worker_seconds": round(slot_s, 2),
            "in_batches": round(fleet.batch_seconds / slot_s, 3),
            "key_provider": round(fleet.key_seconds / slot_s, 3),
            "rekey_cpu_estimate": round(rekey_s / slot_s, 3),
            "store_estimate": round(store_s / slot_s, 3),
            "batch_rest": round((fleet.batch_seconds - fleet.key_seconds - rekey_s - store_s) / slot_s, 3),
            "outside_batches": round(max(0.0, slot_s - fleet.batch_seconds) / slot_s, 3),
            "redis": None,
        }
        runs = {"fleet": [fleets[w].as_json() for w in sorted(fleets)], "naive": naive.as_json(), "bound": bound.as_json(),
                "rekey_warm": refs.warm.as_json(), "store_only": store.as_json()}
        fleet_json = runs["fleet"][-1]
        report = {
            "docs": container.documents,
            "dek_share": options.dek_share,
            "seed": options.seed,
            "sample": naive.documents,
            "source_kid": container.source_kid,
            "target_kid": target_kid,
            "store": "SQLite (a fresh copy of the seeded file per run)" if not self.remote_store else settings.store,
            "keys": provider.describe() if self.remote_keys else "local JWKS keyring (RSA-2048, RSA-OAEP-256)",
            "machine": {"cpus": cores, "python": platform.python_version(), "platform": platform.platform(),
                        "processor": _processor()},
            "worker_settings": {"batch_documents": settings.batch_documents, "batch_seconds": settings.batch_seconds,
                                "page_size": settings.page_size, "slices": options.slices,
                                "dek_max_uses": settings.dek_max_uses, "redis": "REDIS_URL" if settings.redis_url else "embedded"},
            "container": asdict(container),
            "fleet_workers": fleet.workers,
            "fleet_docs_per_s": fleet_json["docs_per_s"],
            "w1_docs_per_s": round(w1.docs_per_s, 1) if w1 else None,
            "naive_docs_per_s": runs["naive"]["docs_per_s"],
            "bound_docs_per_s": runs["bound"]["docs_per_s"],
            "rekey_warm_docs_per_s": runs["rekey_warm"]["docs_per_s"],
            "fleet_fields_per_s": fleet_json["fields_per_s"],
            "fleet_bytes_per_s": fleet_json["bytes_per_s"],
            "unwraps": fleet.unwraps,
            "w1_unwraps": w1.unwraps if w1 else None,
            "unwraps_per_1000_docs": fleet_json["unwraps_per_1000_docs"],
            "distinct_source_deks": container.distinct_source_deks,
            "distinct_source_deks_per_1000_docs": round(distinct_per_1000, 2),
            "dek_cache_hit_ratio": fleet_json["dek_cache_hit_ratio"],
            "peak_rss_mb_per_worker": max(fleet.peak_rss_mb_per_worker),
            "rss_growth_mb_per_worker": max(fleet.rss_growth_mb_per_worker),
            "request_units_per_doc": fleet_json["request_units_per_doc"],
            "key_calls_per_doc": fleet_json["key_calls_per_doc"],
            **ratios,
            "time_shares": shares,
            "runs": runs,
            "notes": self.notes + _busy_notes(fleets, refs)
                     + _standing_notes(self.remote_store, naive.documents, bound.documents, container.documents),
        }
        report["targets"] = [asdict(t) for t in _targets(report, fleets, refs, cores)]
        return report


def _settled_file(path: Path) -> None:
    """The SQLite file in the current layout with its WAL folded in: the file alone is the copy."""
    SqliteStore(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _existing_key(provider):
    """The provider, after creating its MEK if the vault has no version of it yet."""
    try:
        if provider.versions():
            return provider
    except KeyNotFoundError:
        pass
    provider.init()
    return provider


# -- in-process measurements ----------------------------------------------------------------

def _load_sample(store: DocumentStore, count: int) -> list[tuple[dict, str, int]]:
    """The first ``count`` documents in scan order: (body, partition key, JSON size). A document
    without a partition key (None) is re-keyed as the sweep does: one failure, nothing moved."""
    return [(document.body, partition_key_or_none(store, document.body), _json_bytes([document.body]))
            for page in _ScanCursor(store).pages(count) for document in page]


def _rekey_pass(documents: list[tuple[dict, str, int]], keyring: Keyring, target_kid: str) -> int:
    """``rekey_document`` over documents in memory; the fields it moved."""
    moved = 0
    for body, partition_key, _ in documents:
        moved += rekey_document(body, partition_key, target_kid=target_kid, keyring=keyring).count("reencrypted")
    return moved


def _bound(store: DocumentStore, cursor: "_ScanCursor", keyring: Keyring, target_kid: str, count: int) -> InProcessRun:
    """Re-key the next ``count`` documents in scan order, a page at a time, timing only
    ``rekey_document``: scanning and parsing stay outside the clock. The keyring starts cold
    and is kept across spans, so each distinct DEK is unwrapped once, as a worker's cache does."""
    documents = fields = size = 0
    elapsed = cpu_s = 0.0
    unwraps_before = keyring.stats.provider_unwraps
    for page in cursor.pages(count):
        loaded = [(document.body, partition_key_or_none(store, document.body), 0) for document in page]
        started, cpu = time.perf_counter(), time.process_time()
        fields += _rekey_pass(loaded, keyring, target_kid)
        elapsed, cpu_s = elapsed + time.perf_counter() - started, cpu_s + time.process_time() - cpu
        documents += len(page)
        size += _json_bytes([document.body for document in page])
    return InProcessRun(
        name="bound", documents=documents, fields=fields, document_bytes=size, seconds=round(elapsed, 4),
        cpu_seconds=round(cpu_s, 4), unwraps=keyring.stats.provider_unwraps - unwraps_before,
    )


def _rekey_warm(sample: list[tuple[dict, str, int]], keyring: Keyring, target_kid: str) -> InProcessRun:
    """``rekey_document`` over the sample with every DEK already unwrapped: re-keying's CPU alone."""
    fields = _rekey_pass(sample, keyring, target_kid)  # untimed: unwraps each DEK of the sample
    unwraps_before = keyring.stats.provider_unwraps
    passes, started, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        _rekey_pass(sample, keyring, target_kid)
        passes += 1
        elapsed = time.perf_counter() - started
        if elapsed >= WARM_MIN_S:
            break
    return InProcessRun(
        name="rekey_warm", documents=len(sample) * passes, fields=fields * passes,
        document_bytes=sum(size for _, _, size in sample) * passes, seconds=round(elapsed, 4),
        cpu_seconds=round(time.process_time() - cpu, 4), unwraps=keyring.stats.provider_unwraps - unwraps_before,
    )


class _ScanCursor:
    """Where a reference run stopped in scan order, so that its next span goes on from there."""

    def __init__(self, store: DocumentStore) -> None:
        self.store = store
        self.feed_range = store.feed_ranges(1)[0]
        self.continuation: str | None = None
        self.exhausted = False

    def pages(self, count: int) -> Iterator[list[StoredDocument]]:
        """The next ``count`` documents (fewer at the container's end), a page at a time."""
        taken = 0
        while taken < count and not self.exhausted:
            page = self.store.scan(self.feed_range, self.continuation, min(SCAN_PAGE, count - taken))
            self.continuation, self.exhausted = page.continuation, page.continuation is None
            taken += len(page.documents)
            yield page.documents


def _store_only(store: DocumentStore, cursor: _ScanCursor, count: int) -> InProcessRun:
    """Scan the next ``count`` documents and write them back unchanged, a page at a time with
    conditional writes as the sweep does (``replace_many``): the store's own cost. Only the
    documents' sizes are counted outside the clock."""
    documents = size = 0
    elapsed = cpu_s = 0.0
    units_before = store.cost.request_units
    pages = cursor.pages(count)
    while True:
        started, cpu = time.perf_counter(), time.process_time()
        page = next(pages, None)
        if page is not None:
            store.replace_many([(document.body, document.etag) for document in page])
        elapsed, cpu_s = elapsed + time.perf_counter() - started, cpu_s + time.process_time() - cpu
        if page is None:
            break
        documents += len(page)
        size += _json_bytes([document.body for document in page])
    return InProcessRun(
        name="store_only", documents=documents, fields=0, document_bytes=size, seconds=round(elapsed, 4),
        cpu_seconds=round(cpu_s, 4), unwraps=0, store_seconds=round(elapsed, 4),
        request_units=store.cost.request_units - units_before,
    )


def _naive(store: DocumentStore, cursor: _ScanCursor, keyring: Keyring, target_kid: str, count: int) -> InProcessRun:
    """One document at a time: unwrap per field (no cache), a fresh DEK per field, replace each."""
    fields = 0
    store_s = 0.0
    seen: list[dict] = []
    units_before, unwraps_before = store.cost.request_units, keyring.stats.provider_unwraps
    started, cpu = time.perf_counter(), time.process_time()
    pages = cursor.pages(count)
    while True:
        clock = time.perf_counter()
        page = next(pages, None)
        store_s += time.perf_counter() - clock
        if page is None:
            break
        for document in page:
            plan = rekey_document(document.body, partition_key_or_none(store, document.body), target_kid=target_kid,
                                  keyring=keyring)
            if plan.new_body is not None:
                clock = time.perf_counter()
                store.replace(plan.new_body, document.etag)
                store_s += time.perf_counter() - clock
            fields += plan.count("reencrypted")
            seen.append(document.body)
    elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return InProcessRun(
        name="naive", documents=len(seen), fields=fields, document_bytes=_json_bytes(seen), seconds=round(elapsed, 4),
        cpu_seconds=round(cpu_s, 4), unwraps=keyring.stats.provider_unwraps - unwraps_before,
        store_seconds=round(store_s, 4), request_units=store.cost.request_units - units_before,
    )


def _json_bytes(bodies: list[dict]) -> int:
    """Documents' size as the store holds them (compact JSON); computed outside the timed loops."""
    return sum(len(json.dumps(body, separators=(",", ":"), ensure_ascii=False)) for body in bodies)


def _combined(parts: list[InProcessRun]) -> InProcessRun:
    """One reference from its spans: totals over all of them, so the rate is their time-weighted mean."""
    def total(name: str) -> float:
        return sum(getattr(part, name) for part in parts)

    seconds = total("seconds")
    return InProcessRun(
        name=parts[0].name, documents=int(total("documents")), fields=int(total("fields")),
        document_bytes=int(total("document_bytes")), seconds=round(seconds, 4), cpu_seconds=round(total("cpu_seconds"), 4),
        unwraps=int(total("unwraps")), store_seconds=round(total("store_seconds"), 4), request_units=total("request_units"),
        other_cores=round(sum(part.other_cores * part.seconds for part in parts) / max(1e-9, seconds), 2),
        span_docs_per_s=[round(part.docs_per_s, 1) for part in parts],
    )


class _References:
    """The in-process runs, each measured in ``spans`` parts spread around the fleets.

    The bound and store only each take the next part of ``container_documents`` (the whole
    container, on SQLite) in each span; warm re-keying repeats over the whole sample in every
    span; naive takes the next part of the sample. Each has its own cursor, so every document
    is covered once by each. In a span the bound reads before store only and naive write, so it
    meets v1 throughout (store only writes bodies back unchanged).
    """

    def __init__(self, store: DocumentStore, sample: list[tuple[dict, str, int]], provider, target_kid: str,
                 settings, spans: int, container_documents: int) -> None:
        self.store, self.sample, self.target_kid, self.spans = store, sample, target_kid, spans
        self.container_documents = container_documents

        def worker_like() -> Keyring:
            return Keyring(provider, dek_max_uses=settings.dek_max_uses, dek_max_age_s=settings.dek_max_age_s)

        self.cold, self.warm = worker_like(), worker_like()
        self.uncached = Keyring(provider, unwrap_cache_entries=0, dek_max_uses=1)
        self.bound_cursor, self.store_cursor, self.naive_cursor = _ScanCursor(store), _ScanCursor(store), _ScanCursor(store)
        self.parts: dict[str, list[InProcessRun]] = {"bound": [], "rekey_warm": [], "store_only": [], "naive": []}

    @property
    def done(self) -> bool:
        return len(self.parts["bound"]) >= self.spans

    def _share(self, total: int, span: int) -> int:
        return total // self.spans + (total % self.spans if span == self.spans - 1 else 0)

    def measure_span(self, say) -> None:
        span = len(self.parts["bound"])
        share = self._share(len(self.sample), span)
        container_share = self._share(self.container_documents, span)
        for name, measure in (("bound", lambda: _bound(self.store, self.bound_cursor, self.cold, self.target_kid, container_share)),
                              ("rekey_warm", lambda: _rekey_warm(self.sample, self.warm, self.target_kid)),
                              ("store_only", lambda: _store_only(self.store, self.store_cursor, container_share)),
                              ("naive", lambda: _naive(self.store, self.naive_cursor, self.uncached, self.target_kid, share))):
            watch = _CpuWatch([])
            run = measure()
            run.other_cores = watch.cores()[1]
            self.parts[name].append(run)
            say(f"{name.replace('_', ' ')} (span {span + 1} of {self.spans}): {run.docs_per_s:,.0f} docs/s "
                f"on {run.documents:,} documents")

    def results(self) -> References:
        return References(*(_combined(self.parts[name]) for name in ("bound", "rekey_warm", "store_only", "naive")))


# -- worker processes -----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(fleet: WorkerFleet, log_dir: Path) -> None:
    """Until every worker has logged 'ready.' (connected to the broker, consuming)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    logs = [log_dir / f"worker-{number}.log" for number in range(len(fleet.processes))]
    while not all(log.exists() and " ready." in log.read_text(errors="replace") for log in logs):
        _check_alive(fleet, log_dir)
        if time.monotonic() > deadline:
            raise ConfigError(f"bench workers not ready after {READY_TIMEOUT_S:.0f}s: see {log_dir}")
        time.sleep(0.1)


def _check_alive(fleet: WorkerFleet, log_dir: Path) -> None:
    for number, process in enumerate(fleet.processes):
        if process.poll() is not None:
            tail = (log_dir / f"worker-{number}.log").read_text(errors="replace")[-800:]
            raise SweepError(f"bench worker {number} exited with code {process.returncode}; log tail:\n{tail}")


def _tree_rss_mb(pid: int) -> float:
    """RSS of a worker's main process and its pool children, in MiB (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total / MB


def _cpu_s(process: psutil.Process, tree: bool) -> float:
    """User + system CPU seconds of a process (and its children), 0 for what is gone."""
    total = 0.0
    try:
        processes = [process, *(process.children(recursive=True) if tree else [])]
    except psutil.Error:
        return total
    for member in processes:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


class _CpuWatch:
    """CPU used during one measurement: by the watched worker trees, and by everything else.

    This machine may be shared (other test runs, other services): the CPU that other
    processes took while we measured says how far to trust a figure.
    """

    def __init__(self, pids: list[int]) -> None:
        self._roots = [psutil.Process(pid) for pid in pids]
        self._me = psutil.Process()
        self._started = time.perf_counter()
        self._machine, self._workers, self._bench = _machine_busy_s(), self._workers_s(), _cpu_s(self._me, tree=False)

    def _workers_s(self) -> float:
        return sum(_cpu_s(root, tree=True) for root in self._roots)

    def cores(self) -> tuple[float, float]:
        """(cores the workers used, cores every other process used), averaged since start."""
        wall = max(1e-9, time.perf_counter() - self._started)
        workers = self._workers_s() - self._workers
        bench = _cpu_s(self._me, tree=False) - self._bench
        machine = _machine_busy_s() - self._machine
        return round(workers / wall, 2), round(max(0.0, machine - workers - bench) / wall, 2)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample_name, sample_labels), value in samples.items()
               if sample_name == name and wanted <= set(sample_labels))


def _scrape_settled(ports: list[int], documents: int) -> list[Samples]:
    """Every worker's metrics, once they account for every document the sweep counted.

    A worker publishes its keyring totals just after committing its last batch, which can
    be a moment after another worker marked the sweep completed.
    """
    deadline = time.monotonic() + METRICS_SETTLE_S
    while True:
        scraped = [_scrape(port) for port in ports]
        seen = sum(_metric(samples, "reencrypt_documents_scanned_total") for samples in scraped)
        if seen >= documents or time.monotonic() > deadline:
            return scraped
        time.sleep(0.1)


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- targets and notes ----------------------------------------------------------------------

def _cut(ratio: float, places: int) -> str:
    """``ratio`` cut to ``places`` decimals, never rounded up past a target's line."""
    return f"{math.floor(ratio * 10**places) / 10**places:.{places}f}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _targets(report: dict, fleets: dict[int, FleetRun], refs: References, cores: int) -> list[Target]:
    fleet, bound, warm = fleets[max(fleets)], refs.bound, refs.warm
    w1 = fleets.get(1) if fleets.get(1) is not fleet else None
    # Verdicts on the exact ratios, shown cut (not rounded) to their places: 0.4996 is "0.499 MISS".
    vs_naive = fleet.docs_per_s / refs.naive.docs_per_s
    per_core = fleet.docs_per_s / min(fleet.workers, cores) / bound.docs_per_s
    scale = "" if report["docs"] >= TARGET_DOCS else f"target is for {TARGET_DOCS:,} docs; this run has {report['docs']:,}"
    targets = [
        Target(f"fleet W={fleet.workers} >= 10x naive", f"{_cut(vs_naive, 1)}x", ">= 10x", _verdict(vs_naive >= 10), scale),
        Target(f"fleet per core >= 1/2 in-process bound (W={fleet.workers})", _cut(per_core, 3),
               ">= 0.50", _verdict(per_core >= 0.5),
               f"{report['fleet_docs_per_s'] / min(fleet.workers, cores):,.0f} docs/s per core vs bound {bound.docs_per_s:,.0f}; "
               f"per CPU-second used: {fleet.docs_per_cpu_s:,.0f} vs {bound.docs_per_cpu_s:,.0f} "
               f"({report['fleet_per_cpu_s_vs_bound']:.2f}); vs re-keying with every key already unwrapped "
               f"{warm.docs_per_s:,.0f}: {report['fleet_docs_per_s'] / min(fleet.workers, cores) / warm.docs_per_s:.2f}; "
               f"re-keying plus "
               f"the store alone, no queue: {report['rekey_and_store_docs_per_s']:,.0f} docs/s "
               f"({report['rekey_and_store_vs_bound']:.2f} of the bound), of which the fleet reaches "
               f"{report['fleet_per_core_vs_rekey_and_store']:.2f}"),
    ]
    if w1 is not None:
        w1_per_core = w1.docs_per_s / bound.docs_per_s
        targets.append(Target(
            "fleet per core >= 1/2 in-process bound (W=1)", _cut(w1_per_core, 3), ">= 0.50", _verdict(w1_per_core >= 0.5),
            "one worker process on one core: the bound's work plus the queue, checkpoint and store; at W=2 each "
            "process also unwraps every DEK it meets (one cache each) and the idle tail of the last batches counts"))
    targets += [
        Target("W=2 >= 1.7x W=1", f"{_cut(fleet.docs_per_s / w1.docs_per_s, 2)}x" if w1 else "not measured", ">= 1.7x",
               _verdict(fleet.docs_per_s / w1.docs_per_s >= 1.7 if w1 else None),
               f"{cores} CPUs; worker processes used " + ", ".join(
                   f"{run.worker_cores:.2f} cores at W={w} (others {run.other_cores:.2f})" for w, run in sorted(fleets.items()))),
    ]
    distinct = report["distinct_source_deks_per_1000_docs"]
    for run in ([w1] if w1 else []) + [fleet]:
        per_1000 = 1000 * run.unwraps / max(1, run.documents)
        note = "one DEK cache" if run.workers == 1 else (
            f"{run.workers} processes, one cache each: the guarantee is <= {run.workers} x distinct "
            f"({run.workers * distinct:.1f}), {_verdict(per_1000 <= run.workers * distinct + 1e-9)}")
        targets.append(Target(f"unwraps per 1,000 docs <= distinct DEKs (W={run.workers})", f"{per_1000:.1f}",
                              f"<= {distinct:.1f}", _verdict(per_1000 <= distinct + 1e-9), note))
    peak, growth = max(fleet.peak_rss_mb_per_worker), max(fleet.rss_growth_mb_per_worker)
    targets.append(Target(
        "peak RSS per worker bounded, independent of container size", f"{peak:.0f} MiB, +{growth:.1f} MiB after 10%",
        f"<= {RSS_LIMIT_MB:.0f} MiB, growth <= {RSS_GROWTH_LIMIT_MB:.0f} MiB",
        _verdict(peak <= RSS_LIMIT_MB and growth <= RSS_GROWTH_LIMIT_MB),
        f"growth: peak minus the RSS when 10% of documents were scanned; the unwrap cache adds ~{UNWRAP_ENTRY_KB} KB per "
        f"distinct DEK a worker meets, up to {DEFAULT_UNWRAP_CACHE_ENTRIES:,} entries "
        f"(~{DEFAULT_UNWRAP_CACHE_ENTRIES * UNWRAP_ENTRY_KB / 1024:.0f} MiB), so with a DEK per document it grows until that cap",
    ))
    return targets


def _busy_notes(fleets: dict[int, FleetRun], refs: References) -> list[str]:
    """A warning for every measurement during which other processes took real CPU."""
    phases = [(f"fleet W={w}", run.other_cores) for w, run in sorted(fleets.items())]
    phases += [(label, run.other_cores) for label, run in (("naive", refs.naive), ("bound", refs.bound),
                                                            ("warm re-keying", refs.warm), ("store only", refs.store_only))]
    busy = [f"{name} {cores:.2f}" for name, cores in phases if cores > BUSY_CORES]
    if not busy:
        return []
    return [f"WARNING: other processes used CPU while measuring (cores: {', '.join(busy)}); on a shared machine "
            "these figures are disturbed: rerun when it is idle"]


def _standing_notes(remote_store: bool, sample: int, container_documents: int, documents: int) -> list[str]:
    notes = [
        f"naive and warm re-keying are measured on a sample: the first {sample:,} of {documents:,} documents in scan "
        f"order; the bound and store only on the first {container_documents:,}; the fleet sweeps all of them",
        "on SQLite the references run in spans before, between and after the fleets (the bound and store only each on "
        "the next third of the container, naive on the next third of the sample) and each rate is the total over its "
        "spans: the machine's speed drifts, and the references then see it as the fleets did",
        "naive: one process, one document at a time, an MEK unwrap for every field (no cache), a fresh data key per "
        "field, store.replace per document",
        "bound: rekey_document over the documents already loaded (scanning and parsing untimed), with a keyring "
        "that starts cold as a worker's does: each distinct source DEK unwrapped once, the least any sweep of this "
        "data can do; rekey_warm: the same over the sample with every DEK already unwrapped, re-keying's CPU alone",
        "fleet time runs from 'sweep start' (plan, records, enqueue) until the sweep record is completed; workers "
        "are started and ready before the clock starts",
        "peak RSS is the sum over each worker's process tree (Celery main process + pool child)",
        "store only: the documents scanned and written back unchanged a page at a time with conditional writes "
        "(replace_many, as the sweep writes), one process: the store's own cost per document",
        "time shares: in_batches and key_provider are measured (the workers' histograms); rekey_cpu_estimate = "
        "documents / warm re-keying rate (on the sample) and store_estimate = documents / store-only rate (single-process costs); "
        "batch_rest = what is left of batch time (contention: SQLite write-lock waits, CPU shared with Redis and "
        "the Celery main processes; checkpoint commits); outside_batches = Celery/Redis dispatch, slice claims and "
        "idle tail; Redis alone is not measurable here",
    ]
    if not remote_store:
        notes.append("request units on SQLite are the store's estimate (1 KB read ~1 RU, 1 KB replace ~10 RU), not billing")
    return notes


# -- output -----------------------------------------------------------------------------------

def render_report(console: Console, report: dict) -> None:
    """The human form: what was measured, the throughput table, time shares, targets, notes."""
    if not console.is_terminal:  # piped into a file: do not fold the tables at 80 columns
        console = Console(file=console.file, width=WIDE, highlight=False)

    def line(text: str) -> None:
        console.print(text, soft_wrap=True)

    fleets = {run["workers"]: run for run in report["runs"]["fleet"]}
    fleet_rate = report["fleet_docs_per_s"]
    container, machine, ws = report["container"], report["machine"], report["worker_settings"]
    line(f"[bold]reencrypt bench[/]: {report['docs']:,} documents, {container['fields']:,} encrypted fields, "
         f"{container['document_bytes'] / MB:,.1f} MiB of documents, {report['distinct_source_deks']:,} distinct source DEKs "
         f"(--dek-share {report['dek_share']}); {report['source_kid']} -> {report['target_kid']}")
    line(f"machine: {machine['cpus']} CPUs ({machine['processor']}), Python {machine['python']}")
    line(f"store: {report['store']}; keys: {report['keys']}; Redis: {ws['redis']}")
    line(f"workers: batch {ws['batch_documents']} documents / {ws['batch_seconds']:g} s, page {ws['page_size']}, "
         f"{ws['slices']} slices, DEK reuse {ws['dek_max_uses']} fields")

    table = Table("run", "docs", "s", "docs/s", "fields/s", "MiB/s", "unwraps/1k docs", "DEK cache hits",
                  "peak RSS MiB/worker", "RU/doc", "worker cores", "other cores", "rate/fleet", title="throughput")
    for workers in sorted(fleets, reverse=True):
        run = fleets[workers]
        table.add_row(f"fleet W={workers}", f"{run['documents']:,}", f"{run['seconds']:.1f}", f"{run['docs_per_s']:,.0f}",
                      f"{run['fields_per_s']:,.0f}", f"{run['bytes_per_s'] / MB:,.2f}", f"{run['unwraps_per_1000_docs']:.1f}",
                      _percent(run["dek_cache_hit_ratio"]), " / ".join(f"{mb:.0f}" for mb in run["peak_rss_mb_per_worker"]),
                      f"{run['request_units_per_doc']:.1f}", f"{run['worker_cores']:.2f}", f"{run['other_cores']:.2f}",
                      f"{run['docs_per_s'] / fleet_rate:.2f}")
    rows = (("naive (sample)", "naive", "none"), ("bound", "bound", "cold start"),
            ("re-keying, keys warm (sample)", "rekey_warm", "warm"), ("store only", "store_only", "-"))
    for label, name, cache in rows:
        run = report["runs"][name]
        table.add_row(label, f"{run['documents']:,}", f"{run['seconds']:.2f}", f"{run['docs_per_s']:,.0f}",
                      f"{run['fields_per_s']:,.0f}", f"{run['bytes_per_s'] / MB:,.2f}", f"{run['unwraps_per_1000_docs']:.1f}",
                      cache, "-", f"{run['request_units_per_doc']:.1f}" if name in ("naive", "store_only") else "-", "1 (in process)",
                      f"{run['other_cores']:.2f}", f"{run['docs_per_s'] / fleet_rate:.3f}")
    console.print(table)
    spans = {name: report["runs"][name]["span_docs_per_s"] for name in ("bound", "rekey_warm", "store_only", "naive")}
    if len(spans["bound"]) > 1:
        line(f"the references ran in {len(spans['bound'])} spans around the fleets (before W=1, between, after W=2), "
             "docs/s: " + "; ".join(f"{name.replace('_', ' ')} " + " / ".join(f"{rate:,.0f}" for rate in rates)
                                   for name, rates in spans.items()))
    line(f"bound: {report['runs']['bound']['unwraps']:,} unwraps (each distinct source DEK once); re-keying with every key "
         f"already unwrapped: {report['rekey_warm_docs_per_s']:,.0f} docs/s")
    line(f"key provider calls per document (fleet W={report['fleet_workers']}): {report['key_calls_per_doc']:.4f} "
         f"({report['unwraps']:,} unwraps, DEK cache hit ratio {_percent(report['dek_cache_hit_ratio'])}); "
         f"store request units per document: {report['request_units_per_doc']:.2f}")
    line(f"fleet W={report['fleet_workers']}: {report['fleet_vs_naive']:.1f}x naive; per core "
         f"{report['fleet_per_core_vs_bound']:.2f}x the in-process bound ({report['fleet_per_core_vs_rekey_and_store']:.2f}x "
         "re-keying plus the store alone)"
         + (f"; {report['w2_vs_w1']:.2f}x W=1, which is {report['w1_per_core_vs_bound']:.2f}x the bound per core"
            if report["w2_vs_w1"] else ""))

    s = report["time_shares"]
    line(f"where the W={report['fleet_workers']} fleet's {s['worker_seconds']:.1f} worker-seconds went: "
         f"in batches {_percent(s['in_batches'])} = key provider {_percent(s['key_provider'])} "
         f"+ re-keying CPU ~{_percent(s['rekey_cpu_estimate'])} (est. from warm re-keying) "
         f"+ store ~{_percent(s['store_estimate'])} (est. from store only) + "
         + (f"rest {_percent(s['batch_rest'])}; " if s["batch_rest"] >= 0 else
            f"rest ~0 (the single-process estimates overshoot by {_percent(-s['batch_rest'])}); ")
         + f"outside batches (Celery and Redis dispatch, slice claims, idle) {_percent(s['outside_batches'])}; Redis alone: not measurable")

    targets = Table("target", "measured", "goal", "result", "note", title="targets (measured, not asserted)")
    for target in report["targets"]:
        colour = {"PASS": "green", "MISS": "red"}.get(target["result"], "yellow")
        targets.add_row(target["name"], target["measured"], target["goal"], f"[{colour}]{target['result']}[/]", target["note"])
    console.print(targets)
    for note in report["notes"]:
        console.print(f"- {note}", markup=False, highlight=False, soft_wrap=True)


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.1f}%"
