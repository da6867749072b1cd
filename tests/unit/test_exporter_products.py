"""Per-product progress of a sweep scoped to products: the exporter's series (bounded: counts by
state always, one series per product only up to MAX_PRODUCT_SERIES products) and what
``sweep status`` prints, from sweeps and slices in a real SQLite sweep state."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from rich.console import Console

from coordinator import render, steering
from coordinator.context import Context
from coordinator.exporter import MAX_PRODUCT_SERIES, Exporter, Snapshot, SweepCollector, SweepView, families
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.stores import ProductRange
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.records import RUNNING, TARGET_CURRENT, Sweep, utc_now, zero_counts
from tracker_reencrypt.sweep.state import BatchResult

TEMPLATE = "tracker-mek-{productId}"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctx(tmp_path, monkeypatch) -> Context:
    # The exporter also reads the broker: none runs under this home, so it shows as down.
    monkeypatch.setenv("REENCRYPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    SqliteStore(tmp_path / "tracker.db").close()
    return Context(load_settings(store=f"sqlite:///{tmp_path / 'tracker.db'}"))


def start(ctx: Context, products: dict[str, int] | None, sweep_id: str = "sw-1") -> Sweep:
    """A running sweep to current over ``products`` (each cut into that many slices), or over
    the whole container (four EPK ranges) when None."""
    if products is None:
        ranges = [{"epk_min": i, "epk_max": i + 1} for i in range(4)]
    else:
        ranges = [
            piece
            for product, pieces in products.items()
            for piece in ProductRange.cut(product, [f"id{n}" for n in range(1, pieces)])
        ]
    return ctx.state.create_sweep(
        Sweep(
            id=sweep_id,
            target_kid=TARGET_CURRENT,
            mode="reencrypt",
            status=RUNNING,
            products=tuple(products) if products is not None else None,
            key_name=TEMPLATE,
            started_at=utc_now(),
            documents_estimate=1000,
        ),
        ranges,
    )


def work(ctx: Context, sweep: Sweep, index: int, *, scanned: int, done: bool, fields: int = 0) -> None:
    """One committed batch of slice ``index``, as a worker does it."""
    fence = ctx.state.slices(sweep.id)[index].fence
    claim = ctx.state.claim_slice(sweep.id, index, fence, owner="host-a:1", lease_seconds=30)
    counts = {**zero_counts(), "documents_scanned": scanned, "fields_reencrypted": fields}
    ctx.state.commit_slice(sweep.id, index, claim.fence, BatchResult(None if done else "next", done, counts))


def claim_only(ctx: Context, sweep: Sweep, index: int) -> None:
    """A worker took the slice and has committed nothing yet."""
    ctx.state.claim_slice(sweep.id, index, ctx.state.slices(sweep.id)[index].fence, "host-b:1", lease_seconds=30)


def samples(ctx: Context, sweep: Sweep) -> dict[str, list]:
    view = SweepView.of(steering.progress(ctx, ctx.state.get_sweep(sweep.id)), time.time())
    found: dict[str, list] = {}
    for family in families(Snapshot([view])):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def by_label(found: dict[str, list], name: str, label: str) -> dict[str, float]:
    return {sample.labels[label]: sample.value for sample in found.get(name, [])}


def status_text(progress: steering.Progress, show=render.status) -> str:
    out = io.StringIO()
    show(Console(file=out, width=200, color_system=None), progress)
    return out.getvalue()


# -- the exporter -------------------------------------------------------------------------------


def test_a_few_products_get_their_own_series_and_the_counts_by_state(ctx):
    # alpha: two slices, one done and one under way; beta: done; gamma: untouched; delta: taken, nothing committed.
    sweep = start(ctx, {"alpha": 2, "beta": 1, "gamma": 1, "delta": 1})
    work(ctx, sweep, 0, scanned=40, done=True)
    work(ctx, sweep, 1, scanned=15, done=False)
    work(ctx, sweep, 2, scanned=7, done=True)
    claim_only(ctx, sweep, 4)

    found = samples(ctx, sweep)
    assert by_label(found, "reencrypt_sweep_products", "state") == {"done": 1, "in_progress": 1, "pending": 2}
    assert by_label(found, "reencrypt_sweep_product_documents_scanned_total", "product") == {
        "alpha": 55,
        "beta": 7,
        "gamma": 0,
        "delta": 0,
    }
    assert by_label(found, "reencrypt_sweep_product_done", "product") == {
        "alpha": 0,
        "beta": 1,
        "gamma": 0,
        "delta": 0,
    }
    assert [s.labels for s in found["reencrypt_sweep_info"]] == [
        {"sweep": "sw-1", "target_kid": "current", "mode": "reencrypt", "products": "4"}
    ]


def test_a_sweep_over_more_products_than_the_cap_gets_the_counts_only(ctx):
    products = {f"p{n:02d}": 1 for n in range(25)}
    sweep = start(ctx, products)
    for index in range(5):
        work(ctx, sweep, index, scanned=3, done=True)
    work(ctx, sweep, 5, scanned=2, done=False)

    found = samples(ctx, sweep)
    assert by_label(found, "reencrypt_sweep_products", "state") == {"done": 5, "in_progress": 1, "pending": 19}
    assert "reencrypt_sweep_product_documents_scanned_total" not in found
    assert "reencrypt_sweep_product_done" not in found
    assert all("product" not in sample.labels for series in found.values() for sample in series)
    assert found["reencrypt_sweep_info"][0].labels["products"] == "25"


def test_the_cap_is_inclusive(ctx):
    sweep = start(ctx, {f"p{n:02d}": 1 for n in range(MAX_PRODUCT_SERIES)})
    found = samples(ctx, sweep)
    assert len(found["reencrypt_sweep_product_done"]) == MAX_PRODUCT_SERIES
    assert len(found["reencrypt_sweep_product_documents_scanned_total"]) == MAX_PRODUCT_SERIES


def test_a_whole_container_sweep_has_no_product_series(ctx):
    sweep = start(ctx, None)
    work(ctx, sweep, 0, scanned=10, done=True)

    found = samples(ctx, sweep)
    assert not {"reencrypt_sweep_products", "reencrypt_sweep_product_done"} & set(found)
    assert found["reencrypt_sweep_info"][0].labels["products"] == "all"
    assert steering.progress(ctx, sweep).as_json()["products"] is None


def test_the_exporter_reads_product_progress_from_the_store_and_serves_it(ctx):
    sweep = start(ctx, {"acme": 1, 'odd "id"\\': 1})
    work(ctx, sweep, 0, scanned=12, done=True)

    exporter = Exporter(ctx)
    snapshot = exporter.refresh()
    assert snapshot.store_up
    [view] = snapshot.sweeps
    assert [(p.product, p.state, p.documents_scanned) for p in view.products or ()] == [
        ("acme", "done", 12),
        ('odd "id"\\', "pending", 0),
    ]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SweepCollector(exporter))
    text = generate_latest(registry).decode()
    assert 'reencrypt_sweep_products{state="done",sweep="sw-1"} 1.0' in text
    assert 'reencrypt_sweep_product_documents_scanned_total{product="acme",sweep="sw-1"} 12.0' in text
    assert 'reencrypt_sweep_product_done{product="odd \\"id\\"\\\\",sweep="sw-1"} 0.0' in text  # escaped, not cut


# -- steering: products_progress and product_state ------------------------------------------------


def test_products_progress_sums_each_products_slices_in_order(ctx):
    sweep = start(ctx, {"beta": 3, "alpha": 1})
    work(ctx, sweep, 0, scanned=5, done=True, fields=4)
    work(ctx, sweep, 1, scanned=6, done=False, fields=1)

    by_product = steering.progress(ctx, sweep).as_json()["products"]
    assert list(by_product) == ["beta", "alpha"]  # the sweep's order, not sorted
    beta = by_product["beta"]
    assert (beta["slices"], beta["slices_done"], beta["done"]) == (3, 1, False)
    assert (beta["counts"]["documents_scanned"], beta["counts"]["fields_reencrypted"]) == (11, 5)
    assert [steering.product_state(entry) for entry in by_product.values()] == ["in_progress", "pending"]


# -- sweep status ---------------------------------------------------------------------------------


def test_status_counts_the_products_and_lists_the_unfinished_ones_capped(ctx):
    products = {f"p{n:02d}": 1 for n in range(14)}
    sweep = start(ctx, products)
    work(ctx, sweep, 0, scanned=9, done=True)
    work(ctx, sweep, 1, scanned=4, done=False)

    text = status_text(steering.progress(ctx, sweep))
    assert "→ current (each product's current version of tracker-mek-{productId})" in text
    assert "products: 1 of 14 done, 1 in progress, 12 pending" in text
    listed = [f"p{n:02d}" for n in range(14) if f"p{n:02d} " in text]
    assert listed == [f"p{n:02d}" for n in range(1, 1 + render.LISTED_PRODUCTS)]  # the done one is not listed
    assert "and 3 more not done" in text


def test_status_prints_product_ids_as_text_never_as_markup(ctx):
    sweep = start(ctx, {"[bold]acme[/bold]": 1, "a[/]b": 1})
    text = status_text(steering.progress(ctx, sweep))  # parsed as markup, "a[/]b" would raise
    assert "[bold]acme[/bold]" in text and "a[/]b" in text

    listed = io.StringIO()
    render.sweep_list(Console(file=listed, width=200, color_system=None), [ctx.state.get_sweep(sweep.id)])
    assert "[bold]acme[/bold], a[/]b" in listed.getvalue()


def test_a_whole_container_sweep_says_so(ctx):
    sweep = start(ctx, None)
    text = status_text(steering.progress(ctx, sweep))
    assert "products: whole container" in text
    assert "products:" not in status_text(steering.progress(ctx, sweep), show=render.summary)

    listed = io.StringIO()
    render.sweep_list(Console(file=listed, width=200, color_system=None), [ctx.state.get_sweep(sweep.id)])
    assert " all " in listed.getvalue()


def test_the_summary_names_the_target_and_the_products_left(ctx):
    sweep = start(ctx, {"acme": 1, "globex": 1})
    work(ctx, sweep, 0, scanned=3, done=True, fields=3)

    text = status_text(steering.progress(ctx, sweep), show=render.summary)
    assert "3 fields moved to current (each product's current version of tracker-mek-{productId})" in text
    assert "products: 1 of 2 done, 1 pending" in text
    assert "globex" in text and "acme" not in text.split("products:")[1]


def test_the_dashboard_states_the_exporters_cap():
    rotation = json.loads((ROOT / "ops" / "grafana" / "dashboards" / "reencrypt-rotation.json").read_text())
    [panel] = [p for p in rotation["panels"] if p.get("title") == "Product progress"]
    assert f"at most {MAX_PRODUCT_SERIES} products" in panel["description"]
