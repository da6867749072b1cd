"""The embedded store: a tracker container and the sweep's records in one SQLite file.

Laid out to behave like a Cosmos container where the sweep can tell the difference:

- every document has an id, a partition key, and an ETag that changes on every write;
- each partition key hashes to an *effective partition key* (EPK) in ``[0, 2**32)``, and a
  feed range is an EPK interval, so ranges split and sub-ranges scan like Cosmos's;
- scans page in (EPK, partition key, id) order with a keyset continuation, so a scan resumed
  from a stored continuation neither skips nor repeats a document that existed throughout.

WAL mode and short transactions make it safe for several worker processes on one machine.
Each process opens its own connection lazily (Celery's prefork pool forks after start-up,
and a SQLite connection must not cross a fork).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
from pathlib import Path

from tracker_reencrypt.errors import ConfigError, ConflictError, NotFoundError, StoreError, redact_url
from tracker_reencrypt.stores import FeedRange, RequestCost, ScanPage, StoredDocument, estimated_request_units

EPK_SPACE = 2**32
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    pk   TEXT NOT NULL,
    id   TEXT NOT NULL,
    epk  INTEGER NOT NULL,
    etag TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (pk, id)
);
CREATE INDEX IF NOT EXISTS documents_in_epk_order ON documents (epk, pk, id);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    etag TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
"""


_SCAN_COLUMNS = "SELECT epk, pk, id, etag, body FROM documents"
_SCAN_FIRST = f"{_SCAN_COLUMNS} WHERE epk >= ? AND epk < ? ORDER BY epk, pk, id LIMIT ?"
_SCAN_AFTER = f"{_SCAN_COLUMNS} WHERE (epk, pk, id) > (?, ?, ?) AND epk < ? ORDER BY epk, pk, id LIMIT ?"


def path_from_url(url: str) -> Path:
    """``sqlite:///relative.db`` -> relative.db; ``sqlite:////abs/x.db`` -> /abs/x.db."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f"store URL {redact_url(url)!r} is not a SQLite file URL: use sqlite:///relative.db or sqlite:////absolute/path.db")
    return Path(url[len(prefix):])


def effective_partition_key(partition_key: str) -> int:
    """Where a partition key falls in the EPK space; stable across processes and versions."""
    return int.from_bytes(hashlib.blake2b(str(partition_key).encode("utf-8"), digest_size=4).digest(), "big")


def _new_etag() -> str:
    return f'"{secrets.token_hex(8)}"'


def _dumps(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class _Connections:
    """One connection per process and thread, opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = self._open()
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.exists():
            raise ConfigError(f"directory {self.path.parent} for SQLite store {self.path} does not exist: create it first")
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"SQLite store {self.path} cannot be opened ({exc}): is it a SQLite database?") from None
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local.connection = None


class SqliteStore:
    """DocumentStore on a SQLite file."""

    def __init__(self, path: str | os.PathLike, *, partition_key_field: str = "productId") -> None:
        self.path = Path(path)
        self.partition_key_field = partition_key_field
        self.cost = RequestCost()
        self._connections = _Connections(self.path)
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
            raise StoreError(f"document {body.get('id')!r} has no partition key field {self.partition_key_field!r}") from None

    # -- ranges and scans --------------------------------------------------------------------

    def feed_ranges(self, min_count: int = 1) -> list[FeedRange]:
        count = max(1, min_count)
        bounds = [EPK_SPACE * i // count for i in range(count + 1)]
        return [{"epk_min": low, "epk_max": high} for low, high in zip(bounds, bounds[1:])]

    def scan(self, feed_range: FeedRange, continuation: str | None, page_size: int) -> ScanPage:
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
        self.cost.request_units += 2.5 + sum(estimated_request_units(len(row[4]), write=False) for row in rows)
        documents = [StoredDocument(json.loads(body), etag) for _, _, _, etag, body in rows]
        next_continuation = json.dumps(list(rows[-1][:3])) if len(rows) == page_size else None
        return ScanPage(documents, next_continuation)

    # -- point operations --------------------------------------------------------------------

    def read(self, document_id: str, partition_key: str) -> StoredDocument:
        row = self._db.execute(
            "SELECT etag, body FROM documents WHERE pk = ? AND id = ?", (str(partition_key), document_id)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"document {document_id!r} (partition {partition_key!r}) not found in {self.describe()}")
        self.cost.request_units += estimated_request_units(len(row[1]), write=False)
        return StoredDocument(json.loads(row[1]), row[0])

    def create(self, body: dict) -> StoredDocument:
        return self.create_many([body])[0]

    def create_many(self, bodies: list[dict]) -> list[StoredDocument]:
        """Insert documents in one transaction (seeding 100k documents one commit each is slow)."""
        created = [StoredDocument(body, _new_etag()) for body in bodies]
        rows = []
        for document in created:
            pk = self.partition_key_of(document.body)
            text = _dumps(document.body)
            rows.append((pk, document.id, effective_partition_key(pk), document.etag, text))
            self.cost.request_units += estimated_request_units(len(text), write=True)
        try:
            with self._transaction() as db:
                db.executemany("INSERT INTO documents (pk, id, epk, etag, body) VALUES (?, ?, ?, ?, ?)", rows)
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
        rows = [(body, etag, self.partition_key_of(body), _dumps(body), _new_etag()) for body, etag in writes]
        results: list[StoredDocument | None] = []
        with self._transaction() as db:
            for body, etag, pk, text, new_etag in rows:
                updated = db.execute(
                    "UPDATE documents SET body = ?, etag = ? WHERE pk = ? AND id = ? AND etag = ?",
                    (text, new_etag, pk, body["id"], etag),
                ).rowcount
                results.append(StoredDocument(body, new_etag) if updated else None)
        self.cost.request_units += sum(estimated_request_units(len(text), write=True) for _, _, _, text, _ in rows)
        return results

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def records(self) -> "SqliteRecordStore":
        return SqliteRecordStore(self._connections, self.describe())

    def close(self) -> None:
        self._connections.close()

    def _transaction(self):
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so writers queue, not fail."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class SqliteRecordStore:
    """RecordStore in the same SQLite file (table ``records``)."""

    def __init__(self, connections: _Connections, where: str) -> None:
        self._connections = connections
        self._where = where

    def get(self, kind: str, record_id: str) -> tuple[dict, str]:
        row = self._connections.get().execute(
            "SELECT body, etag FROM records WHERE kind = ? AND id = ?", (kind, record_id)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"{kind} {record_id!r} not found in {self._where}")
        return json.loads(row[0]), row[1]

    def create(self, kind: str, record_id: str, body: dict) -> str:
        etag = _new_etag()
        try:
            self._connections.get().execute(
                "INSERT INTO records (kind, id, etag, body) VALUES (?, ?, ?, ?)", (kind, record_id, etag, _dumps(body))
            )
        except sqlite3.IntegrityError:
            raise ConflictError(f"{kind} {record_id!r} already exists in {self._where}") from None
        return etag

    def replace(self, kind: str, record_id: str, body: dict, etag: str) -> str:
        new_etag = _new_etag()
        updated = self._connections.get().execute(
            "UPDATE records SET body = ?, etag = ? WHERE kind = ? AND id = ? AND etag = ?",
            (_dumps(body), new_etag, kind, record_id, etag),
        ).rowcount
        if updated == 0:
            self.get(kind, record_id)  # raises NotFoundError when it is gone
            raise ConflictError(f"{kind} {record_id!r} changed since it was read")
        return new_etag

    def list(self, kind: str, prefix: str = "") -> list[tuple[str, dict, str]]:
        rows = self._connections.get().execute(
            "SELECT id, body, etag FROM records WHERE kind = ? AND substr(id, 1, ?) = ? ORDER BY id",
            (kind, len(prefix), prefix),
        ).fetchall()
        return [(record_id, json.loads(body), etag) for record_id, body, etag in rows]
