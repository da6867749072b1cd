"""The interface behind which the fleet's pacing state lives, and the rule its shares follow.

For each sweep and resource (a :class:`~tracker_reencrypt.pacing.limits.Limit` label) a
backend keeps a token bucket and a share, and changes each in one atomic step, so any number
of callers (threads, processes, machines) see one bucket and one share. The steps are the
backend's; what to ask of them, and when, is written once in :mod:`.bucket` and :mod:`.share`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class BackOff:
    """How a share moves: multiplied by ``decrease`` on a 429, at most once per ``cooldown_s``
    fleet-wide (one burst of 429s seen by many workers counts once) and never below ``floor``;
    raised by ``step`` every ``increase_every_s`` without a 429, never past 1. The fleet thus
    settles just under what the service gives it."""

    floor: float = 0.05
    decrease: float = 0.5
    cooldown_s: float = 1.0
    step: float = 0.05
    increase_every_s: float = 5.0


class PacingBackend(Protocol):
    def reserve(self, sweep_id: str, resource: str, tokens: float, rate: float, burst: float) -> float:
        """Take ``tokens`` from the bucket (refilled at ``rate`` per second up to ``burst``) and
        return how many seconds the caller must wait before using them.

        The bucket goes into debt rather than refuse: every caller gets its tokens and waits
        for the debt before it, so reservations are first come, first served and a large
        request never starves behind small ones. A new bucket starts full.
        """

    def share(self, sweep_id: str, resource: str) -> float:
        """The share of the resource's limit the fleet uses now: 1.0 until a 429 lowers it."""

    def lower_share(self, sweep_id: str, resource: str, back_off: BackOff) -> float:
        """The service answered 429: lower the share as ``back_off`` says; returns the new share."""

    def raise_share(self, sweep_id: str, resource: str, back_off: BackOff) -> float:
        """No 429 lately: raise the share as ``back_off`` says; returns the new share."""
