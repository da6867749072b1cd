"""``reencrypt keys``: manage the MEK's versions (init, rotate, list, current, disable, promote, enable)."""

from __future__ import annotations

import typer

from coordinator import keyops, render
from coordinator.commands.common import JsonOption, emit, note_unaudited, out

keys_app = typer.Typer(help="Manage MEK versions (init, rotate, list, disable, enable).", no_args_is_help=True)


@keys_app.command("init")
def keys_init(c: typer.Context, as_json: bool = JsonOption) -> None:
    """Create the MEK with its first version (and the store, when one is configured and new)."""
    c.obj.may_create_store = True
    version, recorded = keyops.init(c.obj)
    note_unaudited("key created", recorded)
    emit(
        c.obj,
        as_json,
        version.as_json(),
        lambda: out.print(f"created {version.kid} (current) in {c.obj.provider.describe()}"),
    )


@keys_app.command("rotate")
def keys_rotate(
    c: typer.Context,
    force: bool = typer.Option(False, "--force", help="Rotate even while a sweep runs on this store."),
    as_json: bool = JsonOption,
) -> None:
    """Create a new MEK version and make it current for new writes."""
    version, recorded = keyops.rotate(c.obj, force=force)
    note_unaudited("key rotated", recorded)
    emit(c.obj, as_json, version.as_json(), lambda: out.print(f"rotated: {version.kid} is now current"))


@keys_app.command("list")
def keys_list(c: typer.Context, as_json: bool = JsonOption) -> None:
    """List MEK versions with their status."""
    versions = c.obj.provider.versions()
    emit(c.obj, as_json, [v.as_json() for v in versions], lambda: render.key_table(out, versions))


@keys_app.command("current")
def keys_current(c: typer.Context, as_json: bool = JsonOption) -> None:
    """Print the current version's full key id (for scripts: NEW=$(reencrypt keys current))."""
    kid = c.obj.provider.current_kid()
    emit(c.obj, as_json, {"kid": kid}, lambda: print(kid))


@keys_app.command("disable")
def keys_disable(
    c: typer.Context,
    kid: str,
    force: bool = typer.Option(
        False, "--force", help="Disable even though fields still use it (they become unreadable)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Disable a version: refused until every container the key protects verified it unused."""
    version, recorded = keyops.disable(c.obj, kid, force=force)
    note_unaudited("key disabled", recorded)
    emit(
        c.obj,
        as_json,
        {**version.as_json(), "store": c.obj.store_text()},
        lambda: out.print(
            f"disabled {kid} (checked {c.obj.store_text()} and every container the key protects)"
            if not force
            else f"disabled {kid} (forced: nothing was checked)"
        ),
    )


@keys_app.command("promote")
def keys_promote(
    c: typer.Context,
    kid: str = typer.Argument(..., help="The enabled version to make current again."),
    as_json: bool = JsonOption,
) -> None:
    """Make an older enabled version current again (rollback); new writes use it."""
    version, recorded = keyops.promote(c.obj, kid)
    note_unaudited("key promoted", recorded)
    emit(c.obj, as_json, version.as_json(), lambda: out.print(f"promoted: {version.kid} is current again"))


@keys_app.command("enable")
def keys_enable(c: typer.Context, kid: str, as_json: bool = JsonOption) -> None:
    """Enable a version again (rollback)."""
    version, recorded = keyops.enable(c.obj, kid)
    note_unaudited("key enabled", recorded)
    emit(c.obj, as_json, version.as_json(), lambda: out.print(f"enabled {kid}"))
