"""What one ``reencrypt bench`` invocation is asked to measure."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator import steering

DEFAULT_SAMPLE = 2_000


@dataclass
class BenchOptions:
    docs: int
    dek_share: int
    seed: int
    sample: int = DEFAULT_SAMPLE
    slices: int = steering.DEFAULT_SLICES
