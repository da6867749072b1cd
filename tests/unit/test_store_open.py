"""Opening a SQLite store: only ``create=True`` (seed, keys init) makes one; every other open
must find a store this tool made, and leaves anything else exactly as it was.

The bug these guard against: ``verify`` on a mistyped path created an empty file and passed on
0 documents, after which ``keys disable`` disabled the key every document of the real store used.
(The Cosmos side is in test_store_contract.py, beside the Cosmos test server's fixtures.)
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.stores import open_store
from tracker_reencrypt.stores.sqlite import effective_partition_key
from tracker_reencrypt.stores.sqlite_layout import LAYOUT_VERSION

from conftest import LAYOUT_0_SCHEMA

ONLY_SEED_CREATES = "only 'reencrypt seed' and 'reencrypt keys init' create a store"


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_store(path: Path, documents: int = 0) -> None:
    """A store as ``reencrypt seed`` leaves it."""
    store = open_store(url(path), create=True)
    store.create_many([{"id": f"doc-{n}", "productId": f"product-{n % 3}"} for n in range(documents)])
    store.close()


def one_line_refusal(path: Path, create: bool = False) -> str:
    with pytest.raises(ConfigError) as caught:
        open_store(url(path), create=create)
    message = str(caught.value)
    assert "\n" not in message and url(path) in message
    return message


def sql(path: Path, script: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(script)
        db.commit()


def test_a_mistyped_path_is_refused_and_nothing_is_created(tmp_path):
    make_store(tmp_path / "big.db", documents=5)
    before = sorted(tmp_path.iterdir())

    message = one_line_refusal(tmp_path / "bigg.db")

    assert f"does not exist (no file {tmp_path / 'bigg.db'})" in message and ONLY_SEED_CREATES in message
    assert sorted(tmp_path.iterdir()) == before  # no bigg.db, nor -wal, -shm or -journal beside it


def test_a_path_in_a_missing_directory_is_refused_as_missing(tmp_path):
    message = one_line_refusal(tmp_path / "no-such-dir" / "tracker.db")
    assert "does not exist" in message and ONLY_SEED_CREATES in message
    assert list(tmp_path.iterdir()) == []


APP_DATABASES = {
    "an app's own tables": "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'a');",
    "an app versioned like us": "CREATE TABLE notes (id TEXT, text TEXT); PRAGMA user_version = 1;",
    "a table named like ours": "CREATE TABLE documents (id TEXT PRIMARY KEY, title TEXT);",
    "another app's marker": "PRAGMA application_id = 1234; CREATE TABLE t (x);",
    "an app's tables in WAL mode": "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
}


@pytest.mark.parametrize("create", [False, True], ids=["open", "create"])
@pytest.mark.parametrize("schema", APP_DATABASES.values(), ids=APP_DATABASES.keys())
def test_another_applications_database_is_refused_byte_for_byte_untouched(tmp_path, schema, create):
    """Not even seed adopts it: reencrypt's tables never go into someone else's database."""
    path = tmp_path / "app.db"
    sql(path, schema)
    before, listing = path.read_bytes(), sorted(tmp_path.iterdir())

    message = one_line_refusal(path, create=create)

    assert "a SQLite database reencrypt did not make" in message and "check the path" in message
    assert path.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == listing


@pytest.mark.parametrize("create", [False, True], ids=["open", "create"])
def test_a_file_that_is_not_a_sqlite_database_is_refused_untouched(tmp_path, create):
    path = tmp_path / "notes.db"
    path.write_text("id,name\n1,a\n" * 200)
    before = path.read_bytes()

    message = one_line_refusal(path, create=create)

    assert "cannot be opened (file is not a database)" in message and "check the path" in message
    assert path.read_bytes() == before
    assert [entry.name for entry in tmp_path.iterdir()] == ["notes.db"]


def test_an_empty_file_is_refused_unless_creating(tmp_path):
    path = tmp_path / "tracker.db"
    path.touch()
    message = one_line_refusal(path)
    assert "empty SQLite file, not a reencrypt store" in message and ONLY_SEED_CREATES in message
    assert path.read_bytes() == b""

    store = open_store(url(path), create=True)
    assert store.count() == 0
    store.close()


def test_creating_makes_a_store_every_later_open_finds(tmp_path):
    path = tmp_path / "tracker.db"
    made = open_store(url(path), create=True)
    made.create({"id": "doc-1", "productId": "p", "notes": "kept"})
    made.records().create("sweep", "s-1", {"state": "new"})
    made.close()

    store = open_store(url(path))
    assert store.read("doc-1", "p").body == {"id": "doc-1", "productId": "p", "notes": "kept"}
    assert store.records().get("sweep", "s-1")[0] == {"state": "new"}
    store.close()


def test_a_store_made_with_no_documents_opens_as_an_empty_container(tmp_path):
    """keys init makes a store before anything is seeded: that one is ours, and empty."""
    make_store(tmp_path / "tracker.db", documents=0)
    store = open_store(url(tmp_path / "tracker.db"))
    assert store.count() == 0
    assert store.scan(store.feed_ranges(1)[0], None, 10).documents == []
    store.close()


def test_a_store_made_before_files_carried_our_marker_still_opens(tmp_path):
    path = tmp_path / "tracker.db"
    make_store(path, documents=4)
    sql(path, "PRAGMA application_id = 0;")  # as every layout-1 file made before the marker
    store = open_store(url(path))
    assert store.count() == 4
    store.close()


def test_our_first_layout_is_recognised_and_migrated_by_a_plain_open(tmp_path):
    path = tmp_path / "old.db"
    sql(path, LAYOUT_0_SCHEMA)
    with closing(sqlite3.connect(path)) as db:
        db.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?)",
            [
                (
                    f"p-{n % 3}",
                    f"doc-{n}",
                    effective_partition_key(f"p-{n % 3}"),
                    f'"e{n}"',
                    json.dumps({"id": f"doc-{n}", "productId": f"p-{n % 3}"}),
                )
                for n in range(9)
            ],
        )
        db.commit()

    store = open_store(url(path))

    assert store.count() == 9 and store.read("doc-4", "p-1").etag == '"e4"'
    store.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION
