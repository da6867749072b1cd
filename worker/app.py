"""The worker's Celery app: ``celery -A worker.app worker`` (or ``reencrypt worker``).

Settings come from the environment (``reencrypt worker`` sets it from its flags). Without
REDIS_URL the app takes the embedded Redis of $REENCRYPT_HOME when one answers there (it never
starts one), so ``celery -A worker.app inspect ping``, ``events`` and ``flower`` find the broker
of workers that ``reencrypt worker`` started on it.

A worker checks its configuration and its Celery options as it starts (``celeryd_init``, before
Celery consumes anything): a broken one exits non-zero with one line instead of a fleet that
says "ready" and loops on errors. The other Celery commands skip that check: a probe's
``inspect ping`` must not call the vault.

A message ends in Celery's own terms (worker/tasks.py, Outcome.verdict): SUCCESS; RETRY when
an outage gave the slice back, retried as Celery retries (the same task id, ``retries``
counted) but sent by the lease watch when the back-off kept with the slice is over; or
FAILURE (:class:`BatchFailed`) when it cannot succeed as it is (the sweep paused with the reason).

Logs: Celery's (``-l/--loglevel``), as text or, with ``REENCRYPT_LOG_FORMAT=json``, one JSON
object per line, Celery's own lines included (tracker_reencrypt/logs.py lists the fields; a
batch's lines carry its sweep and slice). The probes of ``--health-port``: worker/health.py.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import os
import sys

import celery.apps.worker
from celery import concurrency, signals
from celery.exceptions import Retry

from tracker_reencrypt import embedded_redis, logs
from tracker_reencrypt.config import Settings, load_settings
from tracker_reencrypt.errors import EXIT_BAD_INPUT, ReencryptError
from tracker_reencrypt.fleet import PROCESS_SLICE, make_celery
from tracker_reencrypt.stores import open_store
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
        raise logs.fatal(
            f"error: REDIS_URL is not set and no embedded Redis answers under {home} ($REENCRYPT_HOME): "
            "set REDIS_URL, or start workers with 'reencrypt worker', which provides one",
            EXIT_BAD_INPUT,
        )
    return settings.model_copy(update={"redis_url": embedded_redis.url_for(home)})


try:
    settings = _with_broker(load_settings())
    app = make_celery(settings, settings.redis_url)
except ReencryptError as exc:
    raise logs.fatal(f"error: worker app not loaded: {exc}", exc.exit_code) from None

_health: health.HealthServer | None = None
#: Beaten by the consumer's event loop (worker/health.py): what /livez answers from.
_heartbeat = health.Heartbeat(queue=app.conf.task_default_queue)
health.install_heartbeat(app, _heartbeat)


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
        # An outage before the slice was claimed: nothing durable says when to try again, so
        # Celery's own retry message does (sent now, raised below).
        retries.append(
            self.retry(
                args=[sweep_id, index, at_fence],
                kwargs={"store": store},
                countdown=delay,
                exc=tasks.BatchFailed(why),
                throw=False,
            )
        )

    with logs.context(sweep=sweep_id, slice=index, task_id=self.request.id, task_name=PROCESS_SLICE):
        outcome = tasks.handle(
            app,
            lambda: runtime.current(settings, settings.redis_url),
            sweep_id,
            index,
            fence,
            store,
            retry,
            task_id=self.request.id,
        )
        log.info("slice %s/%d: %s", sweep_id, index, outcome.text)
    if outcome.verdict == "retry":
        # A failed batch: its slice records the back-off and the lease watch sends the retry
        # (this task id, retries counted) when it is due; Celery is told RETRY without a message.
        raise retries[-1] if retries else Retry(exc=tasks.BatchFailed(outcome.cause), when=outcome.retry_in)
    if outcome.verdict == "failed":
        raise tasks.BatchFailed(outcome.text)
    return outcome.text


@signals.celeryd_init.connect
def _check_before_starting(instance=None, options=None, **_) -> None:
    """A worker only (not inspect, events or flower): its log format, its options, then what
    every batch needs."""
    try:
        if logs.configure() == logs.JSON:
            if instance is not None:
                instance.quiet = True  # Celery's banner: a block of text on stdout (its facts are logged)
            celery.apps.worker.safe_say = _say_as_json
    except ReencryptError as exc:
        raise logs.fatal(f"error: worker not started: {exc}", exc.exit_code) from None
    given = options or {}
    pool = _pool_name(given.get("pool") or given.get("pool_cls") or app.conf.worker_pool)
    _heartbeat.stalled_after = health.stall_limit(pool, settings.batch_seconds)
    problem = health.options_problem(
        pool,
        own_queue=app.conf.task_default_queue,
        queues=given.get("queues"),
        concurrency=given.get("concurrency"),
        autoscale=given.get("autoscale"),
        max_tasks_per_child=given.get("max_tasks_per_child"),
        max_memory_per_child=given.get("max_memory_per_child"),
    )
    if problem:
        raise logs.fatal(f"error: worker not started: {problem}", EXIT_BAD_INPUT)
    try:
        health.check_configuration(settings, settings.redis_url)
    except ReencryptError as exc:
        raise logs.fatal(f"error: worker not started: {exc}", exc.exit_code) from None


def _say_as_json(message: str, f=sys.__stderr__) -> None:
    """Celery's notices from its signal handlers ("worker: Warm shutdown (MainProcess)"), which
    it writes to the file descriptor itself (no logging in a signal handler), as a JSON line."""
    with contextlib.suppress(OSError):
        os.write(f.fileno(), (logs.json_line(message, logger="celery.apps.worker") + "\n").encode())


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger=None, **_) -> None:
    """Celery's handlers (root's, its task logger's, and the pool's multiprocessing logger)
    write JSON when asked."""
    if logs.log_format() == logs.JSON:
        for configured in (logger, multiprocessing.util.get_logger()):
            if configured is not None:
                logs.use_json(configured)


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
        dependencies = health.Dependencies(
            settings.redis_url,
            lambda: open_store(settings.store, partition_key_field=settings.partition_key_field),
        )
        _health = health.HealthServer(settings.health_port, _heartbeat, dependencies)


@signals.worker_ready.connect
def _start_watching(**_) -> None:
    lease_watch.start(app, settings)
    if _health is not None:
        _health.dependencies.start()  # after the pool's processes were forked: no thread of it in theirs
        _health.ready.set()


@signals.worker_process_shutdown.connect
def _forget_child(pid=None, **_) -> None:
    if pid:
        metrics.mark_child_dead(pid)
