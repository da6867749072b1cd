"""Per-process resources of a worker: store, keyring, sweep state, pacing state in Redis.

Built on first use inside each pool process (connections must not cross Celery's fork). The
pacing backend, the clock and the sleep can be given instead (the in-process fleet of the
tests runs the same code on MemoryPacing and a clock that moves on demand).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import redis

from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.keys import KeyProvider, open_key_provider
from tracker_reencrypt.keys.keyring import Keyring, ProcessRate
from tracker_reencrypt.keys.products import ProductKeys
from tracker_reencrypt.pacing.backend import PacingBackend
from tracker_reencrypt.pacing.backends.redis import RedisPacing
from tracker_reencrypt.pacing.pacer import Pacer
from tracker_reencrypt.stores import open_store
from tracker_reencrypt.sweep.records import Sweep
from tracker_reencrypt.sweep.state import SweepState
from tracker_reencrypt.sweep.targets import DocumentTargets
from worker import metrics


class Runtime:
    def __init__(
        self,
        settings: Settings,
        redis_url: str | None,
        *,
        provider: KeyProvider | None = None,
        pacing: PacingBackend | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``provider`` replaces the one ``settings.keys`` names (a vault client built with its
        own credential and options, as tests do); ``pacing`` the Redis backend at ``redis_url``."""
        settings.require("store")
        if provider is None:
            provider = open_key_provider(settings.require("keys").keys, settings.key_name)
        self.settings = settings
        self.pid = os.getpid()
        self.owner = f"{socket.gethostname()}:{self.pid}"
        self.store = open_store(settings.store, partition_key_field=settings.partition_key_field)
        self.state = SweepState(self.store.records(), clock=clock)
        self._clock, self._sleep = clock, sleep
        self._pacer: Pacer | None = None
        self._process_rate = ProcessRate(settings.unwrap_rate, sleep=sleep)
        self.keyring = Keyring(
            provider,
            dek_max_uses=settings.dek_max_uses,
            dek_max_age_s=settings.dek_max_age_s,
            before_provider_call=self._before_key_call,
            after_provider_call=metrics.observe_key_call,
            unwrap_concurrency=settings.unwrap_concurrency,
        )
        if pacing is None:
            if not redis_url:
                raise ConfigError("no Redis URL for the fleet's pacing state: set REDIS_URL")
            pacing = RedisPacing(redis.Redis.from_url(redis_url))
        self.pacing = pacing
        self.deltas = metrics.DeltaTracker()
        self._targets: dict[str, DocumentTargets] = {}

    def targets(self, sweep: Sweep) -> DocumentTargets:
        """Where ``sweep``'s documents move, kept for the sweep's life in this process (its
        products' current versions are cached there). The sweep's own key name setting decides,
        not this worker's: a fleet started before a per-product rotation still resolves it right."""
        targets = self._targets.get(sweep.id)
        if targets is None:
            root = self.keyring.provider
            name = sweep.key_name or root.key_name
            keys = ProductKeys(root if name == root.key_name else root.for_key(name))
            targets = DocumentTargets(sweep, keys)
            self._targets = {sweep.id: targets}  # one sweep at a time runs on a container
        return targets

    def pacer(self, sweep: Sweep) -> Pacer:
        """Pacing for one batch of ``sweep``: the keyring's provider calls are paced by it
        until the next batch's (a pool process runs one batch at a time)."""
        self._pacer = Pacer(
            self.pacing,
            sweep.id,
            sweep.limits,
            self.store.cost,
            self.keyring.provider,
            reread_limits=lambda: self.state.get_sweep(sweep.id).limits,
            on_wait=lambda limit, seconds: metrics.RATE_LIMIT_WAIT.labels(limit).inc(seconds),
            on_share=lambda resource, share: metrics.BUDGET_FACTOR.labels(resource).set(share),
            clock=self._clock,
            sleep=self._sleep,
        )
        return self._pacer

    def _before_key_call(self, operation: str) -> None:
        """The keyring's hook, given once at its construction (and called from its prefetch
        threads too): the batch in progress paces the call to the sweep's Key Vault budget, and
        where the sweep sets none, the process keeps to its own ceiling on a remote vault."""
        pacer = self._pacer
        if pacer is not None and pacer.limits_key_vault():
            pacer.before_key_call(operation)
        elif self.keyring.provider.remote:
            self._process_rate(operation)

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
