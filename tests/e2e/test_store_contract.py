"""One contract for every store backend: SQLite (a file under tmp_path) and Cosmos DB (the
Cosmos-protocol test server of tests/cosmos_server.py, a fresh container per test).

A test taking ``backend`` runs on both; the few that only one backend can show say so.
The Cosmos adapter's pure parts (EPK splitting, error mapping) are tested at the end without
a server.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from contextlib import closing
from itertools import pairwise
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.cosmos import PartitionKey, exceptions
from azure.cosmos.partition_key import PartitionKey as SdkPartitionKey

from tracker_reencrypt.errors import ConfigError, ConflictError, NotFoundError, StoreError, StoreUnavailableError
from tracker_reencrypt.stores import open_store
from tracker_reencrypt.stores.cosmos import CosmosStore
from tracker_reencrypt.stores.cosmos_access import ENV_CA_BUNDLE, ENV_KEY, ENV_PRIORITY
from tracker_reencrypt.stores.cosmos_errors import store_error_for
from tracker_reencrypt.stores.cosmos_ranges import covers_whole_container, split_feed_range
from tracker_reencrypt.stores.cosmos_records import STATE_CONTAINER_SUFFIX, record_item_id

from conftest import LAYOUT_0_SCHEMA, LAYOUT_1_SCHEMA, free_port
from cosmos_server import cosmos_server  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[2]


def closing_sqlite(path: Path):
    """A plain sqlite3 connection, closed on leaving the block (sqlite3's own only commits)."""
    return closing(sqlite3.connect(path))


PARTITION_KEY_FIELD = "productId"
BACKENDS = ["sqlite", pytest.param("cosmos", marks=pytest.mark.cosmos)]
SEED_DOCUMENTS = 300
SEED_PARTITIONS = 10


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cosmos_client(cosmos_server):  # noqa: F811
    """The test server, reached with the SDK directly (to make and inspect databases and containers)."""
    client = cosmos_server.client()
    yield client
    client.close()


@pytest.fixture(scope="module")
def cosmos_database(cosmos_client):
    return cosmos_client.create_database_if_not_exists("contract")


class Backend:
    """Opens store objects on one backing store (each call a new object, as another process would)."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self._opened = []

    def open(self, **cosmos_options):
        if cosmos_options:
            store = CosmosStore.from_url(self.url, partition_key_field=PARTITION_KEY_FIELD, **cosmos_options)
        else:
            store = open_store(self.url, partition_key_field=PARTITION_KEY_FIELD)
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self._opened:
            store.close()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        located = Backend("sqlite", f"sqlite:///{tmp_path / 'tracker.db'}")
        open_store(located.url, create=True).close()  # as seed does; other commands open existing stores only
    else:
        server = request.getfixturevalue("cosmos_server")
        database = request.getfixturevalue("cosmos_database")
        name = f"tracker-{uuid.uuid4().hex[:12]}"
        database.create_container(name, partition_key=PartitionKey(path=f"/{PARTITION_KEY_FIELD}"))
        for variable, value in server.env().items():
            monkeypatch.setenv(variable, value)
        monkeypatch.delenv(ENV_PRIORITY, raising=False)
        located = Backend("cosmos", server.url(database.id, name))
    yield located
    located.close_all()


@pytest.fixture
def store(backend):
    return backend.open()


def document(index: int, partitions: int = SEED_PARTITIONS) -> dict:
    return {
        "id": f"doc-{index:04d}",
        PARTITION_KEY_FIELD: f"product-{index % partitions:02d}",
        "notes": [{"text": f"note {index}", "tags": ["a", "b"]}],
        "counter": 0,
    }


def seed(store, count: int = SEED_DOCUMENTS) -> set[str]:
    store.create_many([document(index) for index in range(count)])
    return {document(index)["id"] for index in range(count)}


def scan_all(store, feed_range, page_size: int) -> list[str]:
    """Every id a range yields, page after page, in order (duplicates kept)."""
    ids, continuation = [], None
    while True:
        page = store.scan(feed_range, continuation, page_size)
        ids += [stored.id for stored in page.documents]
        continuation = page.continuation
        if continuation is None:
            return ids


# -- feed ranges and scans -------------------------------------------------------------------


@pytest.mark.parametrize("min_count", [1, 8])
def test_feed_ranges_cover_every_document_exactly_once(store, min_count):
    expected = seed(store)
    seen: list[str] = []
    for feed_range in store.feed_ranges(min_count):
        ids = scan_all(store, feed_range, page_size=7)
        assert len(ids) == len(set(ids)), "a range returned a document twice"
        seen += ids
    assert len(seen) == len(set(seen)), "a document was returned by two ranges"
    assert set(seen) == expected


def test_feed_ranges_split_to_min_count_where_the_backend_can(store, backend):
    ranges = store.feed_ranges(min_count=8)
    if backend.name == "sqlite":
        assert len(ranges) >= 8
    else:
        # The test server has one physical partition and refuses queries scoped to part of it
        # (400 "missing partition keys"), so the store keeps the service's single range.
        # On Cosmos DB the range is split into EPK sub-ranges (see test_split_feed_range_*).
        assert len(ranges) == 1 and covers_whole_container(ranges[0])
    assert len(store.feed_ranges(1)) >= 1


def test_sqlite_feed_ranges_hold_about_as_many_documents_each(tmp_path):
    """Slices of equal size finish together; the sweep does not wait at its end on one big one.
    A partition key's documents share one EPK, so the balance is to within one key's worth."""
    from tracker_reencrypt.stores.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "tracker.db", partition_key_field=PARTITION_KEY_FIELD)
    store.create_many([{"id": f"doc-{n}", PARTITION_KEY_FIELD: f"product-{n % 200}"} for n in range(2_000)])
    ranges = store.feed_ranges(8)
    sizes = [len(scan_all(store, feed_range, page_size=500)) for feed_range in ranges]
    assert len(ranges) == 8 and sum(sizes) == 2_000
    assert max(sizes) - min(sizes) <= 2 * 10, sizes  # 10 documents per partition key


def test_feed_ranges_round_trip_through_json(store):
    seed(store, 60)
    ranges = store.feed_ranges(4)
    travelled = json.loads(json.dumps(ranges))
    assert travelled == ranges
    for original, copy in zip(ranges, travelled, strict=True):
        assert scan_all(store, copy, page_size=50) == scan_all(store, original, page_size=50)


def test_scan_resumes_from_a_stored_continuation(store, backend):
    expected = seed(store)
    seen: list[str] = []
    for feed_range in store.feed_ranges(2):
        first = store.scan(feed_range, None, 10)
        second = store.scan(feed_range, first.continuation, 10) if first.continuation else first
        head = [stored.id for stored in first.documents]
        if second is not first:
            head += [stored.id for stored in second.documents]
        continuation = second.continuation
        if continuation is not None:
            continuation = json.loads(json.dumps(continuation))  # as a checkpoint stores it
            resumed = backend.open()  # as another worker would, later
            head += scan_all_from(resumed, feed_range, continuation, page_size=10)
        assert len(head) == len(set(head))
        seen += head
    assert sorted(seen) == sorted(expected)


def scan_all_from(store, feed_range, continuation, page_size):
    ids = []
    while continuation is not None:
        page = store.scan(feed_range, continuation, page_size)
        ids += [stored.id for stored in page.documents]
        continuation = page.continuation
    return ids


def test_an_empty_store_scans_to_nothing(store):
    for feed_range in store.feed_ranges(3):
        page = store.scan(feed_range, None, 10)
        assert page.documents == [] and page.continuation is None
    assert store.count() == 0


def test_count(store):
    seed(store, 25)
    assert store.count() == 25


# -- documents -------------------------------------------------------------------------------


def test_a_document_reads_back_as_written_without_system_properties(store):
    body = document(1)
    created = store.create(body)
    read = store.read(body["id"], store.partition_key_of(body))
    assert created.body == body and read.body == body
    assert read.etag and read.etag == created.etag
    assert store.partition_key_of(body) == body[PARTITION_KEY_FIELD]
    for scanned in store.scan(store.feed_ranges(1)[0], None, 10).documents:
        assert scanned.body == body and scanned.etag == read.etag


def test_a_stale_write_conflicts_and_the_newer_write_survives(store, backend):
    body = document(7)
    store.create(body)
    pk = body[PARTITION_KEY_FIELD]
    other = backend.open()
    mine = store.read(body["id"], pk)
    theirs = other.read(body["id"], pk)
    written = other.replace({**theirs.body, "counter": 41}, theirs.etag)
    assert written.etag != mine.etag
    with pytest.raises(ConflictError):
        store.replace({**mine.body, "counter": 99}, mine.etag)
    now = store.read(body["id"], pk)
    assert now.body["counter"] == 41 and now.etag == written.etag
    assert store.replace({**now.body, "counter": 42}, now.etag).body["counter"] == 42


def test_every_write_records_when_it_happened(store, backend):
    """The stale-writer check compares a document's last write with its key's rotation: every
    write, a create, a replace or a page of replaces, must move that time (Cosmos ``_ts``,
    whole seconds; SQLite's own column)."""
    before = time.time() - 1
    created = store.create(document(3))
    read = store.read("doc-0003", created.body[PARTITION_KEY_FIELD])
    assert read.written_at is not None and before <= read.written_at <= time.time() + 1
    scanned = [d for d in store.scan(store.feed_ranges(1)[0], None, 100).documents if d.id == "doc-0003"]
    assert [d.written_at for d in scanned] == [read.written_at]
    time.sleep(1.05)  # Cosmos keeps whole seconds
    replaced = store.replace({**read.body, "counter": 1}, read.etag)
    again = store.read("doc-0003", read.body[PARTITION_KEY_FIELD])
    assert again.written_at is not None and again.written_at > read.written_at
    assert replaced.written_at is None or replaced.written_at == pytest.approx(again.written_at, abs=1)


def test_written_after_reads_only_the_products_documents_written_since(store, backend):
    """What the stale-writes command reads: one product's documents last written after a time,
    filtered by the store, paged; another product's, and older writes, never."""
    store.create_many([document(n, partitions=2) for n in range(12)])  # product-00: even, product-01: odd
    time.sleep(1.05)  # Cosmos keeps whole seconds
    after = time.time()
    time.sleep(1.05)
    late = {}
    for n in (2, 4, 6, 8, 3):  # four of product-00, one of product-01
        read = store.read(f"doc-{n:04d}", f"product-{n % 2:02d}")
        late[read.id] = store.replace({**read.body, "counter": 1}, read.etag)

    found, continuation, pages = [], None, 0
    while True:
        page = store.written_after("product-00", after, continuation, 2)
        found += page.documents
        pages += 1
        continuation = page.continuation
        if continuation is None:
            break
    assert sorted(d.id for d in found) == ["doc-0002", "doc-0004", "doc-0006", "doc-0008"]
    assert pages >= 2 and all(d.body["counter"] == 1 and d.written_at > after for d in found)
    assert [d.id for d in store.written_after("product-01", after, None, 100).documents] == ["doc-0003"]
    assert store.written_after("product-00", time.time() + 60, None, 100).documents == []
    assert store.written_after("product-99", after, None, 100).documents == []


def test_a_page_of_writes_lands_except_where_the_document_changed_or_went(store, backend):
    bodies = [document(n) for n in range(20, 26)]
    store.create_many(bodies)
    read = [store.read(body["id"], body[PARTITION_KEY_FIELD]) for body in bodies]
    other = backend.open()
    theirs = other.replace({**read[1].body, "counter": 41}, read[1].etag)  # the tracker wrote doc 21
    gone = {**read[2].body, "id": "never-existed"}

    results = store.replace_many(
        [({**r.body, "counter": 7}, r.etag) for r in read[:2]]
        + [(gone, read[2].etag)]
        + [({**r.body, "counter": 7}, r.etag) for r in read[3:]]
    )

    assert [result is not None for result in results] == [True, False, False, True, True, True]
    after = {body["id"]: store.read(body["id"], body[PARTITION_KEY_FIELD]) for body in bodies}
    assert after[bodies[1]["id"]].body["counter"] == 41 and after[bodies[1]["id"]].etag == theirs.etag
    assert all(after[b["id"]].body["counter"] == 7 for b in bodies[:1] + bodies[3:])
    assert results[0].etag == after[bodies[0]["id"]].etag != read[0].etag


def test_creating_a_duplicate_conflicts(store):
    store.create(document(3))
    with pytest.raises(ConflictError):
        store.create({**document(3), "counter": 5})
    assert store.read(document(3)["id"], document(3)[PARTITION_KEY_FIELD]).body["counter"] == 0


def test_reading_a_missing_document_is_not_found(store):
    store.create(document(2))
    with pytest.raises(NotFoundError):
        store.read("no-such-doc", document(2)[PARTITION_KEY_FIELD])
    with pytest.raises(NotFoundError):
        store.read(document(2)["id"], "another-product")


def test_replacing_a_missing_document_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.replace(document(4), '"no-such-etag"')


def test_request_charge_is_counted(store):
    before = store.cost.request_units
    body = document(5)
    store.create(body)
    after_create = store.cost.request_units
    assert after_create > before
    stored = store.read(body["id"], body[PARTITION_KEY_FIELD])
    store.replace({**stored.body, "counter": 1}, stored.etag)
    store.scan(store.feed_ranges(1)[0], None, 10)
    assert store.cost.request_units > after_create
    assert store.cost.throttled == 0


# -- records ---------------------------------------------------------------------------------


def test_records_get_create_replace(store):
    records = store.records()
    etag = records.create("sweep", "s-1", {"state": "new"})
    assert records.get("sweep", "s-1") == ({"state": "new"}, etag)
    newer = records.replace("sweep", "s-1", {"state": "running"}, etag)
    assert newer != etag
    assert records.get("sweep", "s-1") == ({"state": "running"}, newer)
    with pytest.raises(ConflictError):
        records.replace("sweep", "s-1", {"state": "stale"}, etag)
    assert records.get("sweep", "s-1")[0] == {"state": "running"}
    with pytest.raises(ConflictError):
        records.create("sweep", "s-1", {"state": "again"})
    with pytest.raises(NotFoundError):
        records.get("sweep", "s-2")
    with pytest.raises(NotFoundError):
        records.get("slice", "s-1")  # same id, other kind
    with pytest.raises(NotFoundError):
        records.replace("sweep", "s-2", {}, etag)


def test_records_list_by_prefix_in_id_order(store, backend):
    records = store.records()
    for record_id in ["s-2/0002", "s-1/0010", "s-1/0002", "s-1/0001", "s-10/0001", "odd?#\\%id"]:
        records.create("slice", record_id, {"id": record_id, "nested": {"n": [1, 2]}})
    records.create("failure", "s-1/0001", {"kind": "other"})
    listed = records.list("slice", prefix="s-1/")
    assert [row[0] for row in listed] == ["s-1/0001", "s-1/0002", "s-1/0010"]
    assert all(body == {"id": record_id, "nested": {"n": [1, 2]}} for record_id, body, _ in listed)
    assert [row[0] for row in records.list("slice")] == sorted(
        ["s-2/0002", "s-1/0010", "s-1/0002", "s-1/0001", "s-10/0001", "odd?#\\%id"]
    )
    assert records.list("slice", prefix="nothing") == []
    assert records.get("slice", "odd?#\\%id")[0]["id"] == "odd?#\\%id"
    # etags from list are good for a conditional replace
    record_id, body, etag = listed[0]
    records.replace("slice", record_id, {**body, "claimed": True}, etag)
    # records are visible to another store object on the same backend
    assert backend.open().records().get("slice", record_id)[0]["claimed"] is True


# -- SQLite only: several processes on one file ----------------------------------------------

_INCREMENTER = textwrap.dedent(
    """
    import json, sys
    from tracker_reencrypt.errors import ConflictError
    from tracker_reencrypt.stores.sqlite import SqliteStore

    store = SqliteStore(sys.argv[1])
    ids, rounds = json.loads(sys.argv[2]), int(sys.argv[3])
    done, conflicts = {doc_id: 0 for doc_id in ids}, 0
    for n in range(rounds):
        doc_id = ids[n % len(ids)]
        while True:
            stored = store.read(doc_id, "hot")
            try:
                store.replace({**stored.body, "counter": stored.body["counter"] + 1}, stored.etag)
            except ConflictError:
                conflicts += 1
                continue
            done[doc_id] += 1
            break
    print(json.dumps({"done": done, "conflicts": conflicts}))
    """
)


def test_sqlite_concurrent_writers_lose_no_update_and_keep_the_file_sound(tmp_path):
    from tracker_reencrypt.stores.sqlite import SqliteStore

    path = tmp_path / "tracker.db"
    store = SqliteStore(path, partition_key_field=PARTITION_KEY_FIELD)
    ids = [f"hot-{n}" for n in range(3)]
    store.create_many([{"id": doc_id, PARTITION_KEY_FIELD: "hot", "counter": 0} for doc_id in ids])
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _INCREMENTER, str(path), json.dumps(ids), "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=environment,
        )
        for _ in range(4)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    for doc_id in ids:
        assert store.read(doc_id, "hot").body["counter"] == sum(result["done"][doc_id] for result in results)
    assert sum(sum(result["done"].values()) for result in results) == 4 * 60
    store.close()
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_a_scan_page_costs_the_same_wherever_the_scan_has_got_to(tmp_path):
    """A slice of a million documents must not take a thousand times longer per page at its end
    than at its start. Counted in SQLite virtual-machine steps, not seconds, so the machine's
    speed cannot make this pass or fail."""
    from tracker_reencrypt.stores.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "tracker.db", partition_key_field=PARTITION_KEY_FIELD)
    store.create_many([{"id": f"doc-{n:05}", PARTITION_KEY_FIELD: f"product-{n % 40}"} for n in range(4_000)])
    feed_range = store.feed_ranges(1)[0]
    steps = [0]

    def count_step() -> int:
        steps[0] += 1
        return 0  # 0: carry on

    store._db.set_progress_handler(count_step, 10)
    page_steps, continuation = [], None
    while True:
        steps[0] = 0
        page = store.scan(feed_range, continuation, 50)
        page_steps.append(steps[0])
        continuation = page.continuation
        if continuation is None:
            break
    assert len(page_steps) == 4_000 // 50 + 1
    resumed = page_steps[1:-1]  # the first page runs another query; the last finds nothing
    assert max(resumed) < 2 * min(resumed), f"VM steps per page from second to last: {resumed[0]} ... {resumed[-1]}"


def _deep_text(levels: int, document_id: str) -> str:
    """A document nested ``levels`` deep, as text (json.dumps cannot write it either), a secret at its bottom."""
    head = json.dumps({"id": document_id, PARTITION_KEY_FIELD: "product-01"})[:-1]
    return head + ', "a": ' + '{"a": ' * (levels - 2) + '{"secret": "PLAINTEXT"}' + "}" * (levels - 2) + "}"


def test_sqlite_a_row_it_cannot_parse_comes_back_marked_unreadable_with_the_rest_of_its_page(tmp_path):
    """A row nested past what the JSON parsers' recursion allows, one not JSON and one not UTF-8
    come back as unreadable documents, keyed as their rows are and holding nothing of their
    text, among every other document of the page; paging past them loses and repeats nothing."""
    from tracker_reencrypt.stores.sqlite import SqliteStore, effective_partition_key

    path = tmp_path / "tracker.db"
    store = SqliteStore(path, partition_key_field=PARTITION_KEY_FIELD)
    expected = seed(store, 40)
    rows = {
        ("deep", "product-01"): _deep_text(2_000, "deep"),
        ("deeper", "product-02"): _deep_text(100_000, "deeper"),
        ("garbled", "product-03"): '{"id": "garbled", "title": "PLAINTEXT',
        ("latin-1", "product-04"): '{"id": "latin-1", "title": "PLAINTEXT caf\xe9"}'.encode("latin-1"),
    }
    with closing_sqlite(path) as db, db:
        db.executemany(
            "INSERT INTO documents (epk, pk, id, etag, body) VALUES (?, ?, ?, '\"raw\"', CAST(? AS TEXT))",
            [(effective_partition_key(pk), pk, row_id, text) for (row_id, pk), text in rows.items()],
        )
    reasons = {"deep": "too_deep", "deeper": "too_deep", "garbled": "invalid_json", "latin-1": "invalid_json"}

    page = store.scan(store.feed_ranges(1)[0], None, 100)
    assert page.continuation is None and len(page.documents) == 44
    unreadable = {stored.id: stored for stored in page.documents if stored.unreadable}
    assert {row_id: stored.unreadable for row_id, stored in unreadable.items()} == reasons
    for (row_id, pk), _ in rows.items():
        assert unreadable[row_id].body == {"id": row_id, PARTITION_KEY_FIELD: pk}
        assert unreadable[row_id].row == (pk, row_id)
        assert "PLAINTEXT" not in repr(unreadable[row_id])
    assert {stored.body["id"] for stored in page.documents if not stored.unreadable} == expected
    assert sorted(scan_all(store, store.feed_ranges(1)[0], page_size=3)) == sorted(expected | set(reasons))
    assert store.read("deep", "product-01").unreadable == "too_deep"
    assert store.read("garbled", "product-03").unreadable == "invalid_json"


def test_sqlite_a_body_nested_too_deep_to_write_is_a_store_error_naming_only_its_id(tmp_path):
    from tracker_reencrypt.stores.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "tracker.db", partition_key_field=PARTITION_KEY_FIELD)
    seed(store, 5)
    deep = {"secret": "PLAINTEXT"}
    for _ in range(2_000):
        deep = {"a": deep}
    for write in (
        lambda: store.create({**document(7), "a": deep}),
        lambda: store.replace({**document(3), "a": deep}, store.read("doc-0003", "product-03").etag),
    ):
        with pytest.raises(StoreError) as raised:
            write()
        message = str(raised.value)
        assert "'doc-000" in message and "too deep" in message
        assert "\n" not in message and "PLAINTEXT" not in message
    assert store.count() == 5 and store.read("doc-0003", "product-03").body == document(3)


def test_sqlite_a_file_in_the_first_layout_is_rewritten_in_scan_order_losing_nothing(tmp_path):
    """Files made before the clustered layout (demo stores, bench caches) open as they were."""
    from tracker_reencrypt.stores.sqlite import SqliteStore, effective_partition_key
    from tracker_reencrypt.stores.sqlite_layout import LAYOUT_VERSION

    path = tmp_path / "old.db"
    with closing_sqlite(path) as db:
        db.executescript(LAYOUT_0_SCHEMA)
        rows = [
            (f"product-{n % 7}", f"doc-{n:03}", f'"etag-{n}"', json.dumps({"id": f"doc-{n:03}", "n": n}))
            for n in range(120)
        ]
        db.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?)",
            [(pk, doc_id, effective_partition_key(pk), etag, body) for pk, doc_id, etag, body in rows],
        )
        db.execute("""INSERT INTO records VALUES ('sweep', 's-1', '"r1"', '{"status": "running"}')""")
        db.commit()

    store = SqliteStore(path, partition_key_field=PARTITION_KEY_FIELD)
    for pk, doc_id, etag, body in rows:
        found = store.read(doc_id, pk)
        assert (found.body, found.etag) == (json.loads(body), etag)
    scanned = [(d.id, d.etag) for d in store.scan(store.feed_ranges(1)[0], None, 1_000).documents]
    in_order = sorted(rows, key=lambda row: (effective_partition_key(row[0]), row[0], row[1]))
    assert scanned == [(doc_id, etag) for _, doc_id, etag, _ in in_order]
    assert store.records().get("sweep", "s-1") == ({"status": "running"}, '"r1"')
    store.close()
    with closing_sqlite(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION
        assert (
            db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'documents_in_epk_order'"
            ).fetchall()
            == []
        )
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_a_layout_1_file_gains_write_times_in_place(tmp_path):
    """Files made before the store kept write times open as they were: their rows' time is
    unknown (never taken for a write after a rotation), and every later write records one."""
    from tracker_reencrypt.stores.sqlite import SqliteStore, effective_partition_key
    from tracker_reencrypt.stores.sqlite_layout import LAYOUT_VERSION

    path = tmp_path / "layout1.db"
    with closing_sqlite(path) as db:
        db.executescript(LAYOUT_1_SCHEMA)
        db.execute(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?)",
            (effective_partition_key("p"), "p", "doc-1", '"e1"', json.dumps({"id": "doc-1", PARTITION_KEY_FIELD: "p"})),
        )
        db.commit()
    store = SqliteStore(path, partition_key_field=PARTITION_KEY_FIELD, create=False)
    old = store.read("doc-1", "p")
    assert (old.body["id"], old.etag, old.written_at) == ("doc-1", '"e1"', None)
    assert store.written_after("p", 0.0, None, 10).documents == []  # an unknown time is never "after"
    assert store.replace({**old.body, "n": 1}, old.etag).written_at is not None
    assert store.read("doc-1", "p").written_at is not None
    assert [d.id for d in store.written_after("p", 0.0, None, 10).documents] == ["doc-1"]
    store.close()
    with closing_sqlite(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == LAYOUT_VERSION


def _old_file_held_by_another_writer(path: Path, seconds: float) -> threading.Thread:
    """A layout-0 file in WAL mode whose write lock another connection holds for ``seconds``,
    as while another process rewrites it."""
    with closing_sqlite(path) as db:
        db.executescript(LAYOUT_0_SCHEMA)
        db.execute("PRAGMA journal_mode=WAL")
    locked = threading.Event()

    def hold() -> None:
        with closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(seconds)
            db.execute("ROLLBACK")

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait()
    return holder


def test_sqlite_opening_an_old_file_waits_while_another_process_lays_it_out(tmp_path, monkeypatch):
    from tracker_reencrypt.stores import sqlite as sqlite_store
    from tracker_reencrypt.stores import sqlite_layout

    monkeypatch.setattr(sqlite_layout, "BUSY_TIMEOUT_MS", 100)  # shorter than the hold: the layout wait must apply
    monkeypatch.setattr(sqlite_layout, "LAYOUT_WAIT_MS", 10_000)
    holder = _old_file_held_by_another_writer(tmp_path / "old.db", seconds=1.0)
    store = sqlite_store.SqliteStore(tmp_path / "old.db")
    holder.join()
    assert store.count() == 0
    with closing_sqlite(tmp_path / "old.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_layout.LAYOUT_VERSION


def test_sqlite_an_old_file_locked_too_long_says_so_and_to_retry(tmp_path, monkeypatch):
    from tracker_reencrypt.stores import sqlite as sqlite_store
    from tracker_reencrypt.stores import sqlite_layout

    monkeypatch.setattr(sqlite_layout, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(sqlite_layout, "LAYOUT_WAIT_MS", 200)
    holder = _old_file_held_by_another_writer(tmp_path / "old.db", seconds=1.5)
    with pytest.raises(StoreError, match="stayed locked .* retry when that is done"):
        sqlite_store.SqliteStore(tmp_path / "old.db")
    holder.join()


def test_sqlite_a_file_from_a_newer_reencrypt_is_refused_untouched(tmp_path):
    from tracker_reencrypt.stores.sqlite import SqliteStore
    from tracker_reencrypt.stores.sqlite_layout import APPLICATION_ID, LAYOUT_VERSION

    path = tmp_path / "newer.db"
    with closing_sqlite(path) as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # ours, whatever its tables
        db.execute(f"PRAGMA user_version = {LAYOUT_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=f"layout {LAYOUT_VERSION + 1}, newer .*: upgrade reencrypt"):
        SqliteStore(path)
    assert path.read_bytes() == before


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sqlite:",
        "sqlite://relative.db",
        "cosmos://",
        "cosmos://account.documents.azure.com",
        "cosmos://account.documents.azure.com/only-database",
        "cosmos://account.documents.azure.com/db/container/extra",
        "cosmos://account.documents.azure.com:port/db/container",
        "mongodb://x",
    ],
)
def test_bad_store_urls_are_config_errors(url):
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "\n" not in message
    assert "use " in message or "set " in message or "must" in message


def test_cosmos_settings_are_checked_before_connecting():
    url = "cosmos://127.0.0.1:1/db/container"
    with pytest.raises(ConfigError, match=ENV_PRIORITY):
        CosmosStore.from_url(url, environ={ENV_KEY: "a2V5", ENV_PRIORITY: "urgent"})
    with pytest.raises(ConfigError, match=ENV_CA_BUNDLE):
        CosmosStore.from_url(url, environ={ENV_KEY: "a2V5", ENV_CA_BUNDLE: "/no/such/bundle.pem"})
    with pytest.raises(ConfigError, match=ENV_KEY):
        CosmosStore.from_url(url, environ={ENV_KEY: "not base64!"})


# -- Cosmos only: credentials, TLS, priority, throttling ------------------------------------


@pytest.mark.cosmos
def test_cosmos_unreachable_endpoint_is_a_store_error_naming_it(cosmos_server):  # noqa: F811
    # The test server accepts any key, so a wrong key cannot be shown; a dead endpoint can.
    port = free_port()
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        CosmosStore.from_url(f"cosmos://127.0.0.1:{port}/db/container", environ=cosmos_server.env())
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert time.monotonic() - started < 10


@pytest.mark.cosmos
def test_cosmos_verifies_tls_even_on_loopback(cosmos_server):  # noqa: F811
    environ = {ENV_KEY: cosmos_server.key}  # no CA bundle: the self-signed certificate is untrusted
    with pytest.raises(StoreError) as caught:
        CosmosStore.from_url(cosmos_server.url("contract", "any"), environ=environ)
    assert cosmos_server.host in str(caught.value)
    assert "certificate" in str(caught.value).lower()


@pytest.mark.cosmos
def test_cosmos_missing_container_names_it_and_the_fix(cosmos_server, cosmos_database):  # noqa: F811
    with pytest.raises(ConfigError) as caught:
        CosmosStore.from_url(cosmos_server.url(cosmos_database.id, "no-such-container"), environ=cosmos_server.env())
    assert "no-such-container" in str(caught.value) and "/productId" in str(caught.value)


@pytest.mark.cosmos
def test_cosmos_partition_key_must_match_the_container(cosmos_server, cosmos_database):  # noqa: F811
    name = f"by-other-{uuid.uuid4().hex[:8]}"
    cosmos_database.create_container(name, partition_key=PartitionKey(path="/tenant"))
    with pytest.raises(ConfigError, match="/tenant"):
        CosmosStore.from_url(cosmos_server.url(cosmos_database.id, name), environ=cosmos_server.env())


@pytest.mark.cosmos
@pytest.mark.parametrize("create", [False, True])
def test_cosmos_missing_database_is_refused_and_not_created(
    cosmos_server,  # noqa: F811 - the fixture imported above
    cosmos_client,
    monkeypatch,
    create,
):
    for variable, value in cosmos_server.env().items():
        monkeypatch.setenv(variable, value)
    name = f"mistyped-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError) as caught:
        open_store(cosmos_server.url(name, "tracker"), create=create)
    message = str(caught.value)
    assert f"database {name} of store {cosmos_server.url(name, 'tracker')} does not exist" in message
    assert "check the database in the store URL" in message and "\n" not in message
    assert name not in {database["id"] for database in cosmos_client.list_databases()}


def _containers(database) -> set[str]:
    return {container["id"] for container in database.list_containers()}


@pytest.mark.cosmos
@pytest.mark.parametrize("backend", [pytest.param("cosmos", marks=pytest.mark.cosmos)], indirect=True)
def test_cosmos_reading_records_never_creates_the_state_container(backend, cosmos_database):
    state = backend.url.rsplit("/", 1)[1] + STATE_CONTAINER_SUFFIX
    reader = backend.open().records()  # as open_store gives every command but seed and keys init
    assert reader.list("sweep") == []
    with pytest.raises(NotFoundError):
        reader.get("sweep", "s-1")
    with pytest.raises(NotFoundError):
        reader.replace("sweep", "s-1", {"state": "running"}, '"any"')
    assert state not in _containers(cosmos_database)

    backend.open().records().create("sweep", "s-1", {"state": "new"})  # a sweep starting elsewhere

    assert state in _containers(cosmos_database)
    assert reader.get("sweep", "s-1")[0] == {"state": "new"}  # the reader opened before sees it now
    assert [record_id for record_id, _, _ in reader.list("sweep")] == ["s-1"]


@pytest.mark.cosmos
@pytest.mark.parametrize("backend", [pytest.param("cosmos", marks=pytest.mark.cosmos)], indirect=True)
def test_cosmos_first_record_written_makes_the_state_container(backend, cosmos_database):
    records = backend.open().records()
    etag = records.create("audit", "a-1", {"event": "keys disable"})
    assert records.get("audit", "a-1") == ({"event": "keys disable"}, etag)
    assert backend.url.rsplit("/", 1)[1] + STATE_CONTAINER_SUFFIX in _containers(cosmos_database)


@pytest.mark.cosmos
@pytest.mark.parametrize("backend", [pytest.param("cosmos", marks=pytest.mark.cosmos)], indirect=True)
def test_cosmos_create_makes_the_state_container_on_opening_records(backend, cosmos_database):
    backend.open(create=True).records()
    assert backend.url.rsplit("/", 1)[1] + STATE_CONTAINER_SUFFIX in _containers(cosmos_database)


@pytest.mark.cosmos
@pytest.mark.parametrize("backend", [pytest.param("cosmos", marks=pytest.mark.cosmos)], indirect=True)
def test_cosmos_low_priority_goes_on_document_requests_only(backend, monkeypatch):
    sent = []
    monkeypatch.setenv(ENV_PRIORITY, "low")
    store = backend.open(client_options={"raw_request_hook": lambda request: sent.append(request.http_request)})
    assert store.priority == "Low"

    def priorities() -> set:
        """Priority levels of the document requests since last asked (metadata reads excluded)."""
        levels = {request.headers.get("x-ms-cosmos-priority-level") for request in sent if "/docs" in request.url}
        sent.clear()
        return levels

    store.create(document(1))
    stored = store.read(document(1)["id"], document(1)[PARTITION_KEY_FIELD])
    store.replace({**stored.body, "counter": 1}, stored.etag)
    store.scan(store.feed_ranges(1)[0], None, 10)
    assert priorities() == {"Low"}
    records = store.records()
    records.create("sweep", "s-1", {})
    records.get("sweep", "s-1")
    assert priorities() == {None}


@pytest.mark.cosmos
@pytest.mark.parametrize("backend", [pytest.param("cosmos", marks=pytest.mark.cosmos)], indirect=True)
def test_cosmos_throttled_requests_are_retried_and_counted(backend, cosmos_server):  # noqa: F811
    store = backend.open()
    store.create(document(1))
    cosmos_server.throttle_next(2)
    assert store.read(document(1)["id"], document(1)[PARTITION_KEY_FIELD]).body == document(1)
    assert store.cost.throttled == 2
    cosmos_server.throttle_next(1)
    store.scan(store.feed_ranges(1)[0], None, 10)
    assert store.cost.throttled == 3


@pytest.mark.cosmos
@pytest.mark.parametrize("backend", [pytest.param("cosmos", marks=pytest.mark.cosmos)], indirect=True)
def test_cosmos_writes_back_only_user_fields(backend, cosmos_database):
    store = backend.open()
    store.create(document(1))
    stored = store.read(document(1)["id"], document(1)[PARTITION_KEY_FIELD])
    assert not any(name.startswith("_") for name in stored.body)
    # even a body that still carries system properties is written without them
    store.replace({**stored.body, "_rid": "bogus", "_etag": "bogus", "counter": 3}, stored.etag)
    container = cosmos_database.get_container_client(backend.url.rsplit("/", 1)[1])
    raw = container.read_item(document(1)["id"], partition_key=document(1)[PARTITION_KEY_FIELD])
    assert raw["counter"] == 3 and raw["_rid"] != "bogus"


# -- the Cosmos adapter's pure parts ---------------------------------------------------------


def _epk(value: str) -> str:
    return SdkPartitionKey(path="/productId", kind="Hash", version=2)._get_effective_partition_key_string([value])


def _owners(ranges, epk: str) -> list[int]:
    return [
        index
        for index, feed_range in enumerate(ranges)
        if feed_range["Range"]["min"] <= epk < feed_range["Range"]["max"]
    ]


@pytest.mark.parametrize("parts", [1, 2, 3, 8, 64])
@pytest.mark.parametrize(
    "bounds",
    [
        ("", "FF"),
        ("", "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"),
        ("1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF", "FF"),
        ("05C1", "05C2"),
    ],
)
def test_split_feed_range_covers_each_partition_key_exactly_once(parts, bounds):
    whole = {"Range": {"min": bounds[0], "max": bounds[1], "isMinInclusive": True, "isMaxInclusive": False}}
    pieces = split_feed_range(whole, parts)
    assert pieces[0]["Range"]["min"] == bounds[0] and pieces[-1]["Range"]["max"] == bounds[1]
    assert all(a["Range"]["max"] == b["Range"]["min"] for a, b in pairwise(pieces))
    assert all(piece["Range"]["min"] < piece["Range"]["max"] for piece in pieces)
    if bounds == ("", "FF"):
        assert len(pieces) == parts
    for n in range(500):
        epk = _epk(f"product-{n}")
        inside = bounds[0] <= epk < bounds[1]
        assert len(_owners(pieces, epk)) == (1 if inside else 0)
    assert json.loads(json.dumps(pieces)) == pieces


def test_split_feed_range_spreads_real_partition_keys():
    pieces = split_feed_range({"Range": {"min": "", "max": "FF", "isMinInclusive": True, "isMaxInclusive": False}}, 8)
    counts = [0] * 8
    for n in range(4000):
        (owner,) = _owners(pieces, _epk(f"product-{n}"))
        counts[owner] += 1
    assert min(counts) > 4000 / 8 * 0.7


def test_records_ids_escape_what_cosmos_forbids():
    for record_id in ["s-1/0001", "a\\b", "q?", "h#", "100%", "%2F"]:
        item_id = record_item_id(record_id)
        assert not set(item_id) & set("/\\?#")
    assert len({record_item_id(text) for text in ["%2F", "/", "%252F"]}) == 3


def _http_error(status: int, cls=exceptions.CosmosHttpResponseError):
    return cls(status_code=status, message=f"Status {status}\nActivityId: 1234")


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (_http_error(412, exceptions.CosmosAccessConditionFailedError), ConflictError, ["ETag"]),
        (_http_error(409, exceptions.CosmosResourceExistsError), ConflictError, ["exists"]),
        (_http_error(404, exceptions.CosmosResourceNotFoundError), NotFoundError, ["not found"]),
        (_http_error(401), StoreError, ["acct.example", ENV_KEY]),
        (_http_error(403), StoreError, ["acct.example", "firewall"]),
        (_http_error(429), StoreUnavailableError, ["acct.example", "RU/s"]),
        (_http_error(503), StoreUnavailableError, ["acct.example", "503"]),
        (
            ServiceRequestError("Connection refused"),
            StoreUnavailableError,
            ["https://acct.example/", "Connection refused"],
        ),
        (ClientAuthenticationError("no credential"), StoreError, ["acct.example", ENV_KEY]),
    ],
)
def test_azure_errors_map_to_ours(error, expected, words):
    mapped = store_error_for(error, "reading x", "acct.example", "key")
    assert type(mapped) is expected
    # Only an outage or throttling is worth retrying; a refused credential needs a person.
    assert mapped.transient is (expected is StoreUnavailableError)
    assert "\n" not in str(mapped)
    for word in words:
        assert word in str(mapped)


def test_forbidden_with_entra_id_names_the_role():
    mapped = store_error_for(_http_error(403), "reading x", "acct.example", "entra")
    assert "Cosmos DB Built-in Data Contributor" in str(mapped)
