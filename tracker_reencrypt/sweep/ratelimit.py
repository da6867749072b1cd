"""Fleet-wide rate limits: one token bucket per sweep and resource, kept in Redis.

Every worker process on every machine takes tokens from the same bucket through one Lua
script, so the limit holds at any fleet size. The script uses Redis's own clock (no skew
between machines) and lets the bucket go into debt: a caller asking for ``n`` tokens always
gets them and is told how long to sleep first. Reservations are thus first come, first
served, and a large request cannot starve behind small ones.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import redis

from tracker_reencrypt.errors import BrokerUnavailableError, SweepError

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate) - want
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
if tokens >= 0 then return '0' end
return tostring(-tokens / rate)
"""


@contextmanager
def reaching_redis(what: str):
    """Redis failures as our one-line error naming what the worker was reaching for: the batch
    gives its slice back and tries later, as for any other outage."""
    try:
        yield
    except redis.RedisError as exc:
        raise BrokerUnavailableError(f"{what} in Redis unreachable ({type(exc).__name__}): check REDIS_URL") from None


class TokenBucket:
    """``take(n)`` blocks until ``n`` tokens may be spent at ``rate`` per second."""

    def __init__(self, client: redis.Redis, key: str, *, burst_seconds: float = 1.0) -> None:
        self.key = key
        self.burst_seconds = burst_seconds
        self._script = client.register_script(_TAKE)

    def reserve(self, tokens: float, rate: float) -> float:
        """Take ``tokens`` now and return how many seconds the caller must wait before using them."""
        if rate <= 0:
            raise SweepError(f"rate for {self.key} must be positive, got {rate}")
        burst = max(rate * self.burst_seconds, tokens)
        with reaching_redis("rate limiter"):
            return float(self._script(keys=[self.key], args=[rate, burst, tokens]))

    def take(self, tokens: float, rate: float | None) -> float:
        """Block until ``tokens`` are ours; no limit when ``rate`` is None. Returns the wait."""
        if not rate or tokens <= 0:
            return 0.0
        wait = self.reserve(tokens, rate)
        if wait > 0:
            time.sleep(wait)
        return wait
