"""The CLI's habits (issue 18) against real servers: one JSON shape for a sweep whichever command
prints it (Redis: conftest's), the embedded Redis shown and stopped by ``reencrypt
embedded-redis`` (never one it did not start), and the completion script bash gets.

The in-process checks (help, exit codes, settings, keyring, audit, metrics directory) are
tests/unit/test_cli_conventions.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from tracker_reencrypt import embedded_redis
from tracker_reencrypt.sweep.records import Sweep

from conftest import ROOT, process_alive, run_cli, wait_for

# -- one shape for a sweep -------------------------------------------------------------------------


@pytest.fixture
def reencrypt(monkeypatch, capsys, tmp_path, redis_url):
    """``reencrypt ARGS`` through main(), in-process: (exit code, stdout, stderr)."""
    from coordinator.cli import main

    for name in [n for n in os.environ if n.startswith("REENCRYPT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REENCRYPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REENCRYPT_STORE", f"sqlite:///{tmp_path / 'tracker.db'}")
    monkeypatch.setenv("REENCRYPT_KEYS", f"local:{tmp_path / 'keyring.json'}")
    monkeypatch.setenv("REDIS_URL", redis_url)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["reencrypt", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        shown = capsys.readouterr()
        return exited.value.code, shown.out, shown.err

    return run


def test_every_command_acting_on_a_sweep_prints_the_same_sweep_object(reencrypt):
    for args in (("keys", "init"), ("seed", "--docs", "30"), ("keys", "rotate")):
        assert reencrypt(*args)[0] == 0
    fields = [name for name in Sweep(id="", target_kid="", mode="", status="running").to_record()]

    def sweep_json(*args: str) -> dict:
        code, out, err = reencrypt(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    started = sweep_json("sweep", "start", "--to", "current", "--slices", "2")  # no worker: stays running
    sweep_id = started["id"]
    shapes = {
        "start": started,
        "throttle": sweep_json("sweep", "throttle", sweep_id, "--rate", "5"),
        "pause": sweep_json("sweep", "pause"),  # the latest, by default
        "resume": sweep_json("sweep", "resume", sweep_id),
        "status --all": sweep_json("sweep", "status", "--all")[0],
        "status": sweep_json("sweep", "status", sweep_id)["sweep"],
        "cancel": sweep_json("sweep", "cancel", sweep_id),
    }
    for command, shape in shapes.items():
        extra = ["slices_queued"] if command == "resume" else []
        assert list(shape) == fields + extra, command
        assert shape["id"] == sweep_id, command
    assert [shapes[c]["status"] for c in ("start", "pause", "resume", "cancel")] == [
        "running",
        "paused",
        "running",
        "cancelled",
    ]
    assert (shapes["throttle"]["rate"], shapes["resume"]["slices_queued"]) == (5, 2)


# -- the embedded Redis of a home ----------------------------------------------------------------


@pytest.fixture
def home():
    """A short REENCRYPT_HOME (the socket path must stay under ~100 bytes); its server stopped after."""
    home = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    yield home
    try:
        embedded_redis.stop(home)
    except Exception:  # a server the test started itself: the test kills it
        pass
    shutil.rmtree(home, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_") and k != "REDIS_URL"}
    env["REENCRYPT_HOME"] = str(home)
    return env


def test_embedded_redis_status_and_stop(home):
    env = _env(home)
    idle = run_cli("embedded-redis", "status", "--json", env=env)
    assert idle.returncode == 0 and json.loads(idle.stdout)["running"] is False, idle.stderr
    assert not (home / "redis.sock").exists(), "status started a server"

    embedded_redis.ensure_running(home)
    pid = int((home / "redis.pid").read_text())
    shown = json.loads(run_cli("embedded-redis", "status", "--json", env=env).stdout)
    assert {k: shown[k] for k in ("home", "socket", "running", "ours", "pid", "clients")} == {
        "home": str(home.resolve()),
        "socket": str((home / "redis.sock").resolve()),
        "running": True,
        "ours": True,
        "pid": pid,
        "clients": 0,
    }
    assert shown["uptime_s"] >= 0 and shown["used_memory_bytes"] > 0
    human = run_cli("embedded-redis", "status", env=env).stdout
    assert f"pid {pid}" in human and "memory" in human and "0 other clients" in human

    worker_like = redis.Redis(unix_socket_path=str(home / "redis.sock"))
    worker_like.ping()
    try:
        refused = run_cli("embedded-redis", "stop", env=env)
        assert refused.returncode == 1 and refused.stderr.startswith("error: 1 other clients are connected")
        assert "--force" in refused.stderr and process_alive(pid)
    finally:
        worker_like.close()

    stopped = run_cli("embedded-redis", "stop", env=env)
    assert stopped.returncode == 0 and f"stopped the embedded Redis of {home.resolve()} (pid {pid})" in stopped.stdout
    wait_for(lambda: not process_alive(pid), 10, interval=0.05, message="the server to exit")
    again = run_cli("embedded-redis", "stop", env=env)
    assert again.returncode == 0 and "nothing to stop" in again.stdout


def test_a_redis_reencrypt_did_not_start_is_never_stopped(home):
    """A server on the home's socket that the home's pid file does not name: refused, even forced."""
    foreign = subprocess.Popen(
        [embedded_redis._server_binary(), "--port", "0", "--unixsocket", str(home / "redis.sock"), "--save", ""],
        stdout=subprocess.DEVNULL,
        cwd=home,
    )
    try:
        wait_for(lambda: embedded_redis.is_running(home), 10, interval=0.05, message="the foreign server")
        env = _env(home)
        shown = json.loads(run_cli("embedded-redis", "status", "--json", env=env).stdout)
        assert (shown["running"], shown["ours"], shown["pid"]) == (True, False, foreign.pid)
        refused = run_cli("embedded-redis", "stop", "--force", env=env)
        assert refused.returncode == 1 and "was not started by reencrypt" in refused.stderr, refused.stderr
        assert foreign.poll() is None and embedded_redis.is_running(home)
    finally:
        foreign.send_signal(signal.SIGKILL)
        foreign.wait()


# -- shell completion --------------------------------------------------------------------------------


def test_show_completion_prints_the_script_of_the_shell_it_runs_in(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = Path(sys.executable).parent / "reencrypt"
    # "; true": bash would exec a lone command, and the shell to detect is the parent process.
    shown = subprocess.run(
        [bash, "-c", f"{script} --show-completion; true"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "complete -o default -F _reencrypt_completion reencrypt" in shown.stdout, shown.stderr
    assert "_REENCRYPT_COMPLETE=complete_bash" in shown.stdout
