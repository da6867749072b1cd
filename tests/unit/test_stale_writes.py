"""Stale writes, the pure decision (tracker_reencrypt.stale): a document written after its
product's key rotated that still holds a field under a retired version of that key."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from contextlib import closing
from types import SimpleNamespace

import pytest
import typer
from rich.console import Console

from coordinator import render, steering
from coordinator.commands import common
from coordinator.commands import stale as stale_command
from coordinator.context import Context
from coordinator.exporter import Snapshot, SweepView, families
from coordinator.stale_writes import LOOK_BACK_S, StaleWatch, products_to_watch
from coordinator.verify import fleet_verify, verify_rotation
from tracker_reencrypt import envelope, stale
from tracker_reencrypt.config import Settings
from tracker_reencrypt.documents import location, rekey_document
from tracker_reencrypt.errors import KeyNotFoundError, KeyProviderUnavailableError
from tracker_reencrypt.keys import KeyVersion
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.keys.naming import UnmappableProductError
from tracker_reencrypt.keys.products import ProductKeys, epoch_seconds
from tracker_reencrypt.stale import GRACE_S, StaleWrite, current_version, find
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.records import (
    COMPLETED,
    RUNNING,
    TARGET_CURRENT,
    Slice,
    Sweep,
    stale_write_examples,
    zero_counts,
)
from tracker_reencrypt.sweep.state import BatchResult, SweepState
from worker.batch import BatchLimits, SliceBatch
from worker.check import SliceCheck

from conftest import make_rotation
from inprocess_fleet import InProcessFleet, start_sweep

SINCE = "2026-11-28T02:00:00Z"
SINCE_S = 1795831200.0  # SINCE in seconds since the epoch
V1, V2, V3 = "tracker-mek-p1/v1", "tracker-mek-p1/v2", "tracker-mek-p1/v3"
CURRENT = KeyVersion(V2, enabled=True, current=True, created=SINCE, current_since=SINCE)
LATE = SINCE_S + GRACE_S + 1


def test_a_field_under_the_previous_version_written_after_the_grace_is_a_stale_write():
    found = find("doc-1", "p1", LATE, [V2, V1, V1], CURRENT)
    assert found == StaleWrite("doc-1", "p1", LATE, V1, V2, fields=2)
    assert found.as_json() == {
        "document_id": "doc-1",
        "product": "p1",
        "ts": LATE,
        "kid": V1,
        "current_kid": V2,
        "fields": 2,
        "written_at": "2026-11-28T02:00:06Z",
    }
    assert StaleWrite.from_record(found.as_json()) == found


@pytest.mark.parametrize("written_at", [SINCE_S - 3600, SINCE_S, SINCE_S + GRACE_S, None])
def test_a_write_before_the_rotation_within_the_grace_or_at_an_unknown_time_is_not(written_at):
    assert find("doc-1", "p1", written_at, [V1], CURRENT) is None


def test_just_past_the_grace_is():
    assert find("doc-1", "p1", SINCE_S + GRACE_S + 0.001, [V1], CURRENT) is not None


def test_a_document_on_the_current_version_is_not_as_the_sweeps_own_writes_are():
    assert find("doc-1", "p1", LATE, [V2, V2], CURRENT) is None
    assert find("doc-1", "p1", LATE, [], CURRENT) is None


def test_a_tracker_re_encrypting_only_the_fields_it_changes_looks_stale_by_its_untouched_ones():
    """The caveat docs/OPERATIONS.md states: the untouched field still under v1 makes the
    document stale although the writer used v2; ``fields`` and ``kid`` tell it apart there."""
    found = find("doc-1", "p1", LATE, [V1, V2, V1], CURRENT)
    assert (found.kid, found.fields) == (V1, 2)


def test_any_other_version_of_the_same_key_is_retired_a_newer_one_after_a_rollback_too():
    rolled_back = KeyVersion(V1, enabled=True, current=True, created=SINCE, current_since=SINCE)
    assert find("doc-1", "p1", LATE, [V2], rolled_back).kid == V2
    assert find("doc-1", "p1", LATE, [V3, V1], CURRENT).kid == V3  # the first in document order


def test_fields_under_another_key_or_an_unreadable_kid_are_other_problems():
    assert find("doc-1", "p1", LATE, ["tracker-mek-p2/v1", "None", "", "tracker-mek-p1"], CURRENT) is None
    found = find("doc-1", "p1", LATE, ["tracker-mek-p2/v1", V1], CURRENT)
    assert (found.kid, found.fields) == (V1, 1)


def test_key_vault_kids_compare_by_key_name_whatever_its_case():
    vault = "https://v.vault.azure.net/keys/tracker-mek-p1/"
    current = KeyVersion(vault + "b" * 32, enabled=True, current=True, created=SINCE, current_since=SINCE)
    retired = "https://v.vault.azure.net/keys/Tracker-MEK-p1/" + "a" * 32
    other = "https://v.vault.azure.net/keys/tracker-mek-p2/" + "a" * 32
    assert find("doc-1", "p1", LATE, [other, retired], current).kid == retired
    assert find("doc-1", "p1", LATE, [other], current) is None
    unversioned = ["https://v.vault.azure.net/keys/tracker-mek-p1", "https://v.vault.azure.net/keys/tracker-mek-p1/"]
    assert find("doc-1", "p1", LATE, unversioned, current) is None


def test_a_current_version_with_no_known_start_judges_nothing():
    undated = KeyVersion(V2, enabled=True, current=True, created="", current_since="")
    assert find("doc-1", "p1", LATE, [V1], undated) is None


def test_a_target_other_than_the_current_version_judges_nothing():
    """A sweep (or verify) pointed at another version on purpose: its writes are the operator's."""
    assert find("doc-1", "p1", LATE, [V1], CURRENT, target_kid=V1) is None
    assert find("doc-1", "p1", LATE, [V1], CURRENT, target_kid=V2) is not None


def test_the_product_is_recorded_as_text():
    assert find("doc-1", 7, LATE, [V1], CURRENT).product == "7"


def test_the_current_version_lookup_gives_none_for_a_product_without_one_and_raises_an_outage():
    assert current_version(lambda product: CURRENT, "p1") == CURRENT

    def refused(error):
        def lookup(product):
            raise error

        return lookup

    assert current_version(refused(KeyNotFoundError("no key tracker-mek-p9")), "p9") is None
    assert current_version(refused(UnmappableProductError("product 'a b' names no key")), "a b") is None
    with pytest.raises(KeyProviderUnavailableError):
        current_version(refused(KeyProviderUnavailableError("vault unreachable")), "p1")


def test_an_example_carries_ids_times_and_kids_only():
    assert set(find("doc-1", "p1", LATE, [V1], CURRENT).as_json()) == {
        "document_id",
        "product",
        "ts",
        "written_at",
        "kid",
        "current_kid",
        "fields",
    }
    assert stale.SLICE_EXAMPLES <= stale.REPORT_EXAMPLES


# -- counted where they are met: sweep batches, verify (both ways), status, the exporter --------


DOCUMENTS = 120
ALL = {"epk_min": 0, "epk_max": 2**32}


@pytest.fixture
def rotation(tmp_path):
    """Seeded under v1 an hour ago, v2 current for a minute: what a tracker writes now under v1
    is past the grace, without the test sleeping through it."""
    rotated = make_rotation(tmp_path, DOCUMENTS)
    age_rotation(rotated)
    return rotated


def age_rotation(rotation, seconds: float = 60) -> None:
    """Move every document's last write an hour back and the current version's start ``seconds`` back."""
    with closing(sqlite3.connect(rotation.home / "tracker.db")) as db, db:
        db.execute("UPDATE documents SET written_at = written_at - 3600")
    path = rotation.home / "keyring.json"
    keyring = json.loads(path.read_text())
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))
    for jwk in keyring["keys"]:
        if jwk.get("current"):
            jwk["created"] = since
    path.write_text(json.dumps(keyring))  # written in place: the file keeps its mode


def tracker_writes(rotation, kid: str, count: int, skip: int = 0, *, whole: bool = False) -> list[str]:
    """A tracker instance on ``kid`` writes ``count`` documents now, as the live tracker does: a
    new field encrypted under it (``whole``: every field re-encrypted under it first), through a
    conditional replace. Their ids."""
    store, keyring = rotation.store(), Keyring(rotation.provider())
    written = []
    for document in store.scan(ALL, None, 10_000).documents[skip : skip + count]:
        body = json.loads(json.dumps(document.body))
        if whole:
            body = rekey_document(body, body["productId"], target_kid=kid, keyring=keyring).new_body or body
        body["lateNote"] = envelope.encrypt("late", location(body, body["productId"], ("lateNote",)), keyring, kid)
        store.replace(body, document.etag)
        written.append(document.id)
    return written


def settings_for(rotation) -> Settings:
    return Settings(
        store=rotation.store_url, keys=rotation.keys_url, batch_documents=40, batch_seconds=30, page_size=20
    )


def fleet_and_context(rotation) -> tuple[InProcessFleet, Context]:
    fleet = InProcessFleet(settings_for(rotation))
    ctx = Context(settings_for(rotation))
    ctx.celery = fleet.broker
    return fleet, ctx


def start(fleet: InProcessFleet, target_kid: str, slices: int = 3) -> Sweep:
    return start_sweep(fleet, target_kid, slices, "sw-stale")


def text_of(show) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    show(console)
    return console.export_text()


def test_a_sweep_counts_the_stale_writes_it_reads_and_never_its_own(rotation):
    stale_ids = tracker_writes(rotation, rotation.v1, 3)
    tracker_writes(rotation, rotation.v2, 2, skip=3, whole=True)  # an instance already on the new key: not stale
    fleet, ctx = fleet_and_context(rotation)
    sweep = start(fleet, TARGET_CURRENT)
    fleet.join()

    progress = steering.progress(ctx, ctx.state.get_sweep(sweep.id))
    assert progress.sweep.status == COMPLETED  # stale writes are reported, they fail nothing
    report = progress.as_json()
    assert report["stale_writes"] == report["totals"]["stale_writes"] == 3
    examples = report["stale_write_examples"]
    assert sorted(e["document_id"] for e in examples) == sorted(stale_ids)
    assert all(e["kid"] == rotation.v1 and e["current_kid"] == rotation.v2 and e["fields"] > 1 for e in examples)
    assert all(e["product"].startswith("product-") for e in examples)  # every field still on v1: all of them count
    assert all(e["ts"] > time.time() - 30 for e in examples)

    shown = text_of(lambda console: render.status(console, progress))
    assert "stale writes: 3 documents written under a retired version after rotation" in shown
    assert "a tracker instance still uses the old key id" in shown and stale_ids[0] in shown

    samples = {
        (s.name, s.labels.get("sweep")): s.value
        for family in families(Snapshot([SweepView.of(progress, time.time())]))
        for s in family.samples
    }
    assert samples[("reencrypt_stale_writes_total", sweep.id)] == 3

    # Every document the sweep rewrote was written after the rotation, on the current version: none is stale.
    after = verify_rotation(ctx, None)
    assert after["ok"] and after["stale_writes"] == 0 and after["stale_write_examples"] == []
    assert after["reason"] is None


def test_a_document_the_tracker_writes_again_during_the_sweep_is_counted_once(rotation):
    stale_id = tracker_writes(rotation, rotation.v1, 1)[0]
    fleet, _ = fleet_and_context(rotation)
    sweep = start(fleet, TARGET_CURRENT, slices=1)
    runtime = fleet.runtime
    claim = fleet.state.claim_slice(sweep.id, 0, 0, "worker:1", 60)

    class TrackerRacing:
        """The store, with the stale tracker writing the document again just before the sweep's page of writes."""

        def __init__(self, store) -> None:
            self._store, self._raced = store, False

        def __getattr__(self, name):
            return getattr(self._store, name)

        def replace_many(self, writes):
            if not self._raced:
                self._raced = True
                document = next(d for d in self._store.scan(ALL, None, 10_000).documents if d.id == stale_id)
                body = {**document.body, "counter": 1}
                self._store.replace(body, document.etag)
            return self._store.replace_many(writes)

    batch = SliceBatch(
        TrackerRacing(runtime.store),
        runtime.state,
        runtime.keyring,
        sweep,
        BatchLimits(DOCUMENTS, 30, 200, 3),
        targets=runtime.targets(sweep),
    )
    report = batch.run(claim.slice)
    assert report.result.counts["conflicts"] == 1  # read, lost to the tracker, read again: stale both times
    assert report.result.counts["stale_writes"] == 1
    assert [e.document_id for e in report.result.stale_writes] == [stale_id]


def test_a_sweep_to_a_version_other_than_the_current_one_judges_nothing(rotation):
    """--to KID that is not current (an operator's choice): the documents it meets under other
    versions are the operator's doing as much as a tracker's; nothing is counted."""
    provider = rotation.provider()
    v3 = provider.rotate().kid
    age_rotation(rotation, seconds=30)
    tracker_writes(rotation, rotation.v2, 2)  # stale against v3: a v1 field (seed) and a v2 one
    fleet, ctx = fleet_and_context(rotation)
    sweep = start(fleet, rotation.v2)
    fleet.join()
    assert ctx.state.totals(sweep.id)["stale_writes"] == 0
    assert verify_rotation(ctx, rotation.v2)["stale_writes"] == 0  # a fixed expectation, not current: likewise
    assert provider.current_kid() == v3


def test_verify_fails_as_before_and_names_stale_writers_as_the_reason(rotation):
    fleet, ctx = fleet_and_context(rotation)
    start(fleet, TARGET_CURRENT)
    fleet.join()
    stale_ids = tracker_writes(rotation, rotation.v1, 2)  # after the sweep: a stale writer behind it

    one_process = verify_rotation(ctx, None)
    assert not one_process["ok"] and one_process["off_target"] == 2  # exactly as without the check
    assert one_process["stale_writes"] == 2 and one_process["stale_write_fields"] == 2
    assert sorted(e["document_id"] for e in one_process["stale_write_examples"]) == sorted(stale_ids)
    assert one_process["reason"].startswith(
        "2 of the 2 fields not on the expected version are in documents written after rotation under a "
        "retired version (2 documents: stale writes): a tracker instance still uses the old key id; "
        "restart it, then sweep again"
    )
    assert verify_rotation(ctx, rotation.v2)["reason"] == one_process["reason"]  # v2 is current
    shown = text_of(lambda console: render.verify(console, one_process))
    assert "stale writes: 2 documents" in shown and "why: 2 of the 2 fields" in shown

    sweep = steering.start_verify(ctx, expect=None, products=(), slices=3)
    fleet.join()
    on_fleet = fleet_verify(ctx, ctx.state.get_sweep(sweep.id))
    assert {k: v for k, v in on_fleet.items() if k != "sweep_id"} == one_process
    audited = [e["details"] for e in ctx.audit.entries() if e["action"] == "verify"]
    assert [entry["stale_writes"] for entry in audited] == [2, 2, 2]  # two in one process, one on the fleet


def test_a_slice_keeps_its_first_examples_and_counts_them_all(tmp_path):
    state = SweepState(SqliteStore(tmp_path / "t.db").records())
    state.create_sweep(Sweep(id="sw-1", target_kid="k/v2", mode="reencrypt", status=RUNNING), [{"r": 0}])
    found = [StaleWrite(f"doc-{n}", "p1", LATE + n, V1, V2) for n in range(8)]
    for batch in (found[:3], found[3:]):
        fence = state.claim_slice("sw-1", 0, state.slices("sw-1")[0].fence, "w:1", 60).fence
        counts = {**zero_counts(), "stale_writes": len(batch)}
        state.commit_slice("sw-1", 0, fence, BatchResult(None, False, counts, stale_writes=list(batch)))
    piece = state.slices("sw-1")[0]
    assert piece.counts["stale_writes"] == 8
    assert piece.stale_write_examples == tuple(found[: stale.SLICE_EXAMPLES])
    assert Slice.from_record(piece.to_record()) == piece
    assert stale_write_examples([piece])[0] == found[4]  # reports show the newest first
    assert "stale_write_examples" not in Slice(sweep_id="sw-1", index=1, feed_range={}).to_record()


# -- the stale-writes command's watch (coordinator/stale_writes.py) -------------------------------


TEMPLATE = "tracker-mek-{productId}"


def since_of(keys: ProductKeys) -> float:
    """When the key's current version became current, in seconds since the epoch."""
    since = epoch_seconds(keys.root.current_version().current_since)
    assert since is not None
    return since


class Clock:
    """The real time, moved on by ``ahead`` seconds when the test says so."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def command(rotation, capsys, *products: str, key_name: str = "", **options) -> tuple[int, dict]:
    """``reencrypt stale-writes --json`` in this process: its exit code and the JSON it printed."""
    ctx = Context(Settings(store=rotation.store_url, keys=rotation.keys_url, key_name=key_name))
    code = 0
    try:
        stale_command.stale_writes(
            SimpleNamespace(obj=ctx),
            list(products),
            **{"quiet_for": 300, "wait": False, "interval": 10, **options},
            as_json=True,
        )
    except typer.Exit as stopped:
        code = stopped.exit_code
    return code, json.loads(capsys.readouterr().out)


def shown(rotation, monkeypatch, *products: str, quiet_for: float = 300) -> str:
    """The command's human output for one look."""
    store, keys = rotation.store(), ProductKeys(rotation.provider())
    report = StaleWatch(store, keys, products_to_watch(store, keys, products), named=bool(products)).look()
    console = Console(record=True, width=300, file=io.StringIO())
    monkeypatch.setattr(stale_command, "out", console)
    monkeypatch.setattr(common, "out", console)  # what say() prints to
    stale_command._show(report, quiet_for)
    return console.export_text()


def test_the_watch_counts_each_stale_write_once_across_looks_and_is_quiet_once_they_stop(rotation):
    store = rotation.store()
    keys = ProductKeys(rotation.provider())
    clock = Clock()
    watch = StaleWatch(store, keys, products_to_watch(store, keys, []), clock=clock)
    report = watch.look()  # v2 current for a minute, nothing stale in it
    assert report.stale_writes == 0 and report.quiet(30) and not report.quiet(300)

    first = tracker_writes(rotation, rotation.v1, 2)
    tracker_writes(rotation, rotation.v2, 1, skip=2, whole=True)  # on the new key: never counted
    report = watch.look()
    assert report.stale_writes == 2 and sorted(e.document_id for e in report.examples) == sorted(first)
    assert len(report.checked) == len(store.products()) and not report.not_checked
    assert not report.quiet(300) and report.quiet(0)
    assert watch.look().stale_writes == 2  # read again in the look-back window: counted once

    tracker_writes(rotation, rotation.v1, 1)  # the same document written stale again: a new stale write
    assert watch.look().stale_writes == 3
    clock.ahead = 400  # nothing new for longer than asked
    report = watch.look()
    assert report.stale_writes == 3 and report.quiet(300) and not report.quiet(500)
    shown = report.as_json(300, store.describe())
    assert shown["quiet"] and shown["reason"] is None and shown["stale_writes"] == 3 and shown["grace_s"] == GRACE_S
    assert sum(p["stale_writes"] for p in shown["products"].values()) == 3
    assert shown["newest_stale_write_ts"] == max(e["ts"] for e in shown["stale_write_examples"])
    assert shown["products_checked"] == shown["products_watched"] == len(shown["products"])


def test_a_fresh_rotation_is_not_quiet_until_quiet_for_seconds_of_writes_after_the_grace_were_seen(rotation):
    """The writes are judged from the version's start plus the grace: right after a rotation
    none has been seen yet, so --quiet-for 300 does not pass at once, and --quiet-for 2 passes
    only 2 s past the grace."""
    age_rotation(rotation, seconds=0)
    store, keys = rotation.store(), ProductKeys(rotation.provider())
    since = since_of(keys)
    clock = Clock()
    watch = StaleWatch(store, keys, ["product-001"], clock=clock, named=True)
    report = watch.look()
    assert not report.quiet(300) and not report.quiet(2)
    assert report.left_s(300) == pytest.approx(since + GRACE_S + 300 - report.looked_at, abs=0.01)
    reason = report.reason(300) or ""
    assert report.waitable(300) and "quiet for 0 s" in reason and "s left" in reason

    clock.ahead = since + GRACE_S + 1.9 - time.time()  # 1.9 s of writes seen past the grace
    assert not watch.look().quiet(2)
    clock.ahead = since + GRACE_S + 2.1 - time.time()
    report = watch.look()
    assert report.quiet(2) and not report.quiet(300) and report.left_s(2) == 0
    assert report.as_json(2, store.describe())["products"]["product-001"]["quiet"]


def test_a_fresh_rotation_fails_at_once_without_wait_saying_how_long_is_left(rotation, capsys, monkeypatch):
    age_rotation(rotation, seconds=0)
    started = time.monotonic()
    code, result = command(rotation, capsys, "product-001", quiet_for=300)
    assert code == 1 and not result["quiet"] and time.monotonic() - started < 5
    assert result["products_checked"] == 1 and result["quiet_left_s"] > 290
    assert "product product-001 quiet for" in result["reason"] and "s left" in result["reason"]
    text = shown(rotation, monkeypatch, "product-001")
    assert "not passed: 1 of the 1 products checked not quiet for 300 s yet" in text and "Look again in" in text


def test_wait_sleeps_until_the_product_turns_quiet_and_not_past_it(rotation, monkeypatch):
    """The runbook's wait right after a rotation with a short --quiet-for: it ends at the grace
    plus --quiet-for, not a whole --interval later (the clock is moved, nothing sleeps)."""
    age_rotation(rotation, seconds=0)
    store, keys = rotation.store(), ProductKeys(rotation.provider())
    since = since_of(keys)
    clock = Clock()
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock.ahead += seconds

    monkeypatch.setattr(stale_command.time, "sleep", sleep)
    watch = StaleWatch(store, keys, ["product-001"], clock=clock, named=True)
    report = stale_command._wait(watch, watch.look(), 2, 10, "again", quiet=True)
    assert report.quiet(2) and len(slept) == 1 and slept[0] <= 10
    assert since + GRACE_S + 2 <= report.looked_at <= since + GRACE_S + 2 + 0.5


def test_a_named_product_the_store_does_not_hold_fails_the_gate(rotation, capsys, monkeypatch):
    code, result = command(rotation, capsys, "product-0007", quiet_for=0)
    assert code == 1 and not result["quiet"] and result["products_checked"] == 0
    assert "holds no document of product 'product-0007'" in result["products_not_checked"]["product-0007"]
    assert "could not be checked (product-0007)" in result["reason"]
    code, result = command(rotation, capsys, "product-0007", quiet_for=0, wait=True)  # waiting cannot fix it
    assert code == 1 and "product-0007" in result["products_not_checked"]
    text = shown(rotation, monkeypatch, "product-0007", quiet_for=0)
    assert "NOT CHECKED: product product-0007" in text and "this gate cannot pass" in text


def test_a_product_without_a_key_is_not_checked_and_fails_the_gate(rotation, capsys):
    store = rotation.store()
    per_product = ProductKeys(LocalKeyProvider(rotation.home / "keyring.json", key_name=TEMPLATE))
    report = StaleWatch(store, per_product, ["product-001"]).look()
    assert not report.checked and "product-001" in report.not_checked
    assert not report.quiet(0) and not report.waitable(0)
    assert products_to_watch(store, per_product, []) == store.products()  # keyless ones included

    code, result = command(rotation, capsys, "product-001", key_name=TEMPLATE, quiet_for=0)
    assert code == 1 and "product-001" in result["products_not_checked"]
    code, result = command(rotation, capsys, key_name=TEMPLATE, quiet_for=0)  # no product of the store has a key
    assert code == 1 and result["products_checked"] == 0
    assert len(result["products_not_checked"]) == result["products_watched"] == len(store.products())


def test_the_whole_store_fails_while_any_product_cannot_be_checked(rotation, capsys):
    per_product = ProductKeys(LocalKeyProvider(rotation.home / "keyring.json", key_name=TEMPLATE))
    per_product.provider_for("product-001").init()
    age_rotation(rotation)
    products = rotation.store().products()
    code, result = command(rotation, capsys, key_name=TEMPLATE, quiet_for=0)
    assert code == 1 and result["products_checked"] == 1 and list(result["products"]) == ["product-001"]
    assert set(result["products_not_checked"]) == set(products) - {"product-001"}
    assert command(rotation, capsys, "product-001", key_name=TEMPLATE, quiet_for=0)[0] == 0  # gated alone: passes


def test_an_undated_current_version_is_not_checked_and_fails_the_gate(rotation, capsys):
    path = rotation.home / "keyring.json"
    keyring = json.loads(path.read_text())
    for jwk in keyring["keys"]:
        if jwk.get("current"):
            jwk["created"] = ""
            jwk.pop("current_since", None)
    path.write_text(json.dumps(keyring))
    code, result = command(rotation, capsys, "product-001", quiet_for=0)
    assert code == 1 and "does not say when" in result["products_not_checked"]["product-001"]


def test_a_store_with_no_products_fails_the_gate(tmp_path, capsys):
    LocalKeyProvider(tmp_path / "keyring.json").init()
    SqliteStore(tmp_path / "tracker.db").close()
    empty = SimpleNamespace(
        store_url=f"sqlite:///{tmp_path / 'tracker.db'}", keys_url=f"local:{tmp_path / 'keyring.json'}"
    )
    code, result = command(empty, capsys, quiet_for=0)
    assert code == 1 and result["products_watched"] == 0 and result["reason"].startswith("no product was checked")


def test_the_watch_reads_only_what_was_written_since_the_rotation(rotation, monkeypatch):
    store = rotation.store()
    asked = []
    real = store.written_after
    monkeypatch.setattr(store, "written_after", lambda *args: asked.append(args[1]) or real(*args))
    keys = ProductKeys(rotation.provider())
    watch = StaleWatch(store, keys, ["product-001"])
    watch.look()
    since = keys.root.current_version().current_since
    assert asked == [epoch_seconds(since) + GRACE_S]
    watch.look()
    assert asked[1] >= asked[0] and asked[1] > time.time() - LOOK_BACK_S - 5  # then only the recent writes


def test_ctrl_c_while_waiting_says_what_to_run_later_and_exits_130(rotation, monkeypatch, capsys):
    tracker_writes(rotation, rotation.v1, 1)
    store = rotation.store()
    keys = ProductKeys(rotation.provider())
    watch = StaleWatch(store, keys, products_to_watch(store, keys, []))
    report = watch.look()
    assert not report.quiet(300)

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(stale_command.time, "sleep", interrupted)
    again = stale_command._again(["product-001", "product-002"], 300, 10)
    with pytest.raises(typer.Exit) as stopped:
        stale_command._wait(watch, report, 300, 10, again, quiet=False)
    assert stopped.value.exit_code == 130
    said = capsys.readouterr().err
    assert "stopped waiting; nothing was changed" in said
    assert "reencrypt stale-writes --product product-001 --product product-002 --quiet-for 300 --wait" in said


def test_a_verify_batch_is_built_only_with_the_sweeps_targets(rotation):
    """Its stale-write check judges under the sweep's key name setting, which only the sweep's
    targets carry: no batch falls back to the worker's own."""
    fleet, _ = fleet_and_context(rotation)
    sweep = Sweep(id="sw-check", target_kid=rotation.v2, mode="verify", status=RUNNING)
    runtime = fleet.runtime
    with pytest.raises(ValueError, match="needs the sweep's targets"):
        SliceCheck(runtime.store, runtime.state, runtime.keyring, sweep, BatchLimits(DOCUMENTS, 30, 200, 3))
    built = SliceCheck(
        runtime.store,
        runtime.state,
        runtime.keyring,
        sweep,
        BatchLimits(DOCUMENTS, 30, 200, 3),
        None,
        runtime.targets(sweep),
    )
    assert built.current is runtime.targets(sweep).current
