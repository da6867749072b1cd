"""The keyring: a key provider plus the in-memory data-key caches that spare the vault.

Two caches, both in process memory only (never on disk, never in Redis):

- **Unwrap cache** — bounded LRU with a TTL, keyed by (kid, wrapped DEK bytes). Fields that
  share a data key cost one unwrap per process, not one per field.
- **Single flight** — two callers needing the same uncached data key share one provider call:
  the second waits for the first's answer (or its error) instead of asking the vault again.
- **Prefetch** — :meth:`Keyring.prefetch` unwraps a page's distinct uncached data keys at
  once, on a bounded pool of threads, when the provider is remote (a Key Vault unwrap is an
  HTTPS call of 5–30 ms, and one at a time a process manages 1/latency of them). Each call
  still passes ``before_provider_call`` (the fleet's Key Vault budget) first. A local keyring
  unwraps in process, where threads gain nothing under the GIL: it is left sequential.
- **Encryption materials** — like the AWS Encryption SDK's caching materials manager: one
  fresh DEK, wrapped once under the target kid, is reused for at most ``dek_max_uses`` fields
  and ``dek_max_age_s`` seconds, then replaced. Every field still gets its own random 96-bit
  nonce; the default bound (4,096 fields) keeps the nonce-collision probability for one DEK
  far below NIST's 2^-32 limit for random GCM nonces (reached near 2^32 messages).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from tracker_reencrypt.envelope import DEK_BYTES, DataKey
from tracker_reencrypt.keys import WRAP_ALGORITHM, KeyProvider
from tracker_reencrypt.pacing.backends.memory import MemoryPacing
from tracker_reencrypt.pacing.bucket import TokenBucket

DEFAULT_UNWRAP_CACHE_ENTRIES = 100_000
DEFAULT_UNWRAP_TTL_S = 3600.0
DEFAULT_DEK_MAX_USES = 4096
DEFAULT_DEK_MAX_AGE_S = 300.0
#: Unwraps one process keeps in flight against a remote vault (REENCRYPT_UNWRAP_CONCURRENCY):
#: at 30 ms a call, 8 allowed ~205/s and missed a 300/s budget; 16 reached it (docs/BENCHMARK.md).
#: A process alone never exceeds REENCRYPT_UNWRAP_RATE however many are in flight.
DEFAULT_UNWRAP_CONCURRENCY = 16
#: A process's unwraps/s where no fleet budget applies (REENCRYPT_UNWRAP_RATE): half of the
#: 400/s a vault allows for RSA-2048 software keys (4,000 per 10 s), which the tracker shares.
DEFAULT_UNWRAP_RATE = 200.0

log = logging.getLogger(__name__)

#: One data key to unwrap: (kid, wrap algorithm, wrapped bytes), as an envelope carries it.
WrappedKey = tuple[str, str, bytes]


@dataclass
class KeyringStats:
    """Counters a worker turns into metrics. Monotonic for the life of the process."""

    unwrap_cache_hits: int = 0
    unwrap_cache_misses: int = 0
    provider_unwraps: int = 0
    provider_wraps: int = 0
    provider_seconds: dict[str, float] = field(default_factory=lambda: {"wrap": 0.0, "unwrap": 0.0})


class ProcessRate:
    """One process's own ceiling on provider unwraps: a thread-safe token bucket in memory, for
    unwraps no fleet budget paces (``before_provider_call`` of a verify, or of a sweep without
    a Key Vault budget). Without it, 16 threads at 5 ms would ask a vault 3,200 times a second."""

    def __init__(self, rate: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._bucket = TokenBucket(MemoryPacing(), "process", "unwrap", burst_seconds=0.1, sleep=sleep)

    def __call__(self, operation: str) -> None:
        if operation == "unwrap":
            self._bucket.take(1, self.rate)


@dataclass(frozen=True)
class Prefetch:
    """Unwraps under way; :meth:`wait` blocks until every one has ended (well or not)."""

    futures: list[Future]

    def wait(self) -> None:
        if self.futures:
            wait(self.futures)


@dataclass
class _Materials:
    key: DataKey
    created: float
    uses: int = 0


class Keyring:
    """What the envelope functions call for keys. Thread-safe."""

    def __init__(
        self,
        provider: KeyProvider,
        *,
        unwrap_cache_entries: int = DEFAULT_UNWRAP_CACHE_ENTRIES,
        unwrap_ttl_s: float = DEFAULT_UNWRAP_TTL_S,
        dek_max_uses: int = DEFAULT_DEK_MAX_USES,
        dek_max_age_s: float = DEFAULT_DEK_MAX_AGE_S,
        before_provider_call: Callable[[str], None] | None = None,
        after_provider_call: Callable[[str, float, bool], None] | None = None,
        unwrap_concurrency: int = DEFAULT_UNWRAP_CONCURRENCY,
    ) -> None:
        self.provider = provider
        #: Prefetch threads; 1 (or a provider that is not remote) means no prefetch at all.
        self.unwrap_concurrency = unwrap_concurrency if getattr(provider, "remote", False) else 1
        self.unwrap_cache_entries = unwrap_cache_entries
        self.unwrap_ttl_s = unwrap_ttl_s
        self.dek_max_uses = dek_max_uses
        self.dek_max_age_s = dek_max_age_s
        # Called with the operation name before each call that reaches the provider; the
        # sweep uses it to take a token from the fleet-wide Key Vault limit. Both hooks are
        # fixed for the keyring's life: one keyring serves a worker's every batch.
        self._before_provider_call = before_provider_call
        # Called with (operation, seconds, succeeded) after each provider call: metrics.
        self._after_provider_call = after_provider_call
        self.stats = KeyringStats()
        self._lock = threading.Lock()
        self._unwrapped: OrderedDict[tuple[str, bytes], tuple[bytes, float]] = OrderedDict()
        self._wrapped: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()
        self._materials: dict[str, _Materials] = {}
        #: Unwraps under way, by cache key: a second caller waits on the first's future.
        self._in_flight: dict[tuple[str, bytes], Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        #: Prefetches submitted and not yet ended: what cancel_prefetches drops.
        self._queued: set[Future] = set()

    def current_kid(self) -> str:
        return self.provider.current_kid()

    def unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> bytes:
        cache_key = (kid, wrapped)
        now = time.monotonic()
        with self._lock:
            hit = self._unwrapped.get(cache_key)
            # Entries only ever hold DEKs wrapped with WRAP_ALGORITHM: an envelope naming any
            # other algorithm goes to the provider, so the cache never changes a verdict.
            cacheable = wrap_algorithm == WRAP_ALGORITHM
            if hit is not None and cacheable and now - hit[1] < self.unwrap_ttl_s:
                self._unwrapped.move_to_end(cache_key)
                self.stats.unwrap_cache_hits += 1
                return hit[0]
            self.stats.unwrap_cache_misses += 1
            running = self._in_flight.get(cache_key) if cacheable else None
            mine: Future | None = None
            if running is None and cacheable:
                mine = self._in_flight[cache_key] = Future()
        if running is not None:
            return running.result()  # the same data key, asked a moment ago: one call for both
        if mine is None:
            return self._timed("unwrap", lambda: self.provider.unwrap(kid, wrap_algorithm, wrapped))
        try:
            dek = self._timed("unwrap", lambda: self.provider.unwrap(kid, wrap_algorithm, wrapped))
        except BaseException as error:
            with self._lock:
                del self._in_flight[cache_key]
            mine.set_exception(error)
            raise
        with self._lock:
            self.stats.provider_unwraps += 1
            self._unwrapped[cache_key] = (dek, now)
            self._unwrapped.move_to_end(cache_key)
            while len(self._unwrapped) > self.unwrap_cache_entries:
                self._unwrapped.popitem(last=False)
            del self._in_flight[cache_key]
        mine.set_result(dek)
        return dek

    def prefetch(self, keys: Iterable[WrappedKey]) -> Prefetch:
        """Start unwrapping ``keys``' distinct uncached data keys, at most ``unwrap_concurrency``
        at a time; returns at once. A later :meth:`unwrap` of one of them waits for its call or
        finds it cached. Failures are not raised here: the unwrap that needs the key meets them
        where it can say which field they concern (and retries what was transient)."""
        if self.unwrap_concurrency <= 1:
            return Prefetch([])
        keys = list(keys)  # parsed outside the lock: callers pass generators over whole pages
        now = time.monotonic()
        wanted: dict[tuple[str, bytes], str] = {}
        with self._lock:
            for kid, wrap_algorithm, wrapped in keys:
                key = (kid, wrapped)
                hit = self._unwrapped.get(key)
                fresh = hit is not None and now - hit[1] < self.unwrap_ttl_s
                if wrap_algorithm == WRAP_ALGORITHM and not fresh and key not in self._in_flight:
                    wanted[key] = wrap_algorithm
            if self._pool is None and wanted:
                self._pool = ThreadPoolExecutor(self.unwrap_concurrency, thread_name_prefix="reencrypt-unwrap")
        pool = self._pool
        if pool is None:
            return Prefetch([])
        futures = [
            pool.submit(self._quiet_unwrap, kid, algorithm, wrapped) for (kid, wrapped), algorithm in wanted.items()
        ]
        with self._lock:
            self._queued.update(futures)
        for future in futures:
            future.add_done_callback(self._dequeue)
        return Prefetch(futures)

    def _dequeue(self, future: Future) -> None:
        with self._lock:
            self._queued.discard(future)

    def cancel_prefetches(self) -> None:
        """Drop every prefetch not started yet (those under way end): after an error or a
        Ctrl-C, pages that will not be processed must not keep the process, or the vault
        budget, busy on their keys, nor hold up the process's exit."""
        with self._lock:
            queued = list(self._queued)
        for future in queued:
            future.cancel()

    def _quiet_unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> None:
        try:
            self.unwrap(kid, wrap_algorithm, wrapped)
        except Exception as error:  # noqa: BLE001 - met again, in context, by the unwrap that needs it
            log.debug("prefetch of a data key under %s failed: %s", kid, type(error).__name__)

    def close(self) -> None:
        """Stop the prefetch threads: the calls under way end, those not started are dropped."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def wrap(self, kid: str, dek: bytes) -> tuple[str, bytes]:
        """Wrap ``dek`` under ``kid``, once per distinct (kid, DEK) pair.

        Rewrap mode meets the same source DEK in many fields; wrapping it once keeps their
        new ``dek`` values identical and spares remote wrap calls.
        """
        with self._lock:
            known = self._wrapped.get((kid, dek))
            if known is not None:
                self._wrapped.move_to_end((kid, dek))
                return WRAP_ALGORITHM, known
        wrapped = self._timed("wrap", lambda: self.provider.wrap(kid, dek))
        now = time.monotonic()
        with self._lock:
            self.stats.provider_wraps += 1
            self._wrapped[(kid, dek)] = wrapped
            # The wrapped form is now known to unwrap to this DEK: later reads of the fields
            # just written need no unwrap call.
            self._unwrapped[(kid, wrapped)] = (dek, now)
            for cache in (self._wrapped, self._unwrapped):
                while len(cache) > self.unwrap_cache_entries:
                    cache.popitem(last=False)
        return WRAP_ALGORITHM, wrapped

    def data_key_for_encryption(self, kid: str | None = None) -> DataKey:
        kid = kid or self.provider.current_kid()
        now = time.monotonic()
        with self._lock:
            materials = self._materials.get(kid)
            if materials and materials.uses < self.dek_max_uses and now - materials.created < self.dek_max_age_s:
                materials.uses += 1
                return materials.key
        dek = os.urandom(DEK_BYTES)
        wrap_algorithm, wrapped = self.wrap(kid, dek)
        key = DataKey(kid=kid, wrap_algorithm=wrap_algorithm, plaintext=dek, wrapped=wrapped)
        with self._lock:
            self._materials[kid] = _Materials(key=key, created=now, uses=1)
        return key

    def forget(self) -> None:
        """Drop every cached data key (after a key is disabled, or to measure cold costs)."""
        with self._lock:
            self._unwrapped.clear()
            self._wrapped.clear()
            self._materials.clear()

    def _timed(self, operation: str, call):
        if self._before_provider_call is not None:
            self._before_provider_call(operation)
        started = time.perf_counter()
        succeeded = False
        try:
            result = call()
            succeeded = True
            return result
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.stats.provider_seconds[operation] += elapsed
            if self._after_provider_call is not None:
                self._after_provider_call(operation, elapsed, succeeded)
