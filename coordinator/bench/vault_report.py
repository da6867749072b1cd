"""The remote-vault mode's report: unwraps/s against the budget and the sequential bound, as JSON
and in its human form."""

from __future__ import annotations

import os
from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from coordinator.bench.notes import busy_notes_of, vault_notes
from coordinator.bench.options import BenchOptions
from coordinator.bench.report import machine, percent, targets_table, wide
from coordinator.bench.results import WINDOW_S, Container, FleetRun
from coordinator.bench.scrape import MB
from coordinator.bench.targets import vault_targets
from tracker_reencrypt.config import Settings

KEYS = "Azure Key Vault provider (the real SDK) against the loopback vault of tests/keyvault_server.py"


def build_vault_report(
    container: Container,
    fleets: dict[int, FleetRun],
    *,
    target_kid: str,
    options: BenchOptions,
    settings: Settings,
    notes: list[str],
    load_before: tuple[float, float, float],
) -> dict:
    """Every figure of the report: each fleet's run, its vault figures, the targets and the notes."""
    latency_ms = float(options.vault_latency_ms or 0.0)
    report = {
        "mode": "remote-vault",
        "docs": container.documents,
        "dek_share": options.dek_share,
        "seed": options.seed,
        "source_kid": container.source_kid,
        "target_kid": target_kid,
        "store": "SQLite (a fresh copy of the seeded file per run)",
        "keys": KEYS,
        "vault_latency_ms": latency_ms,
        "kv_ops_per_s": options.kv_ops_per_s,
        "window_s": WINDOW_S,
        "machine": {**machine(), "load_before": _rounded(load_before), "load_after": _rounded(os.getloadavg())},
        "worker_settings": {
            "batch_documents": settings.batch_documents,
            "batch_seconds": settings.batch_seconds,
            "page_size": settings.page_size,
            "slices": options.slices,
            "unwrap_concurrency": settings.unwrap_concurrency,
            "unwrap_rate": settings.unwrap_rate,
            "redis": "REDIS_URL" if settings.redis_url else "embedded",
        },
        "container": asdict(container),
        "distinct_source_deks": container.distinct_source_deks,
        "fleets": [_figures(run, latency_ms, settings) for _, run in sorted(fleets.items())],
        "runs": {"fleet": [run.as_json() for _, run in sorted(fleets.items())]},
    }
    report["targets"] = [asdict(t) for t in vault_targets(report)]
    report["notes"] = (
        notes
        + busy_notes_of([(f"fleet W={w}", run.other_cores) for w, run in sorted(fleets.items())])
        + vault_notes(latency_ms, options.kv_ops_per_s, settings.unwrap_rate)
    )
    return report


def _figures(run: FleetRun, latency_ms: float, settings: Settings) -> dict:
    """One fleet's unwraps/s, set against the limit it keeps to, the sequential bound and its pool's."""
    calls = run.vault
    assert calls is not None
    limit = calls.limit_per_s
    sequential = run.workers / (latency_ms / 1000) if latency_ms > 0 else None
    rate = calls.steady_unwraps_per_s if calls.steady_unwraps_per_s is not None else calls.unwraps_per_s
    mean = calls.mean_latency_ms
    return {
        "workers": run.workers,
        "documents": run.documents,
        "seconds": run.seconds,
        "docs_per_s": round(run.docs_per_s, 1),
        "unwraps": run.unwraps,
        "sweep_unwraps_per_s": round(run.unwraps / run.seconds, 1),
        "vault_unwraps_per_s": calls.unwraps_per_s,
        "steady_unwraps_per_s": calls.steady_unwraps_per_s,
        # The rate set against the limit: the steady one, or the whole span's when too short for it.
        "judged_unwraps_per_s": rate,
        "limit_per_s": limit,
        "steady_vs_limit": round(rate / limit, 3),
        "sequential_bound_per_s": sequential,
        "vs_sequential_bound": round(rate / sequential, 2) if sequential else None,
        "pool_bound_per_s": round(run.workers * settings.unwrap_concurrency * 1000 / mean, 1) if mean else None,
        "max_window_per_s": calls.max_window_per_s,
        "max_window_vs_limit": round(calls.max_window_per_s / limit, 3),
        "max_window_after_first_per_s": calls.max_window_after_first_per_s,
        "burst_used_calls": calls.burst_used_calls,
        "burst_used_s": round(calls.burst_used_calls / limit, 2),
        "max_in_flight": calls.max_in_flight,
        "mean_latency_ms": mean,
        "vault_calls": calls.calls,
        "peak_rss_mb_per_worker": run.peak_rss_mb_per_worker,
        "rss_growth_mb_per_worker": run.rss_growth_mb_per_worker,
        "worker_cores": run.worker_cores,
        "vault_cores": run.bench_cores,
        "other_cores": run.other_cores,
    }


def _rounded(load: tuple[float, ...]) -> list[float]:
    return [round(value, 2) for value in load]


def render_vault_report(console: Console, report: dict) -> None:
    """The human form: what was measured, the per-fleet table, the targets and the notes."""
    console = wide(console)

    def line(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False, highlight=False)

    container, ws, machine_ = report["container"], report["worker_settings"], report["machine"]
    budget = report["kv_ops_per_s"]
    line(
        f"reencrypt bench (remote vault): {report['docs']:,} documents, {container['fields']:,} encrypted fields, "
        f"{container['document_bytes'] / MB:,.1f} MiB, {report['distinct_source_deks']:,} distinct source DEKs "
        f"(--dek-share {report['dek_share']}); {report['vault_latency_ms']:g} ms per vault call; "
        + (f"fleet Key Vault budget {budget:g} calls/s" if budget else "no Key Vault budget")
    )
    line(
        f"machine: {machine_['cpus']} CPUs ({machine_['processor']}), Python {machine_['python']}; load average "
        f"before {' / '.join(map(str, machine_['load_before']))}, after {' / '.join(map(str, machine_['load_after']))}"
    )
    line(f"store: {report['store']}; keys: {report['keys']}; Redis: {ws['redis']}")
    line(
        f"workers: concurrency 1 each; batch {ws['batch_documents']} documents / {ws['batch_seconds']:g} s, page "
        f"{ws['page_size']}, {ws['slices']} slices; unwraps in flight per process {ws['unwrap_concurrency']} "
        f"(REENCRYPT_UNWRAP_CONCURRENCY), ceiling without a budget {ws['unwrap_rate']:g}/s (REENCRYPT_UNWRAP_RATE)"
    )
    console.print(_fleet_table(report))
    console.print(targets_table(report))
    for note in report["notes"]:
        line(f"- {note}")


def _fleet_table(report: dict) -> Table:
    limit = "of budget" if report["kv_ops_per_s"] else "of ceiling"
    table = Table(
        "W",
        "docs/s",
        "unwraps",
        "/s sweep",
        "/s steady",
        limit,
        "W/L",
        "x W/L",
        f"busiest {report['window_s']:g} s",
        limit,
        "in flight",
        "ms/call",
        "RSS MiB",
        "worker cores",
        "vault cores",
        "other cores",
        title="remote vault: unwraps/s (sweep, steady) against the limit and the sequential bound W/L; vault calls/s "
        "in the busiest window",
    )
    for fleet in report["fleets"]:
        table.add_row(
            str(fleet["workers"]),
            f"{fleet['docs_per_s']:,.0f}",
            f"{fleet['unwraps']:,}",
            f"{fleet['sweep_unwraps_per_s']:,.0f}",
            _number(fleet["steady_unwraps_per_s"]),
            percent(fleet["steady_vs_limit"]),
            _number(fleet["sequential_bound_per_s"]),
            "-" if fleet["vs_sequential_bound"] is None else f"{fleet['vs_sequential_bound']:.2f}",
            f"{fleet['max_window_per_s']:,.0f}",
            percent(fleet["max_window_vs_limit"]),
            str(fleet["max_in_flight"]),
            "-" if fleet["mean_latency_ms"] is None else f"{fleet['mean_latency_ms']:.1f}",
            " / ".join(f"{mb:.0f}" for mb in fleet["peak_rss_mb_per_worker"]),
            f"{fleet['worker_cores']:.2f}",
            f"{fleet['vault_cores']:.2f}",
            f"{fleet['other_cores']:.2f}",
        )
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
