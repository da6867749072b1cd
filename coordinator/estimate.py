"""How long a sweep will take under its budgets, before it starts (``sweep start --dry-run``).

The sweep is bound by the slowest of: its document rate limit, its Key Vault calls (one unwrap
per distinct source DEK and worker process), and the request-unit budget (a read and, for
documents with fields to move, a rewrite). Key Vault calls go no faster than the least of the
budget, the vault's latency over the calls a worker process keeps in flight
(REENCRYPT_UNWRAP_CONCURRENCY / latency) and, where no budget is set, each process's own ceiling
(REENCRYPT_UNWRAP_RATE); the latter two are per process, and how many processes the fleet runs
is not known before it runs, so the estimate assumes one and says so. Without any of these the
bound is the fleet's own speed, which only a running sweep can measure (``sweep status``).

:func:`estimate` is arithmetic; :func:`unwrap_pace` is the one part that calls out: it times a
few unwraps of the container's own data keys to learn the vault's latency.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from coordinator.context import Context
from coordinator.verify import scan_ranges
from tracker_reencrypt.documents import data_keys_to_unwrap, partition_key_or_none
from tracker_reencrypt.errors import ReencryptError
from tracker_reencrypt.keys.keyring import Keyring, WrappedKey
from tracker_reencrypt.pacing.limits import describe_limits
from tracker_reencrypt.stores import estimated_request_units

#: Unwraps timed to learn the vault's latency, after a first one that is left out (it also opens
#: the connection and reads the key version): six real vault calls per dry run.
LATENCY_SAMPLES = 5
SAMPLE_PAGE = 100
KEY_VAULT = "Key Vault"


@dataclass(frozen=True)
class UnwrapPace:
    """What bounds one worker process's unwraps against a remote vault, besides a fleet budget."""

    latency_s: float | None  # measured per unwrap (None: no data key to time)
    pool: int  # REENCRYPT_UNWRAP_CONCURRENCY: unwraps one process keeps in flight
    process_rate: float  # REENCRYPT_UNWRAP_RATE: one process's ceiling where no budget is set

    def bounds(self, processes: int, budgeted: bool) -> dict[str, float]:
        """Unwraps/s ``processes`` processes can make, by what bounds them."""
        found = {}
        if self.latency_s:
            found[f"{KEY_VAULT} latency"] = processes * self.pool / self.latency_s
        if not budgeted:
            found["the per-process unwrap ceiling"] = processes * self.process_rate
        return found

    def describe(self, processes: int, budgeted: bool) -> str:
        latency = self.latency_s
        parts = [
            f"{self.pool} unwraps in flight at {1000 * latency:.1f} ms measured ({self.pool / latency:,.0f}/s)"
            if latency
            else "vault latency not measured"
        ]
        if not budgeted:
            parts.append(f"ceiling {self.process_rate:g}/s (REENCRYPT_UNWRAP_RATE)")
        assumed = "one process assumed" if processes == 1 else f"{processes} processes assumed"
        return f"per worker process: {', '.join(parts)}; {assumed}, the fleet's size is not known here"


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    bound_by: str
    request_units: float
    kv_ops: int
    #: Key Vault calls/s assumed (the least of the budget and the pace's bounds); None: unbounded.
    kv_ops_per_s: float | None = None
    pace: UnwrapPace | None = None
    worker_processes: int = 1

    def text(self, limits: dict) -> str:
        given = describe_limits(limits)
        budgeted = bool(limits.get("kv_ops_per_s"))
        pace = f" ({self.pace.describe(self.worker_processes, budgeted)})" if self.pace is not None else ""
        if self.seconds is None:
            return (
                f"~{self.request_units:,.0f} RU and ~{self.kv_ops:,} Key Vault calls; "
                "no budget given, so the fleet's speed bounds it"
            )
        unwraps = f"; Key Vault calls at most {self.kv_ops_per_s:,.0f}/s" if self.kv_ops_per_s else ""
        if not given:
            return (
                f"no budget given: ~{_duration(self.seconds)} for ~{self.kv_ops:,} Key Vault calls, bound by "
                f"{self.bound_by}{unwraps}{pace}; more worker processes divide it"
            )
        return f"at {given}: ~{_duration(self.seconds)}, bound by {self.bound_by}{unwraps}{pace}"

    def as_json(self, limits: dict) -> dict:
        return {
            "seconds": self.seconds,
            "bound_by": self.bound_by,
            "request_units": round(self.request_units),
            "kv_ops": self.kv_ops,
            "kv_ops_per_s": round(self.kv_ops_per_s, 1) if self.kv_ops_per_s else None,
            "vault_latency_ms": round(1000 * self.pace.latency_s, 2) if self.pace and self.pace.latency_s else None,
            "unwrap_concurrency": self.pace.pool if self.pace else None,
            "worker_processes": self.worker_processes,
            "text": self.text(limits),
        }


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} m" if hours else (f"{minutes} m" if minutes else f"{seconds:.0f} s")


def estimate(
    *,
    documents: int,
    documents_to_write: int,
    document_bytes: int,
    distinct_source_deks: int,
    limits: dict,
    worker_processes: int = 1,
    pace: UnwrapPace | None = None,
) -> Estimate:
    """``pace``: a remote vault's (None for a local keyring, whose unwraps are the fleet's CPU)."""
    average = document_bytes / max(1, documents)
    request_units = documents * estimated_request_units(
        average, write=False
    ) + documents_to_write * estimated_request_units(average, write=True)
    processes = max(1, worker_processes)
    kv_ops = distinct_source_deks * processes
    kv_bounds = pace.bounds(processes, budgeted=bool(limits.get("kv_ops_per_s"))) if pace is not None else {}
    if limits.get("kv_ops_per_s"):
        kv_bounds[KEY_VAULT] = limits["kv_ops_per_s"]
    candidates = {}
    if limits.get("rate"):
        candidates["the document rate limit"] = documents / limits["rate"]
    kv_rate = None
    if kv_bounds:
        kv_bound = min(kv_bounds, key=lambda name: kv_bounds[name])
        kv_rate = kv_bounds[kv_bound]
        candidates[kv_bound] = kv_ops / kv_rate
    if limits.get("ru_per_s"):
        candidates["store request units"] = request_units / limits["ru_per_s"]
    if not candidates:
        return Estimate(None, "the fleet", request_units, kv_ops, None, pace, processes)
    bound_by = max(candidates, key=lambda name: candidates[name])
    return Estimate(candidates[bound_by], bound_by, request_units, kv_ops, kv_rate, pace, processes)


def unwrap_pace(ctx: Context, products: Sequence[str] | None, kids: Iterable[str]) -> UnwrapPace | None:
    """The pace of a remote vault for a sweep moving fields off ``kids`` (None for a local
    keyring): a few of those fields' data keys, from the first page of the scope, unwrapped one
    at a time through the keyring the dry run would use."""
    if not ctx.keys.root.remote:
        return None
    keys = _data_keys(ctx, products, frozenset(kids), LATENCY_SAMPLES + 1)
    return UnwrapPace(vault_latency(ctx.keyring, keys), ctx.settings.unwrap_concurrency, ctx.settings.unwrap_rate)


def _data_keys(ctx: Context, products: Sequence[str] | None, kids: frozenset[str], count: int) -> list[WrappedKey]:
    found: dict[WrappedKey, None] = {}
    for feed_range in scan_ranges(ctx.store, products):
        for document in ctx.store.scan(feed_range, None, SAMPLE_PAGE).documents:
            if not document.unreadable:
                partition_key = partition_key_or_none(ctx.store, document.body)
                found.update(dict.fromkeys(data_keys_to_unwrap(document.body, partition_key, source_kids=kids)))
        if len(found) >= count:
            break
    return list(found)[:count]


def vault_latency(keyring: Keyring, keys: Sequence[WrappedKey]) -> float | None:
    """The median time of one unwrap (seconds) over ``keys`` but the first call, unwrapped one at
    a time (the keyring's own timing of the provider call: its pacing wait is not counted). A key
    already cached or refused by the vault is left out; None when nothing was timed."""
    times: list[float] = []
    first = True
    for kid, algorithm, wrapped in keys:
        calls, before = keyring.stats.provider_unwraps, keyring.stats.provider_seconds["unwrap"]
        try:
            keyring.unwrap(kid, algorithm, wrapped)
        except ReencryptError:
            continue  # the sweep meets it again, and records it where it belongs
        if keyring.stats.provider_unwraps == calls:
            continue  # cached: no call was made
        if not first:
            times.append(keyring.stats.provider_seconds["unwrap"] - before)
        first = False
    return statistics.median(times) if times else None
