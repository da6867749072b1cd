"""What the bench measures: the seeded container, each fleet run and each in-process reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
