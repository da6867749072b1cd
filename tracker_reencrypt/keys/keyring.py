"""The keyring: a key provider plus the in-memory data-key caches that spare the vault.

Two caches, both in process memory only (never on disk, never in Redis):

- **Unwrap cache** — bounded LRU with a TTL, keyed by (kid, wrapped DEK bytes). Fields that
  share a data key cost one unwrap per process, not one per field.
- **Encryption materials** — like the AWS Encryption SDK's caching materials manager: one
  fresh DEK, wrapped once under the target kid, is reused for at most ``dek_max_uses`` fields
  and ``dek_max_age_s`` seconds, then replaced. Every field still gets its own random 96-bit
  nonce; the default bound (4,096 fields) keeps the nonce-collision probability for one DEK
  far below NIST's 2^-32 limit for random GCM nonces (reached near 2^32 messages).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from tracker_reencrypt.envelope import DEK_BYTES, DataKey
from tracker_reencrypt.keys import WRAP_ALGORITHM, KeyProvider

DEFAULT_UNWRAP_CACHE_ENTRIES = 100_000
DEFAULT_UNWRAP_TTL_S = 3600.0
DEFAULT_DEK_MAX_USES = 4096
DEFAULT_DEK_MAX_AGE_S = 300.0


@dataclass
class KeyringStats:
    """Counters a worker turns into metrics. Monotonic for the life of the process."""

    unwrap_cache_hits: int = 0
    unwrap_cache_misses: int = 0
    provider_unwraps: int = 0
    provider_wraps: int = 0
    provider_seconds: dict[str, float] = field(default_factory=lambda: {"wrap": 0.0, "unwrap": 0.0})


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
    ) -> None:
        self.provider = provider
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

    def current_kid(self) -> str:
        return self.provider.current_kid()

    def unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> bytes:
        cache_key = (kid, wrapped)
        now = time.monotonic()
        with self._lock:
            hit = self._unwrapped.get(cache_key)
            # Entries only ever hold DEKs wrapped with WRAP_ALGORITHM: an envelope naming any
            # other algorithm goes to the provider, so the cache never changes a verdict.
            if hit is not None and wrap_algorithm == WRAP_ALGORITHM and now - hit[1] < self.unwrap_ttl_s:
                self._unwrapped.move_to_end(cache_key)
                self.stats.unwrap_cache_hits += 1
                return hit[0]
            self.stats.unwrap_cache_misses += 1
        dek = self._timed("unwrap", lambda: self.provider.unwrap(kid, wrap_algorithm, wrapped))
        with self._lock:
            self.stats.provider_unwraps += 1
            self._unwrapped[cache_key] = (dek, now)
            self._unwrapped.move_to_end(cache_key)
            while len(self._unwrapped) > self.unwrap_cache_entries:
                self._unwrapped.popitem(last=False)
        return dek

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
