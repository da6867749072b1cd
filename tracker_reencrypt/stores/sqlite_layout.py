"""The SQLite store's file: its layout, and opening a file as a store in that layout.

Documents are stored clustered in scan order (a ``WITHOUT ROWID`` table keyed by EPK,
partition key and id), so a page of a scan, and the page of writes that follows it, touch a
few neighbouring table pages rather than a hundred scattered ones. The partition key
determines the EPK, so that key is also unique per (partition key, id).

WAL mode and short transactions make it safe for several worker processes on one machine.
Each process opens its own connection lazily (Celery's prefork pool forks after start-up,
and a SQLite connection must not cross a fork).

A store is made only when asked to (``create=True``: ``reencrypt seed`` and ``keys init``);
otherwise a path naming no file, or a file this tool did not make, is refused untouched, so a
mistyped path can neither look like an empty container nor get our tables added to it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

from tracker_reencrypt.errors import ConfigError, StoreError, redact_url

log = logging.getLogger("reencrypt.store")

BUSY_TIMEOUT_MS = 30_000
#: How long opening a file waits while another process lays it out (~1 s per 100k documents).
LAYOUT_WAIT_MS = 600_000

#: The file layout this code writes, kept in SQLite's ``user_version``. 0: documents keyed by
#: (partition key, id) with an EPK-order index beside them (files made before layout 1). 1: the
#: documents clustered in scan order. 2: each document's last write time (``written_at``, seconds
#: since the epoch, set by every write), NULL for rows written before it: the stale-writer check
#: needs what Cosmos keeps as ``_ts``.
LAYOUT_VERSION = 2
#: SQLite's header field for "which application's file is this" (``PRAGMA application_id``),
#: set in every file this code lays out: "MEKR". Files laid out before it are recognised by
#: their tables (see :func:`_has_our_tables`).
APPLICATION_ID = int.from_bytes(b"MEKR", "big")
#: Our tables and the columns they had before layout 2 added ``written_at``.
_OUR_COLUMNS = {"documents": {"epk", "pk", "id", "etag", "body"}, "records": {"kind", "id", "etag", "body"}}
_WRITTEN_AT = "written_at"

_DOCUMENTS_TABLE = """
CREATE TABLE {name} (
    epk  INTEGER NOT NULL,
    pk   TEXT NOT NULL,
    id   TEXT NOT NULL,
    etag TEXT NOT NULL,
    body TEXT NOT NULL,
    written_at REAL,
    PRIMARY KEY (epk, pk, id)
) WITHOUT ROWID
"""
_RECORDS_TABLE = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    etag TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
)
"""


def _layout_of(connection: sqlite3.Connection) -> int:
    return connection.execute("PRAGMA user_version").fetchone()[0]


def _has_our_tables(connection: sqlite3.Connection) -> bool:
    return all(
        {row[0] for row in connection.execute("SELECT name FROM pragma_table_info(?)", (table,))} - {_WRITTEN_AT}
        == columns
        for table, columns in _OUR_COLUMNS.items()
    )


def _is_blank(connection: sqlite3.Connection) -> bool:
    """A database nobody has written anything into (what connecting to a new path makes)."""
    return (
        _layout_of(connection) == 0
        and connection.execute("PRAGMA application_id").fetchone()[0] == 0
        and connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    )


def _is_ours(connection: sqlite3.Connection) -> bool:
    """Laid out by this tool: our marker, or (files from before the marker) our tables in a layout we know.
    Another application's marker, or its own user_version beyond ours, is never ours."""
    marker = connection.execute("PRAGMA application_id").fetchone()[0]
    if marker:
        return marker == APPLICATION_ID
    return _layout_of(connection) <= LAYOUT_VERSION and _has_our_tables(connection)


def _url_of(path: Path) -> str:
    """The store URL naming ``path``, fit for messages (the inverse of
    :func:`tracker_reencrypt.stores.sqlite.path_from_url`)."""
    return redact_url(f"sqlite:///{path}")


class Connections:
    """One connection per process and thread, opened on first use.

    ``create``: a missing file, or a blank database, is laid out as a new store; without it
    both are refused, like any file this tool did not make.
    """

    def __init__(self, path: Path, create: bool) -> None:
        self.path = path
        self.create = create
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = self._open()
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _open(self) -> sqlite3.Connection:
        if not self.create and not self.path.exists():
            raise ConfigError(
                f"store {_url_of(self.path)} does not exist (no file {self.path.absolute()}): check the "
                f"path; only 'reencrypt seed' and 'reencrypt keys init' create a store"
            )
        if not self.path.parent.exists():
            raise ConfigError(
                f"directory {self.path.parent} for SQLite store {self.path} does not exist: create it first"
            )
        # mode=rw: a file removed since the check above must not be made again, empty.
        location = f"file:{quote(str(self.path.absolute()))}?mode={'rwc' if self.create else 'rw'}"
        try:
            connection = sqlite3.connect(location, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            try:
                self._prepare(connection)
            except BaseException:
                connection.close()
                raise
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc):
                raise StoreError(
                    f"SQLite store {self.path} stayed locked for {LAYOUT_WAIT_MS / 1000:.0f} s while it was "
                    f"opened (another process rewriting it to layout {LAYOUT_VERSION}?): retry when that is done"
                ) from None
            raise ConfigError(
                f"store {_url_of(self.path)} cannot be opened ({exc}): check the path names a store "
                f"made by 'reencrypt seed' or 'reencrypt keys init'"
            ) from None
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        layout = _layout_of(connection)
        self._refuse_foreign(connection)  # before anything below writes to the file
        self._refuse_newer(layout)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        if layout != LAYOUT_VERSION:
            # Another process may be rewriting a large old file: wait for it, not the usual 30 s.
            connection.execute(f"PRAGMA busy_timeout={LAYOUT_WAIT_MS}")
            self._lay_out(connection)
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _lay_out(self, connection: sqlite3.Connection) -> None:
        """Create the tables in a new file, or bring an older file to the current layout.

        Under the write lock, re-reading the version inside it: several workers may open an
        old file at once, and only the first may copy it.
        """
        with Transaction(connection):
            version = _layout_of(connection)
            if version == LAYOUT_VERSION:
                return
            self._refuse_newer(version)
            had_documents = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'documents'"
            ).fetchone()
            if had_documents and version == 1:
                # Constant time whatever the size: SQLite stores no value for the old rows.
                connection.execute(f"ALTER TABLE documents ADD COLUMN {_WRITTEN_AT} REAL")
            elif had_documents:
                log.info(
                    "SQLite store %s: rewriting its documents in scan order (layout 0 -> %d)", self.path, LAYOUT_VERSION
                )
                connection.execute(_DOCUMENTS_TABLE.format(name="documents_clustered"))
                connection.execute(
                    "INSERT INTO documents_clustered (epk, pk, id, etag, body)"
                    " SELECT epk, pk, id, etag, body FROM documents ORDER BY epk, pk, id"
                )
                connection.execute("DROP TABLE documents")  # and its EPK-order index
                connection.execute("ALTER TABLE documents_clustered RENAME TO documents")
            else:
                connection.execute(_DOCUMENTS_TABLE.format(name="documents"))
            connection.execute(_RECORDS_TABLE)
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")

    def _refuse_foreign(self, connection: sqlite3.Connection) -> None:
        """Only read here: a refused file is left byte for byte as it was."""
        if _is_ours(connection):
            return
        if _is_blank(connection):
            if self.create:
                return
            raise ConfigError(
                f"store {_url_of(self.path)} is an empty SQLite file, not a reencrypt store: check the "
                f"path; only 'reencrypt seed' and 'reencrypt keys init' create a store"
            )
        raise ConfigError(
            f"store {_url_of(self.path)} is a SQLite database reencrypt did not make (no tracker "
            f"documents and records tables): check the path; reencrypt never adds its tables to "
            f"another application's database"
        )

    def _refuse_newer(self, version: int) -> None:
        if version > LAYOUT_VERSION:
            raise ConfigError(
                f"SQLite store {self.path} has layout {version}, newer than this reencrypt's "
                f"({LAYOUT_VERSION}): upgrade reencrypt"
            )

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local.connection = None


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so writers queue, not fail."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
