"""Per-product sweeps on Cosmos DB, against the Cosmos-protocol test server through the real
azure-cosmos client (tests/cosmos_server.py; its gaps are in docs/COSMOS.md).

Every product has the same ids (d000, d001, ...): the test server ignores ``partition_key=`` on
queries, so a product range whose query text did not name its product would return every
product's matching ids, and those look right unless each document's product is checked.
The pure parts (sampling ids, choosing cuts) are tested at the end without a server.
"""

from __future__ import annotations

import json
import logging
import math
import random
import uuid

import pytest
from azure.cosmos import PartitionKey

from tracker_reencrypt.errors import StoreError
from tracker_reencrypt.stores import FeedRange, ProductRange, product_of_range
from tracker_reencrypt.stores.cosmos import CosmosStore
from tracker_reencrypt.stores.cosmos_ranges import id_cuts, id_sample_size, sample_ids

from cosmos_server import cosmos_server  # noqa: F401  (pytest fixture)

FIELD = "productId"
SIZES = {"alpha": 45, "beta": 30, "gamma": 1}


def documents(product, count: int) -> list[dict]:
    return [{"id": f"d{n:03d}", FIELD: product, "n": n} for n in range(count)]


@pytest.fixture(scope="module")
def cosmos_database(cosmos_server):  # noqa: F811
    client = cosmos_server.client()
    yield client.create_database_if_not_exists("products")
    client.close()


@pytest.fixture
def open_store(cosmos_server, cosmos_database):  # noqa: F811
    """Opens store objects on a fresh container (each call a new object, as another process would)."""
    name = f"tracker-{uuid.uuid4().hex[:12]}"
    cosmos_database.create_container(name, partition_key=PartitionKey(path=f"/{FIELD}"))
    opened: list[CosmosStore] = []

    def opener() -> CosmosStore:
        store = CosmosStore.from_url(
            cosmos_server.url(cosmos_database.id, name), partition_key_field=FIELD, environ=cosmos_server.env()
        )
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store):
    seeded = open_store()
    seeded.create_many([body for product, count in SIZES.items() for body in documents(product, count)])
    return seeded


def scan_pages(store, feed_range: FeedRange, continuation: str | None, page_size: int) -> list[tuple[list, str | None]]:
    """Every page of a range from ``continuation`` on: ((product, id) pairs, the continuation after it)."""
    pages = []
    while True:
        page = store.scan(feed_range, continuation, page_size)
        continuation = page.continuation
        pages.append(([(stored.body[FIELD], stored.id) for stored in page.documents], continuation))
        if continuation is None:
            return pages


def scan_all(store, feed_range: FeedRange, page_size: int = 4) -> list[tuple[str, str]]:
    return [key for keys, _ in scan_pages(store, feed_range, None, page_size) for key in keys]


# -- products and counts ---------------------------------------------------------------------


@pytest.mark.cosmos
def test_products_lists_each_string_partition_key_once(store, caplog):
    """The test server cannot parse SELECT DISTINCT: the store says so once and lists the
    products from every document's partition key instead."""
    store.create_many([{"id": "numbered", FIELD: 7}, {"id": "keyless"}])
    with caplog.at_level(logging.WARNING, logger="tracker_reencrypt.stores.cosmos"):
        assert store.products() == ["alpha", "beta", "gamma"]
        assert store.products() == ["alpha", "beta", "gamma"]
    refusals = [record for record in caplog.records if "refuses SELECT DISTINCT" in record.getMessage()]
    assert len(refusals) == 1
    assert any("1 partition key values are not strings (e.g. 7)" in record.getMessage() for record in caplog.records)


@pytest.mark.cosmos
def test_products_of_an_empty_container(open_store):
    assert open_store().products() == []


@pytest.mark.cosmos
def test_count_of_a_product_counts_only_its_documents(store):
    assert [store.count(product) for product in SIZES] == list(SIZES.values())
    assert store.count("nobody") == 0
    assert store.count() == sum(SIZES.values())


# -- product ranges --------------------------------------------------------------------------


@pytest.mark.cosmos
@pytest.mark.parametrize("per_range", [1, 10, 45, 1_000])
def test_product_ranges_cover_exactly_the_products_documents(store, per_range):
    ranges = store.product_ranges("alpha", per_range)
    # Under 10,000 documents the sample holds every id, so the cuts are exact.
    assert len(ranges) == math.ceil(45 / per_range)
    assert ranges[0]["id_min"] is None and ranges[-1]["id_max"] is None
    assert all(product_of_range(feed_range) == "alpha" for feed_range in ranges)
    seen = []
    for feed_range in json.loads(json.dumps(ranges)):  # as a slice checkpoint keeps them
        keys = scan_all(store, feed_range)
        assert 0 < len(keys) <= per_range
        seen += keys
    assert sorted(seen) == [("alpha", f"d{n:03d}") for n in range(45)]


@pytest.mark.cosmos
def test_product_ranges_read_what_the_container_ranges_hold_of_the_product(store):
    everything = [key for feed_range in store.feed_ranges(4) for key in scan_all(store, feed_range)]
    assert len(everything) == sum(SIZES.values())
    for product in SIZES:
        by_product = [key for feed_range in store.product_ranges(product, 8) for key in scan_all(store, feed_range)]
        assert sorted(by_product) == sorted(key for key in everything if key[0] == product)


@pytest.mark.cosmos
def test_a_product_range_resumes_from_every_stored_continuation(store, open_store):
    """A worker that dies after any page resumes, in another store object, with exactly the
    pages that were still to come (the SDK's continuation token, as for container ranges)."""
    ranges = store.product_ranges("alpha", 20)
    assert len(ranges) == 3
    for feed_range in ranges:
        pages = scan_pages(store, feed_range, None, 4)
        assert len(pages) > 2
        for at, (_, continuation) in enumerate(pages[:-1]):
            assert scan_pages(open_store(), feed_range, continuation, 4) == pages[at + 1 :]


@pytest.mark.cosmos
def test_a_product_that_does_not_exist_is_one_empty_range(store):
    ranges = store.product_ranges("nobody", 10)
    assert ranges == [{"partition_key": "nobody", "id_min": None, "id_max": None}]
    assert scan_all(store, ranges[0]) == []


@pytest.mark.cosmos
def test_a_range_cut_by_hand_reads_only_its_product_and_ids(store):
    """The server returns every partition's d010..d012 unless the query text names the product."""
    feed_range = ProductRange("beta", "d010", "d013").feed_range()
    assert sorted(scan_all(store, feed_range, page_size=2)) == [("beta", "d010"), ("beta", "d011"), ("beta", "d012")]


@pytest.mark.cosmos
def test_cuts_hold_in_the_servers_string_order_too(open_store):
    """The test server compares strings as JavaScript does (UTF-16 code units), where an emoji
    sorts before U+FF01; Python sorts it after. Cut at the ids as Python sorts them, two ranges
    would both return "a😀": the cuts stop short of such characters, so none is read twice."""
    store = open_store()
    ids = ["a", "a\uff01", "a\U0001f600", "a\U0001f600x", "b", "b\uff01", "c"]
    store.create_many([{"id": document_id, FIELD: "mixed"} for document_id in ids])
    seen = []
    for feed_range in store.product_ranges("mixed", 1):
        seen += [document_id for _, document_id in scan_all(store, feed_range)]
    assert sorted(seen) == sorted(ids)


@pytest.mark.cosmos
@pytest.mark.parametrize(
    "feed_range",
    [
        {"partition_key": 7, "id_min": None, "id_max": None},
        {"partition_key": "alpha", "id_min": "d5"},
        {"partition_key": "alpha", "id_min": "d5", "id_max": "d1"},
    ],
)
def test_a_malformed_product_range_is_one_line_store_error(store, feed_range):
    with pytest.raises(StoreError) as caught:
        store.scan(feed_range, None, 10)
    assert "is not a product range" in str(caught.value) and "\n" not in str(caught.value)


# -- the pure parts: sampling ids and choosing cuts ------------------------------------------


def test_the_id_sample_is_bounded_whatever_the_product_size():
    ids = (f"id-{n:07d}" for n in range(200_000))
    sample = sample_ids(ids, 1_000, random.Random(1))
    assert len(sample) == 1_000 and len(set(sample)) == 1_000
    assert sample_ids(["b", "a"], 1_000, random.Random(1)) == ["b", "a"]
    assert id_sample_size(1) == 10_000 and id_sample_size(10**9) == 200_000


def test_cuts_from_a_sample_balance_the_whole_product():
    """Cut from 10,000 sampled ids, 100,000 ids fall into ranges within a fifth of even."""
    everything = [f"{random.Random(n).getrandbits(64):016x}" for n in range(100_000)]
    cuts = id_cuts(sample_ids(everything, 10_000, random.Random(2)), 10)
    assert len(cuts) == 9 and cuts == sorted(cuts)
    bounds: list[str | None] = [None, *cuts, None]
    sizes = [
        sum(1 for i in everything if (low is None or i >= low) and (high is None or i < high))
        for low, high in zip(bounds, bounds[1:], strict=False)
    ]
    assert sum(sizes) == 100_000
    assert all(8_000 <= size <= 12_000 for size in sizes), sizes


def test_cuts_from_every_id_are_exact_and_never_empty():
    ids = [f"d{n:03d}" for n in range(10)]
    assert id_cuts(list(reversed(ids)), 3) == ["d003", "d006"]
    assert id_cuts(ids, 1) == [] and id_cuts([], 4) == []
    assert id_cuts(["a"], 5) == []  # a cut at the first id would leave the first range empty
    assert id_cuts(["a", "b"], 5) == ["b"]
    assert id_cuts(["a", "a\U0001f600", "b"], 3) == ["b"]  # "a" would not rise above ... "a"
