"""The Celery side both halves share: the app's configuration, the task's name, its queue.

The coordinator enqueues work by task *name* (``send_task``) and the worker registers the
task under that name, so neither imports the other.

Each container's tasks go to a queue of its own, ``reencrypt-<store fingerprint>``, and every
message names that fingerprint too: a worker started with another ``REENCRYPT_STORE`` never
consumes them (it listens on its own queue), and a message that reaches the wrong worker
anyway is sent on to its own queue instead of being acknowledged and lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import redis
from celery import Celery

from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.stores import store_fingerprint
from tracker_reencrypt.sweep.records import RUNNING, Slice
from tracker_reencrypt.sweep.state import SweepState

log = logging.getLogger("reencrypt.fleet")

PROCESS_SLICE = "reencrypt.process_slice"
QUEUE_PREFIX = "reencrypt-"


def queue_for(fingerprint: str) -> str:
    """The task queue of the container with this store fingerprint."""
    return f"{QUEUE_PREFIX}{fingerprint}"


def store_queue(settings: Settings) -> str:
    """The queue of the container ``settings.store`` names; ``REENCRYPT_QUEUE``, when set (the
    Kubernetes manifests set it for KEDA), must agree with it."""
    queue = queue_for(store_fingerprint(settings.require("store").store))
    if settings.queue and settings.queue != queue:
        raise ConfigError(
            f"REENCRYPT_QUEUE={settings.queue} is not the queue of REENCRYPT_STORE ({queue}): "
            f"set it to the output of 'reencrypt queue'"
        )
    return queue


def make_celery(settings: Settings, redis_url: str) -> Celery:
    app = Celery("tracker_reencrypt", broker=celery_broker_url(redis_url), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=store_queue(settings),
        task_ignore_result=True,
        # A task is acknowledged only once it finished, and a worker process dying under it
        # puts it back: no slice batch is ever lost with a worker.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One reserved task per process: scaling down or a crash strands as little as possible.
        worker_prefetch_multiplier=1,
        # Redelivery of unacknowledged tasks; must exceed any batch (and any retry countdown).
        # Kombu looks for overdue messages only every restore interval x throttle (10 s x 10
        # by default): scan often enough that a dead worker's batch comes back soon after the
        # visibility timeout, not up to 100 s later.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_seconds // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        # Said explicitly (Celery 5 warns on every reconnect until it is): when the broker
        # connection drops, a running batch goes on and commits its checkpoint to the store,
        # which does not need Redis. Its acknowledgement is lost with the connection, so Redis
        # hands the message out again after the visibility timeout, and the slice's fence,
        # moved by the commit, drops it. Cancelling (True, Celery 6's default) would kill every
        # batch at each Redis failover and leave its slice until the lease expired.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        # Task events (Flower, `celery events`): off unless asked for (`reencrypt worker -E`,
        # REENCRYPT_TASK_EVENTS=1), since each task state is one more message on the broker.
        # The senders' "task-sent" goes with them, so Flower shows a task from its sending on.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
    )
    return app


def enqueue_slice(
    app: Celery,
    sweep_id: str,
    index: int,
    fence: int,
    countdown: float = 0,
    fingerprint: str | None = None,
    retry_of: Slice | None = None,
) -> None:
    """Queue one batch of work on a slice, naming the fence the task must find and the store it
    belongs to (by default the app's own store; a misrouted message is sent on to its own).

    ``retry_of``: the slice, its back-off after a failed batch over. The message is the failed
    task's retry as Celery's own would be: the same task id, its retries counted."""
    queue = queue_for(fingerprint) if fingerprint else app.conf.task_default_queue
    as_retry = {"task_id": retry_of.retry_task_id, "retries": retry_of.error_retries} if retry_of else {}
    app.send_task(
        PROCESS_SLICE,
        args=[sweep_id, index, fence],
        kwargs={"store": queue[len(QUEUE_PREFIX) :]},
        countdown=countdown or None,
        queue=queue,
        **as_retry,
    )


def celery_broker_url(redis_url: str) -> str:
    """Kombu spells a Redis Unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://") :]
    return redis_url


#: Kombu's Redis transport keeps one list per priority step: the queue's own name for
#: priority 0 (every message we send) and ``<queue>\x06\x16<step>`` for the others.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
#: The hash where kombu keeps messages delivered but not yet acknowledged (in progress, or
#: held by a worker until their countdown): field delivery tag, value [message, exchange, routing key].
UNACKED_KEY = "unacked"


def pending_messages(client: redis.Redis, queue: str) -> tuple[int, int]:
    """(messages waiting in ``queue`` over every priority list, messages of ``queue`` delivered
    to a worker and not yet acknowledged)."""
    pipe = client.pipeline(transaction=False)
    for step in PRIORITY_STEPS:
        pipe.llen(queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}")
    pipe.hvals(UNACKED_KEY)
    *waiting, unacked = pipe.execute()
    return sum(waiting), sum(1 for value in unacked if _routing_key(value) == queue)


def _routing_key(unacked_value: bytes) -> str | None:
    try:
        return json.loads(unacked_value)[2]
    except (ValueError, IndexError, TypeError):
        return None


#: A slice nobody holds that has not moved for this long, while the broker holds fewer messages
#: than there are such slices, lost its message.
STALL_S = 60.0


def recover(app: Celery, state: SweepState, count_waiting: Callable[[], int]) -> int:
    """One look of the fleet's recovery, by every worker's lease watch and ``sweep start
    --wait``: over the running sweep (none: nothing to do), the expired leases rescued, the due
    retries sent, then the lost messages re-queued (``count_waiting``: the messages the broker
    holds for this store's queue, counted after the first two sent theirs). How many were sent."""
    sweep_id = state.active_sweep_id()
    if not sweep_id or state.get_sweep(sweep_id).status != RUNNING:
        return 0
    expired = rescue_expired_leases(app, state, sweep_id)
    retried = send_due_retries(app, state, sweep_id)
    return len(expired) + len(retried) + len(requeue_lost_messages(app, state, sweep_id, count_waiting()))


def rescue_expired_leases(app: Celery, state: SweepState, sweep_id: str) -> list[tuple[int, int]]:
    """Re-queue, once per expiry, every slice of the sweep whose lease expired (its worker
    died): see SweepState.rescue_expired."""
    return _send_rescues(app, state, sweep_id, state.rescue_expired(sweep_id))


def requeue_lost_messages(app: Celery, state: SweepState, sweep_id: str, waiting: int) -> list[tuple[int, int]]:
    """Re-queue, once per fence, the slices of the sweep whose message was lost: those nobody
    holds that have not moved for STALL_S, as many as the broker (``waiting`` messages of this
    store's queue) is short of."""
    now = state.clock()
    # A slice waiting out a back-off has no message by design (send_due_retries sends it).
    idle = sum(
        1
        for piece in state.slices(sweep_id)
        if not piece.done and not piece.lease_is_live(now) and piece.retry_at <= now
    )
    if idle <= waiting:
        return []
    return _send_rescues(app, state, sweep_id, state.rescue_stalled(sweep_id, STALL_S, idle - waiting))


def send_due_retries(app: Celery, state: SweepState, sweep_id: str) -> list[tuple[int, int]]:
    """Send, once each, the retries of the sweep's slices whose back-off after a failed batch is
    over (SweepState.back_off_slice recorded when): the durable half of Celery's retry, so that
    no retry waits in a worker's memory."""
    sent = []
    # A send that fails (the broker down) leaves its slice, and the due ones after it, idle
    # without a message: requeue_lost_messages sends them once the broker answers.
    for piece in state.due_retries(sweep_id):
        enqueue_slice(app, sweep_id, piece.index, piece.fence, retry_of=piece)
        log.info("slice %s/%d: back-off over; retry %d sent", sweep_id, piece.index, piece.error_retries)
        sent.append((piece.index, piece.fence))
    return sent


def _send_rescues(app: Celery, state: SweepState, sweep_id: str, rescued: list[tuple[int, int]]) -> list:
    for sent, (index, fence) in enumerate(rescued):
        try:
            enqueue_slice(app, sweep_id, index, fence)
        except Exception:
            for unsent_index, unsent_fence in rescued[sent:]:  # this one and the rest: the next look sends them
                state.unmark_rescue(sweep_id, unsent_index, unsent_fence)
            raise
        log.warning("slice %s/%d: its worker died or its message was lost; re-queued", sweep_id, index)
    return rescued
