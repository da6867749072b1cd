"""The Celery side both halves share: the app's configuration and the task's name.

The coordinator enqueues work by task *name* (``send_task``) and the worker registers the
task under that name, so neither imports the other.
"""

from __future__ import annotations

from celery import Celery

from tracker_reencrypt.config import Settings

PROCESS_SLICE = "reencrypt.process_slice"
QUEUE = "reencrypt"


def make_celery(settings: Settings, redis_url: str) -> Celery:
    app = Celery("tracker_reencrypt", broker=celery_broker_url(redis_url), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
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
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def enqueue_slice(app: Celery, sweep_id: str, index: int, fence: int, countdown: float = 0) -> None:
    """Queue one batch of work on a slice, naming the fence the task must find."""
    app.send_task(PROCESS_SLICE, args=[sweep_id, index, fence], countdown=countdown or None, queue=QUEUE)


def celery_broker_url(redis_url: str) -> str:
    """Kombu spells a Redis Unix socket ``redis+socket://``; redis-py spells it ``unix://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://"):]
    return redis_url
