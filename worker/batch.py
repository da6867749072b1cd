"""One batch of one slice: scan pages, re-key documents, write them back conditionally.

This is the I/O loop around the pure :func:`tracker_reencrypt.documents.rekey_document`. It
knows nothing of Celery; the task in :mod:`worker.tasks` claims, calls it and commits.

A document that cannot be re-keyed (a field that does not decrypt, or a document that is bad
as a whole: no partition key, no id, nested too deep, or text the store could not parse) is a
recorded failure and the batch goes on; only outages of the store or the key provider stop it,
to be retried.

Every document read is also checked for a stale write (tracker_reencrypt.stale) before it is
rewritten: one the tracker wrote after its product's key rotated under a retired version. The
slice counts them and keeps the first few as examples, committed with its checkpoint.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from tracker_reencrypt import stale
from tracker_reencrypt.documents import (
    UNKNOWN_ID,
    WHOLE_DOCUMENT,
    DocumentPlan,
    FieldOutcome,
    Mode,
    data_keys_to_unwrap,
    document_label,
    partition_key_or_none,
    rekey_document,
)
from tracker_reencrypt.errors import ConflictError, NotFoundError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.products import ProductKeys
from tracker_reencrypt.pacing.pacer import Pacer
from tracker_reencrypt.stores import DocumentStore, ScanPage, StoredDocument
from tracker_reencrypt.sweep.records import Slice, Sweep
from tracker_reencrypt.sweep.state import BatchResult, SweepState
from tracker_reencrypt.sweep.targets import DocumentTargets

CONFLICT_REASON = "conflict_retries_exhausted"


@dataclass
class BatchLimits:
    documents: int
    seconds: float
    page_size: int
    conflict_retries: int


@dataclass
class BatchReport:
    """The committed result plus what only metrics need (bounded label values)."""

    result: BatchResult
    fields_by_kind: Counter = field(default_factory=Counter)
    failures_by_reason: Counter = field(default_factory=Counter)
    documents_skipped: int = 0
    #: (product, document id) of the stale writes counted: a document read again after a
    #: conflict is counted once.
    stale_seen: set[tuple[str, str]] = field(default_factory=set)


def page_size(limits: BatchLimits, handled: int, pacer: Pacer | None, sweep: Sweep) -> int:
    """The next page's size: the configured page, within the batch's document bound, and small
    enough that the sweep's limits let it through in half the batch's time bound (a page that
    waits past its lease is taken over and waited for again, for ever: Pacer.documents_within)."""
    size = min(limits.page_size, limits.documents - handled)
    paced = pacer.documents_within(limits.seconds / 2, sweep.sample) if pacer is not None else None
    return size if paced is None else max(1, min(size, paced))


class SliceBatch:
    """Everything one batch needs; built per task by the worker runtime."""

    def __init__(
        self,
        store: DocumentStore,
        state: SweepState,
        keyring: Keyring,
        sweep: Sweep,
        limits: BatchLimits,
        pacer: Pacer | None = None,
        targets: DocumentTargets | None = None,
    ) -> None:
        """``targets``: where each document moves (default: resolved through the keyring's provider)."""
        self.store, self.state, self.keyring, self.sweep, self.limits = store, state, keyring, sweep, limits
        self.pacer = pacer
        self.targets = targets or DocumentTargets(sweep, ProductKeys(keyring.provider))
        self.source_kids = frozenset(sweep.source_kids) if sweep.source_kids else None

    def run(self, piece: Slice) -> BatchReport:
        """Pages of the slice until a bound is reached. While a page is written, the next one is
        already read and its data keys are being unwrapped (Keyring.prefetch): against a remote
        vault the unwraps, not the writes, are what a page waits on."""
        report = BatchReport(result=BatchResult(continuation=piece.continuation, done=False))
        deadline = time.monotonic() + self.limits.seconds
        page = self._read(piece, piece.continuation, 0)
        self._prefetch(page.documents)
        handled = 0
        try:
            while True:
                if self.pacer is not None:
                    self.pacer.before_page(len(page.documents))
                writes = self._plan_page(piece.index, page.documents, report)
                handled += len(page.documents)
                more = handled < self.limits.documents and time.monotonic() < deadline
                following = self._read(piece, page.continuation, handled) if page.continuation and more else None
                if following is not None:
                    self._prefetch(following.documents)
                self._write_page(piece.index, writes, report)
                if self.pacer is not None:
                    self.pacer.after_page()
                report.result.continuation = page.continuation
                if page.continuation is None:
                    report.result.done = True
                    return report
                if following is None:
                    return report
                page = following
        finally:
            self.keyring.cancel_prefetches()  # after an error, no page's unwraps are left queued

    def _read(self, piece: Slice, continuation: str | None, handled: int) -> ScanPage:
        return self.store.scan(
            dict(piece.feed_range), continuation, page_size(self.limits, handled, self.pacer, self.sweep)
        )

    def _prefetch(self, documents: list[StoredDocument]) -> None:
        """Start unwrapping the data keys these documents' moving fields need (remote vaults only)."""
        keys = []
        for document in documents:
            if document.unreadable:
                continue
            partition_key = partition_key_or_none(self.store, document.body)
            target_kid, _ = self.targets.kid_for(partition_key)
            if target_kid is not None:
                keys += data_keys_to_unwrap(
                    document.body, partition_key, target_kid=target_kid, source_kids=self.source_kids
                )
        self.keyring.prefetch(keys)

    def _plan_page(
        self, index: int, documents: list[StoredDocument], report: BatchReport
    ) -> list[tuple[StoredDocument, Any, DocumentPlan, dict]]:
        """Re-key a page: what to write, after recording failures and counting finished documents."""
        writes: list[tuple[StoredDocument, Any, DocumentPlan, dict]] = []
        for document in documents:
            report.result.counts["documents_scanned"] += 1
            partition_key, plan = self._plan(document)
            body = self._body_to_write(index, document, partition_key, plan, report)
            if body is not None:
                writes.append((document, partition_key, plan, body))
        return writes

    def _write_page(
        self, index: int, writes: list[tuple[StoredDocument, Any, DocumentPlan, dict]], report: BatchReport
    ) -> None:
        """One round of conditional writes for a page, rather than one commit per document: on
        SQLite a single short transaction, so workers queue for the write lock once a page."""
        written = self.store.replace_many([(body, document.etag) for document, _, _, body in writes]) if writes else []
        for (document, partition_key, plan, _), result in zip(writes, written, strict=True):
            if result is not None:
                self._count_written(plan, report)
            else:
                report.result.counts["conflicts"] += 1
                self._redo(index, document, partition_key, report)

    def _plan(self, document: StoredDocument) -> tuple[Any, DocumentPlan]:
        """The document's partition key (None when it has none) and what it becomes. One the
        store could not parse is one whole-document failure: its body is a stand-in, never written."""
        partition_key = partition_key_or_none(self.store, document.body)
        if document.unreadable:
            failed = FieldOutcome(WHOLE_DOCUMENT, "other", "", "failed", document.unreadable)
            return partition_key, DocumentPlan(new_body=None, fields=[failed])
        target_kid, no_target = self.targets.kid_for(partition_key)
        return partition_key, rekey_document(
            document.body,
            partition_key,
            target_kid=target_kid,
            keyring=self.keyring,
            mode=cast(Mode, self.sweep.mode),  # checked against MODES when the sweep was started
            source_kids=self.source_kids,
            no_target=no_target,
        )

    def _body_to_write(
        self, index: int, document: StoredDocument, partition_key: Any, plan: DocumentPlan, report: BatchReport
    ) -> dict | None:
        """The body to write; None when nothing is, after recording failures or counting an
        already-done document (and, whatever its plan, counting it if it is a stale write)."""
        self._note_stale(document, partition_key, plan, report)
        if plan.failures:
            self._record_failures(
                index, document, partition_key, [(f.pointer, f.reason, f.source_kid) for f in plan.failures], report
            )
            return None
        if plan.new_body is None:
            report.documents_skipped += 1
            self._count_fields(plan, report)
        return plan.new_body

    def _note_stale(
        self, document: StoredDocument, partition_key: Any, plan: DocumentPlan, report: BatchReport
    ) -> None:
        """Count the document, once per batch, if the tracker wrote it after its product's key
        rotated under a retired version. Judged against the product's current version, which is
        what the tracker should use; a sweep to a fixed kid that is not current judges nothing
        (stale.find). Only fields off the target can be stale: a document wholly on target (one
        a sweep wrote, say) costs no lookup."""
        if document.written_at is None or partition_key is None or document.unreadable:
            return
        kids = [f.source_kid for f in plan.fields if f.pointer and f.action != "on_target"]
        if not kids:
            return
        current = stale.current_version(self.targets.current.version_of, partition_key)
        if current is None:
            return  # no key or an unmappable id: the plan's failures say so
        target = None if self.sweep.to_current else self.sweep.target_kid
        found = stale.find(
            document_label(document.body), partition_key, document.written_at, kids, current, target_kid=target
        )
        if found is None or (found.product, found.document_id) in report.stale_seen:
            return
        report.stale_seen.add((found.product, found.document_id))
        report.result.counts["stale_writes"] += 1
        if len(report.result.stale_writes) < stale.SLICE_EXAMPLES:
            report.result.stale_writes.append(found)

    def _redo(self, index: int, document: StoredDocument, partition_key: Any, report: BatchReport) -> None:
        """The live tracker wrote this document since we read it: its write wins, and we redo
        our work on what it wrote, a bounded number of times. What it wrote is planned like any
        scanned document, so if it is now bad as a whole (or unreadable), that is a recorded failure too."""
        document_id = document.id  # a valid id: only a document with a planned write conflicts
        for _ in range(self.limits.conflict_retries):
            try:
                document = self.store.read(document_id, partition_key)
            except NotFoundError:
                return  # deleted meanwhile: nothing left to re-encrypt
            written_key, plan = self._plan(document)
            body = self._body_to_write(index, document, written_key, plan, report)
            if body is None:
                return
            try:
                self.store.replace(body, document.etag)
            except ConflictError:
                report.result.counts["conflicts"] += 1
                continue
            except NotFoundError:
                return
            self._count_written(plan, report)
            return
        self._record_failures(index, document, partition_key, [(WHOLE_DOCUMENT, CONFLICT_REASON, "")], report)

    def _count_written(self, plan: DocumentPlan, report: BatchReport) -> None:
        report.result.counts["documents_written"] += 1
        self._count_fields(plan, report)

    def _count_fields(self, plan: DocumentPlan, report: BatchReport) -> None:
        counts = report.result.counts
        moved = plan.count("reencrypted")
        counts["fields_reencrypted"] += moved
        counts["fields_on_target"] += plan.count("on_target")
        counts["fields_not_source"] += plan.count("not_source")
        if moved:
            report.fields_by_kind[plan.fields[0].kind] += moved

    def _record_failures(
        self, index: int, document: StoredDocument, partition_key: Any, fields, report: BatchReport
    ) -> None:
        """One failed document: ``fields`` are (field path, reason, kid) triples, the path and kid ""
        for the whole document. A document without a usable id or partition key is recorded as "?" and ""; one without
        a usable id is told apart from others like it by the store's key of its row (where the store
        has none, its ETag): what a redone batch reads again unchanged."""
        report.result.counts["documents_failed"] += 1
        document_id, partition_key = document_label(document.body), "" if partition_key is None else partition_key
        row = ""
        if document_id == UNKNOWN_ID:
            row = json.dumps(list(document.row)) if document.row else document.etag
        for pointer, reason, kid in fields:
            self.state.record_failure(
                self.sweep.id, index, document_id, partition_key, pointer, reason, row=row, kid=kid
            )
            report.result.counts["failures"] += 1
            report.failures_by_reason[reason] += 1
