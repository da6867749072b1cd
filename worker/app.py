"""The worker's Celery app: ``celery -A worker.app worker`` (or ``reencrypt worker``).

Settings come from the environment (``reencrypt worker`` sets it from its flags). Without
REDIS_URL the app takes the embedded Redis of $REENCRYPT_HOME when one answers there (it never
starts one), so ``celery -A worker.app inspect ping``, ``events`` and ``flower`` find the broker
of workers that ``reencrypt worker`` started on it.

A worker checks its configuration and its Celery options as it starts (``celeryd_init``, before
Celery consumes anything): a broken one exits non-zero with one line instead of a fleet that
says "ready" and loops on errors. The other Celery commands skip that check: a probe's
``inspect ping`` must not call the vault.

A message ends in Celery's own terms (worker/tasks.py, Outcome.verdict): SUCCESS; RETRY with
Celery's retry (the same task id, ``retries`` counted) when an outage gave the slice back; or
FAILURE (:class:`BatchFailed`) when it cannot succeed as it is (the sweep paused with the reason).
"""

from __future__ import annotations

import logging

from celery import concurrency, signals

from tracker_reencrypt import embedded_redis
from tracker_reencrypt.config import Settings, load_settings
from tracker_reencrypt.errors import ReencryptError
from tracker_reencrypt.fleet import PROCESS_SLICE, make_celery
from worker import health, lease_watch, metrics, runtime, tasks

# azure-core logs every HTTP request at INFO (URL and headers): one line per Key Vault call
# would bury the worker's own log. Its warnings and errors still show.
logging.getLogger("azure").setLevel(logging.WARNING)
log = logging.getLogger("reencrypt.worker")


def _with_broker(settings: Settings) -> Settings:
    """The settings with REDIS_URL, or else the embedded Redis of $REENCRYPT_HOME if it answers."""
    if settings.redis_url:
        return settings
    home = embedded_redis.home()
    if not embedded_redis.is_running(home):
        raise SystemExit(
            f"error: REDIS_URL is not set and no embedded Redis answers under {home} ($REENCRYPT_HOME): "
            "set REDIS_URL, or start workers with 'reencrypt worker', which provides one"
        )
    return settings.model_copy(update={"redis_url": embedded_redis.url_for(home)})


try:
    settings = _with_broker(load_settings())
    app = make_celery(settings, settings.redis_url)
except ReencryptError as exc:
    raise SystemExit(f"error: worker app not loaded: {exc}") from None

_health: health.HealthServer | None = None


@app.task(
    bind=True,
    name=PROCESS_SLICE,
    acks_late=True,
    reject_on_worker_lost=True,
    # The sweep bounds nothing by count: an outage is retried with back-off for as long as it
    # lasts (worker/tasks.py), and what cannot succeed pauses the sweep instead.
    max_retries=None,
    # Expected: logged by Celery in one line without a traceback (the worker logged why).
    throws=(tasks.BatchFailed,),
)
def process_slice(self, sweep_id: str, index: int, fence: int, store: str | None = None) -> str:
    retries = []

    def retry(at_fence: int, delay: float, why: str) -> None:
        # Sent now (before the sweep record is touched, see tasks._give_back), raised below.
        # A failed batch's claim moved the slice's fence on: the retry must name the new one.
        retries.append(
            self.retry(
                args=[sweep_id, index, at_fence],
                kwargs={"store": store},
                countdown=delay,
                exc=tasks.BatchFailed(why),
                throw=False,
            )
        )

    outcome = tasks.handle(
        app, lambda: runtime.current(settings, settings.redis_url), sweep_id, index, fence, store, retry
    )
    log.info("slice %s/%d: %s", sweep_id, index, outcome.text)
    if outcome.verdict == "retry" and retries:
        raise retries[-1]
    if outcome.verdict == "failed":
        raise tasks.BatchFailed(outcome.text)
    return outcome.text


@signals.celeryd_init.connect
def _check_before_starting(options=None, **_) -> None:
    """A worker only (not inspect, events or flower): its options, then what every batch needs."""
    given = options or {}
    problem = health.options_problem(
        _pool_name(given.get("pool") or given.get("pool_cls") or app.conf.worker_pool),
        own_queue=app.conf.task_default_queue,
        queues=given.get("queues"),
        concurrency=given.get("concurrency"),
        autoscale=given.get("autoscale"),
        max_tasks_per_child=given.get("max_tasks_per_child"),
        max_memory_per_child=given.get("max_memory_per_child"),
    )
    if problem:
        raise SystemExit(f"error: worker not started: {problem}")
    try:
        health.check_configuration(settings, settings.redis_url)
    except ReencryptError as exc:
        raise SystemExit(f"error: worker not started: {exc}") from None


def _pool_name(pool: object) -> str:
    """Celery's name of a pool given by name or as the class the worker command resolved."""
    if isinstance(pool, str):
        return pool
    where = f"{getattr(pool, '__module__', '')}:{getattr(pool, '__qualname__', pool)}"
    return next((alias for alias, path in concurrency.ALIASES.items() if path == where), where)


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
