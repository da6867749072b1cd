"""Pacing one batch to the sweep's fleet-wide limits: documents/s, Key Vault ops/s, RU/s.

Called at the edges of the batch loop (before a page, after a page, before a key provider
call), so the batch logic itself knows nothing about budgets. Limits are read from the sweep
record each batch, so ``sweep throttle`` takes effect within one batch.
"""

from __future__ import annotations

from prometheus_client import Gauge

from tracker_reencrypt.keys import KeyProvider
from tracker_reencrypt.stores import DocumentStore
from tracker_reencrypt.sweep.budget import AdaptiveBudget
from tracker_reencrypt.sweep.ratelimit import TokenBucket
from worker import metrics

BUDGET_FACTOR = Gauge(
    "reencrypt_budget_factor", "Share of each budget the fleet currently uses (adaptive back-off after 429s)",
    ["resource"], multiprocess_mode="livemostrecent",
)


class Pacer:
    def __init__(self, redis_client, sweep: dict, store: DocumentStore, provider: KeyProvider) -> None:
        self.sweep, self.store, self.provider = sweep, store, provider
        self.documents = TokenBucket(redis_client, f"reencrypt:bucket:{sweep['id']}:documents")
        self.kv = AdaptiveBudget(redis_client, sweep["id"], "kv_ops")
        self.ru = AdaptiveBudget(redis_client, sweep["id"], "request_units")
        self._request_units = store.cost.request_units
        self._store_throttles = store.cost.throttled
        self._kv_throttles = self._provider_throttles()

    def _provider_throttles(self) -> int:
        return getattr(self.provider, "throttled", 0)

    def before_page(self, documents: int) -> None:
        waited = self.documents.take(documents, self.sweep.get("rate"))
        metrics.RATE_LIMIT_WAIT.labels("documents").inc(waited)

    def before_key_call(self, operation: str) -> None:
        """Only calls that reach the vault spend the Key Vault budget (wraps are local when
        the provider holds the public key)."""
        if operation == "unwrap" or getattr(self.provider, "wraps_remotely", False):
            metrics.RATE_LIMIT_WAIT.labels("kv_ops").inc(self.kv.spend(1, self.sweep.get("kv_ops_per_s")))

    def after_page(self) -> None:
        """Charge the page's real request units, and adapt both budgets to any 429s seen."""
        charged = self.store.cost.request_units - self._request_units
        self._request_units = self.store.cost.request_units
        metrics.RATE_LIMIT_WAIT.labels("request_units").inc(self.ru.spend(charged, self.sweep.get("ru_per_s")))
        self._adapt(self.ru, self.store.cost.throttled - self._store_throttles)
        self._store_throttles = self.store.cost.throttled
        kv_throttles = self._provider_throttles()
        self._adapt(self.kv, kv_throttles - self._kv_throttles)
        self._kv_throttles = kv_throttles

    def _adapt(self, budget: AdaptiveBudget, new_throttles: int) -> None:
        factor = budget.throttled() if new_throttles > 0 else budget.calm()
        BUDGET_FACTOR.labels(budget.resource).set(factor)
