"""What one ``reencrypt bench`` invocation is asked to measure."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator import steering

DEFAULT_SAMPLE = 2_000
#: Documents of a bench run: the local mode's, and the remote-vault mode's (a call per data key).
DEFAULT_DOCS = 100_000
DEFAULT_VAULT_DOCS = 3_000


@dataclass
class BenchOptions:
    docs: int
    dek_share: int
    seed: int
    sample: int = DEFAULT_SAMPLE
    slices: int = steering.DEFAULT_SLICES
    #: Set: the remote-vault mode, every loopback vault call taking this long (see bench/vault.py).
    vault_latency_ms: float | None = None
    #: The sweeps' fleet-wide Key Vault budget (calls/s), remote-vault mode only; None: no budget.
    kv_ops_per_s: float | None = None

    @property
    def remote_vault(self) -> bool:
        return self.vault_latency_ms is not None
