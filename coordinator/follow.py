"""Following a sweep from the coordinator (``sweep start --wait``, ``sweep status --watch``):
what the operator must be told, and the little recovery a follower may do.

A follower started with ``--wait`` also keeps the sweep moving when its messages went missing,
with the same marked re-queues the workers' lease watch sends (tracker_reencrypt/fleet.py): a
slice whose worker died, once per expired lease, and a slice idle for fleet.STALL_S, once per
fence and only while the broker holds fewer messages for the sweep's queue than there are idle
slices (so a busy fleet with a long queue is never flooded with duplicates).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from kombu.exceptions import OperationalError

from coordinator import steering
from coordinator.context import Context
from tracker_reencrypt.errors import redact_url
from tracker_reencrypt.fleet import pending_messages, recover, store_queue
from tracker_reencrypt.sweep.records import RUNNING

log = logging.getLogger("reencrypt.follow")

#: A running sweep no worker has touched for this long gets a line saying so.
NO_WORKER_S = 30.0


def broker_text(ctx: Context) -> str:
    """Where the sweep's messages wait, for the operator (credentials redacted)."""
    return f"broker {redact_url(ctx.redis_url)} queue {store_queue(ctx.settings)}"


def no_worker_notice(ctx: Context, progress: steering.Progress, now: float | None = None) -> str:
    """A line for a running sweep no worker has touched for NO_WORKER_S, else ''."""
    if progress.sweep.status != RUNNING or progress.active_leases or not progress.slices:
        return ""
    idle = (now or time.time()) - max(piece.updated_at for piece in progress.slices)
    if idle < NO_WORKER_S:
        return ""
    return (
        f"no worker has taken a slice of this sweep for {idle:.0f} s: start workers with 'reencrypt worker' "
        f"on the same store ({broker_text(ctx)})"
    )


@dataclass
class Recovery:
    """The --wait follower's share of the fleet's recovery (fleet.py): the same marked re-queues
    the workers' lease watch sends, so it helps when no worker is watching and never doubles up."""

    ctx: Context

    def step(self, progress: steering.Progress) -> int:
        """Re-queue what needs it; returns how many messages were sent. A broker that does not
        answer is not this follower's to fix: it says so and tries again at the next refresh."""
        if progress.sweep.status != RUNNING:
            return 0
        try:
            return recover(self.ctx.celery, self.ctx.state, self._messages_waiting)
        except (redis.RedisError, OSError, OperationalError) as exc:
            log.warning("re-queuing skipped this time: the broker did not answer (%s)", type(exc).__name__)
            return 0

    def _messages_waiting(self) -> int:
        client = redis.Redis.from_url(self.ctx.redis_url, socket_connect_timeout=3, socket_timeout=3)
        try:
            return sum(pending_messages(client, store_queue(self.ctx.settings)))
        finally:
            client.close()
