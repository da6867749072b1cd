"""Pacing one batch to the sweep's fleet-wide limits: documents/s, Key Vault ops/s, RU/s.

Called at the edges of the batch loop (before a page, after a page, before a key provider
call), so the batch logic itself knows nothing about budgets. Limits are re-read from the sweep
record every LIMITS_REFRESH_S, so ``sweep throttle`` reaches even a batch in progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tracker_reencrypt.keys import KeyProvider
from tracker_reencrypt.stores import DocumentStore
from tracker_reencrypt.sweep.limits import DOCUMENTS, KEY_VAULT, REQUEST_UNITS
from tracker_reencrypt.sweep.budget import AdaptiveBudget
from tracker_reencrypt.sweep.ratelimit import TokenBucket
from worker import metrics

#: How often a batch re-reads its sweep's limits: a page under a tight budget can take long,
#: and 'sweep throttle' must reach a batch already running within seconds.
LIMITS_REFRESH_S = 2.0


class Pacer:
    def __init__(self, redis_client, sweep: dict, store: DocumentStore, provider: KeyProvider,
                 reread_sweep: Callable[[], dict] | None = None) -> None:
        self.sweep, self.store, self.provider = sweep, store, provider
        self._reread_sweep = reread_sweep
        self._read_at = time.monotonic()
        self.documents = TokenBucket(redis_client, f"reencrypt:bucket:{sweep['id']}:{DOCUMENTS.label}")
        self.kv = AdaptiveBudget(redis_client, sweep["id"], KEY_VAULT.label)
        self.ru = AdaptiveBudget(redis_client, sweep["id"], REQUEST_UNITS.label)
        self._totals = metrics.DeltaTracker(
            request_units=store.cost.request_units, store_throttles=store.cost.throttled,
            kv_throttles=self._provider_throttles(), other_vault_calls=self._provider_other_vault_calls(),
        )

    def _provider_throttles(self) -> int:
        return getattr(self.provider, "throttled", 0)

    def _provider_other_vault_calls(self) -> int:
        """Calls that reached the vault besides unwraps: remote wraps (when the version's public
        key is not readable) and key reads. From the provider's own ``calls`` counts, where
        ``wrap_local`` never leaves the process; a local provider keeps none."""
        calls = dict(getattr(self.provider, "calls", {}))
        return sum(count for operation, count in calls.items() if operation not in ("unwrap_key", "wrap_local"))

    def _refresh_limits(self) -> None:
        if self._reread_sweep is not None and time.monotonic() - self._read_at >= LIMITS_REFRESH_S:
            self.sweep = self._reread_sweep()
            self._read_at = time.monotonic()

    def before_page(self, documents: int) -> None:
        self._refresh_limits()
        waited = self.documents.take(documents, self.sweep.get(DOCUMENTS.key))
        metrics.RATE_LIMIT_WAIT.labels(DOCUMENTS.label).inc(waited)

    def before_key_call(self, operation: str) -> None:
        """Every unwrap reaches the vault: it takes its Key Vault token before the call. Whether
        a wrap does is known only afterwards (local when the provider holds the public key),
        so :meth:`after_page` charges those."""
        if operation == "unwrap":
            self._spend_kv(1)

    def _spend_kv(self, calls: int) -> None:
        if calls > 0:
            self._refresh_limits()
            metrics.RATE_LIMIT_WAIT.labels(KEY_VAULT.label).inc(self.kv.spend(calls, self.sweep.get(KEY_VAULT.key)))

    def after_page(self) -> None:
        """Charge the page's real request units and its vault calls other than unwraps, and
        adapt both budgets to any 429s seen."""
        self._spend_kv(self._totals.since("other_vault_calls", self._provider_other_vault_calls()))
        charged = self._totals.since("request_units", self.store.cost.request_units)
        metrics.RATE_LIMIT_WAIT.labels(REQUEST_UNITS.label).inc(self.ru.spend(charged, self.sweep.get(REQUEST_UNITS.key)))
        self._adapt(self.ru, self._totals.since("store_throttles", self.store.cost.throttled))
        self._adapt(self.kv, self._totals.since("kv_throttles", self._provider_throttles()))

    def _adapt(self, budget: AdaptiveBudget, new_throttles: int) -> None:
        factor = budget.throttled() if new_throttles > 0 else budget.calm()
        metrics.BUDGET_FACTOR.labels(budget.resource).set(factor)
