"""``reencrypt stale-writes``: is any tracker instance still writing under a retired key version?

The runbook's step after the tracker-service's restart (coordinator/stale_writes.py says how it
reads): exit 0 once no stale write is newer than ``--quiet-for`` seconds, 1 otherwise; with
``--wait``, look again every ``--interval`` seconds until then.
"""

from __future__ import annotations

import shlex
import time

import typer

from coordinator import render
from coordinator.commands.common import JsonOption, ProductOption, emit, err, out
from coordinator.context import Context
from coordinator.stale_writes import DEFAULT_QUIET_FOR_S, StaleReport, StaleWatch, iso, products_to_watch
from tracker_reencrypt.errors import ReencryptError, first_line

DEFAULT_INTERVAL_S = 10.0


def stale_writes(
    c: typer.Context,
    products: list[str] = ProductOption,
    quiet_for: float = typer.Option(
        DEFAULT_QUIET_FOR_S,
        "--quiet-for",
        min=0,
        help="Pass once no stale write is newer than this many seconds (writes of the restart window then "
        "stop counting against it).",
    ),
    wait: bool = typer.Option(False, "--wait", help="Look again every --interval seconds until it passes."),
    interval: float = typer.Option(DEFAULT_INTERVAL_S, "--interval", min=0.05, help="Seconds between looks (--wait)."),
    as_json: bool = JsonOption,
) -> None:
    """Documents the tracker wrote after each product's key rotated, still under a retired version
    of it: a tracker instance that has not picked the new key id up. Exit 0 when none is newer than
    --quiet-for seconds, 1 otherwise (--wait: until then; Ctrl-C exits 130).

    Reads only what was written since each product's current version became current (5 s grace),
    never decrypts; default: every product of the store that has a key."""
    ctx: Context = c.obj
    watch = StaleWatch(ctx.store, ctx.keys, products_to_watch(ctx.store, ctx.keys, products))
    report = watch.look()
    if wait:
        report = _wait(watch, report, quiet_for, interval, _again(products, quiet_for, interval), quiet=as_json)
    payload = report.as_json(quiet_for, ctx.store.describe())
    emit(ctx, as_json, payload, lambda: _show(report, quiet_for))
    if not report.quiet(quiet_for):
        raise typer.Exit(1)


def _wait(
    watch: StaleWatch, report: StaleReport, quiet_for: float, interval: float, again: str, *, quiet: bool
) -> StaleReport:
    """Look until quiet; an outage is said and looked past. Ctrl-C: say what to run later, exit 130."""
    try:
        while not report.quiet(quiet_for):
            if not quiet:
                age = report.looked_at - (report.newest_ts or report.looked_at)
                err.print(
                    f"not quiet yet: {report.stale_writes} stale writes, the newest {age:.0f} s old "
                    f"(at {iso(report.newest_ts)}; {quiet_for:g} s asked); looking again in {interval:g} s",
                    markup=False,
                    highlight=False,
                )
            time.sleep(interval)
            try:
                report = watch.look()
            except ReencryptError as error:
                if not error.transient:
                    raise
                err.print(f"look failed ({first_line(error)}); trying again", markup=False, highlight=False)
    except KeyboardInterrupt:
        err.print(
            f"\nstopped waiting; nothing was changed. Look again later: {again}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    return report


def _again(products: list[str], quiet_for: float, interval: float) -> str:
    words = ["reencrypt", "stale-writes"]
    for product in products:
        words += ["--product", product]
    words += ["--quiet-for", f"{quiet_for:g}", "--wait"]
    if interval != DEFAULT_INTERVAL_S:
        words += ["--interval", f"{interval:g}"]
    return shlex.join(words)


def _show(report: StaleReport, quiet_for: float) -> None:
    for line in render.stale_writes_view(report.stale_writes, report.examples):
        out.print(line)
    for product, why in sorted(report.not_checked.items()):
        out.print(f"not checked: product {product}: {why}", markup=False, highlight=False)
    checked = f"{report.products_checked} products checked since their current version became current"
    if report.newest_ts is None:
        out.print(f"[green]no stale write[/]: {checked}")
        return
    age = report.looked_at - report.newest_ts
    if report.quiet(quiet_for):
        out.print(
            f"[green]quiet[/]: no stale write in the last {quiet_for:g} s (the newest at {iso(report.newest_ts)}, "
            f"{age:.0f} s before this look); {checked}"
        )
    else:
        out.print(
            f"[red]not quiet[/]: the newest stale write is {age:.0f} s old (at {iso(report.newest_ts)}), "
            f"under the {quiet_for:g} s asked; {checked}. Restart the tracker instances still on the old key id "
            "(their TRACKER_MEK_ID_ line), then look again with --wait"
        )
