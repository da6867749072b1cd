"""Key administration with its audit entries and custody marks; shared by the CLI and the demo.

Every key operation made with a store configured is audited in that store and then anchors the
store's audit head in the key's metadata (tracker_reencrypt.custody), so the key remembers
which containers it protects and what their trails looked like.
"""

from __future__ import annotations

from coordinator.context import Context
from coordinator.verify import require_known_kid, scan_container
from tracker_reencrypt import custody
from tracker_reencrypt.audit import AuditTrail
from tracker_reencrypt.errors import (
    InputError,
    KeyDisabledError,
    KeyNotFoundError,
    KeyringFileError,
    SweepError,
)
from tracker_reencrypt.keys import KeyProvider, KeyVersion
from tracker_reencrypt.stores import open_store, store_fingerprint
from tracker_reencrypt.sweep.records import utc_now


def product_of(ctx: Context, provider: KeyProvider) -> str | None:
    """The product whose key ``provider`` administers (None: a key every product shares)."""
    return ctx.keys.naming.product_of_key(provider.key_name)


def _named(ctx: Context, provider: KeyProvider) -> dict:
    """The audit details naming the product, under per-product keys."""
    product = product_of(ctx, provider)
    return {"product": product} if product is not None else {}


def init(ctx: Context, provider: KeyProvider) -> tuple[KeyVersion, bool]:
    """Create ``provider``'s MEK (and the store, when one is configured and new). Checked in the
    order that writes nothing on a refusal: an existing key first, then the store, then the key."""
    if ctx.settings.store:
        _refuse_existing_key(provider)
        _open_store_first(ctx)
    version = provider.init()
    return version, ctx.record_key_operation("key created", provider, kid=version.kid, **_named(ctx, provider))


def ensure_keys(ctx: Context, products: list[str]) -> dict[str, str]:
    """Each product's current kid for seeding, creating the product's key where it has none
    (with one key for the container: that key, which must exist), and marking the store with
    every key it will hold fields under."""
    if not ctx.keys.per_product:
        ctx.mark_store_with_keys([ctx.keys.root])
        kid = ctx.keys.root.current_kid()
        return dict.fromkeys(products, kid)
    providers = {product: ctx.keys.provider_for(product) for product in ctx.keys.naming.check_products(products)}
    for provider in providers.values():
        try:
            provider.current_kid()
        except (KeyNotFoundError, KeyringFileError):
            init(ctx, provider)
    ctx.mark_store_with_keys(providers.values())
    return {product: provider.current_kid() for product, provider in providers.items()}


def _refuse_existing_key(provider: KeyProvider) -> None:
    try:
        existing = provider.versions()
    except (KeyNotFoundError, KeyringFileError):
        return  # no key yet (a missing keyring file, a key the vault does not have): init may go on
    if existing:
        raise InputError(
            f"{provider.describe()} already holds {existing[-1].kid}: use 'reencrypt keys rotate' to add a version"
        )


def refuse_rotation_during_sweep(ctx: Context, providers: list[KeyProvider]) -> None:
    """Refuse rotating these keys while a sweep reading their documents runs on this store (it
    would move the fields the tracker now writes under the new version back to the sweep's
    target, or leave them behind the versions its workers already looked up). Checked for every
    key before the first is rotated: a refusal never leaves half the products rotated."""
    _open_store_first(ctx)
    if not ctx.settings.store:
        return
    active = ctx.state.active_sweep_id()
    sweep = ctx.state.get_sweep(active) if active else None
    for provider in providers:
        if sweep is not None and sweep.covers(product_of(ctx, provider)):
            raise SweepError(
                f"sweep {active} is {sweep.status} towards {sweep.target_kid} and reads {provider.key_name}'s "
                f"documents: finish or cancel it before rotating (or pass --force)"
            )


def rotate(ctx: Context, provider: KeyProvider, *, force: bool = False) -> tuple[KeyVersion, bool]:
    """A new current version; refused while a sweep reading this key's product runs on this
    store (see refuse_rotation_during_sweep), unless ``force``."""
    _open_store_first(ctx)
    if not force:
        refuse_rotation_during_sweep(ctx, [provider])
    version = provider.rotate()
    custody.note_switch(provider, utc_now())
    return version, ctx.record_key_operation("key rotated", provider, kid=version.kid, **_named(ctx, provider))


def promote(ctx: Context, kid: str) -> tuple[KeyVersion, bool]:
    """Make an older enabled version current again (the rollback's first key step)."""
    provider = require_known_kid(ctx, kid)
    _open_store_first(ctx)
    was_current = provider.current_kid() == kid
    version = provider.promote(kid)
    if was_current:  # nothing changed: nothing to record
        return version, bool(ctx.settings.store)
    custody.note_switch(provider, utc_now())
    return version, ctx.record_key_operation("key promoted", provider, kid=kid, **_named(ctx, provider))


def disable(ctx: Context, kid: str, *, force: bool) -> tuple[KeyVersion, bool]:
    """Disable ``kid``; refused unless every container the key protects proved it unused.

    The proof for each container is a passing ``verify`` in its own audit trail, made after
    writes under ``kid`` stopped (see custody.disable_refusal), and, for this store, a fresh
    scan finding no field on ``kid``. ``--force`` skips both and is audited as forced.
    """
    provider = require_known_kid(ctx, kid)
    product = product_of(ctx, provider)
    _open_store_first(ctx)
    if not force:
        if provider.current_kid() == kid:  # the real reason, before the gate's (which would name a missing verify)
            raise KeyDisabledError(
                f"key {kid} is the current version; rotate to a new version (or promote an older "
                f"one) before disabling it"
            )
        ctx.settings.require("store")
        # Under per-product keys only the key's own product can hold fields on it: its partition
        # is all the fresh scan reads.
        scope = [product] if product is not None else None
        where = ctx.store.describe() + (f" (product {product})" if product is not None else "")
        scan = scan_container(ctx.store, keyring=None, products=scope)
        in_use = scan.fields_by_kid.get(kid, 0)
        if in_use:
            raise KeyDisabledError(
                f"{in_use} fields in {where} still use {kid}: finish the sweep and verify, or pass --force"
            )
        if scan.undecryptable:  # documents it could not read may hold fields on the version
            raise KeyDisabledError(
                f"{scan.undecryptable} documents of {where} could not be read, so their fields "
                f"were not counted: see 'reencrypt verify --expect <current kid>', or pass --force"
            )
        refusal = custody.disable_refusal(
            provider, kid, ctx.settings.store, _audit_entries_of(ctx), _writes_ended(provider, kid), product
        )
        if refusal:
            raise KeyDisabledError(f"{kid} not disabled: {refusal}")
    version = provider.set_enabled(kid, False)
    return version, ctx.record_key_operation(
        "key disabled", provider, kid=kid, forced=force, store=ctx.store_text(), **_named(ctx, provider)
    )


def enable(ctx: Context, kid: str) -> tuple[KeyVersion, bool]:
    provider = require_known_kid(ctx, kid)
    _open_store_first(ctx)
    version = provider.set_enabled(kid, True)
    return version, ctx.record_key_operation("key enabled", provider, kid=kid, **_named(ctx, provider))


def _open_store_first(ctx: Context) -> None:
    """Open the configured store before the key changes: a refused store (a typo, another
    application's file) must refuse the key operation too, not only its audit entry afterwards."""
    if ctx.settings.store:
        ctx.store  # noqa: B018 - opening it is the check


def audit_problems(ctx: Context) -> list[str]:
    """The audit trail's hash chain checked, and its head against the anchor the key keeps:
    truncation or a rebuilt chain shows. A trail with key operations and no anchor to check
    it against is a problem too: without one, deleting its newest entries would not show."""
    entries = ctx.audit.entries()
    problems = ctx.audit.check()
    anchored = any(entry.get("action") in custody.KEY_OPERATIONS for entry in entries)
    if not ctx.settings.keys:
        if anchored:
            problems.append("the anchor was not checked: give the key provider (--keys or REENCRYPT_KEYS)")
        return problems
    fingerprint, held = store_fingerprint(ctx.settings.store), False
    for provider in _anchoring_keys(ctx, entries):
        mark = custody.marks(provider).get(fingerprint)
        held = held or bool(mark and mark.anchor_seq)
        problems += custody.anchor_problems(mark, entries, provider.describe())
    if anchored and not held:
        problems.append(f"{ctx.keys.describe()} holds no anchor for this store's trail: it cannot be checked")
    return problems


def _anchoring_keys(ctx: Context, entries: list[dict]) -> list[KeyProvider]:
    """The keys that may hold an anchor of this trail: the one key, or under per-product keys
    every product's key that exists. Not only those the trail's entries name: deleting the
    newest entries would remove exactly the names of the keys whose anchors show it. One
    metadata read per product key: audit --check is not a hot path."""
    if not ctx.keys.per_product:
        return [ctx.keys.root]
    return [ctx.keys.provider_for(product) for product in ctx.keys.products_with_keys()]


def _audit_entries_of(ctx: Context):
    """Read a container's audit trail by URL: this store's through the context, others opened
    without create (a container that no longer exists refuses the gate, naming it; a SQLite
    file of the first layout is migrated, as any open does)."""

    def entries(url: str) -> list[dict]:
        if url == ctx.settings.store:
            return ctx.audit.entries()
        store = open_store(url, partition_key_field=ctx.settings.partition_key_field)
        try:
            return AuditTrail(store.records()).entries()
        finally:
            store.close()

    return entries


def _writes_ended(provider: KeyProvider, kid: str) -> str | None:
    """What the key itself says of when writes under ``kid`` may last have happened: the later
    of its last change of current version (rotate, promote) and the creation of the version
    after ``kid`` (the next in the provider's order, oldest first: timestamps are whole
    seconds, so a later timestamp would miss a rotation within the same second)."""
    versions = provider.versions()
    kids = [v.kid for v in versions]
    following = versions[kids.index(kid) + 1 :] if kid in kids else []
    ends = [t for t in (custody.last_switch(provider), following[0].created if following else None) if t]
    return max(ends, default=None)
