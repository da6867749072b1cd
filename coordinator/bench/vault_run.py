"""The remote-vault mode of ``reencrypt bench``: the fleet sweeps through the Azure Key Vault
provider against the loopback vault (bench/vault.py), each call taking the chosen latency, with
or without a fleet Key Vault budget; the report sets unwraps/s against the budget and against
the sequential bound W/L.

No in-process references run here: against a vault the question is how close the fleet comes
to its budget, which the vault itself records (when each call started), not CPU per document.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from coordinator import steering
from coordinator.bench.containers import BenchContainers
from coordinator.bench.fleet import POLL_S, run_fleet
from coordinator.bench.options import BenchOptions
from coordinator.bench.results import Container, FleetRun
from coordinator.bench.vault import LoopbackVault
from coordinator.bench.vault_report import build_vault_report
from coordinator.context import Context
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.keys.azure import AzureKeyVaultProvider
from tracker_reencrypt.keys.products import ProductKeys

WORKER_COUNTS = (1, 2)


def run_vault_bench(
    parent: Context, options: BenchOptions, home: Path, run_dir: Path, progress: Console | None
) -> dict:
    """Seed a container under the loopback vault, then sweep a copy of it with W = 1 and 2."""
    assert options.vault_latency_ms is not None
    settings = parent.settings

    def say(text: str) -> None:
        if progress is not None:
            progress.print(text, markup=False, highlight=False)

    load_before = os.getloadavg()
    notes = []
    if settings.store or settings.keys:
        notes.append("the configured store and keys are not touched: this mode seeds its own SQLite container")
    containers = BenchContainers(settings, options, home, run_dir, progress, say)
    with LoopbackVault(options.vault_latency_ms / 1000) as vault:
        provider = vault.provider()
        try:
            container = containers.seeded_here(provider)
            target_kid = provider.rotate().kid
            say(f"sweeping {container.source_kid} -> {target_kid} at {options.vault_latency_ms:g} ms per vault call")
            vault.slow_down()
            fleets = {
                workers: _fleet(parent, options, containers, container, vault, provider, workers, target_kid, say)
                for workers in WORKER_COUNTS
            }
        finally:
            provider.close()
    return build_vault_report(
        container,
        fleets,
        target_kid=target_kid,
        options=options,
        settings=settings,
        notes=notes,
        load_before=load_before,
    )


def _fleet(
    parent: Context,
    options: BenchOptions,
    containers: BenchContainers,
    container: Container,
    vault: LoopbackVault,
    provider: AzureKeyVaultProvider,
    workers: int,
    target_kid: str,
    say: Callable[[str], None],
) -> FleetRun:
    name = f"fleet-w{workers}"
    store_url = containers.working_copy(name)
    ctx = Context(load_settings(store=store_url, keys=vault.keys_url, redis_url=parent.settings.redis_url))
    ctx.keys = ProductKeys(provider)  # the loopback vault, with its static token and CA
    try:
        run = run_fleet(
            ctx,
            workers,
            target_kid=target_kid,
            container=container,
            slices=options.slices,
            poll_s=POLL_S,
            log_dir=containers.run_dir / f"logs-w{workers}",
            say=say,
            limits=steering.LimitFlags(kv_ops_per_s=options.kv_ops_per_s),
            vault=vault,
        )
    finally:
        ctx.store.close()
        containers.drop_working_copy(name)
    assert run.vault is not None
    say(f"fleet W={workers}: {run.docs_per_s:,.0f} docs/s, {run.vault.unwraps_per_s:,.0f} unwraps/s at the vault")
    return run
