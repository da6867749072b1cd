"""Pacing state in Redis, shared by every worker process on every machine.

Each step is one Lua script, so it is atomic at any fleet size, and reads Redis's own clock,
so machines' clocks never disagree about a bucket. One key scheme:
``reencrypt:pace:<sweep id>:<resource>:bucket`` and ``...:share``, each a hash that expires
when left alone (an hour for a bucket, a day for a share), so finished sweeps leave nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tracker_reencrypt.errors import BrokerUnavailableError
from tracker_reencrypt.pacing.backend import BackOff

# Times are stored with '%.6f': Lua's tostring keeps 14 significant digits, which rounds an epoch
# time to 0.1 ms, sometimes up, so the next call of the same tenth of a millisecond saw time run
# backwards (an additive climb with no wait between steps lost a step).
#
# KEYS[1]: the bucket. ARGV: rate, burst, tokens wanted. Returns the caller's wait in seconds.
_RESERVE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate) - want
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', string.format('%.6f', now))
redis.call('EXPIRE', KEYS[1], 3600)
if tokens >= 0 then return '0' end
return tostring(-tokens / rate)
"""

# KEYS[1]: the share. ARGV: "down" or "up", then the BackOff. Returns the new share.
_ADJUST = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'share', 'changed')
local share = tonumber(state[1]) or 1
local changed = tonumber(state[2]) or 0
if ARGV[1] == 'down' then
  if now - changed >= tonumber(ARGV[3]) then
    share = math.max(tonumber(ARGV[2]), share * tonumber(ARGV[4]))
    changed = now
  end
elseif share < 1 and now - changed >= tonumber(ARGV[5]) then
  share = math.min(1, share + tonumber(ARGV[6]))
  changed = now
end
redis.call('HSET', KEYS[1], 'share', tostring(share), 'changed', string.format('%.6f', changed))
redis.call('EXPIRE', KEYS[1], 86400)
return tostring(share)
"""


def pace_key(sweep_id: str, resource: str, part: str) -> str:
    """The Redis key of one sweep's ``part`` ("bucket" or "share") for one resource."""
    return f"reencrypt:pace:{sweep_id}:{resource}:{part}"


@contextmanager
def _reaching_redis() -> Iterator[None]:
    """Redis failures as our one-line transient error: the batch gives its slice back and
    tries later, as for any other outage."""
    try:
        yield
    except redis.RedisError as exc:
        raise BrokerUnavailableError(
            f"pacing state in Redis unreachable ({type(exc).__name__}): check REDIS_URL"
        ) from None


class RedisPacing:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._reserve = client.register_script(_RESERVE)
        self._adjust = client.register_script(_ADJUST)

    def reserve(self, sweep_id: str, resource: str, tokens: float, rate: float, burst: float) -> float:
        with _reaching_redis():
            return float(self._reserve(keys=[pace_key(sweep_id, resource, "bucket")], args=[rate, burst, tokens]))

    def share(self, sweep_id: str, resource: str) -> float:
        with _reaching_redis():
            stored = self._client.hget(pace_key(sweep_id, resource, "share"), "share")
        return 1.0 if stored is None else float(stored)

    def lower_share(self, sweep_id: str, resource: str, back_off: BackOff) -> float:
        return self._adjusted(sweep_id, resource, "down", back_off)

    def raise_share(self, sweep_id: str, resource: str, back_off: BackOff) -> float:
        return self._adjusted(sweep_id, resource, "up", back_off)

    def _adjusted(self, sweep_id: str, resource: str, direction: str, back_off: BackOff) -> float:
        rule = [back_off.floor, back_off.cooldown_s, back_off.decrease, back_off.increase_every_s, back_off.step]
        with _reaching_redis():
            return float(self._adjust(keys=[pace_key(sweep_id, resource, "share")], args=[direction, *rule]))
