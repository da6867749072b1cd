"""Full scans of the container: ``verify`` (the gate before disabling a key), the dry run,
and the usage check that guards ``keys disable``; and the result of a verify made on the fleet
(``verify --fleet``), summed from its slices into the same report."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence

from tracker_reencrypt import stale
from tracker_reencrypt.custody import VERIFY_STARTED
from tracker_reencrypt.documents import (
    data_keys_to_unwrap,
    partition_key_or_none,
)
from tracker_reencrypt.errors import InputError, UnknownNameError
from tracker_reencrypt.keys import KeyProvider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.products import CurrentKids
from tracker_reencrypt.stores import DocumentStore, FeedRange, ScanPage
from tracker_reencrypt.sweep.records import (
    TARGET_CURRENT,
    Sweep,
    parse_utc,
    stale_write_examples,
    sum_checked,
    utc_now,
)
from tracker_reencrypt.verification import EXAMPLES, Expected, ScanReport, count_document

PAGE_SIZE = 500
#: Documents per range that keep any product in one range: scans read a partition start to end.
WHOLE_PRODUCT = 2**62


def scan_ranges(store: DocumentStore, products: Sequence[str] | None) -> list[FeedRange]:
    """The whole container, or only the partitions of ``products`` (one range each)."""
    if products is None:
        return store.feed_ranges(1)
    return [feed_range for product in products for feed_range in store.product_ranges(product, WHOLE_PRODUCT)]


def scan_container(
    store: DocumentStore,
    keyring: Keyring | None,
    progress: Callable[[int], None] | None = None,
    *,
    sizing: bool = False,
    products: Sequence[str] | None = None,
    expected: Expected | None = None,
    current: stale.CurrentLookup | None = None,
) -> ScanReport:
    """Count every field by kid and kind; with a keyring, also check that each decrypts.

    ``products``: read only their partitions (None: the whole container). ``expected``: also
    count the fields not on the kid expected for their document's product. ``current`` (each
    product's current version): also count stale writes (tracker_reencrypt.stale)."""
    report = ScanReport(sizing=sizing)
    try:
        for feed_range in scan_ranges(store, products):
            page: ScanPage | None = _read_ahead(store, feed_range, None, keyring)
            while page is not None:
                # The next page is read, and its data keys unwrapping, while this one is checked.
                following = _read_ahead(store, feed_range, page.continuation, keyring) if page.continuation else None
                for document in page.documents:
                    count_document(
                        report,
                        document.body,
                        partition_key_or_none(store, document.body),
                        keyring,
                        unreadable=document.unreadable,
                        expected=expected,
                        written_at=document.written_at,
                        current=current,
                    )
                if progress:
                    progress(len(page.documents))
                page = following
    finally:
        if keyring is not None:
            keyring.cancel_prefetches()  # Ctrl-C or an error: no page's unwraps left queued
    return report


def _read_ahead(store: DocumentStore, feed_range: FeedRange, continuation: str | None, keyring: Keyring | None):
    """One page, with its fields' data keys set unwrapping (remote vaults) when checking decrypts."""
    page = store.scan(feed_range, continuation, PAGE_SIZE)
    if keyring is not None:
        keyring.prefetch(
            key
            for document in page.documents
            if not document.unreadable
            for key in data_keys_to_unwrap(document.body, partition_key_or_none(store, document.body))
        )
    return page


def require_known_kid(ctx, kid: str) -> KeyProvider:
    """The provider of the key ``kid`` is a version of, once ``kid`` is known to be one of its versions."""
    provider = ctx.keys.provider_of_kid(kid)
    if kid not in {v.kid for v in provider.versions()}:
        raise UnknownNameError(f"key {kid!r} is unknown to {provider.describe()}: see 'reencrypt keys list'")
    return provider


def verify_scope(
    ctx, expect: str | None, products: Sequence[str] | None, current: CurrentKids | None = None
) -> tuple[list[str] | None, Expected]:
    """The products a verify reads (None: the whole container) and the kid each must be on.

    ``expect`` None means each product's current version (looked up through ``current`` when
    given, so the stale-write check shares its lookups). Under per-product keys a fixed
    ``expect`` belongs to one product: the verify reads that product only, and naming others is refused.
    """
    keys = ctx.keys
    chosen = keys.naming.check_products(products) if products is not None else None
    if expect is None:
        if not keys.per_product:
            kid = keys.root.current_kid()
            return chosen, lambda _product: kid
        return chosen, (current or CurrentKids(keys)).of
    require_known_kid(ctx, expect)
    owner = keys.product_of_kid(expect)
    if keys.per_product:
        if chosen is not None and chosen != [owner]:
            raise InputError(
                f"{expect} is a version of product {owner}'s key: verify it with --product {owner} alone "
                f"(or use --current for several products)"
            )
        chosen = [str(owner)]
    return chosen, lambda _product: expect


def verify_rotation(
    ctx,
    expect: str | None,
    progress: Callable[[int], None] | None = None,
    *,
    allow_empty: bool = False,
    products: Sequence[str] | None = None,
) -> dict:
    """The gate before disabling a key: every field on ``expect`` (None: on its product's current
    version) and decrypting. Audited, with the kids it saw and the products it read, so ``keys
    disable`` can later find the proof in this store's trail.

    A container (or a product) with no document fails unless ``allow_empty``: a mistyped store
    or product id must not pass the gate on nothing.

    It also counts stale writes (documents the tracker wrote after rotation under a retired
    version): they never change the verdict, but when verify fails because of them its
    ``reason`` names them."""
    current = CurrentKids(ctx.keys)
    scope, expected = verify_scope(ctx, expect, products, current)
    # The proof dates from here, not from the entry written at the end: a long scan may have
    # passed a region before a key switch wrote there (custody.proving_verify).
    started = _reading_starts(ctx)
    report = scan_container(
        ctx.store, ctx.keyring, progress=progress, products=scope, expected=expected, current=current.version_of
    )
    payload = verify_payload(
        ctx,
        report.as_json(),
        expect=expect or TARGET_CURRENT,
        products=scope,
        off_target=report.off_target,
        lagging=report.off_target_by_product,
        without_key=report.products_without_target,
        allow_empty=allow_empty,
        stale_writes=report.stale_writes,
        stale_write_fields=report.stale_write_fields,
        stale_examples=report.stale_write_examples,
    )
    _record_verify(ctx, payload, allow_empty=allow_empty, **started)
    return payload


def _reading_starts(ctx) -> dict:
    """When a one-process verify begins reading: the time, and the newest audit entry then."""
    if not ctx.settings.store:
        return {}
    entries = ctx.audit.entries()
    return {"started_at": utc_now(), "started_after_seq": entries[-1]["seq"] if entries else 0}


def verify_payload(
    ctx,
    counted: dict,
    *,
    expect: str,
    products: Sequence[str] | None,
    off_target: int,
    lagging: Mapping[str, int],
    without_key: dict[str, str],
    allow_empty: bool,
    stale_writes: int = 0,
    stale_write_fields: int = 0,
    stale_examples: Sequence[stale.StaleWrite] = (),
) -> dict:
    """The verify report (``verify --json``), in one place for both ways of making it.
    ``counted``: documents, fields and undecryptable fields, by kid and kind (ScanReport.as_json).
    Stale writes are reported beside the rest and never decide ``ok``: their fields are off
    target already; they only name the reason."""
    empty = counted["documents"] == 0
    ok = off_target == 0 and counted["undecryptable"] == 0 and (allow_empty or not empty)
    reason = (
        None
        if ok
        else failure_reason(
            off_target=off_target,
            undecryptable=counted["undecryptable"],
            empty=empty,
            stale_writes=stale_writes,
            stale_write_fields=stale_write_fields,
        )
    )
    return {
        **counted,
        "expect": expect,
        "products": products,
        "off_target": off_target,
        # the most lagging first, ties by product id: the same products however the counts were summed
        "lagging_products": dict(sorted(lagging.items(), key=lambda item: (-item[1], item[0]))[:EXAMPLES]),
        "products_without_key": without_key,
        "stale_writes": stale_writes,
        "stale_write_fields": stale_write_fields,
        "stale_write_examples": [example.as_json() for example in stale.newest_first(stale_examples)],
        "ok": ok,
        "reason": reason,
        "empty": empty,
        "store": ctx.store.describe(),
    }


def failure_reason(
    *, off_target: int, undecryptable: int, empty: bool, stale_writes: int, stale_write_fields: int
) -> str:
    """Why a verify failed, in one line; stale writers first when some of the off-target fields
    are theirs: a sweep cannot finish while a tracker instance keeps writing the old key id."""
    reasons = []
    if stale_write_fields:
        reasons.append(
            f"{stale_write_fields} of the {off_target} fields not on the expected version are in documents "
            f"written after rotation under a retired version ({stale_writes} documents: stale writes): a tracker "
            "instance still uses the old key id; restart it, then sweep again"
        )
    elif off_target:
        reasons.append(f"{off_target} fields are not on the expected version: sweep them")
    if undecryptable:
        reasons.append(f"{undecryptable} fields (or documents) cannot be decrypted: see the examples")
    if empty:
        reasons.append("no document was read: check the store and products (--allow-empty if it really is empty)")
    return "; ".join(reasons)


def _record_verify(ctx, payload: dict, *, allow_empty: bool, **extra) -> None:
    """The "verify" audit entry the disable gate looks for (custody.proving_verify)."""
    ctx.record(
        "verify",
        expect=payload["expect"],
        products=payload["products"],
        ok=payload["ok"],
        documents=payload["documents"],
        fields=payload["fields"],
        off_target=payload["off_target"],
        undecryptable=payload["undecryptable"],
        stale_writes=payload["stale_writes"],
        fields_by_kid=payload["fields_by_kid"],
        allow_empty=allow_empty,
        store=payload["store"],
        **extra,
    )


#: A collector that claimed the right to audit a fleet verify and left no entry for this long
#: died before writing it: the next collector writes it instead.
CLAIM_S = 60.0


def fleet_verify(ctx, sweep: Sweep) -> dict:
    """The result of a verify sweep whose every slice is done: the report one-process verify
    gives, summed from the slices' committed counts (examples: the recorded failures, at most
    EXAMPLES, in slice order), plus its ``sweep_id``. Audited once as "verify", whoever asks
    and however often: the entry names the sweep, and a claim on the sweep record keeps two
    collectors racing from both writing it."""
    started = _verify_started(ctx.audit.entries(), sweep.id)
    allow_empty = bool(started and started["details"].get("allow_empty"))
    slices = ctx.state.slices(sweep.id)
    checked = sum_checked(slices)
    failures = sorted(
        ctx.state.failures(sweep.id), key=lambda f: (f.slice, f.document_id, f.partition_key, f.field_path)
    )
    counted = {
        "documents": sum(piece.counts.get("documents_scanned", 0) for piece in slices),
        "fields": checked.fields,
        "fields_by_kid": dict(checked.fields_by_kid),
        "fields_by_kind": dict(checked.fields_by_kind),
        "kinds_by_kid": {kid: dict(kinds) for kid, kinds in checked.kinds_by_kid.items()},
        "undecryptable": checked.undecryptable,
        "undecryptable_examples": [
            {
                "document_id": failure.document_id,
                "partition_key": failure.partition_key,
                "field_path": failure.field_path,
                "reason": failure.reason,
            }
            for failure in failures[:EXAMPLES]
        ],
    }
    payload = verify_payload(
        ctx,
        counted,
        expect=sweep.target_kid,
        products=list(sweep.products) if sweep.products is not None else None,
        off_target=checked.off_target,
        lagging=checked.off_target_by_product,
        without_key=dict(checked.products_without_key),
        allow_empty=allow_empty,
        stale_writes=sum(piece.counts.get("stale_writes", 0) for piece in slices),
        stale_write_fields=checked.stale_write_fields,
        stale_examples=stale_write_examples(slices),
    )
    payload["sweep_id"] = sweep.id
    if not _audited(ctx, sweep.id) and _claim(ctx, sweep.id):
        _record_verify(ctx, payload, allow_empty=allow_empty, sweep_id=sweep.id)
    return payload


def _verify_started(entries: list[dict], sweep_id: str) -> dict | None:
    return next(
        (e for e in entries if e.get("action") == VERIFY_STARTED and e["details"].get("sweep_id") == sweep_id), None
    )


def _audited(ctx, sweep_id: str) -> bool:
    return any(
        entry.get("action") == "verify" and (entry.get("details") or {}).get("sweep_id") == sweep_id
        for entry in ctx.audit.entries()
    )


def _claim(ctx, sweep_id: str) -> bool:
    """Whether this collector may write the sweep's "verify" entry: it set the claim by a
    conditional write (or took over one left by a collector that died before writing it)."""
    mine = f"{uuid.uuid4().hex} {utc_now()}"

    def free(sweep: Sweep) -> bool:
        if sweep.verify_claim is None:
            return True
        claimed_at = sweep.verify_claim.partition(" ")[2]
        return parse_utc(utc_now()) - parse_utc(claimed_at) > CLAIM_S

    return ctx.state.update_sweep(sweep_id, lambda s: s.but(verify_claim=mine), only_if=free).verify_claim == mine


def documents_in_scope(store: DocumentStore, products: Sequence[str] | None) -> int:
    return store.count() if products is None else sum(store.count(product) for product in products)
