"""The embedded store: a tracker container and the sweep's records in one SQLite file.

Laid out to behave like a Cosmos container where the sweep can tell the difference:

- every document has an id, a partition key, and an ETag that changes on every write;
- each partition key hashes to an *effective partition key* (EPK) in ``[0, 2**32)``, and a
  feed range is an EPK interval, so ranges split and sub-ranges scan like Cosmos's;
- scans page in (EPK, partition key, id) order with a keyset continuation, so a scan resumed
  from a stored continuation neither skips nor repeats a document that existed throughout;
- a product range is one partition key's rows, ``epk = ? AND pk = ?``, cut by id: the primary
  key (epk, pk, id) is also that partition's index, so scanning, counting and cutting a
  product read only its rows, like a single-partition query on Cosmos.

Partition keys are kept as text (``str()`` of the body's value), so every one is a product.

The file itself (its tables, recognising it as ours, laying it out and opening it) is
:mod:`tracker_reencrypt.stores.sqlite_layout`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import secrets
import sqlite3
import time
from itertools import pairwise
from pathlib import Path

from tracker_reencrypt import jsontext
from tracker_reencrypt.errors import ConfigError, ConflictError, NotFoundError, StoreError, redact_url
from tracker_reencrypt.stores import (
    FeedRange,
    ProductRange,
    RequestCost,
    ScanPage,
    StoredDocument,
    StoreFacts,
    estimated_request_units,
    product_range_count,
)
from tracker_reencrypt.stores.sqlite_layout import Connections, Transaction

EPK_SPACE = 2**32

#: The body as bytes: parsed straight from UTF-8 (faster than a str, too), and a body that is
#: not valid UTF-8 is one unreadable document rather than an error for its whole page.
_SCAN_COLUMNS = "SELECT epk, pk, id, etag, CAST(body AS BLOB), written_at FROM documents"
_SCAN_FIRST = f"{_SCAN_COLUMNS} WHERE epk >= ? AND epk < ? ORDER BY epk, pk, id LIMIT ?"
_SCAN_AFTER = f"{_SCAN_COLUMNS} WHERE (epk, pk, id) > (?, ?, ?) AND epk < ? ORDER BY epk, pk, id LIMIT ?"
#: The next partition: another partition key of the same EPK (a hash collision), else the first
#: of the next EPK; each one index seek. (The row value "(epk, pk) > (?, ?)" seeks to the
#: partition it names and steps through all its rows.)
_NEXT_IN_EPK = "SELECT epk, pk FROM documents WHERE epk = ? AND pk > ? ORDER BY pk LIMIT 1"
_FIRST_AFTER_EPK = "SELECT epk, pk FROM documents WHERE epk > ? ORDER BY epk, pk LIMIT 1"
_PRODUCT_COUNT = "SELECT COUNT(*) FROM documents WHERE epk = ? AND pk = ?"
#: The id ``step`` rows on from ``start`` in a product (the whole walk reads each row once).
_PRODUCT_ID_AFTER = "SELECT id FROM documents WHERE epk = ? AND pk = ? AND id >= ? ORDER BY id LIMIT 1 OFFSET ?"


def path_from_url(url: str) -> Path:
    """``sqlite:///relative.db`` -> relative.db; ``sqlite:////abs/x.db`` -> /abs/x.db."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(
            f"store URL {redact_url(url)!r} is not a SQLite file URL: use sqlite:///relative.db or sqlite:////absolute/path.db"
        )
    return Path(url[len(prefix) :])


def effective_partition_key(partition_key: str) -> int:
    """Where a partition key falls in the EPK space; stable across processes and versions."""
    return int.from_bytes(hashlib.blake2b(str(partition_key).encode("utf-8"), digest_size=4).digest(), "big")


def _balanced_bounds(documents_at: list[tuple[int, int]], count: int) -> set[int]:
    """Range starts that cut ``documents_at`` ((EPK, documents) in EPK order) into ``count``
    runs of about equal documents: for each multiple of total / count, the EPK whose documents
    before it come nearest to that multiple."""
    before, running = [], 0
    for _, documents in documents_at:
        before.append(running)
        running += documents
    starts = set()
    for cut in range(1, count):
        wanted = running * cut / count
        at = bisect.bisect_left(before, wanted)
        nearest = min(
            (i for i in (at - 1, at) if 0 <= i < len(before)), key=lambda i: abs(before[i] - wanted), default=None
        )
        if nearest:  # index 0 is the first EPK: a range starting there is the first range
            starts.add(documents_at[nearest][0])
    return starts


def _parsed(
    text: bytes, etag: str, pk: str, document_id: str, partition_key_field: str, written_at: float | None
) -> StoredDocument:
    """The document a row holds. One the store cannot parse (nested past what the JSON parsers'
    recursion allows, or not JSON at all) is returned marked ``unreadable``, its body only the id
    and partition key of its row, never raised: the rest of its page is still returned, and the
    sweep and verify record it as a failure."""
    try:
        return StoredDocument(jsontext.loads(text), etag, row=(pk, document_id), written_at=written_at)
    except RecursionError:
        reason = "too_deep"
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        reason = "invalid_json"
    return StoredDocument(
        {"id": document_id, partition_key_field: pk},
        etag,
        unreadable=reason,
        row=(pk, document_id),
        written_at=written_at,
    )


def _new_etag() -> str:
    return f'"{secrets.token_hex(8)}"'


class SqliteStore:
    """DocumentStore on a SQLite file.

    ``create=True`` (the default here, for tools and tests that build their own files) makes the
    file and its tables if missing. With False, as :func:`tracker_reencrypt.stores.open_store`
    passes unless the command creates stores, only an existing store of ours opens.
    """

    def __init__(self, path: str | os.PathLike, *, partition_key_field: str = "productId", create: bool = True) -> None:
        self.path = Path(path)
        self.partition_key_field = partition_key_field
        self.cost = RequestCost()
        self._connections = Connections(self.path, create)
        self._connections.get()

    def describe(self) -> str:
        return f"SQLite store {self.path}"

    @property
    def _db(self) -> sqlite3.Connection:
        return self._connections.get()

    def partition_key_of(self, body: dict) -> str:
        try:
            return str(body[self.partition_key_field])
        except KeyError:
            raise StoreError(
                f"document {body.get('id')!r} has no partition key field {self.partition_key_field!r}"
            ) from None

    # -- ranges and scans --------------------------------------------------------------------

    def feed_ranges(self, min_count: int = 1) -> list[FeedRange]:
        """``min_count`` ranges holding about as many documents each, as far as partition keys
        allow (a partition key's documents share one EPK and so one range).

        Equal EPK widths would not do: with tens of partition keys, ranges of equal width held
        from none to 2.5 times the average, and the sweep waited at its end on the largest.
        """
        count = max(1, min_count)
        documents_at = self._db.execute("SELECT epk, COUNT(*) FROM documents GROUP BY epk ORDER BY epk").fetchall()
        bounds = {0, EPK_SPACE} | _balanced_bounds(documents_at, count)
        while len(bounds) < count + 1:  # fewer partition keys than ranges: halve the widest
            ordered = sorted(bounds)
            low, high = max(pairwise(ordered), key=lambda pair: pair[1] - pair[0])
            if high - low < 2:
                break
            bounds.add((low + high) // 2)
        ordered = sorted(bounds)
        return [{"epk_min": low, "epk_max": high} for low, high in pairwise(ordered)]

    def products(self) -> list[str]:
        """Every partition key, found by seeking from one partition to the next in the primary key."""
        found, row = [], self._db.execute(_FIRST_AFTER_EPK, (-1,)).fetchone()
        while row is not None:
            found.append(row[1])
            row = (
                self._db.execute(_NEXT_IN_EPK, row).fetchone() or self._db.execute(_FIRST_AFTER_EPK, row[:1]).fetchone()
            )
        return sorted(found)

    def product_ranges(self, product: str, documents_per_range: int) -> list[FeedRange]:
        """Cut at the ids found ``count / ranges`` rows apart by walking the product's part of
        the primary key (each row visited once, its body never parsed)."""
        pk = str(product)
        documents = self.count(pk)
        ranges = product_range_count(documents, documents_per_range)
        cuts: list[str] = []
        start, at = "", 0  # every id is >= "": the walk starts at the product's first row
        for index in range(1, ranges):
            wanted = documents * index // ranges
            row = self._db.execute(_PRODUCT_ID_AFTER, (effective_partition_key(pk), pk, start, wanted - at)).fetchone()
            if row is None:  # rows deleted since the count: the last range takes the rest
                break
            start, at = row[0], wanted
            cuts.append(start)
        return ProductRange.cut(pk, cuts)

    def scan(self, feed_range: FeedRange, continuation: str | None, page_size: int) -> ScanPage:
        product_range = ProductRange.of(feed_range)
        if product_range is not None:
            return self._page(self._product_rows(product_range, continuation, page_size), page_size)
        try:
            low, high = int(feed_range["epk_min"]), int(feed_range["epk_max"])
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"feed range {feed_range!r} is not a SQLite EPK range") from None
        if continuation:
            # The row value alone must bound the index search: beside "epk >= low" SQLite
            # seeks to the range's start and filters, so every page re-read the pages before
            # it and a slice's scan grew with the square of its length.
            epk, pk, document_id = json.loads(continuation)
            rows = self._db.execute(_SCAN_AFTER, (epk, pk, document_id, high, page_size)).fetchall()
        else:
            rows = self._db.execute(_SCAN_FIRST, (low, high, page_size)).fetchall()
        return self._page(rows, page_size)

    def _product_rows(self, product_range: ProductRange, continuation: str | None, page_size: int) -> list:
        """A page of one partition's rows in id order: ``epk = ? AND pk = ?`` and one bound on
        each side of the id, so the primary key seeks straight to the page (after a
        continuation, its id alone is the lower bound, for the reason given in :meth:`scan`)."""
        pk = product_range.partition_key
        epk = effective_partition_key(pk)
        conditions, values = ["epk = ?", "pk = ?"], [epk, pk]
        if continuation:
            conditions.append("id > ?")
            values.append(self._continued_id(product_range, epk, continuation))
        elif product_range.id_min is not None:
            conditions.append("id >= ?")
            values.append(product_range.id_min)
        if product_range.id_max is not None:
            conditions.append("id < ?")
            values.append(product_range.id_max)
        query = f"{_SCAN_COLUMNS} WHERE {' AND '.join(conditions)} ORDER BY id LIMIT ?"
        return self._db.execute(query, (*values, page_size)).fetchall()

    def written_after(self, product: str, after: float, continuation: str | None, page_size: int) -> ScanPage:
        """The product's rows in id order, ``written_at > ?`` checked on each row of its part of the
        primary key (no index on the time: the rows of one partition are read, only the matching
        bodies parsed)."""
        pk = str(product)
        epk = effective_partition_key(pk)
        conditions, values = ["epk = ?", "pk = ?", "written_at > ?"], [epk, pk, after]
        if continuation:
            conditions.append("id > ?")
            values.append(self._continued_id(ProductRange(pk), epk, continuation))
        query = f"{_SCAN_COLUMNS} WHERE {' AND '.join(conditions)} ORDER BY id LIMIT ?"
        return self._page(self._db.execute(query, (*values, page_size)).fetchall(), page_size)

    def _continued_id(self, product_range: ProductRange, epk: int, continuation: str) -> str:
        """The id a continuation of this product range resumes after; StoreError if it is another's."""
        try:
            at_epk, at_pk, at_id = json.loads(continuation)
        except (TypeError, ValueError):
            at_epk = at_pk = at_id = None
        low = product_range.id_min
        if (
            (at_epk, at_pk) != (epk, product_range.partition_key)
            or not isinstance(at_id, str)
            or (low is not None and at_id < low)
        ):
            raise StoreError(f"continuation {continuation!r} does not fit product range {product_range.feed_range()!r}")
        return at_id

    def _page(self, rows: list, page_size: int) -> ScanPage:
        self.cost.request_units += 2.5 + sum(estimated_request_units(len(row[4]), write=False) for row in rows)
        field = self.partition_key_field
        documents = [
            _parsed(body, etag, pk, document_id, field, written_at)
            for _, pk, document_id, etag, body, written_at in rows
        ]
        next_continuation = json.dumps(list(rows[-1][:3])) if len(rows) == page_size else None
        return ScanPage(documents, next_continuation)

    # -- point operations --------------------------------------------------------------------

    def read(self, document_id: str, partition_key: str) -> StoredDocument:
        pk = str(partition_key)
        row = self._db.execute(
            "SELECT etag, CAST(body AS BLOB), written_at FROM documents WHERE epk = ? AND pk = ? AND id = ?",
            (effective_partition_key(pk), pk, document_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"document {document_id!r} (partition {partition_key!r}) not found in {self.describe()}"
            )
        self.cost.request_units += estimated_request_units(len(row[1]), write=False)
        return _parsed(row[1], row[0], pk, document_id, self.partition_key_field, row[2])

    def create(self, body: dict) -> StoredDocument:
        return self.create_many([body])[0]

    def create_many(self, bodies: list[dict]) -> list[StoredDocument]:
        """Insert documents in one transaction (seeding 100k documents one commit each is slow)."""
        now = time.time()
        created = [StoredDocument(body, _new_etag(), written_at=now) for body in bodies]
        rows = []
        for document in created:
            pk = self.partition_key_of(document.body)
            text = jsontext.dumps(document.body)
            rows.append((effective_partition_key(pk), pk, document.id, document.etag, text, now))
            self.cost.request_units += estimated_request_units(len(text), write=True)
        rows.sort()  # in the table's key order (epk, pk, id): a bulk insert appends rather than splits
        try:
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO documents (epk, pk, id, etag, body, written_at) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
        except sqlite3.IntegrityError:
            raise ConflictError(f"a document with one of these ids already exists in {self.describe()}") from None
        return created

    def replace(self, body: dict, etag: str) -> StoredDocument:
        written = self.replace_many([(body, etag)])[0]
        if written is None:
            self.read(body["id"], self.partition_key_of(body))  # raises NotFoundError when it is gone
            raise ConflictError(f"document {body['id']!r} changed since it was read (ETag mismatch)")
        return written

    def replace_many(self, writes: list[tuple[dict, str]]) -> list[StoredDocument | None]:
        """All the conditional replaces in one short transaction: one write lock per page.

        The documents are serialised before the lock is taken, so other workers wait only
        for the UPDATEs themselves.
        """
        rows = []
        for body, etag in writes:
            pk = self.partition_key_of(body)
            rows.append((body, etag, pk, effective_partition_key(pk), jsontext.dumps(body), _new_etag()))
        with self._transaction() as db:
            now = time.time()  # inside the lock: a later write never carries an earlier time
            updated = db.executemany(
                "UPDATE documents SET body = ?, etag = ?, written_at = ?"
                " WHERE epk = ? AND pk = ? AND id = ? AND etag = ?",
                [(text, new_etag, now, epk, pk, body["id"], etag) for body, etag, pk, epk, text, new_etag in rows],
            ).rowcount
            if updated == len(rows):  # the usual case: nobody wrote these documents meanwhile
                landed = [True] * len(rows)
            else:  # ours are the rows now holding the ETag we gave them (fresh random ones)
                landed = [
                    db.execute(
                        "SELECT 1 FROM documents WHERE epk = ? AND pk = ? AND id = ? AND etag = ?",
                        (epk, pk, body["id"], new_etag),
                    ).fetchone()
                    is not None
                    for body, _, pk, epk, _, new_etag in rows
                ]
        results = [
            StoredDocument(row[0], row[5], written_at=now) if ok else None for row, ok in zip(rows, landed, strict=True)
        ]
        self.cost.request_units += sum(estimated_request_units(len(row[4]), write=True) for row in rows)
        return results

    def count(self, product: str | None = None) -> int:
        if product is None:
            return self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        pk = str(product)
        return self._db.execute(_PRODUCT_COUNT, (effective_partition_key(pk), pk)).fetchone()[0]

    def facts(self) -> StoreFacts:
        return StoreFacts(
            backend="sqlite",
            partition_key_path=f"/{self.partition_key_field}",
            throughput="",
            throughput_note="not applicable: a SQLite file has no provisioned throughput",
        )

    def records(self) -> SqliteRecordStore:
        return SqliteRecordStore(self._connections, self.describe())

    def close(self) -> None:
        self._connections.close()

    def _transaction(self):
        return Transaction(self._db)


class SqliteRecordStore:
    """RecordStore in the same SQLite file (table ``records``)."""

    def __init__(self, connections: Connections, where: str) -> None:
        self._connections = connections
        self._where = where

    def get(self, kind: str, record_id: str) -> tuple[dict, str]:
        row = (
            self._connections.get()
            .execute("SELECT body, etag FROM records WHERE kind = ? AND id = ?", (kind, record_id))
            .fetchone()
        )
        if row is None:
            raise NotFoundError(f"{kind} {record_id!r} not found in {self._where}")
        return jsontext.loads(row[0]), row[1]

    def create(self, kind: str, record_id: str, body: dict) -> str:
        etag = _new_etag()
        try:
            self._connections.get().execute(
                "INSERT INTO records (kind, id, etag, body) VALUES (?, ?, ?, ?)",
                (kind, record_id, etag, jsontext.dumps(body)),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(f"{kind} {record_id!r} already exists in {self._where}") from None
        return etag

    def replace(self, kind: str, record_id: str, body: dict, etag: str) -> str:
        new_etag = _new_etag()
        updated = (
            self._connections.get()
            .execute(
                "UPDATE records SET body = ?, etag = ? WHERE kind = ? AND id = ? AND etag = ?",
                (jsontext.dumps(body), new_etag, kind, record_id, etag),
            )
            .rowcount
        )
        if updated == 0:
            self.get(kind, record_id)  # raises NotFoundError when it is gone
            raise ConflictError(f"{kind} {record_id!r} changed since it was read")
        return new_etag

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, dict, str]]:
        rows = (
            self._connections.get()
            .execute(
                "SELECT id, body, etag FROM records WHERE kind = ? AND substr(id, 1, ?) = ? ORDER BY id",
                (kind, len(prefix), prefix),
            )
            .fetchall()
        )
        return [(record_id, jsontext.loads(body), etag) for record_id, body, etag in rows]
