"""The embedded Redis: one server per home however many commands start at once, a stale
socket from a killed server does not block a start, the test fixtures leave a Redis they did
not start alone, and the home directory holding keys and the socket stays out of git."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tracker_reencrypt import embedded_redis

from conftest import ROOT, TEST_DB, process_alive, wait_for

STARTERS = 6

#: One command starting the embedded Redis: it says it is ready, blocks until its stdin closes so
#: all starters race, then prints the URL it got and the process id of the server behind it.
STARTER = """
import sys
from pathlib import Path
import redis
from tracker_reencrypt import embedded_redis
home = Path(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
url = embedded_redis.ensure_running(home)
print(url, redis.Redis.from_url(url).info("server")["process_id"])
"""


def _servers_of(home: Path) -> list[int]:
    """Pids of the redis-server processes working in ``home`` (the embedded one chdirs there)."""
    if not Path("/proc/self/cwd").exists():
        pytest.skip("needs /proc to find the redis-server processes of a home")
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and Path(os.readlink(entry / "cwd")) == home.resolve()
                and process_alive(int(entry.name))
            ):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to inspect
    return found


@pytest.fixture
def home(tmp_path):
    """A fresh REENCRYPT_HOME; every server started in it is gone after the test."""
    home = tmp_path / "home"
    yield home
    embedded_redis.stop(home)
    for pid in _servers_of(home):  # the extra servers a racing start left behind
        os.kill(pid, signal.SIGKILL)


def _race_starters(home: Path) -> list[tuple[str, str]]:
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(home)],
            cwd=ROOT,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(STARTERS)
    ]
    for starter in starters:
        assert starter.stdout.readline() == "ready\n"
    for starter in starters:  # the go signal: closing stdin wakes them all at once
        starter.stdin.close()
    answers = []
    for starter in starters:
        out = starter.stdout.read()
        assert starter.wait(timeout=60) == 0, f"a starter failed: {out!r}"
        answers.append(tuple(out.split()))
    return answers


def test_concurrent_starters_share_one_server(home):
    answers = _race_starters(home)

    assert {url for url, _ in answers} == {embedded_redis.url_for(home)}
    assert len({pid for _, pid in answers}) == 1, f"starters reached different servers: {answers}"
    assert _servers_of(home) == [int(answers[0][1])], "more than one redis-server runs for one home"
    assert (home / "redis.pid").read_text().strip() == answers[0][1]


def test_socket_left_by_killed_server_does_not_block_a_start(home):
    embedded_redis.ensure_running(home)
    killed = int((home / "redis.pid").read_text())
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: not process_alive(killed), 10, interval=0.05, message="killed redis-server to exit")
    assert (home / "redis.sock").exists() and not embedded_redis.is_running(home)

    url = embedded_redis.ensure_running(home)

    assert redis.Redis.from_url(url).info("server")["process_id"] != killed
    assert redis.Redis.from_url(url).set("still-usable", 1)


def test_stop_then_start_again(home):
    embedded_redis.ensure_running(home)
    embedded_redis.stop(home)
    assert not embedded_redis.is_running(home) and _servers_of(home) == []

    assert redis.Redis.from_url(embedded_redis.ensure_running(home)).ping()


def test_redis_url_flushes_only_a_server_the_tests_started(request, redis_server_url):
    """Without REDIS_URL the tests flush their private server; a given REDIS_URL is never flushed."""
    client = redis.Redis.from_url(f"{redis_server_url}/{TEST_DB}")
    marker = f"tracker-reencrypt-test-marker-{os.getpid()}"
    client.set(marker, 1, ex=60)
    try:
        request.getfixturevalue("redis_url")
        assert client.exists(marker) == (1 if os.environ.get("REDIS_URL") else 0)
    finally:
        client.delete(marker)
        client.close()


def test_tests_start_their_own_redis_unless_told(redis_server_url):
    if os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL names the Redis to use")
    server_pid = redis.Redis.from_url(redis_server_url).info("server")["process_id"]
    parent_pid = int(Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert parent_pid == os.getpid(), "the tests use a Redis they did not start"


def test_reencrypt_home_is_ignored_by_git():
    """.reencrypt/ holds the demo keyring's private keys and the embedded Redis socket."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("git or the repository is absent")
    ignored = subprocess.run([git, "check-ignore", "-q", ".reencrypt/keyring.json"], cwd=ROOT)
    assert ignored.returncode == 0, ".reencrypt/ is not in .gitignore"
