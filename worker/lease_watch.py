"""The fleet's lease watch: a slice whose worker died is taken over within its lease, not the
broker's visibility timeout, and a slice whose message was lost is sent a new one.

A worker killed mid-batch (``kill -9``, a node lost) leaves its slice leased and its message
unacknowledged; Redis would hand the message back only after the visibility timeout (15 min).
Every worker's main process therefore looks at the active sweep a few times per lease period
and sends each slice whose lease expired one rescue message (``SweepState.rescue_expired``
marks the fence, so a fleet of watchers sends one message per expiry, not one each). The same
look counts the messages the broker holds for the store's queue: when there are fewer than
slices nobody holds, and some of those have not moved for a minute, their messages were lost
(Redis restarted without its data, a send that failed after a commit) and they are re-queued,
once per fence, as many as are missing.

It also sends the retries of failed batches when their back-off is over: the back-off is kept
with the slice in the store (SweepState.back_off_slice), not in a countdown message that one
worker would hold in memory and lose with it. A retry is sent at most a look late.
"""

from __future__ import annotations

import logging
import threading

import redis

from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import ReencryptError
from tracker_reencrypt.fleet import pending_messages, recover
from tracker_reencrypt.stores import open_store
from tracker_reencrypt.sweep.state import SweepState

log = logging.getLogger("reencrypt.worker")

#: Looks per lease period: a dead worker's slice is taken over at most lease x (1 + 1/N) late.
LOOKS_PER_LEASE = 4


def start(app, settings: Settings) -> threading.Event:
    """Run the watch in a daemon thread of this process until the returned event is set."""
    stop = threading.Event()
    interval = max(0.5, settings.lease_seconds / LOOKS_PER_LEASE)

    def watch() -> None:
        store = open_store(settings.store, partition_key_field=settings.partition_key_field)
        state = SweepState(store.records())
        broker = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
        queue = app.conf.task_default_queue
        try:
            while not stop.wait(interval):
                try:
                    recover(app, state, lambda: sum(pending_messages(broker, queue)))
                except Exception as exc:  # noqa: BLE001 - an outage (store, broker): the next look tries again
                    log.warning("lease watch: %s", exc if isinstance(exc, ReencryptError) else type(exc).__name__)
        finally:
            broker.close()
            store.close()

    threading.Thread(target=watch, name="reencrypt-lease-watch", daemon=True).start()
    return stop
