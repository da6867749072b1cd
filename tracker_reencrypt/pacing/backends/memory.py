"""Pacing state in this process's memory, on an injected clock: the Redis backend's twin.

The same steps as the Lua scripts of :mod:`.redis`, line for line, so the in-process fleet and
the unit tests run the real pacing logic without a server and without sleeping (give a clock
the test moves, and let the bucket's ``sleep`` move it). State never expires here: Redis
expires only state left alone for an hour or more, longer than any test or in-process fleet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from tracker_reencrypt.pacing.backend import BackOff


def _as_stored(number: float) -> float:
    """``number`` as Redis keeps it: the Lua scripts store text with 14 significant digits, so
    the twin rounds the same way and both backends agree to the last digit."""
    return float(f"{number:.14g}")


class MemoryPacing:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (tokens, at)
        self._shares: dict[tuple[str, str], tuple[float, float]] = {}  # (share, changed)

    def reserve(self, sweep_id: str, resource: str, tokens: float, rate: float, burst: float) -> float:
        with self._lock:
            now = _as_stored(self._clock())
            held, at = self._buckets.get((sweep_id, resource), (burst, now))
            held = _as_stored(min(burst, held + (now - at) * rate) - tokens)
            self._buckets[sweep_id, resource] = (held, now)
        return 0.0 if held >= 0 else _as_stored(-held / rate)

    def share(self, sweep_id: str, resource: str) -> float:
        with self._lock:
            return self._shares.get((sweep_id, resource), (1.0, -math.inf))[0]

    def lower_share(self, sweep_id: str, resource: str, back_off: BackOff) -> float:
        with self._lock:
            now = _as_stored(self._clock())
            share, changed = self._shares.get((sweep_id, resource), (1.0, -math.inf))
            if now - changed >= back_off.cooldown_s:
                share, changed = _as_stored(max(back_off.floor, share * back_off.decrease)), now
            self._shares[sweep_id, resource] = (share, changed)
            return share

    def raise_share(self, sweep_id: str, resource: str, back_off: BackOff) -> float:
        with self._lock:
            now = _as_stored(self._clock())
            share, changed = self._shares.get((sweep_id, resource), (1.0, -math.inf))
            if share < 1 and now - changed >= back_off.increase_every_s:
                share, changed = _as_stored(min(1.0, share + back_off.step)), now
            self._shares[sweep_id, resource] = (share, changed)
            return share
