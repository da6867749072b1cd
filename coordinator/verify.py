"""Full scans of the container: ``verify`` (the gate before disabling a key), the dry run,
and the usage check that guards ``keys disable``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tracker_reencrypt.documents import (
    WHOLE_DOCUMENT,
    FieldCheck,
    check_document,
    document_label,
    partition_key_or_none,
)
from tracker_reencrypt.errors import UnknownNameError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import DocumentStore

PAGE_SIZE = 500
EXAMPLES = 20


@dataclass
class ScanReport:
    #: Also measure document sizes and collect each kid's distinct DEKs: what the dry run's
    #: estimate and the bench need. Off for verify and keys disable, whose memory would
    #: otherwise grow with every distinct data key in the container.
    sizing: bool = False
    documents: int = 0
    fields: int = 0
    fields_by_kid: Counter = field(default_factory=Counter)
    fields_by_kind: Counter = field(default_factory=Counter)
    kinds_by_kid: dict[str, Counter] = field(default_factory=dict)
    undecryptable: int = 0
    undecryptable_examples: list[dict] = field(default_factory=list)
    document_bytes: int = 0
    deks_by_kid: dict[str, set] = field(default_factory=dict)
    documents_by_kid: Counter = field(default_factory=Counter)

    def documents_with_kids(self, kids) -> int:
        """Documents holding a field on any of ``kids`` (an upper bound when kids overlap)."""
        return sum(self.documents_by_kid.get(kid, 0) for kid in kids)

    def distinct_deks(self, kids) -> int:
        return sum(len(self.deks_by_kid.get(kid, ())) for kid in kids)

    def as_json(self) -> dict:
        sizes = {
            "document_bytes": self.document_bytes,
            "distinct_deks_by_kid": {kid: len(deks) for kid, deks in self.deks_by_kid.items()},
        }
        return {
            "documents": self.documents,
            "fields": self.fields,
            "fields_by_kid": dict(self.fields_by_kid),
            "fields_by_kind": dict(self.fields_by_kind),
            "kinds_by_kid": {kid: dict(kinds) for kid, kinds in self.kinds_by_kid.items()},
            "undecryptable": self.undecryptable,
            "undecryptable_examples": self.undecryptable_examples,
            **(sizes if self.sizing else {}),
        }


def scan_container(
    store: DocumentStore,
    keyring: Keyring | None,
    progress: Callable[[int], None] | None = None,
    *,
    sizing: bool = False,
) -> ScanReport:
    """Count every field by kid and kind; with a keyring, also check that each decrypts."""
    report = ScanReport(sizing=sizing)
    for feed_range in store.feed_ranges(1):
        continuation = None
        while True:
            page = store.scan(feed_range, continuation, PAGE_SIZE)
            for document in page.documents:
                count_document(
                    report,
                    document.body,
                    partition_key_or_none(store, document.body),
                    keyring,
                    unreadable=document.unreadable,
                )
            if progress:
                progress(len(page.documents))
            continuation = page.continuation
            if continuation is None:
                break
    return report


def count_document(
    report: ScanReport, body: dict, partition_key: str | None, keyring: Keyring | None, *, unreadable: str | None = None
) -> None:
    """Add one document to the report. ``partition_key`` None: the document has none.
    ``unreadable``: why the store could not parse the document (see StoredDocument), whose
    ``body`` is then only its id and partition key.

    A document that cannot be checked as a whole (no partition key, no id, nested too deep,
    unreadable...) counts as one undecryptable entry at field path "": verify cannot vouch for
    its fields, so it must not pass, and the scan goes on to the next document.
    """
    report.documents += 1
    if unreadable:
        checks = [FieldCheck(WHOLE_DOCUMENT, "other", "", "", unreadable)]
    else:
        checks = check_document(body, partition_key, keyring)
    if checks and checks[0].whole_document:
        _count_undecryptable(report, body, partition_key, checks[0])
        return
    if report.sizing:
        report.document_bytes += len(json.dumps(body, separators=(",", ":")))
    for kid in {check.kid for check in checks}:
        report.documents_by_kid[kid] += 1
    for check in checks:
        report.fields += 1
        report.fields_by_kid[check.kid] += 1
        report.fields_by_kind[check.kind] += 1
        report.kinds_by_kid.setdefault(check.kid, Counter())[check.kind] += 1
        if report.sizing:
            report.deks_by_kid.setdefault(check.kid, set()).add(check.dek_id)
        if not check.decrypts:
            _count_undecryptable(report, body, partition_key, check)


def _count_undecryptable(report: ScanReport, body: dict, partition_key: str | None, check: FieldCheck) -> None:
    report.undecryptable += 1
    if len(report.undecryptable_examples) < EXAMPLES:
        report.undecryptable_examples.append(
            {
                "document_id": document_label(body),
                "partition_key": "" if partition_key is None else partition_key,
                "field_path": check.pointer,
                "reason": check.reason,
            }
        )


def require_known_kid(ctx, kid: str) -> None:
    if kid not in {v.kid for v in ctx.provider.versions()}:
        raise UnknownNameError(f"key {kid!r} is unknown to {ctx.provider.describe()}: see 'reencrypt keys list'")


def verify_rotation(
    ctx, expect: str, progress: Callable[[int], None] | None = None, *, allow_empty: bool = False
) -> dict:
    """The gate before disabling a key: every field on ``expect`` and decrypting. Audited, with
    the kids it saw, so ``keys disable`` can later find the proof in this store's trail.

    A container with no document fails unless ``allow_empty``: a mistyped or staging store
    must not pass the gate on nothing."""
    require_known_kid(ctx, expect)
    report = scan_container(ctx.store, ctx.keyring, progress=progress)
    off_target = report.fields - report.fields_by_kid.get(expect, 0)
    empty = report.documents == 0
    ok = off_target == 0 and report.undecryptable == 0 and (allow_empty or not empty)
    ctx.record(
        "verify",
        expect=expect,
        ok=ok,
        documents=report.documents,
        fields=report.fields,
        off_target=off_target,
        undecryptable=report.undecryptable,
        fields_by_kid=dict(report.fields_by_kid),
        allow_empty=allow_empty,
        store=ctx.store.describe(),
    )
    return {
        **report.as_json(),
        "expect": expect,
        "off_target": off_target,
        "ok": ok,
        "empty": empty,
        "store": ctx.store.describe(),
    }
