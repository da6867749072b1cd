"""One batch of one slice: scan pages, re-key documents, write them back conditionally.

This is the I/O loop around the pure :func:`tracker_reencrypt.documents.rekey_document`. It
knows nothing of Celery; the task in :mod:`worker.tasks` claims, calls it and commits.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from tracker_reencrypt.documents import rekey_document
from tracker_reencrypt.errors import ConflictError, NotFoundError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import DocumentStore, StoredDocument
from tracker_reencrypt.sweep.state import BatchResult, SweepState
from worker.pacing import Pacer

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


class SliceBatch:
    """Everything one batch needs; built per task by the worker runtime."""

    def __init__(self, store: DocumentStore, state: SweepState, keyring: Keyring, sweep: dict, limits: BatchLimits,
                 pacer: Pacer | None = None) -> None:
        self.store, self.state, self.keyring, self.sweep, self.limits = store, state, keyring, sweep, limits
        self.pacer = pacer
        self.source_kids = frozenset(sweep["source_kids"]) if sweep.get("source_kids") else None

    def run(self, slice_body: dict) -> BatchReport:
        report = BatchReport(result=BatchResult(continuation=slice_body["continuation"], done=False))
        deadline = time.monotonic() + self.limits.seconds
        handled = 0
        while handled < self.limits.documents and time.monotonic() < deadline:
            page_size = min(self.limits.page_size, self.limits.documents - handled)
            page = self.store.scan(slice_body["feed_range"], report.result.continuation, page_size)
            if self.pacer is not None:
                self.pacer.before_page(len(page.documents))
            for document in page.documents:
                self._document(slice_body["index"], document, report)
            if self.pacer is not None:
                self.pacer.after_page()
            handled += len(page.documents)
            report.result.continuation = page.continuation
            if page.continuation is None:
                report.result.done = True
                break
        return report

    def _document(self, index: int, document: StoredDocument, report: BatchReport) -> None:
        counts = report.result.counts
        counts["documents_scanned"] += 1
        partition_key = self.store.partition_key_of(document.body)
        for attempt in range(self.limits.conflict_retries + 1):
            plan = rekey_document(
                document.body, partition_key, target_kid=self.sweep["target_kid"], keyring=self.keyring,
                mode=self.sweep["mode"], source_kids=self.source_kids,
            )
            if plan.failures:
                self._record_failures(index, document, partition_key, [(f.pointer, f.reason) for f in plan.failures], report)
                return
            if plan.new_body is None:
                report.documents_skipped += 1
                self._count_fields(plan, counts, report)
                return
            try:
                self.store.replace(plan.new_body, document.etag)
            except ConflictError:
                # The live tracker wrote this document since we read it: its write wins,
                # and we redo our work on what it wrote.
                counts["conflicts"] += 1
                try:
                    document = self.store.read(document.id, partition_key)
                except NotFoundError:
                    return  # deleted meanwhile: nothing left to re-encrypt
                continue
            counts["documents_written"] += 1
            self._count_fields(plan, counts, report)
            return
        self._record_failures(index, document, partition_key, [("", CONFLICT_REASON)], report)

    def _count_fields(self, plan, counts, report: BatchReport) -> None:
        moved = plan.count("reencrypted")
        counts["fields_reencrypted"] += moved
        counts["fields_on_target"] += plan.count("on_target")
        counts["fields_not_source"] += plan.count("not_source")
        if moved:
            report.fields_by_kind[plan.fields[0].kind] += moved

    def _record_failures(self, index: int, document: StoredDocument, partition_key: str, fields, report: BatchReport) -> None:
        report.result.counts["documents_failed"] += 1
        for pointer, reason in fields:
            self.state.record_failure(self.sweep["id"], index, document.id, partition_key, pointer, reason)
            report.result.counts["failures"] += 1
            report.failures_by_reason[reason] += 1
