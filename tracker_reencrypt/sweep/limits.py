"""A sweep's fleet-wide budgets, each named once: its key in the sweep record, its CLI flag,
the unit people read, and the label that the workers' wait counter and budget buckets use."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    key: str  # in the sweep record
    flag: str  # on 'sweep start' and 'sweep throttle'
    unit: str  # as printed
    label: str  # the limit label of reencrypt_ratelimit_wait_seconds_total; the bucket's name


DOCUMENTS = Budget("rate", "--rate", "docs/s", "documents")
KEY_VAULT = Budget("kv_ops_per_s", "--kv-ops-per-s", "KV ops/s", "kv_ops")
REQUEST_UNITS = Budget("ru_per_s", "--ru-per-s", "RU/s", "request_units")
BUDGETS = (DOCUMENTS, KEY_VAULT, REQUEST_UNITS)


def budgets_text(values: dict) -> str:
    """'100 docs/s, 50 KV ops/s' for the budgets set in ``values`` (a sweep record or limits)."""
    return ", ".join(f"{values[budget.key]:g} {budget.unit}" for budget in BUDGETS if values.get(budget.key))
