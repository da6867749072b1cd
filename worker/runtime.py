"""Per-process resources of a worker: store, keyring, sweep state, Redis, rate limiters.

Built on first use inside each pool process (connections must not cross Celery's fork).
"""

from __future__ import annotations

import os
import socket

import redis

from tracker_reencrypt.config import Settings
from tracker_reencrypt.keys import KeyProvider, open_key_provider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import open_store
from tracker_reencrypt.sweep.state import SweepState
from worker import metrics
from worker.pacing import Pacer


class Runtime:
    def __init__(self, settings: Settings, redis_url: str, *, provider: KeyProvider | None = None) -> None:
        """``provider`` replaces the one ``settings.keys`` names (a vault client built with its
        own credential and options, as tests do)."""
        settings.require("store")
        if provider is None:
            provider = open_key_provider(settings.require("keys").keys)
        self.settings = settings
        self.pid = os.getpid()
        self.owner = f"{socket.gethostname()}:{self.pid}"
        self.store = open_store(settings.store, partition_key_field=settings.partition_key_field)
        self.state = SweepState(self.store.records())
        self.keyring = Keyring(
            provider,
            dek_max_uses=settings.dek_max_uses,
            dek_max_age_s=settings.dek_max_age_s,
            after_provider_call=metrics.observe_key_call,
        )
        self.redis = redis.Redis.from_url(redis_url)
        self.deltas = metrics.DeltaTracker()

    def pacer(self, sweep: dict) -> Pacer:
        """Limits for one batch of ``sweep``; its Key Vault budget hooks into the keyring."""
        pacer = Pacer(self.redis, sweep, self.store, self.keyring.provider,
                      reread_sweep=lambda: self.state.get_sweep(sweep["id"]))
        self.keyring.before_provider_call = pacer.before_key_call
        return pacer

    def publish_metrics(self) -> None:
        """Move the keyring's and store's running totals into the process's counters."""
        stats = self.keyring.stats
        self.deltas.add(metrics.DEK_CACHE.labels("hit"), "hits", stats.unwrap_cache_hits)
        self.deltas.add(metrics.DEK_CACHE.labels("miss"), "misses", stats.unwrap_cache_misses)
        self.deltas.add(metrics.REQUEST_UNITS, "ru", self.store.cost.request_units)
        self.deltas.add(metrics.THROTTLES, "throttled", self.store.cost.throttled)


_runtime: Runtime | None = None


def current(settings: Settings, redis_url: str) -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(settings, redis_url)
    return _runtime
