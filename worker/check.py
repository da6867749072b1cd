"""One batch of a verify sweep: scan pages of the slice, check every field, write nothing.

What one-process ``verify`` does to a document (tracker_reencrypt.verification.count_document,
the same function), done slice by slice on the fleet: each field counted by kid and kind, checked to decrypt where
it is, and compared with the kid expected for its product (a fixed one, or the product's current
version, resolved as a sweep to current resolves it); each document checked for a stale write.
The counts go into the slice with its checkpoint, by the same fenced commit as a re-keying
batch's, so a redone batch counts once.

The first EXAMPLES fields of a slice that do not decrypt (or documents that cannot be read as a
whole) are recorded as the sweep's failures: the examples survive a killed worker, and
``sweep failures`` lists them. Past those, they are counted, not recorded: a container a verify
finds broken must not cost a write per field.

Why a class of its own rather than a mode of ``SliceBatch``: this one is given a store it can
only read (:class:`Scanner`), so no path through it can write a document, whatever the sweep
record says.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from tracker_reencrypt.documents import (
    UNKNOWN_ID,
    FieldCheck,
    data_keys_to_unwrap,
    document_label,
)
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.pacing.pacer import Pacer
from tracker_reencrypt.stores import FeedRange, ScanPage, StoredDocument
from tracker_reencrypt.sweep.records import CheckCounts, Slice, Sweep
from tracker_reencrypt.sweep.state import BatchResult, SweepState
from tracker_reencrypt.sweep.targets import DocumentTargets
from tracker_reencrypt.verification import EXAMPLES, ScanReport, count_document
from worker.batch import BatchLimits, BatchReport, page_size


class Scanner(Protocol):
    """All a verify batch may do with the store: read."""

    @property
    def partition_key_field(self) -> str: ...

    def partition_key_of(self, body: dict) -> Any: ...

    def scan(self, feed_range: FeedRange, continuation: str | None, page_size: int) -> ScanPage: ...


def _check_counts(report: ScanReport) -> CheckCounts:
    """A batch's report as the slice record keeps it (merged into an empty record: the
    by-product maps are cut to their bound there)."""
    return CheckCounts().plus(
        CheckCounts(
            fields=report.fields,
            off_target=report.off_target,
            undecryptable=report.undecryptable,
            fields_by_kid=dict(report.fields_by_kid),
            fields_by_kind=dict(report.fields_by_kind),
            kinds_by_kid={kid: dict(kinds) for kid, kinds in report.kinds_by_kid.items()},
            off_target_by_product=dict(report.off_target_by_product),
            products_without_key=report.products_without_target,
            stale_write_fields=report.stale_write_fields,
        )
    )


class SliceCheck:
    """Everything one verify batch needs; built per task, like SliceBatch, with the same arguments."""

    def __init__(
        self,
        store: Scanner,
        state: SweepState,
        keyring: Keyring,
        sweep: Sweep,
        limits: BatchLimits,
        pacer: Pacer | None = None,
        targets: DocumentTargets | None = None,
    ) -> None:
        """``targets``: the sweep's (Runtime.targets, cached for the sweep's life), required:
        they resolve the products' current versions, for a sweep to current and for every
        verify's stale-write check, under the sweep's own key name setting. Optional in the
        signature only because it follows ``pacer``, as in SliceBatch's, which the task builds alike."""
        if targets is None:
            raise ValueError("a verify batch needs the sweep's targets (Runtime.targets)")
        self.store, self.state, self.keyring, self.sweep, self.limits = store, state, keyring, sweep, limits
        self.pacer, self.targets = pacer, targets
        #: Each product's current version, for the stale-write check.
        self.current = targets.current

    def run(self, piece: Slice) -> BatchReport:
        """Pages of the slice until a bound is reached. The next page is read, and its fields'
        data keys set unwrapping (Keyring.prefetch), while this one is checked: against a remote
        vault the unwraps are what a page waits on."""
        tally = ScanReport()
        report = BatchReport(result=BatchResult(continuation=piece.continuation, done=False))
        recordable = max(0, EXAMPLES - piece.counts.get("failures", 0))
        deadline = time.monotonic() + self.limits.seconds
        page = self._read(piece, piece.continuation, 0)
        handled = 0
        try:
            while True:
                if self.pacer is not None:
                    self.pacer.before_page(len(page.documents))
                handled += len(page.documents)
                more = handled < self.limits.documents and time.monotonic() < deadline
                following = self._read(piece, page.continuation, handled) if page.continuation and more else None
                for document in page.documents:
                    recordable -= self._check(piece.index, document, tally, report, recordable)
                if self.pacer is not None:
                    self.pacer.after_page()
                report.result.continuation = page.continuation
                if page.continuation is None or following is None:
                    report.result.done = page.continuation is None
                    report.result.checked = _check_counts(tally)
                    report.result.counts["stale_writes"] = tally.stale_writes
                    report.result.stale_writes = tally.stale_write_examples
                    return report
                page = following
        finally:
            self.keyring.cancel_prefetches()  # after an error, no page's unwraps are left queued

    def _read(self, piece: Slice, continuation: str | None, handled: int) -> ScanPage:
        page = self.store.scan(
            dict(piece.feed_range), continuation, page_size(self.limits, handled, self.pacer, self.sweep)
        )
        self.keyring.prefetch(
            key
            for document in page.documents
            if not document.unreadable
            for key in data_keys_to_unwrap(document.body, self._partition_key(document.body))
        )
        return page

    def _partition_key(self, body: Any) -> Any:
        """documents.partition_key_or_none, over the read-only store."""
        if isinstance(body, dict) and self.store.partition_key_field in body:
            return self.store.partition_key_of(body)
        return None

    def _check(
        self, index: int, document: StoredDocument, tally: ScanReport, report: BatchReport, recordable: int
    ) -> int:
        """Count one document as one-process verify does; returns the failures recorded."""
        report.result.counts["documents_scanned"] += 1
        partition_key = self._partition_key(document.body)
        broken = count_document(
            tally,
            document.body,
            partition_key,
            self.keyring,
            unreadable=document.unreadable,
            expected=self._expected,
            written_at=document.written_at,
            current=self.current.version_of,
        )
        return self._failed(index, document, partition_key, broken, report, recordable) if broken else 0

    def _expected(self, partition_key: Any) -> str:
        if not self.sweep.to_current:
            return self.sweep.target_kid
        return self.current.of(partition_key)

    def _failed(
        self,
        index: int,
        document: StoredDocument,
        partition_key: Any,
        checks: list[FieldCheck],
        report: BatchReport,
        recordable: int,
    ) -> int:
        """Count a document with fields (or itself) unreadable; record its first ones while the
        slice has room for examples. A document without a usable id is told apart, as a re-keying
        batch tells it, by the store's key of its row."""
        report.result.counts["documents_failed"] += 1
        document_id = document_label(document.body)
        key = "" if partition_key is None else str(partition_key)
        row = (json.dumps(list(document.row)) if document.row else document.etag) if document_id == UNKNOWN_ID else ""
        recorded = 0
        for check in checks[: max(0, recordable)]:
            self.state.record_failure(
                self.sweep.id, index, document_id, key, check.pointer, check.reason, row=row, kid=check.kid
            )
            report.result.counts["failures"] += 1
            report.failures_by_reason[check.reason] += 1
            recorded += 1
        return recorded
