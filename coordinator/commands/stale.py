"""``reencrypt stale-writes``: is any tracker instance still writing under a retired key version?

The runbook's step after the tracker-service's restart (coordinator/stale_writes.py says how it
reads and what passes): exit 0 once every product watched has been judged, and each has shown
``--quiet-for`` seconds of writes with no stale write since its current version became current;
1 otherwise. With ``--wait``, look again until then; a product that cannot be judged fails at
once (waiting does not fix a missing key). Bad input (an id that cannot name a key) exits 2.
"""

from __future__ import annotations

import shlex
import time

import typer

from coordinator import render
from coordinator.commands.common import JsonOption, ProductOption, emit, err, out, say
from coordinator.context import Context
from coordinator.stale_writes import DEFAULT_QUIET_FOR_S, StaleReport, StaleWatch, iso, products_to_watch
from tracker_reencrypt.errors import EXIT_FAILED, EXIT_INTERRUPTED, ReencryptError, first_line

DEFAULT_INTERVAL_S = 10.0
#: The shortest sleep between looks, and how far past the moment a product turns quiet the next
#: look is made (so that look is the one that passes).
MIN_SLEEP_S = 0.05


def stale_writes(
    c: typer.Context,
    products: list[str] = ProductOption,
    quiet_for: float = typer.Option(
        DEFAULT_QUIET_FOR_S,
        "--quiet-for",
        min=0,
        help="Pass once each product's writes since its newest stale write (or, with none, since its current "
        "version became current plus the grace) span this many seconds.",
    ),
    wait: bool = typer.Option(False, "--wait", help="Look again until it passes (or cannot: a product not checked)."),
    interval: float = typer.Option(
        DEFAULT_INTERVAL_S, "--interval", min=0.05, help="Longest time between looks (--wait)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Documents the tracker wrote after each product's key rotated, still under a retired version
    of it: a tracker instance that has not picked the new key id up. Exit 0 when every product was
    checked and each has been free of stale writes for --quiet-for seconds of its writes since its
    version became current; 1 otherwise, and for a product that cannot be checked (--wait: until
    it passes; Ctrl-C exits 130).

    Reads only what was written since each product's current version became current (5 s grace),
    one query per product per look, never decrypts; default: every product of the store."""
    ctx: Context = c.obj
    chosen = products_to_watch(ctx.store, ctx.keys, products)
    watch = StaleWatch(ctx.store, ctx.keys, chosen, time.time, named=bool(products))
    report = watch.look()
    if wait:
        report = _wait(watch, report, quiet_for, interval, _again(products, quiet_for, interval), quiet=as_json)
    payload = report.as_json(quiet_for, ctx.store.describe())
    emit(ctx, as_json, payload, lambda: _show(report, quiet_for))
    if not report.quiet(quiet_for):
        raise typer.Exit(EXIT_FAILED)


def _wait(
    watch: StaleWatch, report: StaleReport, quiet_for: float, interval: float, again: str, *, quiet: bool
) -> StaleReport:
    """Look until quiet, or until a look shows what waiting cannot fix (a product not checked).
    Each sleep ends when the slowest product would turn quiet, at most ``interval`` later. An
    outage is said and looked past. Ctrl-C: say what to run later, exit 130."""
    try:
        while report.waitable(quiet_for):
            wake = report.looked_at + report.left_s(quiet_for) + MIN_SLEEP_S
            pause = max(MIN_SLEEP_S, min(interval, wake - watch.clock()))
            if not quiet:
                err.print(
                    f"not quiet yet: {report.reason(quiet_for)}; looking again in {pause:.1f} s",
                    markup=False,
                    highlight=False,
                )
            time.sleep(pause)
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
        raise typer.Exit(EXIT_INTERRUPTED) from None
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
    not_checked = sorted(report.not_checked.items())
    for product, why in not_checked[: render.LISTED_PRODUCTS]:
        say(f"NOT CHECKED: product {product}: {why}", style="bold red")
    if len(not_checked) > render.LISTED_PRODUCTS:
        say(f"and {len(not_checked) - render.LISTED_PRODUCTS} more not checked (--json lists all)")
    checked = f"{len(report.checked)} of {report.products_watched} products checked"
    reason = report.reason(quiet_for)
    if reason is None:
        newest = f"the newest stale write at {iso(report.newest_ts)}" if report.newest_ts else "no stale write"
        say(
            f"quiet: each product free of stale writes for at least {quiet_for:g} s ({newest}); {checked}",
            style="green",
        )
        return
    say(f"not passed: {reason}; {checked}", style="bold red")
    if report.not_checked:
        say(
            "Fix what is named (a product's key, its id), or name only the products to gate with --product P; "
            "until then this gate cannot pass"
        )
    elif any(report.products[product].newest_ts is not None for product in report.not_quiet(quiet_for)):
        say(
            "Restart the tracker instances still on the old key id (their TRACKER_MEK_ID_ line), then look again "
            "with --wait"
        )
    elif report.checked:
        say(f"Look again in {report.left_s(quiet_for):.0f} s, or with --wait")
