"""The worker's Celery app: ``celery -A worker.app worker`` (or ``reencrypt worker``).

Settings come from the environment (``reencrypt worker`` sets it from its flags). The
configuration is checked on import, before Celery starts consuming: a broken one exits
non-zero with one line instead of a fleet that says "ready" and loops on errors.
"""

from __future__ import annotations

import logging

from celery import signals

from tracker_reencrypt.config import load_settings
from tracker_reencrypt.errors import ReencryptError
from tracker_reencrypt.fleet import PROCESS_SLICE, make_celery
from worker import health, lease_watch, metrics, runtime, tasks

# azure-core logs every HTTP request at INFO (URL and headers): one line per Key Vault call
# would bury the worker's own log. Its warnings and errors still show.
logging.getLogger("azure").setLevel(logging.WARNING)

try:
    settings = load_settings()
    if not settings.redis_url:
        raise SystemExit("error: REDIS_URL is not set: start workers with 'reencrypt worker', which provides one")
    app = make_celery(settings, settings.redis_url)
    health.check_configuration(settings, settings.redis_url)
except ReencryptError as exc:
    raise SystemExit(f"error: worker not started: {exc}") from None

_health: health.HealthServer | None = None


@app.task(name=PROCESS_SLICE, acks_late=True, reject_on_worker_lost=True)
def process_slice(sweep_id: str, index: int, fence: int, store: str | None = None) -> str:
    outcome = tasks.handle(app, lambda: runtime.current(settings, settings.redis_url), sweep_id, index, fence, store)
    logging.getLogger("reencrypt.worker").info("slice %s/%d: %s", sweep_id, index, outcome)
    return outcome


@signals.worker_init.connect
def _serve_metrics_and_probes(**_) -> None:
    global _health
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    if settings.health_port:
        _health = health.HealthServer(settings.health_port, settings.redis_url)


@signals.worker_ready.connect
def _start_watching(**_) -> None:
    lease_watch.start(app, settings)
    if _health is not None:
        _health.ready.set()


@signals.worker_process_shutdown.connect
def _forget_child(pid=None, **_) -> None:
    if pid:
        metrics.mark_child_dead(pid)
