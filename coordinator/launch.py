"""Starting worker processes: ``reencrypt worker`` and the fleets the demo and bench run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from coordinator.context import Context
from tracker_reencrypt.fleet import store_queue


def worker_environment(ctx: Context, metrics_port: int = 0, health_port: int = 0) -> dict[str, str]:
    """The environment a worker process reads its settings from (see tracker_reencrypt.config)."""
    settings = ctx.settings.require("store", "keys")
    env = dict(os.environ)
    # A flag given wins over the setting; an unset flag (0) leaves REENCRYPT_*_PORT as configured.
    env.update(
        REENCRYPT_STORE=settings.store,
        REENCRYPT_KEYS=settings.keys,
        REENCRYPT_KEY_NAME=settings.key_name,
        REDIS_URL=ctx.redis_url,
        REENCRYPT_METRICS_PORT=str(metrics_port or settings.metrics_port),
        REENCRYPT_HEALTH_PORT=str(health_port or settings.health_port),
    )
    # prometheus_client reads this when it is imported, so it must be set before Python starts.
    # A fresh directory per worker: stale files from an earlier run would be counted again.
    multiproc_dir = Path(tempfile.mkdtemp(prefix="reencrypt-metrics-"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    return env


def worker_argv(queue: str, concurrency: int, loglevel: str = "INFO") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "--queues",
        queue,
        "--concurrency",
        str(concurrency),
        # -O fair: hand a task to a child only when it is free, so one slow batch never
        # holds a second task hostage in its pipe.
        "-O",
        "fair",
        "--loglevel",
        loglevel,
        "--hostname",
        f"reencrypt-{uuid.uuid4().hex[:6]}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def exec_worker(ctx: Context, *, concurrency: int, metrics_port: int, health_port: int, loglevel: str) -> None:
    """Become the Celery worker (exec), so SIGTERM from an orchestrator reaches it directly."""
    env = worker_environment(ctx, metrics_port, health_port)
    os.execvpe(sys.executable, worker_argv(store_queue(ctx.settings), concurrency, loglevel), env)


class WorkerFleet:
    """Worker processes started and stopped by a command (demo, bench, tests)."""

    def __init__(self, ctx: Context, count: int, *, log_dir: Path, metrics_ports: list[int] | None = None) -> None:
        self.processes: list[subprocess.Popen] = []
        self.metrics_dirs: list[str] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            port = metrics_ports[number] if metrics_ports else 0
            env = worker_environment(ctx, port)
            self.metrics_dirs.append(env["PROMETHEUS_MULTIPROC_DIR"])
            log = open(log_dir / f"worker-{number}.log", "ab")
            self.processes.append(
                subprocess.Popen(
                    worker_argv(store_queue(ctx.settings), 1, "INFO"),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM: finish the batch in hand), then kill what lingers."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for directory in self.metrics_dirs:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> WorkerFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
