"""A fleet run: W worker processes sweep the container, timed from ``sweep start`` until the
sweep record says it finished, their memory sampled meanwhile and their metrics read after."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from coordinator import steering
from coordinator.bench.measure import Stopwatch, cpu_share
from coordinator.bench.results import Container, FleetRun, VaultCalls, vault_calls
from coordinator.bench.scrape import Samples, metric, scrape_settled, tree_rss_mb
from coordinator.bench.vault import LoopbackVault
from coordinator.context import Context
from coordinator.launch import WorkerFleet
from tracker_reencrypt.errors import ConfigError, SweepError
from tracker_reencrypt.sweep.records import COMPLETED, FINISHED

POLL_S = 0.02  # sweep status (SQLite: a one-row read); the fleet's end is seen at most this late
REMOTE_POLL_S = 1.0  # sweep status on a billed store
SAMPLE_RSS_S = 0.5
READY_TIMEOUT_S = 60.0
#: A benchmark sweep that scans nothing for this long is reported as stuck.
STALL_S = 120.0


def run_fleet(
    ctx: Context,
    workers: int,
    *,
    target_kid: str,
    container: Container,
    slices: int,
    poll_s: float,
    log_dir: Path,
    say: Callable[[str], None],
    limits: steering.LimitFlags | None = None,
    vault: LoopbackVault | None = None,
) -> FleetRun:
    """Start ``workers`` processes, wait until they consume, sweep to ``target_kid`` under
    ``limits`` and measure it; with ``vault``, its workers reach that loopback vault and the
    vault's own record of the calls is measured too."""
    limits = limits or steering.LimitFlags()
    ports = [_free_port() for _ in range(workers)]
    clock = Stopwatch()
    start_workers = vault.worker_fleet if vault is not None else WorkerFleet
    with start_workers(ctx, workers, log_dir=log_dir, metrics_ports=ports) as fleet:
        _wait_ready(fleet, log_dir)
        say(f"fleet W={workers}: workers ready, sweep starts")
        memory = _WorkerMemory(fleet, container.documents)
        mark: dict[str, int] = {}
        if vault is not None:
            vault.reset_in_flight()
            mark = vault.mark()
        with cpu_share([process.pid for process in fleet.processes]) as cores, clock.span():
            sweep = steering.start(ctx, to=target_kid, sources=[], mode="reencrypt", slices=slices, limits=limits)
            status = _await_finish(ctx, fleet, sweep.id, memory, poll_s=poll_s, log_dir=log_dir)
        memory.sample_peak()
        totals = ctx.state.totals(sweep.id)
        scraped = scrape_settled(ports, totals["documents_scanned"])
        limit = limits.kv_ops_per_s or workers * ctx.settings.unwrap_rate
        calls = _vault_calls(vault, mark, scraped, limit) if vault is not None else None
    if status != COMPLETED:
        raise SweepError(
            f"benchmark sweep {sweep.id} ended {status} ({totals['failures']} failures); worker logs in {log_dir}"
        )

    def total(name: str, **labels: str) -> float:
        return sum(metric(samples, name, **labels) for samples in scraped)

    return FleetRun(
        workers=workers,
        seconds=round(clock.seconds, 3),
        documents=totals["documents_scanned"],
        fields=totals["fields_reencrypted"],
        document_bytes=container.document_bytes,
        unwraps=int(total("reencrypt_keyvault_calls_total", operation="unwrap")),
        wraps=int(total("reencrypt_keyvault_calls_total", operation="wrap")),
        dek_cache_hits=int(total("reencrypt_dek_cache_total", result="hit")),
        dek_cache_misses=int(total("reencrypt_dek_cache_total", result="miss")),
        request_units=total("reencrypt_store_request_units_total"),
        batch_seconds=round(total("reencrypt_batch_duration_seconds_sum"), 3),
        batches=int(total("reencrypt_batch_duration_seconds_count")),
        key_seconds=round(total("reencrypt_keyvault_latency_seconds_sum"), 3),
        peak_rss_mb_per_worker=[round(mb, 1) for mb in memory.peak],
        rss_growth_mb_per_worker=[round(growth, 1) for growth in memory.growth()],
        status=status,
        failures=totals["failures"],
        worker_cores=cores.workers,
        other_cores=cores.others,
        bench_cores=cores.bench,
        vault=calls,
    )


def _vault_calls(vault: LoopbackVault, mark: dict[str, int], scraped: list[Samples], limit: float) -> VaultCalls:
    """The vault's record of the run's calls, with the mean unwrap latency the workers timed.
    ``limit``: the fleet's Key Vault budget, or (none set) its processes' own ceilings together."""
    calls = vault_calls(vault.starts_since(mark), vault.max_in_flight(), limit)
    seconds = sum(metric(s, "reencrypt_keyvault_latency_seconds_sum", operation="unwrap") for s in scraped)
    count = sum(metric(s, "reencrypt_keyvault_latency_seconds_count", operation="unwrap") for s in scraped)
    calls.mean_latency_ms = round(1000 * seconds / count, 2) if count else None
    return calls


class _WorkerMemory:
    """Each worker's peak RSS, and its RSS when a tenth of the container had been scanned."""

    def __init__(self, fleet: WorkerFleet, documents: int) -> None:
        self.pids = [process.pid for process in fleet.processes]
        self.documents = documents
        self.peak = [0.0] * len(self.pids)
        self.at_tenth: list[float | None] = [None] * len(self.pids)

    def sample(self, scanned: int) -> None:
        for number, pid in enumerate(self.pids):
            rss = tree_rss_mb(pid)
            self.peak[number] = max(self.peak[number], rss)
            if self.at_tenth[number] is None and scanned >= self.documents / 10:
                self.at_tenth[number] = rss

    def sample_peak(self) -> None:
        for number, pid in enumerate(self.pids):
            self.peak[number] = max(self.peak[number], tree_rss_mb(pid))

    def growth(self) -> list[float]:
        """Peak minus the RSS at a tenth (0 for a worker the sweep outran before a sample at a tenth)."""
        return [
            peak - (tenth if tenth is not None else peak) for peak, tenth in zip(self.peak, self.at_tenth, strict=True)
        ]


def _await_finish(
    ctx: Context, fleet: WorkerFleet, sweep_id: str, memory: _WorkerMemory, *, poll_s: float, log_dir: Path
) -> str:
    """Poll the sweep record until it is finished (its status), sampling the workers' memory
    meanwhile; a dead worker or a sweep that stalls is an error."""
    sampled, scanned, moved_at = float("-inf"), -1, time.monotonic()
    while True:
        status = ctx.state.get_sweep(sweep_id).status
        if status in FINISHED:
            return status
        now = time.monotonic()
        _check_alive(fleet, log_dir)
        if now - sampled >= SAMPLE_RSS_S:
            sampled = now
            before, scanned = scanned, ctx.state.totals(sweep_id)["documents_scanned"]
            if scanned != before:
                moved_at = now
            elif now - moved_at > STALL_S:
                raise SweepError(
                    f"benchmark sweep {sweep_id} made no progress for {STALL_S:.0f}s; worker logs in {log_dir}"
                )
            memory.sample(scanned)
        time.sleep(poll_s)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(fleet: WorkerFleet, log_dir: Path) -> None:
    """Until every worker has logged 'ready.' (connected to the broker, consuming)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    logs = [log_dir / f"worker-{number}.log" for number in range(len(fleet.processes))]
    while not all(log.exists() and " ready." in log.read_text(errors="replace") for log in logs):
        _check_alive(fleet, log_dir)
        if time.monotonic() > deadline:
            raise ConfigError(f"bench workers not ready after {READY_TIMEOUT_S:.0f}s: see {log_dir}")
        time.sleep(0.1)


def _check_alive(fleet: WorkerFleet, log_dir: Path) -> None:
    for number, process in enumerate(fleet.processes):
        if process.poll() is not None:
            tail = (log_dir / f"worker-{number}.log").read_text(errors="replace")[-800:]
            raise SweepError(f"bench worker {number} exited with code {process.returncode}; log tail:\n{tail}")
