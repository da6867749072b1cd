"""The in-process references the fleets are compared with, measured in the bench's own process.

- **bound**: :func:`rekey_document` over the documents already loaded, from a cold keyring.
- **rekey_warm**: the same over the sample with every DEK already unwrapped.
- **store_only**: the documents scanned and written back unchanged.
- **naive**: one document at a time, no DEK cache, ``store.replace`` per document.

docs/BENCHMARK.md says what each stands for and why they run in spans around the fleets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from coordinator.bench.measure import Stopwatch, cpu_share
from coordinator.bench.results import InProcessRun, ReferenceRuns
from tracker_reencrypt.documents import partition_key_or_none, rekey_document
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import DocumentStore, StoredDocument

SCAN_PAGE = 100
#: The warm re-keying passes repeat until this much time has been measured.
WARM_MIN_S = 1.0

#: A document in memory: (body, partition key or None, compact JSON size).
Loaded = tuple[dict, str | None, int]


class ScanCursor:
    """Where a reference run stopped in scan order, so that its next span goes on from there."""

    def __init__(self, store: DocumentStore) -> None:
        self.store = store
        self.feed_range = store.feed_ranges(1)[0]
        self.continuation: str | None = None
        self.exhausted = False

    def pages(self, count: int) -> Iterator[list[StoredDocument]]:
        """The next ``count`` documents (fewer at the container's end), a page at a time."""
        taken = 0
        while taken < count and not self.exhausted:
            page = self.store.scan(self.feed_range, self.continuation, min(SCAN_PAGE, count - taken))
            self.continuation, self.exhausted = page.continuation, page.continuation is None
            taken += len(page.documents)
            yield page.documents


def load_sample(store: DocumentStore, count: int) -> list[Loaded]:
    """The first ``count`` documents in scan order. A document without a partition key (None) is
    re-keyed as the sweep does: one failure, nothing moved."""
    return [
        (document.body, partition_key_or_none(store, document.body), _json_bytes([document.body]))
        for page in ScanCursor(store).pages(count)
        for document in page
    ]


def _json_bytes(bodies: list[dict]) -> int:
    """Documents' size as the store holds them (compact JSON); computed outside the timed spans."""
    return sum(len(json.dumps(body, separators=(",", ":"), ensure_ascii=False)) for body in bodies)


def _rekey_pass(documents: list[Loaded], keyring: Keyring, target_kid: str) -> int:
    """``rekey_document`` over documents in memory; the fields it moved."""
    moved = 0
    for body, partition_key, _ in documents:
        moved += rekey_document(body, partition_key, target_kid=target_kid, keyring=keyring).count("reencrypted")
    return moved


def _bound(store: DocumentStore, cursor: ScanCursor, keyring: Keyring, target_kid: str, count: int) -> InProcessRun:
    """Re-key the next ``count`` documents in scan order, a page at a time, timing only
    ``rekey_document``: scanning and parsing stay outside the clock. The keyring starts cold
    and is kept across spans, so each distinct DEK is unwrapped once, as a worker's cache does."""
    documents = fields = size = 0
    clock = Stopwatch()
    unwraps_before = keyring.stats.provider_unwraps
    for page in cursor.pages(count):
        loaded = [(document.body, partition_key_or_none(store, document.body), 0) for document in page]
        with clock.span():
            fields += _rekey_pass(loaded, keyring, target_kid)
        documents += len(page)
        size += _json_bytes([document.body for document in page])
    return InProcessRun(
        name="bound",
        documents=documents,
        fields=fields,
        document_bytes=size,
        seconds=round(clock.seconds, 4),
        cpu_seconds=round(clock.cpu_seconds, 4),
        unwraps=keyring.stats.provider_unwraps - unwraps_before,
    )


def _rekey_warm(sample: list[Loaded], keyring: Keyring, target_kid: str) -> InProcessRun:
    """``rekey_document`` over the sample with every DEK already unwrapped: re-keying's CPU alone."""
    fields = _rekey_pass(sample, keyring, target_kid)  # untimed: unwraps each DEK of the sample
    unwraps_before = keyring.stats.provider_unwraps
    passes, clock = 0, Stopwatch()
    while clock.seconds < WARM_MIN_S:
        with clock.span():
            _rekey_pass(sample, keyring, target_kid)
        passes += 1
    return InProcessRun(
        name="rekey_warm",
        documents=len(sample) * passes,
        fields=fields * passes,
        document_bytes=sum(size for _, _, size in sample) * passes,
        seconds=round(clock.seconds, 4),
        cpu_seconds=round(clock.cpu_seconds, 4),
        unwraps=keyring.stats.provider_unwraps - unwraps_before,
    )


def _store_only(store: DocumentStore, cursor: ScanCursor, count: int) -> InProcessRun:
    """Scan the next ``count`` documents and write them back unchanged, a page at a time with
    conditional writes as the sweep does (``replace_many``): the store's own cost. Only the
    documents' sizes are counted outside the clock. A document the store could not parse is
    scanned but never written: its body is only a stand-in for what the store holds."""
    documents = size = 0
    clock = Stopwatch()
    units_before = store.cost.request_units
    pages = cursor.pages(count)
    while True:
        with clock.span():
            page = next(pages, None)
            if page is not None:
                store.replace_many([(document.body, document.etag) for document in page if document.unreadable is None])
        if page is None:
            break
        documents += len(page)
        size += _json_bytes([document.body for document in page])
    return InProcessRun(
        name="store_only",
        documents=documents,
        fields=0,
        document_bytes=size,
        seconds=round(clock.seconds, 4),
        cpu_seconds=round(clock.cpu_seconds, 4),
        unwraps=0,
        store_seconds=round(clock.seconds, 4),
        request_units=store.cost.request_units - units_before,
    )


def _naive(store: DocumentStore, cursor: ScanCursor, keyring: Keyring, target_kid: str, count: int) -> InProcessRun:
    """One document at a time: unwrap per field (no cache), a fresh DEK per field, replace each."""
    fields = 0
    seen: list[dict] = []
    clock, store_clock = Stopwatch(), Stopwatch()
    units_before, unwraps_before = store.cost.request_units, keyring.stats.provider_unwraps
    with clock.span():
        pages = cursor.pages(count)
        while True:
            with store_clock.span():
                page = next(pages, None)
            if page is None:
                break
            for document in page:
                plan = rekey_document(
                    document.body, partition_key_or_none(store, document.body), target_kid=target_kid, keyring=keyring
                )
                if plan.new_body is not None:
                    with store_clock.span():
                        store.replace(plan.new_body, document.etag)
                fields += plan.count("reencrypted")
                seen.append(document.body)
    return InProcessRun(
        name="naive",
        documents=len(seen),
        fields=fields,
        document_bytes=_json_bytes(seen),
        seconds=round(clock.seconds, 4),
        cpu_seconds=round(clock.cpu_seconds, 4),
        unwraps=keyring.stats.provider_unwraps - unwraps_before,
        store_seconds=round(store_clock.seconds, 4),
        request_units=store.cost.request_units - units_before,
    )


class ReferenceSpans:
    """The in-process references, each measured in ``spans`` parts spread around the fleets.

    The bound and store only each take the next part of ``container_documents`` (the whole
    container, on SQLite) in each span; warm re-keying repeats over the whole sample in every
    span; naive takes the next part of the sample. Each has its own cursor, so every document
    is covered once by each. In a span the bound reads before store only and naive write, so it
    meets v1 throughout (store only writes bodies back unchanged).
    """

    def __init__(
        self,
        store: DocumentStore,
        sample: list[Loaded],
        provider,
        target_kid: str,
        settings,
        spans: int,
        container_documents: int,
    ) -> None:
        self.store, self.sample, self.target_kid, self.spans = store, sample, target_kid, spans
        self.container_documents = container_documents

        def worker_like() -> Keyring:
            return Keyring(provider, dek_max_uses=settings.dek_max_uses, dek_max_age_s=settings.dek_max_age_s)

        self.cold, self.warm = worker_like(), worker_like()
        self.uncached = Keyring(provider, unwrap_cache_entries=0, dek_max_uses=1)
        self.bound_cursor, self.store_cursor = ScanCursor(store), ScanCursor(store)
        self.naive_cursor = ScanCursor(store)
        self.parts: dict[str, list[InProcessRun]] = {"bound": [], "rekey_warm": [], "store_only": [], "naive": []}

    @property
    def done(self) -> bool:
        return len(self.parts["bound"]) >= self.spans

    def _share(self, total: int, span: int) -> int:
        return total // self.spans + (total % self.spans if span == self.spans - 1 else 0)

    def measure_span(self, say: Callable[[str], None]) -> None:
        span = len(self.parts["bound"])
        share = self._share(len(self.sample), span)
        container_share = self._share(self.container_documents, span)
        measures: tuple[tuple[str, Callable[[], InProcessRun]], ...] = (
            ("bound", lambda: _bound(self.store, self.bound_cursor, self.cold, self.target_kid, container_share)),
            ("rekey_warm", lambda: _rekey_warm(self.sample, self.warm, self.target_kid)),
            ("store_only", lambda: _store_only(self.store, self.store_cursor, container_share)),
            ("naive", lambda: _naive(self.store, self.naive_cursor, self.uncached, self.target_kid, share)),
        )
        for name, measure in measures:
            with cpu_share() as cpu:
                run = measure()
            run.other_cores = cpu.others
            self.parts[name].append(run)
            say(
                f"{name.replace('_', ' ')} (span {span + 1} of {self.spans}): {run.docs_per_s:,.0f} docs/s "
                f"on {run.documents:,} documents"
            )

    def results(self) -> ReferenceRuns:
        return ReferenceRuns(
            *(InProcessRun.from_spans(self.parts[name]) for name in ("bound", "rekey_warm", "store_only", "naive"))
        )
