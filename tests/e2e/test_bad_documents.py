"""One bad document among good ones: a recorded failure, never a slice stuck on retries or a
verify that crashes. A real SliceBatch and SweepState over a real SQLite store; verify through
the real CLI. Bad documents include rows the store cannot parse at all (nested 2,000 deep, not
JSON), which it returns marked unreadable among the rest of their page."""

import json
import sqlite3
from contextlib import closing

import pytest

from coordinator.context import Context
from coordinator.steering import SAMPLE_DOCUMENTS, _sample
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.documents import MAX_DEPTH, check_document
from tracker_reencrypt.errors import KeyProviderError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores.sqlite import SqliteStore, effective_partition_key
from tracker_reencrypt.sweep.records import RUNNING, Sweep
from tracker_reencrypt.sweep.state import SweepState
from worker.batch import BatchLimits, SliceBatch

from conftest import make_rotation, run_cli

GOOD = 60
#: Well past MAX_DEPTH, yet within what the SQLite store's JSON codec (msgspec, then json) can
#: write and read back, so documents.py finds it too deep.
DEEP = 600
#: Past what the codec can parse (both parsers recurse, up to Python's recursion limit of
#: ~1,000): the store itself finds it too deep. Only a raw insert can put it there, since the
#: store refuses to write it.
DEEPER = 2_000
LIMITS = BatchLimits(documents=20, seconds=60, page_size=7, conflict_retries=3)


def nested(levels: int, document_id: str, partition_key: str) -> dict:
    body = {"id": document_id, "productId": partition_key, "type": "item"}
    inner = body
    for _ in range(levels - 1):
        inner["a"] = {}
        inner = inner["a"]
    return body


def nested_text(levels: int, document_id: str, partition_key: str) -> str:
    """The JSON text of nested() built as text: json.dumps cannot write 2,000 levels either."""
    head = json.dumps({"id": document_id, "productId": partition_key, "type": "item"})[:-1]
    return head + ', "a": ' + '{"a": ' * (levels - 2) + "{}" + "}" * (levels - 2) + "}"


def insert_raw(rotation, row_id: str, partition_key: str, text: str) -> None:
    """Straight into the documents table, as a buggy writer would: SqliteStore.create refuses a
    document without a partition key (StoreError), needs a string id to key the row, and cannot
    write JSON nested past the codec's limit or text that is not JSON."""
    db = sqlite3.connect(rotation.home / "tracker.db")
    with db:
        db.execute(
            "INSERT INTO documents (epk, pk, id, etag, body) VALUES (?, ?, ?, ?, ?)",
            (effective_partition_key(partition_key), partition_key, row_id, '"raw"', text),
        )
    db.close()


def raw_body(rotation, row_id: str) -> str:
    with closing(sqlite3.connect(rotation.home / "tracker.db")) as db:
        return db.execute("SELECT body FROM documents WHERE id = ?", (row_id,)).fetchone()[0]


#: Rows the store cannot parse, and what they hold (read back raw to show they are never written).
UNREADABLE = {"deeper": nested_text(DEEPER, "deeper", "p"), "garbled": '{"id": "garbled", "productId": "p", "title": "'}


@pytest.fixture
def container(tmp_path):
    """GOOD seeded documents on v1 (v2 current), and bad ones among them: the expected failures
    (document id, partition key, field path, reason), sorted. Two have no id in one partition."""
    rotation = make_rotation(tmp_path, GOOD)
    store = rotation.store()
    first = store.scan({"epk_min": 0, "epk_max": 2**32}, None, 1).documents[0].body
    partition_key = first["productId"]
    no_partition_key = {k: v for k, v in first.items() if k != "productId"}
    insert_raw(rotation, "no-pk", "", json.dumps({**no_partition_key, "id": "no-pk"}))
    insert_raw(rotation, "42", partition_key, json.dumps({**first, "id": 42}))
    insert_raw(rotation, "array", partition_key, json.dumps([first]))
    insert_raw(rotation, "text", partition_key, json.dumps("a document that is a string"))
    for row_id, text in UNREADABLE.items():
        insert_raw(rotation, row_id, partition_key, text)
    store.create(nested(DEEP, "deep", partition_key))
    store.close()
    expected = sorted(
        [
            ("no-pk", "", "", "no_partition_key"),
            ("42", partition_key, "", "bad_id"),
            ("?", "", "", "not_an_object"),
            ("?", "", "", "not_an_object"),
            ("deep", partition_key, "", "too_deep"),
            ("deeper", partition_key, "", "too_deep"),
            ("garbled", partition_key, "", "invalid_json"),
        ]
    )
    return rotation, expected


def start_sweep(state: SweepState, store: SqliteStore, target_kid: str) -> Sweep:
    return state.create_sweep(
        Sweep(id="sw-bad", target_kid=target_kid, mode="reencrypt", status=RUNNING, started_at="2026-11-29T00:00:00Z"),
        store.feed_ranges(1),
    )


def run_slice(state: SweepState, store: SqliteStore, keyring: Keyring, sweep: Sweep) -> int:
    """Claim, run and commit batches of slice 0 until it is done, as the task does; the batches it took."""
    fence, batches = 0, 0
    while True:
        claim = state.claim_slice(sweep.id, 0, fence, "test", lease_seconds=60)
        assert claim.action == "work", claim
        report = SliceBatch(store, state, keyring, sweep, LIMITS).run(claim.slice)
        state.commit_slice(sweep.id, 0, claim.fence, report.result)
        fence, batches = claim.fence, batches + 1
        if report.result.done:
            return batches


def good_documents(store: SqliteStore) -> list[dict]:
    """The seeded documents, in scan order (the seed names them doc-NNNNNNN)."""
    return [
        d.body
        for d in store.scan({"epk_min": 0, "epk_max": 2**32}, None, 1_000).documents
        if isinstance(d.body, dict) and str(d.body.get("id")).startswith("doc-")
    ]


def failures(state: SweepState, sweep_id: str) -> list[tuple]:
    """Sorted, duplicates kept: two documents without an id in one partition are two failures."""
    return sorted((f.document_id, f.partition_key, f.field_path, f.reason) for f in state.failures(sweep_id))


def test_bad_documents_are_recorded_failures_and_the_slice_finishes_on_target(container):
    rotation, expected = container
    store = rotation.store()
    state, keyring = SweepState(store.records()), Keyring(rotation.provider())
    sweep = start_sweep(state, store, rotation.v2)

    assert run_slice(state, store, keyring, sweep) > 1  # several batches: the slice went on past the bad ones
    assert state.slices(sweep.id)[0].done
    assert failures(state, sweep.id) == expected
    totals = state.totals(sweep.id)
    bad = len(expected)
    assert (totals["documents_scanned"], totals["documents_failed"], totals["failures"]) == (GOOD + bad, bad, bad)
    assert {row_id: raw_body(rotation, row_id) for row_id in UNREADABLE} == UNREADABLE  # left exactly as they were

    good = good_documents(store)
    assert len(good) == GOOD
    checks = [check for body in good for check in check_document(body, body["productId"], keyring)]
    assert checks and all(check.kid == rotation.v2 and check.decrypts for check in checks)


def test_a_redone_batch_records_each_failure_once_telling_apart_documents_without_an_id(container):
    """A worker that dies before committing leaves its batch to be redone from the same
    continuation: it meets the same bad documents again and must add no failure. The two
    documents with no id in one partition stay two failures, each naming the row it is."""
    rotation, expected = container
    store = rotation.store()
    state, keyring = SweepState(store.records()), Keyring(rotation.provider())
    sweep = start_sweep(state, store, rotation.v2)
    claim = state.claim_slice(sweep.id, 0, 0, "test", lease_seconds=60)
    whole_slice = BatchLimits(documents=1_000, seconds=60, page_size=7, conflict_retries=3)

    first = SliceBatch(store, state, keyring, sweep, whole_slice).run(claim.slice)
    redone = SliceBatch(store, state, keyring, sweep, whole_slice).run(claim.slice)

    assert first.result.done and redone.result.done
    assert redone.result.counts["documents_failed"] == len(expected)  # met again...
    assert failures(state, sweep.id) == expected  # ...and recorded once
    partition_key = next(f[1] for f in expected if f[3] == "bad_id")
    assert sorted(f.row for f in state.failures(sweep.id) if f.document_id == "?") == [
        json.dumps([partition_key, "array"]),
        json.dumps([partition_key, "text"]),
    ]
    assert all(f.row is None for f in state.failures(sweep.id) if f.document_id != "?")


def test_verify_reports_bad_documents_and_fails_without_a_traceback(container):
    rotation, expected = container
    store = rotation.store()
    state = SweepState(store.records())
    run_slice(state, store, Keyring(rotation.provider()), start_sweep(state, store, rotation.v2))

    result = run_cli("verify", "--expect", rotation.v2, "--json", env=rotation.env())
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    payload = json.loads(result.stdout)
    assert payload["ok"] is False
    assert (payload["documents"], payload["off_target"], payload["undecryptable"]) == (
        GOOD + len(expected),
        0,
        len(expected),
    )
    assert (
        sorted(
            (e["document_id"], e["partition_key"], e["field_path"], e["reason"])
            for e in payload["undecryptable_examples"]
        )
        == expected
    )


def test_a_sweep_s_sample_measures_the_good_documents_and_passes_over_the_bad(container):
    """``sweep start`` samples a page for its time estimate: bad documents among it neither stop
    the start (a document without a partition key used to raise) nor count as tiny documents."""
    rotation, expected = container
    ctx = Context(load_settings(store=rotation.store_url, keys=rotation.keys_url))
    feed_ranges = ctx.store.feed_ranges(1)
    page = ctx.store.scan(feed_ranges[0], None, SAMPLE_DOCUMENTS // 4).documents
    good = [d.body for d in page if isinstance(d.body, dict) and str(d.body.get("id")).startswith("doc-")]
    assert len(page) - len(good) == len(expected)  # every bad document is in the sampled page

    sample = _sample(ctx, feed_ranges)
    assert sample["documents"] == len(page)
    assert sample["average_bytes"] == pytest.approx(
        sum(len(json.dumps(b, separators=(",", ":"))) for b in good) / len(good)
    )


class TrackerWritesAfterScan(SqliteStore):
    """The live tracker rewriting one document just after the sweep has read its page."""

    def __init__(self, path, document_id: str, rewrite) -> None:
        super().__init__(path)
        self.document_id, self.rewrite = document_id, rewrite

    def scan(self, feed_range, continuation, page_size):
        page = super().scan(feed_range, continuation, page_size)
        for document in page.documents:
            if isinstance(document.body, dict) and document.body.get("id") == self.document_id and self.rewrite:
                self.replace(self.rewrite(document.body), document.etag)
                self.rewrite = None
        return page


def test_a_document_the_tracker_rewrote_into_a_bad_one_is_a_failure_after_the_conflict(container):
    rotation, expected = container
    store = rotation.store()
    target = next(body for body in good_documents(store) if body["type"] == "item")
    rewritten = TrackerWritesAfterScan(
        rotation.home / "tracker.db", target["id"], lambda body: {**body, "a": nested(MAX_DEPTH, "inner", "x")}
    )
    state = SweepState(rewritten.records())
    sweep = start_sweep(state, rewritten, rotation.v2)

    run_slice(state, rewritten, Keyring(rotation.provider()), sweep)
    assert failures(state, sweep.id) == sorted(expected + [(target["id"], target["productId"], "", "too_deep")])
    assert state.totals(sweep.id)["conflicts"] == 1


def test_a_key_provider_outage_still_stops_the_batch_to_be_retried(container):
    rotation, _ = container
    store = rotation.store()
    state = SweepState(store.records())
    sweep = start_sweep(state, store, rotation.v2)
    provider = rotation.provider()  # not read yet: the file goes before its first use
    (rotation.home / "keyring.json").rename(rotation.home / "keyring.moved")

    claim = state.claim_slice(sweep.id, 0, 0, "test", lease_seconds=60)
    with pytest.raises(KeyProviderError, match="does not exist"):
        SliceBatch(store, state, Keyring(provider), sweep, LIMITS).run(claim.slice)
    # Bad documents met before the outage may be recorded; no good field is blamed for it.
    assert all(f.field_path == "" for f in state.failures(sweep.id))
