"""Key administration with its audit entries; shared by the CLI and the demo."""

from __future__ import annotations

from coordinator.context import Context
from coordinator.verify import require_known_kid, scan_container
from tracker_reencrypt.errors import KeyDisabledError
from tracker_reencrypt.keys import KeyVersion


def init(ctx: Context) -> tuple[KeyVersion, bool]:
    version = ctx.provider.init()
    return version, ctx.record("key created", kid=version.kid)


def rotate(ctx: Context) -> tuple[KeyVersion, bool]:
    version = ctx.provider.rotate()
    return version, ctx.record("key rotated", kid=version.kid)


def disable(ctx: Context, kid: str, *, force: bool) -> tuple[KeyVersion, bool]:
    """Disable ``kid``; refused while any field in the store still uses it, unless forced."""
    require_known_kid(ctx, kid)
    if not force:
        in_use = scan_container(ctx.store, keyring=None).fields_by_kid.get(kid, 0)
        if in_use:
            raise KeyDisabledError(f"{in_use} fields still use {kid}: finish the sweep and verify, or pass --force")
    version = ctx.provider.set_enabled(kid, False)
    return version, ctx.record("key disabled", kid=kid, forced=force)


def enable(ctx: Context, kid: str) -> tuple[KeyVersion, bool]:
    require_known_kid(ctx, kid)
    version = ctx.provider.set_enabled(kid, True)
    return version, ctx.record("key enabled", kid=kid)
