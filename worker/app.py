"""The worker's Celery app: ``celery -A worker.app worker`` (or ``reencrypt worker``).

Settings come from the environment (``reencrypt worker`` sets it from its flags).
"""

from __future__ import annotations

import logging

from celery import signals

from tracker_reencrypt.config import load_settings
from tracker_reencrypt.fleet import PROCESS_SLICE, make_celery
from worker import metrics, runtime, tasks

settings = load_settings()
if not settings.redis_url:
    raise SystemExit("REDIS_URL is not set: start workers with 'reencrypt worker', which provides one")
app = make_celery(settings, settings.redis_url)


@app.task(name=PROCESS_SLICE, acks_late=True, reject_on_worker_lost=True)
def process_slice(sweep_id: str, index: int, fence: int) -> str:
    outcome = tasks.process_slice(app, runtime.current(settings, settings.redis_url), sweep_id, index, fence)
    logging.getLogger("reencrypt.worker").info("slice %s/%d: %s", sweep_id, index, outcome)
    return outcome


@signals.worker_init.connect
def _serve_metrics(**_) -> None:
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)


@signals.worker_process_shutdown.connect
def _forget_child(pid=None, **_) -> None:
    if pid:
        metrics.mark_child_dead(pid)
