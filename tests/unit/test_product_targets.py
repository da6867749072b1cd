"""Per-product keys in the sweep's logic: where each document moves, and what proves a version unused.

Real keyring files (tracker_reencrypt.keys.local) and the pure functions; no store, no broker.
"""

from __future__ import annotations

import pytest

from tracker_reencrypt import custody
from tracker_reencrypt.documents import location, rekey_document
from tracker_reencrypt.envelope import encrypt
from tracker_reencrypt.errors import KeyNotFoundError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.keys.naming import UnmappableProductError
from tracker_reencrypt.keys.products import CurrentKids, ProductKeys
from tracker_reencrypt.sweep.records import RUNNING, TARGET_CURRENT, Sweep
from tracker_reencrypt.sweep.targets import (
    NO_PRODUCT_KEY,
    OTHER_PRODUCT,
    UNMAPPABLE_PRODUCT,
    DocumentTargets,
)

TEMPLATE = "tracker-mek-{productId}"


@pytest.fixture
def keys(tmp_path) -> ProductKeys:
    keys = ProductKeys(LocalKeyProvider(tmp_path / "keyring.json", key_name=TEMPLATE))
    for product in ("acme", "beta"):
        keys.provider_for(product).init()
    return keys


def sweep(target: str) -> Sweep:
    return Sweep(id="sw-1", target_kid=target, mode="reencrypt", status=RUNNING, key_name=TEMPLATE)


def test_to_current_each_product_moves_to_its_own_current_version(keys):
    keys.provider_for("acme").rotate()
    targets = DocumentTargets(sweep(TARGET_CURRENT), keys)
    assert targets.kid_for("acme") == ("tracker-mek-acme/v2", "")
    assert targets.kid_for("beta") == ("tracker-mek-beta/v1", "")


def test_a_product_without_a_usable_key_gets_no_target_and_a_reason(keys):
    targets = DocumentTargets(sweep(TARGET_CURRENT), keys)
    assert targets.kid_for("gamma") == (None, NO_PRODUCT_KEY)
    assert targets.kid_for("bad_id") == (None, UNMAPPABLE_PRODUCT)
    assert targets.kid_for(None) == (None, UNMAPPABLE_PRODUCT)


def test_a_fixed_target_never_takes_another_products_document(keys):
    targets = DocumentTargets(sweep("tracker-mek-acme/v1"), keys)
    assert targets.kid_for("acme") == ("tracker-mek-acme/v1", "")
    assert targets.kid_for("beta") == (None, OTHER_PRODUCT)


def test_a_document_without_a_target_is_not_written_and_each_field_says_why(keys):
    keyring = Keyring(keys.root)
    body = {"id": "d1", "productId": "gamma", "type": "comment"}
    body["body"] = encrypt("hello", location(body, "gamma", ("body",)), keyring, "tracker-mek-acme/v1")
    plan = rekey_document(body, "gamma", target_kid=None, keyring=keyring, no_target=NO_PRODUCT_KEY)
    assert plan.new_body is None
    assert [(f.pointer, f.reason) for f in plan.failures] == [("/body", NO_PRODUCT_KEY)]


def test_current_versions_are_asked_once_per_ttl_refusals_included(keys):
    now = [0.0]
    current = CurrentKids(keys, ttl_s=300, clock=lambda: now[0])
    with pytest.raises(KeyNotFoundError):
        current.of("gamma")
    keys.provider_for("gamma").init()
    with pytest.raises(KeyNotFoundError):  # remembered: not asked again for every document
        current.of("gamma")
    assert current.of("acme") == "tracker-mek-acme/v1"
    keys.provider_for("acme").rotate()
    assert current.of("acme") == "tracker-mek-acme/v1"
    now[0] = 301.0
    assert current.of("gamma") == "tracker-mek-gamma/v1"
    assert current.of("acme") == "tracker-mek-acme/v2"
    with pytest.raises(UnmappableProductError):
        current.of("bad id")


def verify_entry(seq: int, products, fields_by_kid) -> dict:
    details = {"fields_by_kid": fields_by_kid, "undecryptable": 0, "documents": 10, "products": products}
    return {"seq": seq, "at": "2026-11-29T02:00:00Z", "action": "verify", "details": details}


def test_a_verify_proves_a_version_unused_only_for_the_products_it_read():
    entries = [verify_entry(1, ["beta"], {"tracker-mek-beta/v2": 5})]
    kid = "tracker-mek-acme/v1"
    assert custody.proving_verify(entries, kid, "2026-11-29T01:00:00Z", product="acme") is None
    assert custody.proving_verify(entries, "tracker-mek-beta/v1", "2026-11-29T01:00:00Z", product="beta")
    # A key shared by every product needs a verify of the whole container.
    assert custody.proving_verify(entries, "tracker-mek/v1", "2026-11-29T01:00:00Z", product=None) is None
    whole = [verify_entry(1, None, {"tracker-mek-acme/v2": 5})]
    assert custody.proving_verify(whole, kid, "2026-11-29T01:00:00Z", product="acme")
    assert custody.proving_verify(whole, "tracker-mek/v1", "2026-11-29T01:00:00Z", product=None)


def started(seq: int, target: str, products) -> dict:
    details = {"sweep_id": f"sw-{seq}", "target_kid": target, "products": products}
    return {"seq": seq, "at": "2026-11-29T02:00:00Z", "action": "sweep started", "details": details}


def test_an_open_sweep_to_current_that_reads_the_product_holds_the_gate():
    kid = "tracker-mek-acme/v1"
    assert custody.write_window([started(1, TARGET_CURRENT, None)], kid, "acme").open_sweeps == ("sw-1",)
    assert custody.write_window([started(1, TARGET_CURRENT, ["acme"])], kid, "acme").open_sweeps == ("sw-1",)
    assert custody.write_window([started(1, TARGET_CURRENT, ["beta"])], kid, "acme").open_sweeps == ()
    assert custody.write_window([started(1, "tracker-mek-beta/v2", ["beta"])], kid, "acme").open_sweeps == ()
    ended = {"seq": 2, "at": "2026-11-29T02:05:00Z", "action": "sweep completed", "details": {"sweep_id": "sw-1"}}
    window = custody.write_window([started(1, TARGET_CURRENT, ["acme"]), ended], kid, "acme")
    assert window.open_sweeps == () and window.ends_at == "2026-11-29T02:05:00Z"


def test_a_key_every_product_shares_is_read_by_every_sweep():
    scoped = Sweep(id="sw-1", target_kid="tracker-mek/v2", mode="reencrypt", status=RUNNING, products=("acme",))
    assert scoped.covers(None)  # rotating the shared key would undo this sweep's work on acme
    assert scoped.covers("acme") and not scoped.covers("beta")


def test_a_one_process_verify_proves_only_what_it_began_reading_after_the_switch():
    """A long scan that began before the key switch may have passed a document the tracker then
    wrote under the old version: its proof dates from its start, not from its entry at the end."""
    switch_seq, kid = 5, "tracker-mek-acme/v1"
    began_before = verify_entry(9, None, {"tracker-mek-acme/v2": 5})
    began_before["details"].update(started_at="2026-11-29T01:59:00Z", started_after_seq=4)
    assert custody.proving_verify([began_before], kid, "2026-11-29T01:59:00Z", switch_seq, "acme") is None
    began_after = verify_entry(9, None, {"tracker-mek-acme/v2": 5})
    began_after["details"].update(started_at="2026-11-29T01:59:00Z", started_after_seq=5)
    assert custody.proving_verify([began_after], kid, "2026-11-29T01:59:00Z", switch_seq, "acme")
