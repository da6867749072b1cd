"""Pacing one batch to its sweep's fleet-wide limits: documents/s, Key Vault calls/s, RU/s.

Called at the edges of the batch loop (before a page, after a page, before a key provider
call), so the batch logic itself knows nothing of limits. Limits are re-read from the sweep
record every LIMITS_REFRESH_S, so 'sweep throttle' reaches even a batch in progress. Key Vault
and the store can answer 429 under the tracker's own load: their limits are scaled by the
fleet's :class:`AdaptiveShare` of each; a document rate is the operator's alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from tracker_reencrypt.keys import LOCAL_WRAP_CALL, UNWRAP_CALL, KeyProvider
from tracker_reencrypt.pacing.backend import PacingBackend
from tracker_reencrypt.pacing.bucket import TokenBucket
from tracker_reencrypt.pacing.limits import DOCUMENTS, KEY_VAULT, REQUEST_UNITS, SWEEP_LIMITS, Limit
from tracker_reencrypt.pacing.share import AdaptiveShare
from tracker_reencrypt.stores import RequestCost, estimated_request_units

#: How often a batch re-reads its sweep's limits: a page under a tight limit can take long,
#: and 'sweep throttle' must reach a batch already running within seconds.
LIMITS_REFRESH_S = 2.0


#: How much of a Key Vault budget may be spent at once after a quiet spell. Unwraps take their
#: tokens one by one, from a pool of threads: with a second's burst, any 2 seconds held 1.5x the
#: budget (measured, docs/BENCHMARK.md); a tenth keeps every 2-second window within 5%.
KEY_VAULT_BURST_S = 0.1


def _burst_seconds(limit: Limit) -> float:
    """Documents and request units are spent a page at a time (a page larger than the burst is
    granted and paid for after): a second's burst. Key Vault calls one at a time: a short one."""
    return KEY_VAULT_BURST_S if limit is KEY_VAULT else 1.0


class Pacer:
    """Paces one batch of sweep ``sweep_id``, whose limits are ``limits`` (the sweep record).

    ``cost`` and ``provider`` are the running totals of the store and the key provider, read
    after each page for what it cost and how often the services said 429. ``on_wait`` hears
    (limit label, seconds waited) and ``on_share`` (resource, share) for metrics.
    """

    def __init__(
        self,
        backend: PacingBackend,
        sweep_id: str,
        limits: Mapping[str, Any],
        cost: RequestCost,
        provider: KeyProvider,
        *,
        reread_limits: Callable[[], Mapping[str, Any]] | None = None,
        on_wait: Callable[[str, float], None] | None = None,
        on_share: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits, self.cost, self.provider = limits, cost, provider
        self._reread_limits, self._on_wait, self._on_share, self._clock = reread_limits, on_wait, on_share, clock
        self._read_at = clock()
        self._buckets = {
            limit: TokenBucket(backend, sweep_id, limit.label, burst_seconds=_burst_seconds(limit), sleep=sleep)
            for limit in SWEEP_LIMITS
        }
        self._shares = {
            limit: AdaptiveShare(backend, sweep_id, limit.label, clock=clock) for limit in (KEY_VAULT, REQUEST_UNITS)
        }
        # Totals at the start of the batch: each page is charged what they grew by.
        self._seen = {
            "request_units": cost.request_units,
            "store_throttles": float(cost.throttled),
            "kv_throttles": float(provider.throttled),
            "other_vault_calls": float(self._other_vault_calls()),
        }

    def before_page(self, documents: int) -> None:
        self._spend(DOCUMENTS, documents)

    def documents_within(self, seconds: float, sample: Mapping[str, float] | None = None) -> int | None:
        """How many documents the limits let a page take in ``seconds`` (None: no limit set).

        A page is paced before it is written: under a tight limit a full page could wait longer
        than the slice's lease, be taken over by another worker, and be waited for again there,
        page after page, for ever. Pages sized to the limits end inside the batch's time bound.
        ``sample`` (the sweep's: data keys and bytes per document) prices a document in Key
        Vault calls and request units; without it, one call and one read plus one write of 2 KiB."""
        sample = sample or {}
        deks = max(1.0, float(sample.get("deks_per_document", 1.0)))
        size = float(sample.get("average_bytes", 2048.0))
        cost = {
            DOCUMENTS: 1.0,
            KEY_VAULT: deks,
            REQUEST_UNITS: estimated_request_units(size, write=False) + estimated_request_units(size, write=True),
        }
        fits = []
        for limit in SWEEP_LIMITS:
            rate = limit.value_in(self.limits)
            if rate is None:
                continue
            if limit in self._shares:
                rate *= self._shares[limit].share
            fits.append(rate * seconds / cost[limit])
        return max(1, int(min(fits))) if fits else None

    def limits_key_vault(self) -> bool:
        """Whether the sweep sets a Key Vault budget (as last read) for this batch to keep to."""
        return KEY_VAULT.value_in(self.limits) is not None

    def before_key_call(self, operation: str) -> None:
        """Every unwrap reaches the vault: it takes its Key Vault token before the call. Whether
        a wrap does is known only afterwards (local when the provider holds the public key),
        so :meth:`after_page` charges those."""
        if operation == "unwrap":
            self._spend(KEY_VAULT, 1)

    def after_page(self) -> None:
        """Charge the page's real request units and its vault calls other than unwraps, and
        adapt both shares to any 429s seen."""
        self._spend(KEY_VAULT, self._since("other_vault_calls", self._other_vault_calls()))
        self._spend(REQUEST_UNITS, self._since("request_units", self.cost.request_units))
        self._adapt(REQUEST_UNITS, self._since("store_throttles", self.cost.throttled))
        self._adapt(KEY_VAULT, self._since("kv_throttles", self.provider.throttled))

    def _other_vault_calls(self) -> int:
        """Calls that reached the vault besides unwraps: remote wraps (when the version's public
        key is not readable) and key reads."""
        return sum(
            count for operation, count in self.provider.calls.items() if operation not in (UNWRAP_CALL, LOCAL_WRAP_CALL)
        )

    def _since(self, total: str, now: float) -> float:
        grown, self._seen[total] = now - self._seen[total], now
        return grown

    def _spend(self, limit: Limit, amount: float) -> None:
        if self._reread_limits is not None and self._clock() - self._read_at >= LIMITS_REFRESH_S:
            self.limits, self._read_at = self._reread_limits(), self._clock()
        rate = limit.value_in(self.limits)
        if rate is not None and limit in self._shares:
            rate *= self._shares[limit].share
        waited = self._buckets[limit].take(amount, rate)
        if self._on_wait is not None:
            self._on_wait(limit.label, waited)

    def _adapt(self, limit: Limit, new_throttles: float) -> None:
        share = self._shares[limit].throttled() if new_throttles > 0 else self._shares[limit].calm()
        if self._on_share is not None:
            self._on_share(limit.label, share)
