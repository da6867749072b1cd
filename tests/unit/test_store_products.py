"""Per-product sweeps on the SQLite store: rotating one product's key reads that product's rows.

Every product here has the same ids (d000, d001, ...), so a scan that strayed into another
partition would return ids that look right: the tests check each document's product too.
(The Cosmos side is tests/e2e/test_cosmos_products.py.)
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from tracker_reencrypt.errors import ConfigError, StoreError
from tracker_reencrypt.stores import FeedRange, ProductRange, product_of_range
from tracker_reencrypt.stores.sqlite import SqliteStore, effective_partition_key

FIELD = "productId"
SIZES = {"alpha": 103, "beta": 40, "gamma": 1}


def documents(product: str, count: int) -> list[dict]:
    return [{"id": f"d{n:03d}", FIELD: product, "n": n} for n in range(count)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    store = SqliteStore(tmp_path / "tracker.db", partition_key_field=FIELD)
    for product, count in SIZES.items():
        store.create_many(documents(product, count))
    store.close()
    return tmp_path / "tracker.db"


@pytest.fixture
def store(path: Path):
    opened = SqliteStore(path, partition_key_field=FIELD, create=False)
    yield opened
    opened.close()


def scan_pages(store, feed_range: FeedRange, continuation: str | None, page_size: int) -> list[tuple[list, str | None]]:
    """Every page of a range from ``continuation`` on: ((product, id) pairs, the continuation after it)."""
    pages = []
    while True:
        page = store.scan(feed_range, continuation, page_size)
        continuation = page.continuation
        pages.append(([(stored.body[FIELD], stored.id) for stored in page.documents], continuation))
        if continuation is None:
            return pages


def scan_all(store, feed_range: FeedRange, page_size: int = 7) -> list[tuple[str, str]]:
    return [key for keys, _ in scan_pages(store, feed_range, None, page_size) for key in keys]


def test_products_lists_each_partition_key_once_in_order(store, tmp_path):
    assert store.products() == ["alpha", "beta", "gamma"]
    store.create_many([{"id": "numbered", FIELD: 7}])  # kept as text: the product "7"
    assert store.products() == ["7", "alpha", "beta", "gamma"]
    assert SqliteStore(tmp_path / "empty.db").products() == []


def colliding_products() -> tuple[str, str]:
    """Two partition keys with the same EPK (a 32-bit hash: about 80,000 tries find a pair)."""
    seen: dict[int, str] = {}
    for n in itertools.count():
        product = f"product-{n}"
        other = seen.setdefault(effective_partition_key(product), product)
        if other != product:
            return other, product
    raise AssertionError("unreachable")


def test_products_sharing_an_epk_are_two_products_read_apart(tmp_path):
    first, second = colliding_products()
    store = SqliteStore(tmp_path / "tracker.db", partition_key_field=FIELD)
    store.create_many(documents("alpha", 3) + documents(first, 30) + documents(second, 20) + documents("zeta", 2))
    assert store.products() == sorted(["alpha", first, second, "zeta"])
    assert (store.count(first), store.count(second)) == (30, 20)
    for product, count in ((first, 30), (second, 20)):
        seen = [key for feed_range in store.product_ranges(product, 7) for key in scan_all(store, feed_range, 4)]
        assert sorted(seen) == [(product, f"d{n:03d}") for n in range(count)]


def test_count_of_a_product_counts_only_its_documents(store):
    assert [store.count(product) for product in SIZES] == list(SIZES.values())
    assert store.count("nobody") == 0
    assert store.count() == sum(SIZES.values())


@pytest.mark.parametrize("per_range", [1, 10, 25, 51, 103, 1_000])
def test_product_ranges_cover_exactly_the_products_documents(store, per_range):
    ranges = store.product_ranges("alpha", per_range)
    assert len(ranges) == math.ceil(103 / per_range)
    assert ranges[0]["id_min"] is None and ranges[-1]["id_max"] is None
    assert all(product_of_range(feed_range) == "alpha" for feed_range in ranges)
    seen = []
    for feed_range in json.loads(json.dumps(ranges)):  # as a slice checkpoint keeps them
        keys = scan_all(store, feed_range)
        assert 0 < len(keys) <= per_range
        seen += keys
    assert sorted(seen) == [("alpha", f"d{n:03d}") for n in range(103)]


def test_product_ranges_read_what_the_container_ranges_hold_of_the_product(store):
    everything = [key for feed_range in store.feed_ranges(4) for key in scan_all(store, feed_range)]
    assert len(everything) == sum(SIZES.values())
    for product in SIZES:
        by_product = [key for feed_range in store.product_ranges(product, 8) for key in scan_all(store, feed_range)]
        assert sorted(by_product) == sorted(key for key in everything if key[0] == product)


def test_a_product_range_resumes_from_every_stored_continuation(store, path):
    """A worker that dies after any page resumes, in another process's store object, with
    exactly the pages that were still to come."""
    for feed_range in store.product_ranges("alpha", 40):
        pages = scan_pages(store, feed_range, None, 6)
        for at, (_, continuation) in enumerate(pages[:-1]):
            resumed = SqliteStore(path, partition_key_field=FIELD, create=False)
            assert scan_pages(resumed, feed_range, continuation, 6) == pages[at + 1 :]
            resumed.close()


def test_a_product_that_does_not_exist_is_one_empty_range(store):
    ranges = store.product_ranges("nobody", 10)
    assert ranges == [{"partition_key": "nobody", "id_min": None, "id_max": None}]
    assert scan_all(store, ranges[0]) == []


def test_a_product_of_one_document_is_one_range(store):
    assert store.product_ranges("gamma", 1) == [ProductRange("gamma").feed_range()]
    assert scan_all(store, store.product_ranges("gamma", 1)[0]) == [("gamma", "d000")]


def test_a_range_cut_by_hand_reads_only_its_ids(store):
    feed_range = ProductRange("beta", "d010", "d013").feed_range()
    assert scan_all(store, feed_range, page_size=2) == [("beta", "d010"), ("beta", "d011"), ("beta", "d012")]


@pytest.mark.parametrize(
    "feed_range",
    [
        {"partition_key": 7, "id_min": None, "id_max": None},
        {"partition_key": "alpha"},
        {"partition_key": "alpha", "id_min": "d5", "id_max": "d1"},
        {"partition_key": "alpha", "id_min": None, "id_max": None, "epk_min": 0},
        {"partition_key": "alpha", "id_min": 3, "id_max": None},
    ],
)
def test_a_malformed_product_range_is_one_line_store_error(store, feed_range):
    with pytest.raises(StoreError) as caught:
        store.scan(feed_range, None, 10)
    assert "is not a product range" in str(caught.value) and "\n" not in str(caught.value)


def test_a_continuation_of_another_range_is_refused(store):
    alpha, beta = store.product_ranges("alpha", 1_000)[0], store.product_ranges("beta", 1_000)[0]
    continuation = store.scan(alpha, None, 5).continuation
    for bad in (continuation, "not json", json.dumps(["x"])):
        with pytest.raises(StoreError, match="does not fit product range"):
            store.scan(beta, bad, 5)
    cut = ProductRange("alpha", "d050", None).feed_range()
    with pytest.raises(StoreError, match="does not fit product range"):
        store.scan(cut, continuation, 5)  # resumes before the range's start


def test_documents_per_range_below_one_is_refused(store):
    with pytest.raises(ConfigError, match="at least 1"):
        store.product_ranges("alpha", 0)


def test_a_container_range_is_no_products():
    assert product_of_range({"epk_min": 0, "epk_max": 2**32}) is None
    assert product_of_range(ProductRange("alpha", "a", "b").feed_range()) == "alpha"


# -- what a product costs: its own rows, not the container's --------------------------------


class StepCounter:
    """SQLite virtual-machine steps the store's connection runs (machine speed cannot change them)."""

    def __init__(self, store: SqliteStore) -> None:
        self.steps = 0
        store._db.set_progress_handler(self._step, 10)

    def _step(self) -> int:
        self.steps += 1
        return 0  # carry on

    def during(self, work, *arguments):
        """(steps, result) of ``work(*arguments)``."""
        self.steps = 0
        result = work(*arguments)
        return self.steps, result


def cost_of_small_product(tmp_path: Path, name: str, others: int) -> dict[str, int]:
    """Steps to list products, count, cut and scan a 20-document product beside ``others``
    documents of another product."""
    store = SqliteStore(tmp_path / f"{name}.db", partition_key_field=FIELD)
    store.create_many(documents("small", 20))
    store.create_many([{"id": f"doc-{n:05d}", FIELD: "large", "text": "x" * 200} for n in range(others)])
    counter = StepCounter(store)
    costs = {
        "products": counter.during(store.products)[0],
        "count": counter.during(store.count, "small")[0],
    }
    costs["product_ranges"], ranges = counter.during(store.product_ranges, "small", 5)
    costs["scan"] = counter.during(lambda: [scan_all(store, feed_range, 3) for feed_range in ranges])[0]
    assert len(ranges) == 4
    store.close()
    return costs


def test_a_product_costs_its_own_rows_whatever_else_the_file_holds(tmp_path):
    """Listing products, counting, cutting and scanning a small product beside 20,000 documents
    of another costs what it costs alone: a full scan would visit the 20,000 rows."""
    alone = cost_of_small_product(tmp_path, "alone", 0)
    beside = cost_of_small_product(tmp_path, "beside", 20_000)
    for operation, steps in beside.items():
        assert steps <= alone[operation] + 20, f"{operation}: {alone[operation]} VM steps alone, {steps} beside"


def test_a_product_scan_page_costs_the_same_wherever_the_scan_has_got_to(tmp_path):
    """The keyset continuation seeks: the last page of a product costs what the second does."""
    store = SqliteStore(tmp_path / "tracker.db", partition_key_field=FIELD)
    store.create_many([{"id": f"doc-{n:05d}", FIELD: "large"} for n in range(4_000)])
    counter = StepCounter(store)
    feed_range, continuation, page_steps = store.product_ranges("large", 10_000)[0], None, []
    while True:
        steps, page = counter.during(store.scan, feed_range, continuation, 50)
        page_steps.append(steps)
        continuation = page.continuation
        if continuation is None:
            break
    resumed = page_steps[1:-1]  # the first page runs another query; the last finds nothing
    assert len(page_steps) == 4_000 // 50 + 1
    assert max(resumed) < 2 * min(resumed), f"VM steps per page from second to last: {resumed[0]} ... {resumed[-1]}"
