"""``reencrypt``: the one command an operator runs during an MEK rotation.

Built with Typer (on Click): typed options, ``--help`` (``-h``) everywhere, shell completion
(``--install-completion``), ``--version``, and a test runner. Every error of ours ends as one
line on stderr and the exit code of its kind (tracker_reencrypt.errors has the table), never a
traceback.

This module holds the root app, its global options and the entry point (``main``); the
commands live in ``coordinator.commands`` (``keys``, ``sweep``, and ``operate`` for the
root-level ones) and are registered here.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

import typer

from coordinator.commands import operate, preflight
from coordinator.commands.common import JsonOption, emit, err, out  # noqa: F401  (re-exported)
from coordinator.commands.embedded import embedded_app
from coordinator.commands.keys import keys_app
from coordinator.commands.sweep import sweep_app
from coordinator.commands.usage import HELP_OPTION_NAMES, ReencryptGroup
from coordinator.context import Context
from tracker_reencrypt import logs
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.errors import EXIT_INTERRUPTED, EXIT_OK, ReencryptError

PROG_NAME = "reencrypt"
DISTRIBUTION = "tracker-reencrypt"

app = typer.Typer(
    cls=ReencryptGroup,
    help="Re-encrypt the tracker's fields onto a new MEK version, safely and in the background.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTION_NAMES},
)
app.add_typer(keys_app, name="keys")
app.add_typer(sweep_app, name="sweep")
operate.register(app)
preflight.register(app)
app.add_typer(embedded_app, name="embedded-redis")


def installed_version() -> str:
    """The installed distribution's version (its metadata: what pip installed, not a constant)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        out.print(f"{PROG_NAME} {installed_version()}", markup=False, highlight=False)
        raise typer.Exit(EXIT_OK)


@app.callback()
def main_options(
    ctx: typer.Context,
    store: str | None = typer.Option(
        None, "--store", metavar="URL", help="Store URL (overrides REENCRYPT_STORE), e.g. sqlite:///tracker.db"
    ),
    keys: str | None = typer.Option(
        None, "--keys", metavar="URL", help="Key provider URL (overrides REENCRYPT_KEYS), e.g. local:keyring.json"
    ),
    key_name: str | None = typer.Option(
        None,
        "--key-name",
        metavar="NAME",
        help="MEK name, or a per-product template such as tracker-mek-{productId} "
        "(overrides REENCRYPT_KEY_NAME; default tracker-mek)",
    ),
    redis_url: str | None = typer.Option(
        None, "--redis-url", metavar="URL", help="Broker URL (overrides REDIS_URL); unset: an embedded Redis"
    ),
    _version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = Context(load_settings(store=store, keys=keys, key_name=key_name, redis_url=redis_url))


def main() -> None:
    """The ``reencrypt`` console script: every outcome ends in an exit code of the table in
    tracker_reencrypt.errors (0 ok, 1 failed, 2 bad input or configuration, 3 unavailable, 130
    interrupted)."""
    try:
        logs.configure()  # REENCRYPT_LOG_FORMAT: json makes the log (not the output) JSON lines
        code = app(prog_name=PROG_NAME, standalone_mode=False)
    except ReencryptError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Click turns Ctrl-C into Abort while it parses and runs
        err.print("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except typer.TyperException as exc:
        # Usage errors (missing option, bad value, unknown command): exit 2. Typer vendors Click
        # since 0.26, so these are not click.ClickException: catching that let them escape as tracebacks.
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
