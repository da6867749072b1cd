"""What the bench measures: the seeded container, each fleet run and each in-process reference."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

#: The span the vault's call rate is judged over: "never more than the budget + 10% in any 2 s".
WINDOW_S = 2.0


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
    """One sweep by W worker processes, timed from sweep start to its record saying finished."""

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
    bench_cores: float = 0.0  # CPU of the bench's own process meanwhile (the loopback vault, if any)
    vault: VaultCalls | None = None  # the loopback vault's record of the calls (remote-vault mode)

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
            **rate_figures(self),
            "dek_cache_hit_ratio": round(self.dek_cache_hits / lookups, 4) if lookups else None,
            "key_calls_per_doc": round((self.unwraps + self.wraps) / docs, 4),
            "time_shares": {
                "in_batches": round(self.batch_seconds / slot_s, 3),
                "key_provider": round(self.key_seconds / slot_s, 3),
                "outside_batches": round(max(0.0, 1 - self.batch_seconds / slot_s), 3),
            },
        }


@dataclass
class VaultCalls:
    """One fleet run's calls as the vault saw them (the loopback server notes when each started).

    Rates are the vault's, not the workers': what a quota counts. ``steady_unwraps_per_s`` leaves
    out the first window, where a full token bucket may spend its burst; ``max_window_per_s``
    does not: it is the most calls of any kind started in any :data:`WINDOW_S` window."""

    unwraps: int
    calls: int  # every operation (unwraps, key reads, the bench's own planning calls)
    span_s: float  # from the first unwrap's start to the last's
    unwraps_per_s: float  # over that span
    steady_unwraps_per_s: float | None  # from WINDOW_S after the first unwrap to the last (None: too short)
    max_window_per_s: float  # calls of any kind, in the busiest window
    max_window_after_first_per_s: float | None  # the busiest window starting WINDOW_S or more after the first
    max_in_flight: int  # unwraps the vault served at once, at most
    limit_per_s: float  # the rate the fleet keeps to: its budget, or W x its processes' own ceiling
    #: The smallest token-bucket burst that lets every call through at ``limit_per_s``: the most
    #: calls any interval held beyond the limit times its length (the pacer's Key Vault bucket allows 0.1 s).
    burst_used_calls: float
    mean_latency_ms: float | None = None  # per unwrap as the workers timed it (the SDK, TLS and the vault's wait)
    window_s: float = WINDOW_S


def vault_calls(
    starts: dict[str, list[float]],
    max_in_flight: int,
    limit_per_s: float,
    window_s: float = WINDOW_S,
    operation: str = "unwrap_key",
) -> VaultCalls:
    """The figures of :class:`VaultCalls` from each operation's call start times (seconds)."""
    unwraps = sorted(starts.get(operation, []))
    every = sorted(t for times in starts.values() for t in times)
    burst = _burst_used(every, limit_per_s)
    if not unwraps:
        return VaultCalls(
            0, len(every), 0.0, 0.0, None, _busiest(every, window_s), None, max_in_flight, limit_per_s, burst
        )
    first, last = unwraps[0], unwraps[-1]
    span = last - first
    steady_span = span - window_s
    steady = (len(unwraps) - bisect_left(unwraps, first + window_s)) / steady_span if steady_span >= window_s else None
    later = every[bisect_left(every, first + window_s) :]
    return VaultCalls(
        unwraps=len(unwraps),
        calls=len(every),
        span_s=round(span, 3),
        unwraps_per_s=round(len(unwraps) / span, 1) if span > 0 else 0.0,
        steady_unwraps_per_s=round(steady, 1) if steady is not None else None,
        max_window_per_s=_busiest(every, window_s),
        max_window_after_first_per_s=_busiest(later, window_s) if steady is not None else None,
        max_in_flight=max_in_flight,
        limit_per_s=limit_per_s,
        burst_used_calls=burst,
    )


def _burst_used(times: Sequence[float], rate: float) -> float:
    """max over i <= j of (j - i + 1) - rate * (times[j] - times[i]), for ``times`` sorted: the
    calls from the i-th to the j-th beyond what ``rate`` alone allows in between."""
    most, best_start = 0.0, float("-inf")
    for j, at in enumerate(times):
        best_start = max(best_start, rate * at - j)  # the best i <= j, as rate * times[i] - i
        most = max(most, (j + 1) - rate * at + best_start)
    return round(most, 1)


def _busiest(times: Sequence[float], window_s: float) -> float:
    """The most of ``times`` (sorted) inside any window of ``window_s``, per second. The busiest
    window can always be moved to start at a call, so only those windows are counted."""
    most, end = 0, 0
    for start, at in enumerate(times):
        while end < len(times) and times[end] < at + window_s:
            end += 1
        most = max(most, end - start)
    return round(most / window_s, 1)


@dataclass
class InProcessRun:
    """One in-process reference (or one span of it): the bench's own process, no queue, no worker."""

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

    @classmethod
    def from_spans(cls, spans: list[InProcessRun]) -> InProcessRun:
        """One reference from its spans: totals over all of them, so the rate is their time-weighted mean."""

        def total(name: str) -> float:
            return sum(getattr(span, name) for span in spans)

        seconds = total("seconds")
        return cls(
            name=spans[0].name,
            documents=int(total("documents")),
            fields=int(total("fields")),
            document_bytes=int(total("document_bytes")),
            seconds=round(seconds, 4),
            cpu_seconds=round(total("cpu_seconds"), 4),
            unwraps=int(total("unwraps")),
            store_seconds=round(total("store_seconds"), 4),
            request_units=total("request_units"),
            other_cores=round(sum(span.other_cores * span.seconds for span in spans) / max(1e-9, seconds), 2),
            span_docs_per_s=[round(span.docs_per_s, 1) for span in spans],
        )

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.seconds

    @property
    def docs_per_cpu_s(self) -> float:
        return self.documents / max(1e-9, self.cpu_seconds)

    def as_json(self) -> dict:
        return rate_figures(self)


@dataclass
class ReferenceRuns:
    """The in-process references the fleets are compared with, each combined over its spans."""

    bound: InProcessRun
    warm: InProcessRun
    store_only: InProcessRun
    naive: InProcessRun


def rate_figures(run: FleetRun | InProcessRun) -> dict:
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
