"""Is this worker fit to work? The start-up check and the HTTP probes Kubernetes asks.

At start the worker checks what every batch needs (the store opens and is ours, the key
provider answers with a current version, the broker answers) and the Celery options it was
given (pool, queues), and exits non-zero with one line naming what is broken, before Celery
says "ready": a broken configuration must not look like an idle, healthy fleet.

While it runs, ``--health-port`` serves two probes, each answered at once from what the
process already knows (a probe never waits on a service):

- ``/livez``: the main process's Celery event loop turns (a consumer timer beats every
  second) and consumes the store's queue. A loop silent for :func:`stall_limit` seconds is
  wedged (a deadlock, a call with no timeout), and a consumer that turns but takes no message
  works for nobody: both are 503, which a restart cures. 503 too until the loop first turns,
  so the startup probe waits for it. While Celery reconnects to the broker the answer is 200:
  a restart cannot bring Redis back, and Celery retries it on its own.
- ``/readyz``: Celery said ready, ``/livez`` passes with the consumer connected (503 at once
  while Celery reconnects to the broker), and the broker and the store answered the last
  check (:class:`Dependencies`: one thread, one ping and one empty listing every
  :data:`CHECK_INTERVAL_S` s, whatever the number of probes; the store connection is kept).
  Key Vault is not checked here: its operations are metered and shared with the tracker, and
  a batch meeting a vault outage already gives the slice back and retries it.

HTTP probes rather than ``celery inspect ping -d reencrypt@$HOSTNAME`` as an exec probe: that
starts a Python interpreter and a broker round trip through every worker's mailbox per probe,
and answers "the main process reads its mailbox", which the loop beat says too, for free.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from celery import Celery, bootsteps

from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import BrokerUnavailableError, ReencryptError, redact_url
from tracker_reencrypt.keys import open_key_provider
from tracker_reencrypt.keys.naming import KeyNaming
from tracker_reencrypt.logs import one_line
from tracker_reencrypt.plaintext_http import send_text
from tracker_reencrypt.stores import DocumentStore, open_store

PROBE_TIMEOUT_S = 2.0
#: How often the event loop beats the heartbeat (Celery's consumer timer).
BEAT_INTERVAL_S = 1.0
#: A loop silent this long is wedged (prefork; see :func:`stall_limit`).
LOOP_STALL_S = 30.0
#: A batch past its time bound: the Cosmos SDK's 429 retries (<= 30 s) and its commit.
BATCH_OVERRUN_S = 30.0
#: Seconds between two checks of the broker and the store (one query per check and pod).
CHECK_INTERVAL_S = 15.0
#: A check of the broker or the store still running after this long is a failure: the broker's
#: socket timeouts end its check sooner, a store SDK's retries may not.
CHECK_DEADLINE_S = 10.0

#: The pools a worker runs in. A process keeps one store connection, its key caches and the
#: pacing of the batch in hand for one batch at a time (worker/runtime.py), so pools that run
#: several tasks in one process (threads, eventlet, gevent) would share them between batches.
POOLS = ("prefork", "solo")


def _probe_client(redis_url: str) -> redis.Redis:
    """A Redis client that gives up within a probe's time."""
    return redis.Redis.from_url(redis_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)


def broker_answers(redis_url: str) -> bool:
    try:
        return bool(_probe_client(redis_url).ping())
    except (redis.RedisError, OSError):
        return False


def read_state(store: DocumentStore) -> None:
    """Read the sweep state (an empty listing): raises when the store does not answer."""
    store.records().list("sweep", prefix="~")


def check_configuration(settings: Settings, redis_url: str) -> None:
    """Raise the first problem as our one-line error; return when the worker can work."""
    settings.require("store", "keys")
    store = open_store(settings.store, partition_key_field=settings.partition_key_field)
    try:
        read_state(store)
    finally:
        store.close()
    provider = open_key_provider(settings.keys, settings.key_name)
    if KeyNaming(provider.key_name).per_product:
        provider.key_names()  # the keyring or vault answers; each product's key is looked up when met
    else:
        provider.current_kid()
    if not broker_answers(redis_url):
        raise BrokerUnavailableError(f"Redis at {redact_url(redis_url)} does not answer: start it or fix REDIS_URL")


def options_problem(
    pool: str,
    *,
    own_queue: str,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    autoscale: object = None,
    max_tasks_per_child: int | None = None,
    max_memory_per_child: int | None = None,
) -> str | None:
    """Why the Celery worker options given cannot run this worker, in one line; None if they can.

    A worker consumes its own store's queue and no other: a message of another store is sent
    on to that store's queue (worker/tasks.py), so a worker consuming that queue too would send
    its messages round in a loop."""
    if pool not in POOLS:
        return (
            f"--pool {pool} cannot run a reencrypt worker: each process works one batch at a time with its own store "
            f"connection and key caches; use prefork (the default) or solo"
        )
    others = sorted(set(queues or ()) - {own_queue})
    if others:
        return (
            f"--queues: a worker consumes only its store's queue ({own_queue}), not {', '.join(others)}: "
            f"start one worker per store, each with its own REENCRYPT_STORE"
        )
    if pool == "solo":
        prefork_only = {
            "--autoscale": autoscale,
            "--max-tasks-per-child": max_tasks_per_child,
            "--max-memory-per-child": max_memory_per_child,
        }
        for flag, value in prefork_only.items():
            if value:
                return f"{flag} tunes prefork's pool processes: the solo pool has none (drop it or use prefork)"
        if concurrency and concurrency > 1:
            return f"--concurrency {concurrency}: the solo pool runs one batch at a time (drop it or use prefork)"
    return None


def stall_limit(pool: str, batch_seconds: float) -> float:
    """Seconds without a turn of the event loop after which the worker is wedged. Under prefork
    the main process only hands messages to its pool processes and answers the broker: it never
    blocks for long. Under solo a batch runs in the loop, which waits for it."""
    if pool == "solo":
        return LOOP_STALL_S + batch_seconds + BATCH_OVERRUN_S
    return LOOP_STALL_S


class Heartbeat:
    """What ``/livez`` says, from the beats of Celery's event loop (:func:`install_heartbeat`).

    Pure: each call takes the time (monotonic seconds), so the verdicts are tested without
    waiting. The state is one tuple, replaced whole: the loop writes it, probe threads read it.
    """

    def __init__(self, stalled_after: float = LOOP_STALL_S, queue: str = "") -> None:
        self.stalled_after = stalled_after
        self.queue = queue
        self._state: tuple[str, float, bool] = ("starting", 0.0, False)

    def beat(self, now: float, consuming: bool) -> None:
        self._state = ("running", now, consuming)

    def pause(self, now: float) -> None:
        """The consumer stopped: Celery reconnects to the broker, or the worker shuts down."""
        self._state = ("paused", now, False)

    @property
    def paused(self) -> bool:
        return self._state[0] == "paused"

    def liveness(self, now: float) -> tuple[int, str]:
        kind, at, consuming = self._state
        if kind == "starting":
            return 503, "starting: Celery's event loop has not turned yet"
        if kind == "paused":
            return 200, f"consumer stopped {now - at:.0f}s ago: reconnecting to the broker (see /readyz) or stopping"
        silent = now - at
        if silent > self.stalled_after:
            return 503, f"wedged: the event loop has not turned for {silent:.0f}s (limit {self.stalled_after:.0f}s)"
        if not consuming:
            return 503, f"not consuming {self.queue}: the event loop turns but takes no message from the store's queue"
        return 200, f"alive: event loop turned {silent:.1f}s ago, consuming {self.queue}"


def install_heartbeat(app: Celery, heartbeat: Heartbeat) -> None:
    """Make the worker's consumer beat ``heartbeat`` from its own timer, which only the event
    loop fires: a wedged loop stops beating. Celery stops the step when the broker connection
    is lost (and clears its timer) and starts it again once reconnected."""

    class LoopBeat(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c) -> None:
            def beat() -> None:
                consumer = c.task_consumer
                heartbeat.beat(time.monotonic(), consumer is not None and consumer.consuming_from(heartbeat.queue))

            self.entry = c.timer.call_repeatedly(BEAT_INTERVAL_S, beat)

        def stop(self, c) -> None:
            entry = getattr(self, "entry", None)
            if entry is not None:
                entry.cancel()
            heartbeat.pause(time.monotonic())

        shutdown = stop

    app.steps["consumer"].add(LoopBeat)


@dataclass(frozen=True)
class Check:
    """The last look at the broker and the store: when it ended and what was wrong, if anything."""

    at: float
    problem: str | None


class Dependencies:
    """The broker and the store, checked by one thread every ``interval`` s; ``/readyz`` reads
    the last result. The store stays open between checks (a Cosmos client costs an Entra token
    and a TLS handshake to make) and is opened anew after a failure."""

    def __init__(
        self,
        redis_url: str,
        open_store: Callable[[], DocumentStore] | None,
        *,
        interval: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._open_store = open_store
        self._store: DocumentStore | None = None
        self._broker = _probe_client(redis_url)
        self._where = redact_url(redis_url)
        self.last: Check | None = None
        #: (what, since when) of the check under way: a check that hangs turns /readyz to 503.
        self.running: tuple[str, float] | None = None
        self._stop = threading.Event()

    def check_once(self) -> Check:
        problem = self._broker_problem() or self._store_problem()
        self.running = None
        self.last = Check(self.clock(), problem)
        return self.last

    def _broker_problem(self) -> str | None:
        self.running = ("broker", self.clock())
        try:
            self._broker.ping()
        except (redis.RedisError, OSError) as exc:
            return f"broker unreachable: Redis at {self._where} does not answer ({type(exc).__name__})"
        return None

    def _store_problem(self) -> str | None:
        if self._open_store is None:
            return None
        self.running = ("store", self.clock())
        try:
            if self._store is None:
                self._store = self._open_store()
            read_state(self._store)
        except Exception as exc:  # noqa: BLE001 - any failure of the store is the answer
            self._close_store()
            detail = str(exc) if isinstance(exc, ReencryptError) else type(exc).__name__
            return f"store unreachable: {one_line(detail)}"
        return None

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def readiness(self, now: float) -> tuple[int, str]:
        running, last = self.running, self.last
        if running is not None and now - running[1] > CHECK_DEADLINE_S:
            return 503, f"{running[0]} unreachable: its check has not ended for {now - running[1]:.0f}s"
        if last is None:
            return 503, "starting: broker and store not checked yet"
        if last.problem:
            return 503, last.problem
        if now - last.at > 2 * self.interval + CHECK_DEADLINE_S:
            return 503, f"broker and store not checked for {now - last.at:.0f}s"
        return 200, f"ready: broker and store answered {now - last.at:.0f}s ago"

    def start(self) -> None:
        """Check now, then every ``interval`` s, in a daemon thread, until :meth:`stop`."""

        def run() -> None:
            try:
                while True:
                    self.check_once()
                    if self._stop.wait(self.interval):
                        break
            finally:
                self._close_store()
                self._broker.close()

        threading.Thread(target=run, name="reencrypt-readiness", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class HealthServer:
    """``/livez`` and ``/readyz`` on ``port`` (all interfaces: the kubelet probes the pod IP)."""

    def __init__(
        self,
        port: int,
        heartbeat: Heartbeat,
        dependencies: Dependencies,
        *,
        bind: str = "0.0.0.0",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat = heartbeat
        self.dependencies = dependencies
        self.clock = clock
        #: Set when Celery says ready (worker_ready).
        self.ready = threading.Event()
        handler = _handler_for(self)
        self.server = ThreadingHTTPServer((bind, port), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="reencrypt-health", daemon=True).start()

    def liveness(self) -> tuple[int, str]:
        return self.heartbeat.liveness(self.clock())

    def readiness(self) -> tuple[int, str]:
        if not self.ready.is_set():
            return 503, "starting: Celery is not ready yet"
        code, text = self.liveness()
        if code != 200 or self.heartbeat.paused:  # paused: the consumer lost the broker, or stops
            return 503, text
        return self.dependencies.readiness(self.clock())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.dependencies.stop()


def _handler_for(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            if self.path == "/livez":
                code, text = health.liveness()
            elif self.path == "/readyz":
                code, text = health.readiness()
            else:
                code, text = 404, "try /livez or /readyz"
            send_text(self, code, text)

        def log_message(self, format, *args) -> None:  # probes every few seconds would drown the log
            pass

    return Probe
