"""The bench's report: the JSON figures made from the runs, and their human form (rich tables)."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from coordinator.bench.notes import busy_notes, standing_notes
from coordinator.bench.options import BenchOptions
from coordinator.bench.results import Container, FleetRun, ReferenceRuns
from coordinator.bench.scrape import MB
from coordinator.bench.targets import targets
from tracker_reencrypt.config import Settings

#: Columns of the report when it is not printed to a terminal.
WIDE = 170


def build_report(
    container: Container,
    fleets: dict[int, FleetRun],
    refs: ReferenceRuns,
    *,
    target_kid: str,
    options: BenchOptions,
    settings: Settings,
    store: str,
    keys: str,
    remote_store: bool,
    notes: list[str],
) -> dict:
    """Every figure of the report, the ratios and time shares between them, the targets and the notes."""
    bound, naive, store_only = refs.bound, refs.naive, refs.store_only
    fleet = fleets[max(fleets)]
    w1 = fleets.get(1)
    cores = os.cpu_count() or 1
    per_core = fleet.docs_per_s / min(fleet.workers, cores)
    distinct_per_1000 = 1000 * container.distinct_source_deks / max(1, container.documents)
    # Re-keying plus the store's own cost, serially, in one process: the best a core could do
    # with no queue, checkpoint or contention at all. The bound leaves the store out.
    rekey_and_store = 1 / (1 / bound.docs_per_s + 1 / store_only.docs_per_s)
    ratios = {
        "fleet_vs_naive": round(fleet.docs_per_s / naive.docs_per_s, 2),
        "naive_vs_fleet": round(naive.docs_per_s / fleet.docs_per_s, 4),
        "bound_vs_fleet": round(bound.docs_per_s / fleet.docs_per_s, 3),
        "fleet_per_core_vs_bound": round(per_core / bound.docs_per_s, 3),
        "fleet_per_cpu_s_vs_bound": round(fleet.docs_per_cpu_s / bound.docs_per_cpu_s, 3),
        "rekey_and_store_docs_per_s": round(rekey_and_store, 1),
        "rekey_and_store_vs_bound": round(rekey_and_store / bound.docs_per_s, 3),
        "fleet_per_core_vs_rekey_and_store": round(per_core / rekey_and_store, 3),
        "w2_vs_w1": round(fleet.docs_per_s / w1.docs_per_s, 3) if w1 and fleet is not w1 else None,
        # One worker on one core: the bound plus the queue, checkpoint and store, nothing else.
        "w1_per_core_vs_bound": round(w1.docs_per_s / bound.docs_per_s, 3) if w1 and fleet is not w1 else None,
    }
    runs: dict[str, Any] = {
        "fleet": [fleets[w].as_json() for w in sorted(fleets)],
        "naive": naive.as_json(),
        "bound": bound.as_json(),
        "rekey_warm": refs.warm.as_json(),
        "store_only": store_only.as_json(),
    }
    fleet_json = runs["fleet"][-1]
    report = {
        "docs": container.documents,
        "dek_share": options.dek_share,
        "seed": options.seed,
        "sample": naive.documents,
        "source_kid": container.source_kid,
        "target_kid": target_kid,
        "store": store,
        "keys": keys,
        "machine": machine(),
        "worker_settings": {
            "batch_documents": settings.batch_documents,
            "batch_seconds": settings.batch_seconds,
            "page_size": settings.page_size,
            "slices": options.slices,
            "dek_max_uses": settings.dek_max_uses,
            "redis": "REDIS_URL" if settings.redis_url else "embedded",
        },
        "container": asdict(container),
        "fleet_workers": fleet.workers,
        "fleet_docs_per_s": fleet_json["docs_per_s"],
        "w1_docs_per_s": round(w1.docs_per_s, 1) if w1 else None,
        "naive_docs_per_s": runs["naive"]["docs_per_s"],
        "bound_docs_per_s": runs["bound"]["docs_per_s"],
        "rekey_warm_docs_per_s": runs["rekey_warm"]["docs_per_s"],
        "fleet_fields_per_s": fleet_json["fields_per_s"],
        "fleet_bytes_per_s": fleet_json["bytes_per_s"],
        "unwraps": fleet.unwraps,
        "w1_unwraps": w1.unwraps if w1 else None,
        "unwraps_per_1000_docs": fleet_json["unwraps_per_1000_docs"],
        "distinct_source_deks": container.distinct_source_deks,
        "distinct_source_deks_per_1000_docs": round(distinct_per_1000, 2),
        "dek_cache_hit_ratio": fleet_json["dek_cache_hit_ratio"],
        "peak_rss_mb_per_worker": max(fleet.peak_rss_mb_per_worker),
        "rss_growth_mb_per_worker": max(fleet.rss_growth_mb_per_worker),
        "request_units_per_doc": fleet_json["request_units_per_doc"],
        "key_calls_per_doc": fleet_json["key_calls_per_doc"],
        **ratios,
        "time_shares": _time_shares(fleet, refs),
        "runs": runs,
        "notes": notes
        + busy_notes(fleets, refs)
        + standing_notes(remote_store, naive.documents, bound.documents, container.documents),
    }
    report["targets"] = [asdict(t) for t in targets(report, fleets, refs, cores)]
    return report


def _time_shares(fleet: FleetRun, refs: ReferenceRuns) -> dict:
    """Where the largest fleet's worker time went. Batch and key provider time are measured
    by the workers themselves; re-keying and store time are estimated from the in-process
    runs (same functions, same data, one process, no contention). Re-keying with warm keys,
    on the sample: the workers' unwraps are already in the key provider's share."""
    slot_s = fleet.workers * fleet.seconds
    rekey_s = fleet.documents / refs.warm.docs_per_s
    store_s = fleet.documents / refs.store_only.docs_per_s
    return {
        "worker_seconds": round(slot_s, 2),
        "in_batches": round(fleet.batch_seconds / slot_s, 3),
        "key_provider": round(fleet.key_seconds / slot_s, 3),
        "rekey_cpu_estimate": round(rekey_s / slot_s, 3),
        "store_estimate": round(store_s / slot_s, 3),
        "batch_rest": round((fleet.batch_seconds - fleet.key_seconds - rekey_s - store_s) / slot_s, 3),
        "outside_batches": round(max(0.0, slot_s - fleet.batch_seconds) / slot_s, 3),
        "redis": None,
    }


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count() or 1,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _processor(),
    }


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: ask the platform module
    return platform.processor() or "unknown"


def wide(console: Console) -> Console:
    """``console``, or one that does not fold the tables at 80 columns when piped into a file."""
    return console if console.is_terminal else Console(file=console.file, width=WIDE, highlight=False)


def render_report(console: Console, report: dict) -> None:
    """The human form: what was measured, the throughput table, time shares, targets, notes."""
    if report.get("mode") == "remote-vault":
        from coordinator.bench.vault_report import render_vault_report

        render_vault_report(console, report)
        return
    console = wide(console)

    def line(text: str) -> None:
        console.print(text, soft_wrap=True)

    container, machine, ws = report["container"], report["machine"], report["worker_settings"]
    line(
        f"[bold]reencrypt bench[/]: {report['docs']:,} documents, {container['fields']:,} encrypted fields, "
        f"{container['document_bytes'] / MB:,.1f} MiB of documents, {report['distinct_source_deks']:,} distinct "
        f"source DEKs (--dek-share {report['dek_share']}); {report['source_kid']} -> {report['target_kid']}"
    )
    line(f"machine: {machine['cpus']} CPUs ({machine['processor']}), Python {machine['python']}")
    line(f"store: {report['store']}; keys: {report['keys']}; Redis: {ws['redis']}")
    line(
        f"workers: batch {ws['batch_documents']} documents / {ws['batch_seconds']:g} s, page {ws['page_size']}, "
        f"{ws['slices']} slices, DEK reuse {ws['dek_max_uses']} fields"
    )
    console.print(_throughput(report))
    spans = {name: report["runs"][name]["span_docs_per_s"] for name in ("bound", "rekey_warm", "store_only", "naive")}
    if len(spans["bound"]) > 1:
        line(
            f"the references ran in {len(spans['bound'])} spans around the fleets (before W=1, between, after W=2), "
            "docs/s: "
            + "; ".join(
                f"{name.replace('_', ' ')} " + " / ".join(f"{rate:,.0f}" for rate in rates)
                for name, rates in spans.items()
            )
        )
    line(
        f"bound: {report['runs']['bound']['unwraps']:,} unwraps (each distinct source DEK once); re-keying with "
        f"every key already unwrapped: {report['rekey_warm_docs_per_s']:,.0f} docs/s"
    )
    line(
        f"key provider calls per document (fleet W={report['fleet_workers']}): {report['key_calls_per_doc']:.4f} "
        f"({report['unwraps']:,} unwraps, DEK cache hit ratio {percent(report['dek_cache_hit_ratio'])}); "
        f"store request units per document: {report['request_units_per_doc']:.2f}"
    )
    line(
        f"fleet W={report['fleet_workers']}: {report['fleet_vs_naive']:.1f}x naive; per core "
        f"{report['fleet_per_core_vs_bound']:.2f}x the in-process bound "
        f"({report['fleet_per_core_vs_rekey_and_store']:.2f}x re-keying plus the store alone)"
        + (
            f"; {report['w2_vs_w1']:.2f}x W=1, which is {report['w1_per_core_vs_bound']:.2f}x the bound per core"
            if report["w2_vs_w1"]
            else ""
        )
    )
    s = report["time_shares"]
    rest = (
        f"rest {percent(s['batch_rest'])}; "
        if s["batch_rest"] >= 0
        else f"rest ~0 (the single-process estimates overshoot by {percent(-s['batch_rest'])}); "
    )
    line(
        f"where the W={report['fleet_workers']} fleet's {s['worker_seconds']:.1f} worker-seconds went: "
        f"in batches {percent(s['in_batches'])} = key provider {percent(s['key_provider'])} "
        f"+ re-keying CPU ~{percent(s['rekey_cpu_estimate'])} (est. from warm re-keying) "
        f"+ store ~{percent(s['store_estimate'])} (est. from store only) + "
        + rest
        + f"outside batches (Celery and Redis dispatch, slice claims, idle) {percent(s['outside_batches'])}; "
        "Redis alone: not measurable"
    )
    console.print(targets_table(report))
    for note in report["notes"]:
        console.print(f"- {note}", markup=False, highlight=False, soft_wrap=True)


def _throughput(report: dict) -> Table:
    fleets = {run["workers"]: run for run in report["runs"]["fleet"]}
    fleet_rate = report["fleet_docs_per_s"]
    table = Table(
        "run",
        "docs",
        "s",
        "docs/s",
        "fields/s",
        "MiB/s",
        "unwraps/1k docs",
        "DEK cache hits",
        "peak RSS MiB/worker",
        "RU/doc",
        "worker cores",
        "other cores",
        "rate/fleet",
        title="throughput",
    )
    for workers in sorted(fleets, reverse=True):
        run = fleets[workers]
        table.add_row(
            f"fleet W={workers}",
            f"{run['documents']:,}",
            f"{run['seconds']:.1f}",
            f"{run['docs_per_s']:,.0f}",
            f"{run['fields_per_s']:,.0f}",
            f"{run['bytes_per_s'] / MB:,.2f}",
            f"{run['unwraps_per_1000_docs']:.1f}",
            percent(run["dek_cache_hit_ratio"]),
            " / ".join(f"{mb:.0f}" for mb in run["peak_rss_mb_per_worker"]),
            f"{run['request_units_per_doc']:.1f}",
            f"{run['worker_cores']:.2f}",
            f"{run['other_cores']:.2f}",
            f"{run['docs_per_s'] / fleet_rate:.2f}",
        )
    rows = (
        ("naive (sample)", "naive", "none"),
        ("bound", "bound", "cold start"),
        ("re-keying, keys warm (sample)", "rekey_warm", "warm"),
        ("store only", "store_only", "-"),
    )
    for label, name, cache in rows:
        run = report["runs"][name]
        request_units = f"{run['request_units_per_doc']:.1f}" if name in ("naive", "store_only") else "-"
        table.add_row(
            label,
            f"{run['documents']:,}",
            f"{run['seconds']:.2f}",
            f"{run['docs_per_s']:,.0f}",
            f"{run['fields_per_s']:,.0f}",
            f"{run['bytes_per_s'] / MB:,.2f}",
            f"{run['unwraps_per_1000_docs']:.1f}",
            cache,
            "-",
            request_units,
            "1 (in process)",
            f"{run['other_cores']:.2f}",
            f"{run['docs_per_s'] / fleet_rate:.3f}",
        )
    return table


def targets_table(report: dict) -> Table:
    table = Table("target", "measured", "goal", "result", "note", title="targets (measured, not asserted)")
    for target in report["targets"]:
        colour = {"PASS": "green", "MISS": "red"}.get(target["result"], "yellow")
        table.add_row(
            target["name"], target["measured"], target["goal"], f"[{colour}]{target['result']}[/]", target["note"]
        )
    return table


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100 * ratio:.1f}%"
