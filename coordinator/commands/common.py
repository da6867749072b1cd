"""What every command module shares: the two consoles, the ``--json`` option and ``emit``."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from coordinator import render, steering
from coordinator.context import Context
from tracker_reencrypt.errors import EXIT_INTERRUPTED

# soft_wrap: a line is never broken at the terminal's width (80 columns when piped), so logs
# and scripts see ids, URLs and queue names whole; tables still fit the width.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
ProductOption = typer.Option(
    [], "--product", help="Only this product (partition key value); repeat for several. Default: every product."
)
AllProductsOption = typer.Option(False, "--all-products", help="Every product (see the command's help for which).")


def say(*texts: str, style: str = "") -> None:
    """Lines that name things a user typed or a store holds (product ids, paths, kids): printed
    as they are, never read as markup."""
    for text in texts:
        out.print(text, style=style, markup=False, highlight=False)


def emit(ctx: Context, as_json: bool, payload, human) -> None:
    """Print JSON for scripts or the human form for people."""
    if as_json:
        out.print_json(json.dumps(payload, default=str))
    else:
        human()


def note_unaudited(action: str, recorded: bool) -> None:
    if not recorded:
        err.print(f"note: '{action}' not recorded in the audit trail (no store configured)")


def follow_or_exit(
    ctx: Context, sweep_id: str, console: Console | None, *, kick_stalled: bool, what: str = "sweep", later: str = ""
) -> steering.Progress:
    """Follow the sweep to its end; on Ctrl-C say that it goes on, what to run ``later`` (default:
    follow it again) and how to stop it, and exit 130."""
    try:
        return render.follow(ctx, sweep_id, console, kick_stalled=kick_stalled)
    except KeyboardInterrupt:
        later = later or f"Follow it again: reencrypt sweep status --watch {sweep_id}"
        err.print(
            f"\nstopped following; {what} {sweep_id} goes on running on the workers. {later}; "
            f"stop it: reencrypt sweep pause {sweep_id} (resumable) or reencrypt sweep cancel {sweep_id}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
