"""A fleet-wide token bucket: one sweep's rate limit on one resource, over any backend."""

from __future__ import annotations

import time
from collections.abc import Callable

from tracker_reencrypt.errors import SweepError
from tracker_reencrypt.pacing.backend import PacingBackend


class TokenBucket:
    """``take(n, rate)`` blocks until ``n`` tokens may be spent at ``rate`` per second.

    Up to ``burst_seconds`` of the rate may be spent at once after a quiet spell; the rate is
    given per call, so a 'sweep throttle' (or a lowered share) applies from the next call.
    """

    def __init__(
        self,
        backend: PacingBackend,
        sweep_id: str,
        resource: str,
        *,
        burst_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend, self.sweep_id, self.resource = backend, sweep_id, resource
        self.burst_seconds = burst_seconds
        self._sleep = sleep

    def reserve(self, tokens: float, rate: float) -> float:
        """Take ``tokens`` now and return how many seconds the caller must wait before using them."""
        if rate <= 0:
            raise SweepError(f"rate for {self.resource} of sweep {self.sweep_id} must be positive, got {rate}")
        # A request larger than the burst is granted too, and paid for by the callers after it.
        burst = max(rate * self.burst_seconds, tokens)
        return self.backend.reserve(self.sweep_id, self.resource, tokens, rate, burst)

    def take(self, tokens: float, rate: float | None) -> float:
        """Block until ``tokens`` are ours; no limit when ``rate`` is None. Returns the wait."""
        if not rate or tokens <= 0:
            return 0.0
        wait = self.reserve(tokens, rate)
        if wait > 0:
            self._sleep(wait)
        return wait
