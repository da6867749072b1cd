"""Celery's own tools on the fleet (issue 18): Flower, started as docker-compose.yml starts it,
shows a sweep's tasks from their sending on, a batch that cannot succeed as FAILURE (the sweep
paused with the reason) and the resumed ones as SUCCESS, on the node name the worker was given,
which `celery -A worker.app inspect ping -d` reaches; and `celery -A worker.app inspect` finds
the embedded broker of `reencrypt worker` without REDIS_URL, never starting one itself."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from tracker_reencrypt import embedded_redis
from tracker_reencrypt.fleet import celery_broker_url, pending_messages
from tracker_reencrypt.sweep.records import COMPLETED, PAUSED
from tracker_reencrypt.sweep.state import SweepState

from conftest import ROOT, Rotation, celery_inspect, free_port, run_cli, wait_for


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def cli_worker(*options: str) -> list[str]:
    return [sys.executable, "-m", "coordinator.cli", "worker", *options]


def sweep_status(rotation: Rotation, sweep_id: str) -> str:
    store = rotation.store()
    try:
        return SweepState(store.records()).get_sweep(sweep_id).status
    finally:
        store.close()


# -- Flower -------------------------------------------------------------------------------------


def flower_service() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]


def flower_argv(port: int) -> list[str]:
    """The compose service's command, run by this venv's Celery on a free loopback port."""
    command = flower_service()["command"]
    assert command[:2] == ["celery", "flower"] and "--port=5555" in command, command
    return [sys.executable, "-m", *[f"--port={port}" if arg == "--port=5555" else arg for arg in command]] + [
        "--address=127.0.0.1"
    ]


def compose_value(value: object) -> str:
    """A compose environment value with ``${NAME:-default}`` interpolated as Compose does (from a
    shell with none of our variables set: the defaults)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda found: found.group(2), str(value))


def flower_env(redis_url: str) -> dict[str, str]:
    """The compose service's environment, its broker being the test Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REENCRYPT_", "CELERY_", "FLOWER_"))}
    env.update({name: compose_value(value) for name, value in flower_service()["environment"].items()})
    env["CELERY_BROKER_URL"] = celery_broker_url(redis_url)
    return env


def require_flower() -> None:
    try:
        import flower  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("flower is not installed: it is a test dependency (pip install -e '.[test]')")
        pytest.skip("flower is not installed (pip install -e '.[test]')")


def flower_get(port: int, path: str):
    """Flower's answer to GET ``path`` (JSON decoded when it is), None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            body = answer.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body


def flower_tasks(port: int) -> dict[str, dict]:
    return flower_get(port, "/api/tasks") or {}


def test_flower_shows_the_sweeps_tasks_as_failed_and_succeeded_on_the_workers_node_name(rotation, tmp_path):
    require_flower()
    provider = rotation.provider()
    provider.rotate()  # v3 current, so the sweep's target v2 can be disabled under it
    env = rotation.env(REENCRYPT_TASK_EVENTS="1")  # the CLI's sends say "task-sent" too
    port = free_port()
    flower = spawn(flower_argv(port), flower_env(rotation.redis_url), tmp_path / "flower.log", cwd=tmp_path)
    worker = None
    try:
        wait_for(lambda: flower_get(port, "/healthcheck") == "OK", 30, message="Flower to answer")
        started = run_cli("sweep", "start", "--to", rotation.v2, "--slices", "2", "--json", env=env)
        assert started.returncode == 0, started.stderr
        sweep_id = json.loads(started.stdout)["id"]
        # Seen as sent before any worker runs (which also shows Flower is listening to events).
        sent = wait_for(lambda: len(flower_tasks(port)) == 2 and flower_tasks(port), 30, message="the sent tasks")
        assert {task["state"] for task in sent.values()} == {"PENDING"}, sent

        provider.set_enabled(rotation.v2, False)  # the first batch cannot succeed as it is
        worker = spawn(cli_worker("-E", "-n", "flower-probe@%h"), env, tmp_path / "worker.log")
        node = f"flower-probe@{socket.gethostname()}"
        pinged = wait_for(
            lambda: (answer := celery_inspect("ping", "-d", node, env=env)).returncode == 0 and answer,
            30,
            message=f"{node} to answer ping",
        )
        assert "pong" in pinged.stdout

        wait_for(lambda: sweep_status(rotation, sweep_id) == PAUSED, 30, message="the sweep to pause")
        failed = wait_for(
            lambda: {i: t for i, t in flower_tasks(port).items() if t["state"] == "FAILURE"},
            30,
            message="a FAILURE in Flower",
        )
        ((failed_id, task),) = failed.items()
        assert task["worker"] == node and task["name"] == "reencrypt.process_slice"
        assert "BatchFailed" in task["exception"] and "disabled" in task["exception"], task["exception"]
        with redis.Redis.from_url(rotation.redis_url) as broker:  # acknowledged, not redelivered
            wait_for(lambda: pending_messages(broker, rotation.queue()) == (0, 0), 30, message="an empty queue")

        provider.set_enabled(rotation.v2, True)
        resumed = run_cli("sweep", "resume", sweep_id, env=env)
        assert resumed.returncode == 0, resumed.stderr
        wait_for(lambda: sweep_status(rotation, sweep_id) == COMPLETED, 60, message="the sweep to complete")

        def all_ended() -> dict[str, dict] | None:
            tasks = flower_tasks(port)
            return tasks if all(t["state"] in ("SUCCESS", "FAILURE") for t in tasks.values()) else None

        tasks = wait_for(all_ended, 30, message="every task ended in Flower")
        assert [i for i, t in tasks.items() if t["state"] == "FAILURE"] == [failed_id]
        assert len(tasks) >= 4  # the two sent at the start, the two resumed
        assert all(t["worker"] == node and t["sent"] for t in tasks.values()), tasks
        assert "'slice done'" in {t["result"] for t in tasks.values()}
    finally:
        stop(worker)
        stop(flower)


# -- the embedded broker ------------------------------------------------------------------------


def test_celery_inspect_finds_the_embedded_broker_and_the_stable_node_name(rotation, tmp_path):
    home = tmp_path / "home"
    env = rotation.env(REENCRYPT_HOME=str(home))
    env.pop("REDIS_URL")
    refused = celery_inspect("ping", env=env)
    lines = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: REDIS_URL is not set") and str(home) in lines[0], lines
    assert not embedded_redis.is_running(home), "an inspect started a Redis"

    worker = spawn(cli_worker(), env, tmp_path / "worker.log")  # starts the embedded Redis
    try:
        node = f"reencrypt@{socket.gethostname()}"  # the default name, the same at every start
        pinged = wait_for(
            lambda: (answer := celery_inspect("ping", "-d", node, env=env)).returncode == 0 and answer,
            30,
            message=f"{node} to answer ping on the embedded broker",
        )
        assert "pong" in pinged.stdout
    finally:
        stop(worker)
        embedded_redis.stop(home)
