"""``reencrypt sweep``: start a sweep, follow it, and steer it (pause, resume, cancel, throttle, failures)."""

from __future__ import annotations

import csv
import json
import sys
from typing import Literal

import typer

from coordinator import render, steering
from coordinator.commands.common import JsonOption, ProductOption, emit, err, follow_or_exit, out
from coordinator.context import Context
from tracker_reencrypt.documents import Mode
from tracker_reencrypt.errors import EXIT_FAILED, InputError
from tracker_reencrypt.sweep.records import Sweep

sweep_app = typer.Typer(help="Start and steer a re-encryption sweep.", no_args_is_help=True)

#: What each command acting on one sweep takes: its id, or none for the latest.
SweepIdArgument = typer.Argument(
    None, metavar="SWEEP_ID", help="The sweep's id (default: the latest sweep started on this store)."
)
#: The columns of 'sweep failures --format csv', in order (JSON rows: these, sweep_id and, for a
#: document without a usable id, row).
FAILURE_COLUMNS = ["document_id", "partition_key", "field_path", "kid", "reason", "slice", "at"]


@sweep_app.command("start")
def sweep_start(
    c: typer.Context,
    to: str = typer.Option(
        ...,
        "--to",
        metavar="KID",
        help="Target: a full versioned key id, or 'current' (each document's product's current key version).",
    ),
    products: list[str] = ProductOption,
    sources: list[str] = typer.Option(
        [],
        "--from",
        metavar="KID",
        help="Only move fields on this key id; repeat for several (default: every other kid).",
    ),
    mode: Mode = typer.Option(
        "reencrypt", "--mode", help="reencrypt (fresh DEK and ciphertext) or rewrap (DEK re-wrapped only)."
    ),
    slices: int = typer.Option(
        steering.DEFAULT_SLICES,
        "--slices",
        min=1,
        max=steering.MAX_SLICES,
        help="Work slices (feed ranges) to split the container into.",
    ),
    rate: float | None = typer.Option(None, "--rate", help="Fleet-wide limit in documents/s (default: none)."),
    kv_ops_per_s: float | None = typer.Option(None, "--kv-ops-per-s", help="Fleet-wide Key Vault budget in calls/s."),
    ru_per_s: float | None = typer.Option(None, "--ru-per-s", help="Fleet-wide store budget in request units/s."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Scan and report what would change; write nothing."),
    wait: bool = typer.Option(
        False, "--wait", help="Follow the sweep to its end; exit 0 only if it completed with no failures."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Plan and start a sweep; prints its id (--json: the sweep)."""
    ctx: Context = c.obj
    limits = steering.LimitFlags(rate=rate, kv_ops_per_s=kv_ops_per_s, ru_per_s=ru_per_s)
    if dry_run:
        payload = steering.dry_run(ctx, to=to, sources=sources, limits=limits, products=products)
        emit(ctx, as_json, payload, lambda: render.dry_run(out, payload))
        return
    sweep = steering.start(ctx, to=to, sources=sources, mode=mode, slices=slices, limits=limits, products=products)
    if not wait:
        emit(ctx, as_json, sweep.to_record(), lambda: out.print(sweep.id))
        return
    err.print(f"sweep {sweep.id} started ({sweep.slice_count} slices)")
    final = follow_or_exit(ctx, sweep.id, err if not as_json else None, kick_stalled=True)
    _finish(ctx, final, as_json)


def _finish(ctx: Context, progress: steering.Progress, as_json: bool) -> None:
    emit(ctx, as_json, progress.as_json(), lambda: render.summary(out, progress))
    if progress.sweep.status != "completed" or progress.totals.get("failures"):
        raise typer.Exit(EXIT_FAILED)


@sweep_app.command("status")
def sweep_status(
    c: typer.Context,
    sweep_id: str | None = SweepIdArgument,
    watch: bool = typer.Option(False, "--watch", help="Refresh until the sweep finishes."),
    all_sweeps: bool = typer.Option(False, "--all", help="List every sweep on this store."),
    as_json: bool = JsonOption,
) -> None:
    """Progress per slice and overall: documents, fields, rate, ETA, conflicts, failures."""
    ctx: Context = c.obj
    if watch and as_json:
        raise InputError("--watch refreshes a view for people and --json prints one snapshot: give one of them")
    if all_sweeps:
        listed = ctx.state.sweeps()
        emit(ctx, as_json, [sweep.to_record() for sweep in listed], lambda: render.sweep_list(out, listed))
        return
    sweep = steering.resolve(ctx, sweep_id)
    if watch:
        follow_or_exit(ctx, sweep.id, out, kick_stalled=False)
        return
    progress = steering.progress(ctx, sweep)
    emit(ctx, as_json, progress.as_json(), lambda: render.status(out, progress))


@sweep_app.command("pause")
def sweep_pause(c: typer.Context, sweep_id: str | None = SweepIdArgument, as_json: bool = JsonOption) -> None:
    """Stop taking new batches (each worker finishes the batch in hand)."""
    sweep = steering.pause(c.obj, sweep_id)
    emit(c.obj, as_json, sweep.to_record(), lambda: out.print(f"sweep {sweep.id} paused"))


@sweep_app.command("resume")
def sweep_resume(c: typer.Context, sweep_id: str | None = SweepIdArgument, as_json: bool = JsonOption) -> None:
    """Resume a paused sweep, or re-queue a running one from its checkpoints (after Redis lost its
    queue). --json: the sweep, with slices_queued."""
    sweep, queued = steering.resume(c.obj, sweep_id)
    emit(
        c.obj,
        as_json,
        {**sweep.to_record(), "slices_queued": queued},
        lambda: out.print(f"sweep {sweep.id} running; {queued} slices queued from their checkpoints"),
    )


@sweep_app.command("cancel")
def sweep_cancel(c: typer.Context, sweep_id: str | None = SweepIdArgument, as_json: bool = JsonOption) -> None:
    """Cancel a sweep; fields already moved stay moved (both keys remain readable). Run it again
    on a sweep still cancelling to settle it once its batches in hand are over."""
    sweep = steering.cancel(c.obj, sweep_id)
    emit(c.obj, as_json, sweep.to_record(), lambda: _cancel_text(c.obj, sweep))


def _cancel_text(ctx: Context, sweep: Sweep) -> None:
    if sweep.status != "cancelling":
        out.print(f"sweep {sweep.id} {sweep.status}")
        return
    batches, seconds = steering.leases_in_hand(ctx, sweep.id)
    out.print(
        f"sweep {sweep.id} cancelling: {batches} batches in hand finish first (their leases end within "
        f"{seconds:.0f} s); it becomes cancelled then, or run 'reencrypt sweep cancel {sweep.id}' again"
    )


@sweep_app.command("throttle")
def sweep_throttle(
    c: typer.Context,
    sweep_id: str | None = SweepIdArgument,
    rate: float | None = typer.Option(None, "--rate", help="New fleet-wide limit in documents/s."),
    kv_ops_per_s: float | None = typer.Option(None, "--kv-ops-per-s", help="New Key Vault budget in calls/s."),
    ru_per_s: float | None = typer.Option(None, "--ru-per-s", help="New store budget in request units/s."),
    unlimited: bool = typer.Option(False, "--unlimited", help="Remove every limit."),
    as_json: bool = JsonOption,
) -> None:
    """Change a running sweep's limits; workers pick them up at their next batch."""
    limits = steering.LimitFlags(rate=rate, kv_ops_per_s=kv_ops_per_s, ru_per_s=ru_per_s)
    sweep = steering.throttle(c.obj, sweep_id, limits, unlimited=unlimited)
    emit(c.obj, as_json, sweep.to_record(), lambda: out.print(f"sweep {sweep.id} limits: {render.limits_text(sweep)}"))


@sweep_app.command("failures")
def sweep_failures(
    c: typer.Context,
    sweep_id: str | None = SweepIdArgument,
    output_format: Literal["table", "csv", "json"] | None = typer.Option(
        None, "--format", help="How to print the rows (default: table)."
    ),
    as_json: bool = typer.Option(False, "--json", help="The same as --format json."),
) -> None:
    """Fields a sweep could not move: document id, partition key, field path, the kid it is on, reason."""
    if as_json and output_format not in (None, "json"):
        raise InputError(f"--json is --format json: give one, not --json with --format {output_format}")
    ctx: Context = c.obj
    failures = ctx.state.failures(steering.resolve(ctx, sweep_id).id)
    rows = [failure.to_record() for failure in failures]
    chosen = "json" if as_json else output_format or "table"
    if chosen == "json":
        out.print_json(json.dumps(rows))
    elif chosen == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=FAILURE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        render.failures(out, failures)
