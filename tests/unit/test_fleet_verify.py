"""A verify on the fleet, in milliseconds: the real verify sweep (steering.start_verify), the
real worker task code (worker/check.py through worker.tasks.handle) and the real collector
(coordinator.verify.fleet_verify), over a real SQLite store and keyring, driven by the in-process
fleet (tests/inprocess_fleet.py). Its result must be the one-process verify's, to the example,
with nothing written, counts exact after a dead worker's batch is redone, and one audit entry.
"""

from __future__ import annotations

import json

import pytest

from coordinator import steering
from coordinator.context import Context
from coordinator.verify import fleet_verify, verify_rotation
from tracker_reencrypt import envelope
from tracker_reencrypt.config import Settings
from tracker_reencrypt.custody import VERIFY_STARTED, write_window
from tracker_reencrypt.documents import location
from tracker_reencrypt.errors import InputError, SweepError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.keys.products import ProductKeys
from tracker_reencrypt.seed import product_ids, seed_store, seeding_keyring
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.records import (
    COMPLETED,
    FAILED,
    PRODUCTS_KEPT,
    RUNNING,
    VERIFY,
    CheckCounts,
    Slice,
    utc_now,
)
from tracker_reencrypt.sweep.state import BatchResult
from worker import check
from worker.batch import BatchLimits

from conftest import make_rotation
from inprocess_fleet import InProcessFleet

DOCUMENTS = 300


@pytest.fixture
def rotation(tmp_path):
    return make_rotation(tmp_path, DOCUMENTS)


def settings_for(rotation) -> Settings:
    return Settings(
        store=rotation.store_url,
        keys=rotation.keys_url,
        batch_documents=40,
        batch_seconds=30,
        page_size=20,
        lease_seconds=60,
    )


def fleet_and_context(rotation) -> tuple[InProcessFleet, Context]:
    fleet = InProcessFleet(settings_for(rotation))
    ctx = Context(settings_for(rotation))
    ctx.celery = fleet.broker  # what start_verify enqueues on: the in-process fleet's broker
    return fleet, ctx


def batch_limits(rotation) -> BatchLimits:
    options = settings_for(rotation)
    return BatchLimits(options.batch_documents, options.batch_seconds, options.page_size, options.conflict_retries)


def etags(rotation) -> dict[str, str]:
    store = rotation.store()
    page = store.scan({"epk_min": 0, "epk_max": 2**32}, None, 10_000)
    return {document.id: document.etag for document in page.documents}


def actions(ctx: Context) -> list[str]:
    return [entry["action"] for entry in ctx.audit.entries()]


def without_sweep(payload: dict) -> dict:
    return {name: value for name, value in payload.items() if name != "sweep_id"}


def tamper_one_field(rotation) -> tuple[str, str]:
    """Flip a ciphertext byte of one item's description; (document id, product)."""
    store = rotation.store()
    victim = next(
        d for d in store.scan({"epk_min": 0, "epk_max": 2**32}, None, 10_000).documents if d.body["type"] == "item"
    )
    body = json.loads(json.dumps(victim.body))
    raw = bytearray(envelope.b64decode(body["description"]["ct"], "ct"))
    raw[3] ^= 1
    body["description"]["ct"] = envelope.b64encode(bytes(raw))
    store.replace(body, victim.etag)
    return victim.id, victim.body["productId"]


def add_lagging_field(rotation, kid: str) -> str:
    """The tracker wrote a new field under ``kid`` into one document; its id."""
    store = rotation.store()
    document = store.scan({"epk_min": 0, "epk_max": 2**32}, None, 10_000).documents[-1]
    body = json.loads(json.dumps(document.body))
    body["lateNote"] = envelope.encrypt(
        "late", location(body, body["productId"], ("lateNote",)), Keyring(rotation.provider()), kid
    )
    store.replace(body, document.etag)
    return document.id


def test_a_verify_sweep_reports_what_one_process_verify_reports_and_writes_nothing(rotation):
    before = etags(rotation)
    fleet, ctx = fleet_and_context(rotation)
    sweep = steering.start_verify(ctx, expect=rotation.v1, products=(), slices=4)
    assert sweep.mode == VERIFY and sweep.checks_only and sweep.slice_count == 4
    fleet.join()

    finished = ctx.state.get_sweep(sweep.id)
    assert finished.status == COMPLETED
    result = fleet_verify(ctx, finished)
    assert result["ok"] and result["sweep_id"] == sweep.id
    assert without_sweep(result) == verify_rotation(ctx, rotation.v1)
    assert etags(rotation) == before  # not one document written
    assert actions(ctx) == [VERIFY_STARTED, "sweep completed", "verify", "verify"]
    entry = ctx.audit.entries()[2]["details"]
    assert entry["sweep_id"] == sweep.id and entry["fields_by_kid"] == {rotation.v1: result["fields"]}


def test_lagging_and_tampered_fields_fail_it_with_the_same_counts_and_examples(rotation):
    fleet, ctx = fleet_and_context(rotation)
    victim, _ = tamper_one_field(rotation)
    lagging = add_lagging_field(rotation, rotation.v2)
    sweep = steering.start_verify(ctx, expect=rotation.v1, products=(), slices=3)
    fleet.join()

    finished = ctx.state.get_sweep(sweep.id)
    assert finished.status == FAILED  # it met a field it cannot decrypt: a recorded failure
    result = fleet_verify(ctx, finished)
    one_process = verify_rotation(ctx, rotation.v1)
    assert not result["ok"] and without_sweep(result) == one_process
    assert result["off_target"] == 1 and result["undecryptable"] == 1
    assert [(e["document_id"], e["field_path"], e["reason"]) for e in result["undecryptable_examples"]] == [
        (victim, "/description", "authentication_failed")
    ]
    assert sum(result["lagging_products"].values()) == 1 and lagging


def test_current_versions_are_resolved_by_the_workers(rotation):
    fleet, ctx = fleet_and_context(rotation)
    sweep = steering.start_verify(ctx, expect=None, products=(), slices=2)
    assert sweep.target_kid == "current"
    fleet.join()
    result = fleet_verify(ctx, ctx.state.get_sweep(sweep.id))
    assert result["off_target"] == result["fields"] > 0  # every field is still on v1, v2 is current
    assert without_sweep(result) == verify_rotation(ctx, None)


def test_a_dead_workers_batch_is_redone_and_counted_once(rotation):
    fleet, ctx = fleet_and_context(rotation)
    tamper_one_field(rotation)
    sweep = steering.start_verify(ctx, expect=rotation.v1, products=(), slices=2)
    first = fleet.broker.take()
    # A worker claims slice 0, checks a whole batch (recording its failures), and dies before its commit.
    claim = fleet.state.claim_slice(sweep.id, first.args[1], first.args[2], "dead-worker:1", 60)
    runtime = fleet.runtime
    lost = check.SliceCheck(
        runtime.store,
        runtime.state,
        runtime.keyring,
        sweep,
        batch_limits(rotation),
        targets=runtime.targets(sweep),
    ).run(claim.slice)
    assert lost.result.counts["documents_scanned"] > 0
    fleet.join()
    assert ctx.state.get_sweep(sweep.id).status == RUNNING  # slice 0 is still leased by the dead worker
    fleet.clock.now += 61
    fleet.join()  # its lease expired: the watch re-queues it, a worker redoes the batch

    finished = ctx.state.get_sweep(sweep.id)
    result = fleet_verify(ctx, finished)
    assert result["documents"] == DOCUMENTS
    assert without_sweep(result) == verify_rotation(ctx, rotation.v1)
    assert len(ctx.state.failures(sweep.id)) == 1


def test_the_result_is_audited_once_however_often_it_is_collected(rotation):
    fleet, ctx = fleet_and_context(rotation)
    sweep = steering.start_verify(ctx, expect=rotation.v1, products=(), slices=2, allow_empty=True)
    fleet.join()
    finished = ctx.state.get_sweep(sweep.id)
    other = Context(settings_for(rotation))  # a second follower
    assert fleet_verify(ctx, finished) == fleet_verify(other, other.state.get_sweep(sweep.id))
    verifies = [e["details"] for e in ctx.audit.entries() if e["action"] == "verify"]
    assert len(verifies) == 1 and verifies[0]["allow_empty"] is True  # as it was started


def test_a_collector_that_died_before_auditing_is_taken_over_once_its_claim_is_old(rotation):
    fleet, ctx = fleet_and_context(rotation)
    sweep = steering.start_verify(ctx, expect=rotation.v1, products=(), slices=2)
    fleet.join()
    ctx.state.update_sweep(sweep.id, lambda s: s.but(verify_claim=f"someone {utc_now()}"))
    fleet_verify(ctx, ctx.state.get_sweep(sweep.id))
    assert "verify" not in actions(ctx)  # someone is writing it this very moment
    ctx.state.update_sweep(sweep.id, lambda s: s.but(verify_claim="someone 2020-01-01T00:00:00Z"))
    fleet_verify(ctx, ctx.state.get_sweep(sweep.id))
    assert actions(ctx).count("verify") == 1


def test_a_verify_sweep_holds_the_container_like_any_sweep_and_never_opens_a_write_window(rotation):
    fleet, ctx = fleet_and_context(rotation)
    sweep = steering.start_verify(ctx, expect=None, products=(), slices=2)
    with pytest.raises(SweepError, match=f"sweep {sweep.id} is still active"):
        steering.start(ctx, to=rotation.v2, sources=[], mode="reencrypt", slices=2)
    with pytest.raises(InputError, match="mode 'verify' is unknown"):  # bad input: exit 2
        steering.start(ctx, to=rotation.v2, sources=[], mode=VERIFY, slices=2)
    # Running and "towards current": a re-keying sweep like it would hold the disable gate.
    assert write_window(ctx.audit.entries(), rotation.v1).open_sweeps == ()
    steering.cancel(ctx, sweep.id)
    fleet.join()


def test_verify_counts_commit_with_the_checkpoint_and_survive_the_record(rotation):
    fleet, ctx = fleet_and_context(rotation)
    sweep = steering.start_verify(ctx, expect=rotation.v1, products=(), slices=1)
    counted = CheckCounts(fields=3, fields_by_kid={"k/v1": 3}, kinds_by_kid={"k/v1": {"item": 3}})
    claim = ctx.state.claim_slice(sweep.id, 0, 0, "w", 60)
    piece = ctx.state.commit_slice(sweep.id, 0, claim.fence, BatchResult("c", False, checked=counted))
    assert piece.checked == counted
    assert Slice.from_record(piece.to_record()).checked == counted
    again = ctx.state.claim_slice(sweep.id, 0, claim.fence, "w", 60)
    piece = ctx.state.commit_slice(sweep.id, 0, again.fence, BatchResult(None, True, checked=counted))
    assert piece.checked.fields == 6 and piece.checked.kinds_by_kid == {"k/v1": {"item": 6}}


def test_the_by_product_counts_stay_bounded_and_keep_the_most_lagging():
    many = CheckCounts(
        off_target_by_product={f"p{n:03d}": n for n in range(PRODUCTS_KEPT + 50)},
        products_without_key={f"p{n:03d}": "no key" for n in range(PRODUCTS_KEPT + 50)},
    )
    summed = CheckCounts().plus(many).plus(CheckCounts(off_target_by_product={"p000": 1000}))
    assert len(summed.off_target_by_product) == len(summed.products_without_key) == PRODUCTS_KEPT
    assert summed.off_target_by_product["p000"] == 1000 and "p050" not in summed.off_target_by_product
    assert "p000" in summed.products_without_key and f"p{PRODUCTS_KEPT + 49:03d}" not in summed.products_without_key


def test_per_product_current_versions_lagging_products_and_products_without_a_key_match_too(tmp_path):
    template = "tracker-mek-{productId}"
    keys = ProductKeys(LocalKeyProvider(tmp_path / "keyring.json", key_name=template))
    products = product_ids(4)
    kids = {product: keys.provider_for(product).init().kid for product in products[:3]}  # product-003: no key
    store = SqliteStore(tmp_path / "tracker.db")
    seed_store(store, seeding_keyring(keys.root), 200, products=4, kid_of=lambda p: kids.get(p, kids[products[0]]))
    store.close()
    keys.provider_for(products[1]).rotate()  # product-001 lags behind its new current version
    settings = Settings(
        store=f"sqlite:///{tmp_path / 'tracker.db'}",
        keys=f"local:{tmp_path / 'keyring.json'}",
        key_name=template,
        batch_documents=40,
        page_size=20,
    )
    fleet, ctx = InProcessFleet(settings), Context(settings)
    ctx.celery = fleet.broker
    sweep = steering.start_verify(ctx, expect=None, products=products, slices=8)
    fleet.join()

    result = fleet_verify(ctx, ctx.state.get_sweep(sweep.id))
    assert set(result["lagging_products"]) == {products[1], products[3]}
    assert list(result["products_without_key"]) == [products[3]]
    assert without_sweep(result) == verify_rotation(ctx, None, products=products)
