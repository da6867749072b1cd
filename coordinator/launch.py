"""Starting worker processes: ``reencrypt worker`` and the fleets the demo and bench run."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from coordinator.context import Context, state_dir
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.fleet import store_queue

#: A worker's Celery node name: stable across restarts (``%h`` is the host's name: in Kubernetes
#: the pod's, in Compose the container's), so ``celery -A worker.app inspect ping -d
#: reencrypt@$HOSTNAME`` reaches it. Two workers on one host need a ``--hostname`` each.
DEFAULT_HOSTNAME = "reencrypt@%h"


@dataclass(frozen=True)
class WorkerOptions:
    """The Celery worker options ``reencrypt worker`` passes on. The worker itself refuses what
    it cannot run (worker/health.options_problem: another pool, another store's queue)."""

    #: Pool processes (None: 1; the solo pool has one).
    concurrency: int | None = None
    pool: str = "prefork"
    hostname: str = DEFAULT_HOSTNAME
    #: Celery task events (-E): Flower and ``celery events`` see every task's states.
    task_events: bool = False
    #: "MAX,MIN" pool processes (prefork), as Celery spells it.
    autoscale: str | None = None
    max_tasks_per_child: int | None = None
    #: KiB of resident memory after which a pool process is replaced (once its batch is done).
    max_memory_per_child: int | None = None
    #: The queues to consume (None: the store's own, the only one a worker serves).
    queues: tuple[str, ...] | None = None
    #: Worker events every 2 s, which Flower and ``celery events`` need to show a worker online.
    heartbeat: bool = True
    #: Off by default: every worker would receive every other's events (gossip) and wait for
    #: replies at start (mingle), for revokes, elections and clock sync the fleet never uses.
    gossip: bool = False
    mingle: bool = False
    loglevel: str = "INFO"


def fleet_hostname(number: int) -> str:
    """The node name of worker ``number`` of a fleet started on one host (demo, bench, tests)."""
    return f"reencrypt-{number}@%h"


def worker_environment(
    ctx: Context,
    metrics_port: int = 0,
    health_port: int = 0,
    task_events: bool = False,
    *,
    hostname: str = DEFAULT_HOSTNAME,
) -> dict[str, str]:
    """The environment a worker process reads its settings from (see tracker_reencrypt.config),
    with its metrics directory (metrics_dir) when it serves metrics."""
    settings = ctx.settings.require("store", "keys")
    env = dict(os.environ)
    # A flag given wins over the setting; an unset flag (0) leaves REENCRYPT_*_PORT as configured.
    metrics_port = metrics_port or settings.metrics_port
    env.update(
        REENCRYPT_STORE=settings.store,
        REENCRYPT_KEYS=settings.keys,
        REENCRYPT_KEY_NAME=settings.key_name,
        REDIS_URL=ctx.redis_url,
        REENCRYPT_METRICS_PORT=str(metrics_port),
        REENCRYPT_HEALTH_PORT=str(health_port or settings.health_port),
    )
    if task_events:  # its own sends (continuations, retries) then say "task-sent" too
        env["REENCRYPT_TASK_EVENTS"] = "1"
    # prometheus_client reads this when it is imported, so it must be set before Python starts.
    # Without a metrics port nobody reads the samples: none are written to files at all.
    if metrics_port:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir(hostname))
    else:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def metrics_dir(hostname: str) -> Path:
    """The prometheus_client multiprocess directory of the worker named ``hostname`` (its Celery
    node name, ``%h`` expanded): ``$REENCRYPT_HOME/metrics/<node name>``, emptied here at each start.

    One directory per node name, reused, not a new one per start: ``reencrypt worker`` becomes
    Celery (exec), so nothing of ours runs after it exits to remove a directory, and a killed
    worker would not either. The next start of the same worker empties and reuses it: starts
    leave nothing behind, however many. A fleet started by a command (WorkerFleet) removes it.

    Two live workers of one name on one host would wipe and then mix each other's samples, so
    the directory is held by a lock (``<node name>.lock`` beside it) for as long as its worker
    runs: the descriptor is inherited across the exec, and the kernel drops the lock when that
    process ends, however it ends. A second start of a name in use is refused before it deletes
    anything."""
    from celery.utils.nodenames import host_format

    name = host_format(hostname).replace(os.sep, "_")
    root = state_dir() / "metrics"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise ConfigError(
            f"a worker named {name} already runs on this host (it holds {root / name}): give this one "
            "another name with -n NAME@%h"
        ) from None
    os.set_inheritable(lock, True)
    directory = (root / name).resolve()
    shutil.rmtree(directory, ignore_errors=True)  # samples of an earlier run would be counted again
    directory.mkdir(mode=0o700)
    _held[directory] = lock
    return directory


#: The metrics directories this process holds, and their locks' descriptors.
_held: dict[Path, int] = {}


def release_metrics_dir(directory: Path) -> None:
    """Remove a directory this process holds and give it up (its fleet stopped): a later start
    may take the name."""
    shutil.rmtree(directory, ignore_errors=True)
    lock = _held.pop(Path(directory).resolve(), None)
    if lock is not None:
        os.close(lock)


def worker_argv(queue: str, options: WorkerOptions | None = None) -> list[str]:
    """``celery -A worker.app worker`` with ``options``, consuming ``queue`` (the store's)."""
    options = options or WorkerOptions()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "--queues",
        ",".join(options.queues or (queue,)),
        "--pool",
        options.pool,
        # -O fair: hand a task to a child only when it is free, so one slow batch never
        # holds a second task hostage in its pipe.
        "-O",
        "fair",
        "--loglevel",
        options.loglevel,
        "--hostname",
        options.hostname,
    ]
    if options.autoscale is None:
        argv += ["--concurrency", str(options.concurrency or 1)]
    else:
        argv += ["--autoscale", options.autoscale]
    if options.max_tasks_per_child is not None:
        argv += ["--max-tasks-per-child", str(options.max_tasks_per_child)]
    if options.max_memory_per_child is not None:
        argv += ["--max-memory-per-child", str(options.max_memory_per_child)]
    if options.task_events:
        argv.append("--task-events")
    for feature in ("heartbeat", "gossip", "mingle"):
        if not getattr(options, feature):
            argv.append(f"--without-{feature}")
    return argv


def exec_worker(ctx: Context, options: WorkerOptions, *, metrics_port: int, health_port: int) -> None:
    """Become the Celery worker (exec), so SIGTERM from an orchestrator reaches it directly."""
    env = worker_environment(ctx, metrics_port, health_port, options.task_events, hostname=options.hostname)
    os.execvpe(sys.executable, worker_argv(store_queue(ctx.settings), options), env)


class WorkerFleet:
    """Worker processes started and stopped by a command (demo, bench, tests)."""

    def __init__(self, ctx: Context, count: int, *, log_dir: Path, metrics_ports: list[int] | None = None) -> None:
        self.processes: list[subprocess.Popen] = []
        self.metrics_dirs: list[str] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        for number in range(count):
            port = metrics_ports[number] if metrics_ports else 0
            env = worker_environment(ctx, port, hostname=fleet_hostname(number))
            if "PROMETHEUS_MULTIPROC_DIR" in env:
                self.metrics_dirs.append(env["PROMETHEUS_MULTIPROC_DIR"])
            argv = worker_argv(store_queue(ctx.settings), WorkerOptions(hostname=fleet_hostname(number)))
            argv, env = self.adapted(argv, env)
            with open(log_dir / f"worker-{number}.log", "ab") as log:
                self.processes.append(
                    subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                )

    def adapted(self, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """A worker's command line and environment as this fleet runs them: as made, here; a
        fleet of another Celery app or environment (bench's loopback-vault workers) changes them."""
        return argv, env

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
            release_metrics_dir(Path(directory))

    def __enter__(self) -> WorkerFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
