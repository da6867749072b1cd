"""Counting what ``verify`` sees in documents: fields by kid and kind, fields that do not decrypt,
fields not on the version expected for their product, and stale writes (documents the tracker
wrote after rotation under a retired version, tracker_reencrypt.stale). Pure bookkeeping over
:func:`tracker_reencrypt.documents.check_document`, shared by the one-process verify (the
coordinator) and a verify made on the fleet (each worker's slice), so both count alike.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracker_reencrypt import stale
from tracker_reencrypt.documents import WHOLE_DOCUMENT, FieldCheck, check_document, document_label
from tracker_reencrypt.envelope import KeySource
from tracker_reencrypt.errors import ReencryptError, first_line

#: Undecryptable fields a report keeps as examples (verify prints at most as many).
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
    #: With an expected kid per product: fields not on it, by product, and why a product has none.
    off_target: int = 0
    off_target_by_product: Counter = field(default_factory=Counter)
    products_without_target: dict[str, str] = field(default_factory=dict)
    #: With each product's current version: documents written after rotation under a retired
    #: version, their fields under it (all of them off target too), and the first as examples.
    stale_writes: int = 0
    stale_write_fields: int = 0
    stale_write_examples: list[stale.StaleWrite] = field(default_factory=list)

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


#: Where a product's fields should be: its expected kid, or raises (no key, unmappable id...).
Expected = Callable[[Any], str]


def count_document(
    report: ScanReport,
    body: dict,
    partition_key: str | None,
    keyring: KeySource | None,
    *,
    unreadable: str | None = None,
    expected: Expected | None = None,
    written_at: float | None = None,
    current: stale.CurrentLookup | None = None,
) -> list[FieldCheck]:
    """Add one document to the report. ``partition_key`` None: the document has none.
    ``unreadable``: why the store could not parse the document (see StoredDocument), whose
    ``body`` is then only its id and partition key. ``written_at`` (its last write, see
    StoredDocument) and ``current`` (each product's current version): also count it if it is a
    stale write, judged against the expected kid when that is given (tracker_reencrypt.stale).

    A document that cannot be checked as a whole (no partition key, no id, nested too deep,
    unreadable...) counts as one undecryptable entry at field path "": verify cannot vouch for
    its fields, so it must not pass, and the scan goes on to the next document.

    Returns what did not decrypt: the whole-document check, or the fields (a worker records them).
    """
    report.documents += 1
    if unreadable:
        checks = [FieldCheck(WHOLE_DOCUMENT, "other", "", "", unreadable)]
    else:
        checks = check_document(body, partition_key, keyring)
    if checks and checks[0].whole_document:
        _count_undecryptable(report, body, partition_key, checks[0])
        return checks[:1]
    if report.sizing:
        report.document_bytes += len(json.dumps(body, separators=(",", ":")))
    for kid in {check.kid for check in checks}:
        report.documents_by_kid[kid] += 1
    target = _count_off_target(report, partition_key, checks, expected) if expected is not None else None
    if current is not None and written_at is not None:
        _count_stale(report, body, partition_key, written_at, checks, current, target)
    for check in checks:
        report.fields += 1
        report.fields_by_kid[check.kid] += 1
        report.fields_by_kind[check.kind] += 1
        report.kinds_by_kid.setdefault(check.kid, Counter())[check.kind] += 1
        if report.sizing:
            report.deks_by_kid.setdefault(check.kid, set()).add(check.dek_id)
        if not check.decrypts:
            _count_undecryptable(report, body, partition_key, check)
    return [check for check in checks if not check.decrypts]


def _count_off_target(
    report: ScanReport, partition_key: Any, checks: list[FieldCheck], expected: Expected
) -> str | None:
    """Count the fields not on the product's expected kid; that kid (None: the product has none)."""
    try:
        kid = expected(partition_key)
    except ReencryptError as error:
        if error.transient:
            raise
        kid = None
        report.products_without_target.setdefault(str(partition_key), first_line(error))
    off = sum(1 for check in checks if check.kid != kid)
    if off:
        report.off_target += off
        report.off_target_by_product[str(partition_key)] += off
    return kid


def _count_stale(
    report: ScanReport,
    body: dict,
    partition_key: Any,
    written_at: float,
    checks: list[FieldCheck],
    current: stale.CurrentLookup,
    target: str | None,
) -> None:
    kids = [check.kid for check in checks if check.kid != target]
    if not kids:
        return  # every field where expected: nothing to judge, no lookup
    version = stale.current_version(current, partition_key)
    if version is None:
        return
    found = stale.find(document_label(body), partition_key, written_at, kids, version, target_kid=target)
    if found is None:
        return
    report.stale_writes += 1
    report.stale_write_fields += found.fields
    if len(report.stale_write_examples) < stale.REPORT_EXAMPLES:
        report.stale_write_examples.append(found)


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
