"""Is this worker fit to work? The start-up check and the HTTP probes Kubernetes asks.

At start the worker checks what every batch needs (the store opens and is ours, the key
provider answers with a current version, the broker answers) and the Celery options it was
given (pool, queues), and exits non-zero with one line naming what is broken, before Celery
says "ready": a broken configuration must not look like an idle, healthy fleet.

While it runs, ``--health-port`` serves ``/livez`` (the main process answers) and ``/readyz``
(the start-up check passed and the broker answers now) for liveness and readiness probes.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import BrokerUnavailableError, redact_url
from tracker_reencrypt.keys import open_key_provider
from tracker_reencrypt.keys.naming import KeyNaming
from tracker_reencrypt.stores import open_store

PROBE_TIMEOUT_S = 2.0

#: The pools a worker runs in. A process keeps one store connection, its key caches and the
#: pacing of the batch in hand for one batch at a time (worker/runtime.py), so pools that run
#: several tasks in one process (threads, eventlet, gevent) would share them between batches.
POOLS = ("prefork", "solo")


def broker_answers(redis_url: str) -> bool:
    try:
        return bool(
            redis.Redis.from_url(
                redis_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
            ).ping()
        )
    except (redis.RedisError, OSError):
        return False


def check_configuration(settings: Settings, redis_url: str) -> None:
    """Raise the first problem as our one-line error; return when the worker can work."""
    settings.require("store", "keys")
    store = open_store(settings.store, partition_key_field=settings.partition_key_field)
    try:
        store.records().list("sweep", prefix="~")  # the state is readable (an empty listing)
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


class HealthServer:
    """``/livez`` and ``/readyz`` on ``port`` (all interfaces: the kubelet probes the pod IP)."""

    def __init__(self, port: int, redis_url: str, *, bind: str = "0.0.0.0") -> None:
        self.redis_url = redis_url
        self.ready = threading.Event()
        handler = _handler_for(self)
        self.server = ThreadingHTTPServer((bind, port), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="reencrypt-health", daemon=True).start()

    def readiness(self) -> tuple[int, str]:
        if not self.ready.is_set():
            return 503, "starting"
        if not broker_answers(self.redis_url):
            return 503, "broker unreachable"
        return 200, "ready"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
            if self.path == "/livez":
                code, text = 200, "alive"
            elif self.path == "/readyz":
                code, text = health.readiness()
            else:
                code, text = 404, "try /livez or /readyz"
            body = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # probes every few seconds would drown the log
            pass

    return Probe
