"""``reencrypt keys``: manage MEK versions (init, rotate, list, current, env, disable, promote, enable).

With a per-product key name (``--key-name 'tracker-mek-{productId}'``) the commands act on the
products named with ``--product`` (repeatable) or ``--all-products``, and ``--json`` gives a list
with each version's ``product``; with one key for the whole container they act on that key and
print what they always printed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from coordinator import keyops, render
from coordinator.commands.common import (
    AllProductsOption,
    JsonOption,
    ProductOption,
    emit,
    err,
    note_unaudited,
    out,
    say,
)
from coordinator.context import Context
from coordinator.envfile import check_env_file, update_env_file
from coordinator.verify import require_known_kid
from tracker_reencrypt.errors import EXIT_FAILED, ConfigError, KeyNotFoundError, KeyProviderError, KeyringFileError
from tracker_reencrypt.keys import KeyProvider, KeyVersion
from tracker_reencrypt.keys.naming import env_line

keys_app = typer.Typer(help="Manage MEK versions (init, rotate, list, env, disable, enable).", no_args_is_help=True)

EnvFileOption = typer.Option(
    None,
    "--env-file",
    metavar="FILE",
    help="Also write the TRACKER_MEK_ID_<PRODUCTID> lines into this dotenv file (its other lines are kept).",
)


def selected_keys(
    ctx: Context, products: list[str], all_products: bool, *, for_init: bool = False
) -> list[KeyProvider]:
    """The keys a command acts on. ``--all-products`` means the products whose key exists (the
    keyring's or vault's keys matching the template); for ``init``, the container's products."""
    keys = ctx.keys
    if not keys.per_product:
        if products or all_products:
            raise ConfigError(
                f"key name {keys.naming.template!r} is one key for every product, so --product and --all-products "
                "do not apply to keys commands: set a per-product key name (--key-name 'tracker-mek-{productId}')"
            )
        return [keys.root]
    if products and all_products:
        raise ConfigError("give --product or --all-products, not both")
    if all_products:
        found = ctx.store.products() if for_init else keys.products_with_keys()
        chosen = keys.naming.check_products(found)
        if not chosen:
            raise ConfigError(
                f"--all-products found no product in {ctx.store.describe() if for_init else keys.describe()}"
            )
    elif products:
        chosen = keys.naming.check_products(products)
    else:
        raise ConfigError(
            f"key name {keys.naming.template!r} names one key per product: say which with --product P "
            "(repeatable) or --all-products"
        )
    return [keys.provider_for(product) for product in chosen]


def _version_json(ctx: Context, version: KeyVersion) -> dict:
    return {**version.as_json(), "product": ctx.keys.product_of_kid(version.kid)}


def _emit_versions(ctx: Context, as_json: bool, versions: list[KeyVersion], human: Callable[[], None]) -> None:
    """One key: the version as before; per-product keys: a list, each naming its product."""
    if ctx.keys.per_product:
        emit(ctx, as_json, [_version_json(ctx, v) for v in versions], human)
    else:
        emit(ctx, as_json, versions[0].as_json(), human)


def _env_lines(ctx: Context, kids: list[str]) -> list[str]:
    """The tracker-service's TRACKER_MEK_ID_<PRODUCTID> line of each product's kid."""
    return [env_line(product, kid) for kid in kids if (product := ctx.keys.product_of_kid(kid)) is not None]


def _env_file_first(ctx: Context, env_file: Path | None) -> None:
    """Check ``--env-file`` before any key changes: it takes per-product key names (a one-key
    container has no TRACKER_MEK_ID_<PRODUCTID> lines), and must be writable."""
    if env_file is None:
        return
    if not ctx.keys.per_product:
        raise ConfigError(
            f"key name {ctx.keys.naming.template!r} is one key for every product: --env-file writes the "
            "tracker's TRACKER_MEK_ID_<PRODUCTID> lines, which need a per-product key name"
        )
    check_env_file(env_file)


def _write_env(lines: list[str], env_file: Path | None) -> None:
    if env_file is not None and lines:
        update_env_file(env_file, lines)
        err.print(f"updated {len(lines)} TRACKER_MEK_ID_ lines in {env_file}", markup=False, highlight=False)


def _has_versions(provider: KeyProvider) -> bool:
    try:
        return bool(provider.versions())
    except (KeyNotFoundError, KeyringFileError):
        return False


@keys_app.command("init")
def keys_init(
    c: typer.Context,
    products: list[str] = ProductOption,
    all_products: bool = typer.Option(
        False, "--all-products", help="Every product found in the container that has no key yet."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create the MEK with its first version (and the store, when one is configured and new)."""
    ctx: Context = c.obj
    ctx.may_create_store = True
    created: list[KeyVersion] = []
    for provider in selected_keys(ctx, products, all_products, for_init=True):
        if all_products and _has_versions(provider):
            continue  # --all-products creates the missing ones; naming a product with a key is refused
        version, recorded = keyops.init(ctx, provider)
        note_unaudited("key created", recorded)
        created.append(version)
    if not created:
        emit(ctx, as_json, [], lambda: say("every product of the container already has a key"))
        return
    _emit_versions(
        ctx, as_json, created, lambda: say(*(f"created {v.kid} (current) in {ctx.keys.describe()}" for v in created))
    )


@keys_app.command("rotate")
def keys_rotate(
    c: typer.Context,
    products: list[str] = ProductOption,
    all_products: bool = AllProductsOption,
    env_file: Path | None = EnvFileOption,
    force: bool = typer.Option(False, "--force", help="Rotate even while a sweep reading these keys' products runs."),
    as_json: bool = JsonOption,
) -> None:
    """Create a new MEK version and make it current for new writes; prints each product's
    TRACKER_MEK_ID_<PRODUCTID> line for the tracker-service."""
    ctx: Context = c.obj
    _env_file_first(ctx, env_file)
    selected = selected_keys(ctx, products, all_products)
    if not force:
        keyops.refuse_rotation_during_sweep(ctx, selected)
    rotated: list[KeyVersion] = []
    try:
        for provider in selected:
            version, recorded = keyops.rotate(ctx, provider, force=force)
            note_unaudited("key rotated", recorded)
            rotated.append(version)
    except BaseException:
        # An outage or Ctrl-C part way through --all-products: the keys rotated so far are
        # current now, so their lines must still reach the tracker-service's file and the screen.
        if rotated:
            _stopped_part_way(ctx, rotated, len(selected), env_file)
        raise
    lines = _env_lines(ctx, [v.kid for v in rotated])
    _write_env(lines, env_file)

    def human() -> None:
        for version in rotated:
            say(f"rotated: {version.kid} is now current")
        for line in lines:
            print(line)

    _emit_versions(ctx, as_json, rotated, human)


def _stopped_part_way(ctx: Context, rotated: list[KeyVersion], selected: int, env_file: Path | None) -> None:
    lines = _env_lines(ctx, [v.kid for v in rotated])
    if lines:
        print(*lines, sep="\n")
    _write_env(lines, env_file)
    err.print(
        f"rotated {len(rotated)} of {selected} keys before stopping; the lines above are theirs. "
        "'reencrypt keys env --all-products' prints every product's current line again",
        markup=False,
        highlight=False,
    )


@keys_app.command("list")
def keys_list(
    c: typer.Context,
    products: list[str] = ProductOption,
    all_products: bool = AllProductsOption,
    as_json: bool = JsonOption,
) -> None:
    """List MEK versions with their status (per-product keys: every product's, or those named)."""
    ctx: Context = c.obj
    if ctx.keys.per_product and not products:
        all_products = True
    versions = [v for provider in selected_keys(ctx, products, all_products) for v in provider.versions()]
    if ctx.keys.per_product:
        emit(ctx, as_json, [_version_json(ctx, v) for v in versions], lambda: render.key_table(out, versions))
    else:
        emit(ctx, as_json, [v.as_json() for v in versions], lambda: render.key_table(out, versions))


@keys_app.command("current")
def keys_current(
    c: typer.Context,
    products: list[str] = ProductOption,
    all_products: bool = AllProductsOption,
    as_json: bool = JsonOption,
) -> None:
    """Print the current version's full key id (for scripts: NEW=$(reencrypt keys current))."""
    ctx: Context = c.obj
    kids = [provider.current_kid() for provider in selected_keys(ctx, products, all_products)]
    if not ctx.keys.per_product:
        emit(ctx, as_json, {"kid": kids[0]}, lambda: print(kids[0]))
        return
    payload = [{"product": ctx.keys.product_of_kid(kid), "kid": kid} for kid in kids]
    emit(ctx, as_json, payload, lambda: print(*kids, sep="\n"))


@keys_app.command("env")
def keys_env(
    c: typer.Context,
    products: list[str] = ProductOption,
    all_products: bool = AllProductsOption,
    kid: str | None = typer.Option(
        None,
        "--kid",
        metavar="KID",
        help="Print this version's line instead of the current one's (rollback: the previous id).",
    ),
    env_file: Path | None = EnvFileOption,
    as_json: bool = JsonOption,
) -> None:
    """Print the tracker-service's TRACKER_MEK_ID_<PRODUCTID>=<kid> lines: each product's current
    version, or with --kid that version's (for one product)."""
    ctx: Context = c.obj
    if not ctx.keys.per_product:
        raise ConfigError(
            f"key name {ctx.keys.naming.template!r} is one key for every product: the tracker's "
            "TRACKER_MEK_ID_<PRODUCTID> lines need a per-product key name (--key-name 'tracker-mek-{productId}')"
        )
    _env_file_first(ctx, env_file)
    if kid is not None:
        provider = require_known_kid(ctx, kid)
        owner = keyops.product_of(ctx, provider)
        if all_products or (products and products != [owner]):
            raise ConfigError(
                f"--kid {kid} is a version of product {owner}'s key: give --product {owner} alone, or none"
            )
        kids = [kid]
    else:
        kids = [provider.current_kid() for provider in selected_keys(ctx, products, all_products)]
    lines = _env_lines(ctx, kids)
    _write_env(lines, env_file)
    payload = [
        {"product": ctx.keys.product_of_kid(k), "variable": line.split("=", 1)[0], "kid": k}
        for k, line in zip(kids, lines, strict=True)
    ]
    emit(ctx, as_json, payload, lambda: print(*lines, sep="\n"))


def _previous_versions(ctx: Context, products: list[str], all_products: bool, *, enabled: bool) -> list[str]:
    """For --product/--all-products without a kid: each key's newest version that is not current
    and is ``enabled`` (or disabled): what the last rotation replaced."""
    kids = []
    for provider in selected_keys(ctx, products, all_products):
        candidates = [v for v in provider.versions() if not v.current and v.enabled == enabled]
        if candidates:
            kids.append(candidates[-1].kid)
    return kids


def _kids_to_change(
    ctx: Context, kids: list[str], products: list[str], all_products: bool, *, enabled: bool
) -> list[str]:
    if kids and (products or all_products):
        raise ConfigError("give key ids, or --product/--all-products (for each product's previous version), not both")
    if kids:
        return kids
    if not (products or all_products):
        raise ConfigError("give the key id(s), or --product P / --all-products for each product's previous version")
    chosen = _previous_versions(ctx, products, all_products, enabled=enabled)
    if not chosen:
        raise ConfigError(f"no {'enabled' if enabled else 'disabled'} previous version found for the products given")
    return chosen


@keys_app.command("disable")
def keys_disable(
    c: typer.Context,
    kids: list[str] = typer.Argument(
        None, metavar="KID", help="Versions to disable (default with --product: the previous one)."
    ),
    products: list[str] = ProductOption,
    all_products: bool = AllProductsOption,
    force: bool = typer.Option(
        False, "--force", help="Disable even though fields still use it (they become unreadable)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Disable a version: refused until every container the key protects verified it unused
    (under per-product keys: until that product's documents did). With --product P or
    --all-products and no key id: each product's previous version, each through the same gate."""
    ctx: Context = c.obj
    chosen = _kids_to_change(ctx, kids or [], products, all_products, enabled=True)
    done, refused = [], []
    for kid in chosen:
        try:
            version, recorded = keyops.disable(ctx, kid, force=force)
        except KeyProviderError as refusal:
            if len(chosen) == 1:
                raise
            refused.append(f"{kid}: {refusal}")
            continue
        note_unaudited("key disabled", recorded)
        done.append(version)
    for line in refused:
        err.print(f"refused: {line}", markup=False, highlight=False)
    checked = (
        "forced: nothing was checked" if force else f"checked {ctx.store_text()} and every container the key protects"
    )
    if not ctx.keys.per_product and len(done) == 1:
        emit(
            ctx,
            as_json,
            {**done[0].as_json(), "store": ctx.store_text()},
            lambda: say(f"disabled {done[0].kid} ({checked})"),
        )
    else:
        payload = [{**_version_json(ctx, v), "store": ctx.store_text()} for v in done]
        emit(ctx, as_json, payload, lambda: say(*(f"disabled {v.kid} ({checked})" for v in done)))
    if refused:
        raise typer.Exit(EXIT_FAILED)


@keys_app.command("promote")
def keys_promote(
    c: typer.Context,
    kid: str = typer.Argument(..., metavar="KID", help="The enabled version to make current again."),
    env_file: Path | None = EnvFileOption,
    as_json: bool = JsonOption,
) -> None:
    """Make an older enabled version current again (rollback); new writes use it. Prints the
    product's TRACKER_MEK_ID_<PRODUCTID> line: point the tracker-service back at it."""
    ctx: Context = c.obj
    _env_file_first(ctx, env_file)
    version, recorded = keyops.promote(ctx, kid)
    note_unaudited("key promoted", recorded)
    lines = _env_lines(ctx, [version.kid])
    _write_env(lines, env_file)

    def human() -> None:
        say(f"promoted: {version.kid} is current again")
        for line in lines:
            print(line)

    _emit_versions(ctx, as_json, [version], human)


@keys_app.command("enable")
def keys_enable(
    c: typer.Context,
    kids: list[str] = typer.Argument(
        None, metavar="KID", help="Versions to enable (default with --product: the previous one)."
    ),
    products: list[str] = ProductOption,
    all_products: bool = AllProductsOption,
    as_json: bool = JsonOption,
) -> None:
    """Enable a version again (rollback). With --product P or --all-products and no key id: each
    product's newest disabled version that is not current."""
    ctx: Context = c.obj
    enabled = []
    for kid in _kids_to_change(ctx, kids or [], products, all_products, enabled=False):
        version, recorded = keyops.enable(ctx, kid)
        note_unaudited("key enabled", recorded)
        enabled.append(version)
    _emit_versions(ctx, as_json, enabled, lambda: say(*(f"enabled {v.kid}" for v in enabled)))
