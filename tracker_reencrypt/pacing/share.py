"""The share of a limit the whole fleet uses: cut after 429s, restored while the service is calm.

The sweep shares Key Vault's transaction quota and Cosmos's request units with the live
tracker, whose own load varies. A limit is what the operator allows at most; the service may
give less. The share (kept by the backend, so every process slows down together) scales the
limit to what the service gives: a token bucket then spends at ``limit x share``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tracker_reencrypt.pacing.backend import BackOff, PacingBackend

#: A calm worker (no 429) reads the fleet's share at most this often. Once per page it was a
#: Redis round trip per 100 documents, 5% of a worker's time; a 429 elsewhere in the fleet
#: still reaches every worker within this long.
CALM_SYNC_S = 1.0


class AdaptiveShare:
    """One sweep's share of one resource's limit (``kv_ops``, ``request_units``), as this
    process last learnt it from the backend."""

    def __init__(
        self,
        backend: PacingBackend,
        sweep_id: str,
        resource: str,
        *,
        back_off: BackOff = BackOff(),
        calm_sync_s: float = CALM_SYNC_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend, self.sweep_id, self.resource = backend, sweep_id, resource
        self.back_off, self.calm_sync_s = back_off, calm_sync_s
        self._clock = clock
        # Workers build one per batch: it must start at the fleet's share, not at 1, or every
        # batch's first page would spend the whole limit after a 429.
        self.share = backend.share(sweep_id, resource)
        self._synced_at = clock()

    def throttled(self) -> float:
        """The service said 429: the whole fleet slows down. Returns the new share."""
        return self._synced(self.backend.lower_share(self.sweep_id, self.resource, self.back_off))

    def calm(self) -> float:
        """No 429 since the last page: the whole fleet speeds up a little (never past the limit)."""
        if self._clock() - self._synced_at < min(self.calm_sync_s, self.back_off.increase_every_s):
            return self.share
        return self._synced(self.backend.raise_share(self.sweep_id, self.resource, self.back_off))

    def _synced(self, share: float) -> float:
        self.share, self._synced_at = share, self._clock()
        return share
