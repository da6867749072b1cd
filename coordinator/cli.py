"""``reencrypt``: the one command an operator runs during an MEK rotation.

Built with Typer (on Click): typed options, ``--help`` everywhere, and a test runner. Every
error of ours ends as one line on stderr and a non-zero exit, never a traceback.

This module holds the root app, its global options and the entry point (``main``); the
commands live in ``coordinator.commands`` (``keys``, ``sweep``, and ``operate`` for the
root-level ones) and are registered here.
"""

from __future__ import annotations

import sys

import typer

from coordinator.commands import operate, preflight
from coordinator.commands.common import JsonOption, emit, err, out  # noqa: F401  (re-exported)
from coordinator.commands.keys import keys_app
from coordinator.commands.sweep import sweep_app
from coordinator.context import Context
from tracker_reencrypt import logs
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.errors import ReencryptError

app = typer.Typer(
    help="Re-encrypt the tracker's fields onto a new MEK version, safely and in the background.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(keys_app, name="keys")
app.add_typer(sweep_app, name="sweep")
operate.register(app)
preflight.register(app)


@app.callback()
def main_options(
    ctx: typer.Context,
    store: str | None = typer.Option(
        None, "--store", help="Store URL (overrides REENCRYPT_STORE), e.g. sqlite:///tracker.db"
    ),
    keys: str | None = typer.Option(
        None, "--keys", help="Key provider URL (overrides REENCRYPT_KEYS), e.g. local:keyring.json"
    ),
    key_name: str | None = typer.Option(
        None,
        "--key-name",
        help="MEK name, or a per-product template such as tracker-mek-{productId} "
        "(overrides REENCRYPT_KEY_NAME; default tracker-mek)",
    ),
    redis_url: str | None = typer.Option(
        None, "--redis-url", help="Broker URL (overrides REDIS_URL); unset: an embedded Redis"
    ),
) -> None:
    ctx.obj = Context(load_settings(store=store, keys=keys, key_name=key_name, redis_url=redis_url))


def main() -> None:
    try:
        logs.configure()  # REENCRYPT_LOG_FORMAT: json makes the log (not the output) JSON lines
        code = app(standalone_mode=False)
    except ReencryptError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:
        # Usage errors (missing option, bad value, unknown command). Typer vendors Click since
        # 0.26, so these are not click.ClickException: catching that let them escape as tracebacks.
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
