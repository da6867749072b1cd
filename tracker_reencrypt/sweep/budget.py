"""Fleet-wide budgets for the shared services, with adaptive back-off.

The sweep shares Key Vault's transaction quota and Cosmos's request units with the live
tracker. Each budget is a token bucket in Redis (:mod:`tracker_reencrypt.sweep.ratelimit`)
shared by every worker process, whose effective rate is ``budget x factor``:

- the factor halves when the service answers 429 (multiplicative decrease, at most once per
  ``DECREASE_COOLDOWN_S`` fleet-wide, so one burst of 429s seen by many workers counts once);
- it climbs back by ``INCREASE_STEP`` every ``INCREASE_EVERY_S`` without a 429 (additive
  increase), so the fleet settles just under what the service gives it.

The factor lives in Redis too, so every process slows down together.
"""

from __future__ import annotations

import time

import redis

from tracker_reencrypt.sweep.ratelimit import TokenBucket, reaching_redis

MIN_FACTOR = 0.05
DECREASE = 0.5
DECREASE_COOLDOWN_S = 1.0
INCREASE_STEP = 0.05
INCREASE_EVERY_S = 5.0
#: A calm worker (no 429) reads the fleet's factor at most this often. Once per page it was a
#: Redis round trip per 100 documents, 5% of a worker's time; a 429 elsewhere in the fleet
#: still reaches every worker within this long.
CALM_SYNC_S = 1.0

# KEYS[1]: factor hash. ARGV: "down" or "up", then the constants. Returns the new factor.
_ADJUST = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'factor', 'changed')
local factor = tonumber(state[1]) or 1
local changed = tonumber(state[2]) or 0
if ARGV[1] == 'down' then
  if now - changed >= tonumber(ARGV[3]) then
    factor = math.max(tonumber(ARGV[2]), factor * tonumber(ARGV[4]))
    changed = now
  end
elseif factor < 1 and now - changed >= tonumber(ARGV[5]) then
  factor = math.min(1, factor + tonumber(ARGV[6]))
  changed = now
end
redis.call('HSET', KEYS[1], 'factor', tostring(factor), 'changed', tostring(changed))
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(factor)
"""


class AdaptiveBudget:
    """A fleet-wide budget of one resource (``kv_ops``, ``request_units``) for one sweep."""

    def __init__(self, client: redis.Redis, sweep_id: str, resource: str) -> None:
        self.resource = resource
        self.bucket = TokenBucket(client, f"reencrypt:budget:{sweep_id}:{resource}")
        self._client = client
        self._factor_key = f"reencrypt:budget:{sweep_id}:{resource}:factor"
        self._adjust = client.register_script(_ADJUST)
        # Workers build a budget per batch: it must start at the fleet's factor, not at 1,
        # or every batch's first page would spend the whole budget after a 429.
        self.factor = self._stored_factor()
        self._synced_at = time.monotonic()

    def spend(self, amount: float, budget: float | None) -> float:
        """Block until ``amount`` fits the budget at the current factor; returns the wait."""
        if not budget:
            return 0.0
        return self.bucket.take(amount, budget * self.factor)

    def throttled(self) -> float:
        """The service said 429: the whole fleet slows down."""
        return self._set("down")

    def calm(self) -> float:
        """No 429 lately: the whole fleet speeds up a little (never past the budget)."""
        if time.monotonic() - self._synced_at < min(CALM_SYNC_S, INCREASE_EVERY_S):
            return self.factor
        return self._set("up")

    def _stored_factor(self) -> float:
        with reaching_redis("budget state"):
            stored = self._client.hget(self._factor_key, "factor")
        return 1.0 if stored is None else float(stored)

    def _set(self, direction: str) -> float:
        with reaching_redis("budget state"):
            self.factor = float(self._adjust(
                keys=[self._factor_key],
                args=[direction, MIN_FACTOR, DECREASE_COOLDOWN_S, DECREASE, INCREASE_EVERY_S, INCREASE_STEP],
            ))
        self._synced_at = time.monotonic()
        return self.factor
