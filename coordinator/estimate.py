"""How long a sweep will take under its budgets, before it starts (``sweep start --dry-run``).

The sweep is bound by the slowest of: its document rate limit, the Key Vault budget (one
unwrap per distinct source DEK and worker process), and the request-unit budget (a read and,
for documents with fields to move, a rewrite). Without any budget the bound is the fleet's
own speed, which only a running sweep can measure (``sweep status`` shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

from tracker_reencrypt.pacing.limits import describe_limits
from tracker_reencrypt.stores import estimated_request_units


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    bound_by: str
    request_units: float
    kv_ops: int

    def text(self, limits: dict) -> str:
        given = describe_limits(limits)
        if self.seconds is None:
            return (
                f"~{self.request_units:,.0f} RU and ~{self.kv_ops:,} Key Vault calls; "
                "no budget given, so the fleet's speed bounds it"
            )
        return f"at {given}: ~{_duration(self.seconds)}, bound by {self.bound_by}"


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
) -> Estimate:
    average = document_bytes / max(1, documents)
    request_units = documents * estimated_request_units(
        average, write=False
    ) + documents_to_write * estimated_request_units(average, write=True)
    kv_ops = distinct_source_deks * max(1, worker_processes)
    candidates = {}
    if limits.get("rate"):
        candidates["the document rate limit"] = documents / limits["rate"]
    if limits.get("kv_ops_per_s"):
        candidates["Key Vault"] = kv_ops / limits["kv_ops_per_s"]
    if limits.get("ru_per_s"):
        candidates["store request units"] = request_units / limits["ru_per_s"]
    if not candidates:
        return Estimate(None, "the fleet", request_units, kv_ops)
    bound_by = max(candidates, key=lambda name: candidates[name])
    return Estimate(candidates[bound_by], bound_by, request_units, kv_ops)
