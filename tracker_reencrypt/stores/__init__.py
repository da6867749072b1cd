"""Document stores: the tracker container the sweep reads and rewrites, and the sweep's state.

One small interface for documents (:class:`DocumentStore`) and one for the sweep's own
durable records (:class:`RecordStore`), each implemented once per backend and chosen by URL:

- ``sqlite:///relative.db`` / ``sqlite:////absolute.db``: the embedded default
  (:mod:`tracker_reencrypt.stores.sqlite`);
- ``cosmos://<account host>[:port]/<database>/<container>``: Azure Cosmos DB NoSQL through
  ``azure-cosmos`` (:mod:`tracker_reencrypt.stores.cosmos`).

A sweep reads the container through feed ranges of two kinds. A *container range* is the
backend's own cut of the whole container (EPK intervals: many products, whole partitions).
A *product range* (:class:`ProductRange`) holds the documents of one product, the partition key
value, whose id lies in ``[id_min, id_max)``: rotating one product's key reads only that
product's logical partition, and a product too large for one slice is cut by id, since a
Cosmos logical partition (up to 20 GB) lives in one physical partition and no EPK sub-range
can split it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

from tracker_reencrypt.errors import ConfigError, StoreError, redact_url

#: A feed range: a JSON-serialisable dict. It travels in Celery messages and is stored in slice
#: checkpoints, so it must round-trip through JSON unchanged. A container range is opaque to
#: callers (each backend's own form); a product range is
#: ``{"partition_key": P, "id_min": str | None, "id_max": str | None}`` (see :class:`ProductRange`).
FeedRange = dict[str, Any]

_PRODUCT_RANGE_KEYS = {"partition_key", "id_min", "id_max"}


@dataclass(frozen=True)
class ProductRange:
    """The documents whose partition key is ``partition_key`` and whose id lies in
    ``[id_min, id_max)``; None leaves that side unbounded.

    The ranges of a product (:meth:`DocumentStore.product_ranges`) start with ``id_min`` None
    and end with ``id_max`` None, their cuts in increasing order, so they cover every id of the
    product exactly once whatever ids exist.
    """

    partition_key: str
    id_min: str | None = None
    id_max: str | None = None

    def feed_range(self) -> FeedRange:
        return {"partition_key": self.partition_key, "id_min": self.id_min, "id_max": self.id_max}

    @classmethod
    def of(cls, feed_range: FeedRange) -> ProductRange | None:
        """The product range a feed range is; None for a container range; StoreError when it
        names a partition key but is not a well-formed product range."""
        if not isinstance(feed_range, dict) or "partition_key" not in feed_range:
            return None
        product, low, high = (feed_range.get(key) for key in ("partition_key", "id_min", "id_max"))
        if (
            set(feed_range) != _PRODUCT_RANGE_KEYS
            or not isinstance(product, str)
            or not all(bound is None or isinstance(bound, str) for bound in (low, high))
            or (low is not None and high is not None and not low < high)
        ):
            raise StoreError(
                f"feed range {feed_range!r} is not a product range: it needs exactly partition_key (a string), "
                "id_min and id_max (strings or null, id_min < id_max)"
            )
        return cls(product, low, high)

    @classmethod
    def cut(cls, partition_key: str, cuts: list[str]) -> list[FeedRange]:
        """The ranges of a product cut at ``cuts`` (increasing ids, each starting a range)."""
        bounds: list[str | None] = [None, *cuts, None]
        return [cls(partition_key, low, high).feed_range() for low, high in pairwise(bounds)]


def product_of_range(feed_range: FeedRange) -> str | None:
    """The product (partition key value) a feed range is scoped to; None for a container range."""
    product_range = ProductRange.of(feed_range)
    return product_range.partition_key if product_range else None


def product_range_count(documents: int, documents_per_range: int) -> int:
    """How many ranges a product of ``documents`` needs so none holds over ``documents_per_range``."""
    if documents_per_range < 1:
        raise ConfigError(f"documents per range must be at least 1, not {documents_per_range}")
    return max(1, -(-documents // documents_per_range))


@dataclass(frozen=True)
class StoredDocument:
    """A document as read, with the ETag a conditional write must match.

    ``unreadable``: why the store could not parse what it holds ("too_deep": nested past what
    can be parsed; "invalid_json"), or None. Such a document is returned rather than raised, so
    the rest of its page still is; its ``body`` is then only ``{"id": ..., <partition key
    field>: ...}`` as the store keys it, so it is recorded as a failure and never written back.

    ``row``: the store's own key of the document, independent of its body: SQLite's (partition
    key, id) columns; empty where the body's id and partition key are the key (Cosmos, where
    every item has a string id). It tells apart documents whose body has no usable id.
    """

    body: dict
    etag: str
    unreadable: str | None = None
    row: tuple[str, ...] = ()
    #: When the document was last written, in seconds since the epoch (Cosmos ``_ts``; SQLite
    #: its ``written_at`` column), by anyone: the tracker, the seed, a sweep. None where the
    #: store does not know (SQLite rows written before the store kept the time).
    written_at: float | None = None

    @property
    def id(self) -> str:
        return self.body["id"]


@dataclass(frozen=True)
class ScanPage:
    documents: list[StoredDocument]
    #: Where the next page starts; None once the range is exhausted.
    continuation: str | None


@dataclass(frozen=True)
class StoreFacts:
    """What preflight reports about a container beyond access (no secrets)."""

    #: "sqlite" or "cosmos": what applies (throughput and priority are Cosmos's).
    backend: str
    #: The container's partition key path as the backend declares it (``/productId``).
    partition_key_path: str
    #: Provisioned throughput in words ("400 RU/s (manual, container)", "autoscale to 4000 RU/s
    #: (database, shared)"...); empty where the backend has none or it could not be read.
    throughput: str
    #: Why ``throughput`` is empty (not applicable, not readable and why).
    throughput_note: str = ""
    #: The priority the sweep's document requests carry ("Low", "High"), None when unset.
    priority: str | None = None


@dataclass
class RequestCost:
    """What the backend charged so far (Cosmos request units; SQLite reports an estimate)."""

    request_units: float = 0.0
    throttled: int = 0


def estimated_request_units(size_bytes: float, write: bool) -> float:
    """A rough Cosmos RU figure (Microsoft's "Request Units in Azure Cosmos DB" and the
    estimates of learn.microsoft.com/azure/cosmos-db/understand-request-unit-consumption): a
    1 KB point read costs ~1 RU, a 1 KB replace ~10 RU, both growing with size. SQLite reports it
    so budgets work there too, and the duration estimate uses it before a sweep starts."""
    kilobytes = max(1.0, size_bytes / 1024)
    return 5.0 + 5.0 * kilobytes if write else kilobytes


class DocumentStore(Protocol):
    """The tracker container, as the sweep and verify need it."""

    #: Name of the document property holding the partition key (e.g. ``productId``).
    partition_key_field: str
    cost: RequestCost

    def describe(self) -> str:
        """Where the documents live, for messages (no secrets)."""

    def feed_ranges(self, min_count: int = 1) -> list[FeedRange]:
        """Disjoint ranges covering the container exactly; at least ``min_count`` where the
        backend can split finer than its physical partitions."""

    def products(self) -> list[str]:
        """The distinct partition key values in the container, sorted. Only string values are
        products: a backend that can hold others leaves them out (a container range still
        reads their documents)."""

    def product_ranges(self, product: str, documents_per_range: int) -> list[FeedRange]:
        """Disjoint product ranges covering exactly the documents whose partition key is
        ``product``, each holding about ``documents_per_range`` documents at most: one range
        for a product no larger, or one that does not exist (it scans empty)."""

    def scan(self, feed_range: FeedRange, continuation: str | None, page_size: int) -> ScanPage:
        """One page of a range, a container range or a product range. Every document that
        exists for the whole scan is returned at least once across the pages of a scan resumed
        from any stored continuation; a product range reads only its product's partition.
        StoreError for a range or continuation the backend cannot read."""

    def written_after(self, product: str, after: float, continuation: str | None, page_size: int) -> ScanPage:
        """One page of ``product``'s documents last written after ``after`` (seconds since the
        epoch; Cosmos ``_ts``, SQLite ``written_at``), read from its partition alone and filtered
        by the store, so only those documents are returned; documents whose write time is
        unknown never are. A document written again while the pages are read may be missed or
        returned twice: a caller watching for writes reads again from a later time (the
        stale-writes command). StoreError for a continuation the backend cannot read."""

    def read(self, document_id: str, partition_key: str) -> StoredDocument:
        """Raises NotFoundError."""

    def partition_key_of(self, body: dict) -> str:
        """The partition key value of a document body; StoreError if it has none."""

    def create(self, body: dict) -> StoredDocument:
        """Insert a new document; ConflictError if the id exists in its partition."""

    def create_many(self, bodies: list[dict]) -> list[StoredDocument]:
        """Insert many new documents as cheaply as the backend allows (seeding)."""

    def replace(self, body: dict, etag: str) -> StoredDocument:
        """Replace a document only if its ETag is still ``etag``; ConflictError otherwise."""

    def replace_many(self, writes: list[tuple[dict, str]]) -> list[StoredDocument | None]:
        """Conditional replaces of (body, etag) pairs, as cheaply as the backend allows; each
        result is the new document, or None where the ETag no longer matched or the document is gone."""

    def count(self, product: str | None = None) -> int:
        """The container's documents, or only those whose partition key is ``product``."""

    def facts(self) -> StoreFacts:
        """The container's partition key path, throughput and request priority (preflight)."""

    def records(self) -> RecordStore:
        """The sweep's durable state, kept beside the documents in the same backend."""

    def close(self) -> None: ...


class RecordStore(Protocol):
    """Small JSON records with ETags: sweeps, slices, failures, audit entries.

    Records are grouped by ``kind`` and ordered by ``record_id`` within it. Every write is
    conditional, which is all the sweep needs to build leases and fencing on top.
    """

    def get(self, kind: str, record_id: str) -> tuple[dict, str]:
        """The record and its ETag; NotFoundError if absent."""

    def create(self, kind: str, record_id: str, body: dict) -> str:
        """Insert; ConflictError if a record with this kind and id exists. Returns the ETag."""

    def replace(self, kind: str, record_id: str, body: dict, etag: str) -> str:
        """Replace only if the ETag still matches; ConflictError otherwise."""

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, dict, str]]:
        """(record_id, body, etag) for every record of ``kind`` whose id starts with
        ``prefix``, ordered by id."""


def store_location(url: str) -> str:
    """The canonical place a store URL names, independent of how it was spelt: a SQLite file's
    resolved absolute path, or a Cosmos account host, database and container. Two URLs name
    the same container exactly when their locations are equal."""
    if url.startswith("sqlite:"):
        from tracker_reencrypt.stores.sqlite import path_from_url

        return f"sqlite:{Path(path_from_url(url)).expanduser().resolve()}"
    if url.startswith("cosmos://"):
        from tracker_reencrypt.stores.cosmos_access import parse_url

        host, database, container = parse_url(url)
        return f"cosmos:{host.lower()}/{database}/{container}"
    return open_store(url).describe()  # raises the one-line ConfigError for an unknown scheme


def store_fingerprint(url: str) -> str:
    """A short stable id of the container a store URL names (see :func:`store_location`):
    it names the container's task queue and marks every message, so a worker of another
    store never takes its work."""
    return hashlib.sha256(store_location(url).encode("utf-8")).hexdigest()[:12]


def open_store(url: str, *, partition_key_field: str = "productId", create: bool = False) -> DocumentStore:
    """Build the document store a URL names, or raise ConfigError saying what is wrong.

    Only commands that make a store (``seed``, ``keys init``) pass ``create=True``: every other
    command must find an existing store of ours, so a mistyped URL is refused rather than
    opened as a new, empty container (see the backends for what each may create).
    """
    if not url:
        raise ConfigError("no store given: set REENCRYPT_STORE or --store (e.g. sqlite:///tracker.db)")
    if url.startswith("sqlite:"):
        from tracker_reencrypt.stores.sqlite import SqliteStore, path_from_url

        return SqliteStore(path_from_url(url), partition_key_field=partition_key_field, create=create)
    if url.startswith("cosmos://"):
        from tracker_reencrypt.stores.cosmos import CosmosStore

        return CosmosStore.from_url(url, partition_key_field=partition_key_field, create=create)
    raise ConfigError(
        f"store URL {redact_url(url)!r} is not understood: "
        "use sqlite:///<path> or cosmos://<account host>/<database>/<container>"
    )
