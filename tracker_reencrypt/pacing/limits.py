"""The fleet-wide limits a sweep may set, each named once: its key in the sweep record, its CLI
flag, the unit people read, and the label of its wait counter and of its pacing state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limit:
    key: str  # in the sweep record
    flag: str  # on 'sweep start' and 'sweep throttle'
    unit: str  # as printed
    label: str  # the limit label of reencrypt_ratelimit_wait_seconds_total; the resource paced

    def value_in(self, values: Mapping[str, Any]) -> float | None:
        """This limit's value in a sweep record (or any mapping of limits); None when unlimited."""
        return values.get(self.key) or None


DOCUMENTS = Limit("rate", "--rate", "docs/s", "documents")
KEY_VAULT = Limit("kv_ops_per_s", "--kv-ops-per-s", "KV ops/s", "kv_ops")
REQUEST_UNITS = Limit("ru_per_s", "--ru-per-s", "RU/s", "request_units")
SWEEP_LIMITS = (DOCUMENTS, KEY_VAULT, REQUEST_UNITS)


def describe_limits(values: Mapping[str, Any]) -> str:
    """'100 docs/s, 50 KV ops/s' for the limits set in ``values`` (a sweep record or limits)."""
    return ", ".join(f"{values[limit.key]:g} {limit.unit}" for limit in SWEEP_LIMITS if values.get(limit.key))
