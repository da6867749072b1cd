"""The baseline/compare round trip of ``reencrypt preflight``, as an operator runs it around a
rotation: a baseline of the container saved to a file, every field moved onto the new key
version, then a second baseline compared against the file. The store and keyring are opened as
the CLI opens them (coordinator.context.Context), over a real seeded SQLite store and a real
local keyring, timed by the real clock."""

from __future__ import annotations

import time

from coordinator.context import Context
from coordinator.preflight.baseline import SHOWN, compare, load_baseline, save_baseline, take_baseline
from tracker_reencrypt.config import Settings
from tracker_reencrypt.documents import check_document, rekey_document

from conftest import make_rotation

DOCUMENTS = 300
WHOLE = {"epk_min": 0, "epk_max": 2**32}
#: Reads of a local SQLite file take tens of microseconds, so a scheduler hiccup on a busy test
#: machine could move their p99 by more than the 2 ms default floor. What this test shows is the
#: round trip; the rule itself is tested, exactly, with a step clock in tests/unit/test_baseline.py.
NOISE_FLOOR_MS = 50.0


def rotate_every_field(ctx: Context, target_kid: str) -> None:
    """What a sweep does to each document, in this process: every field re-encrypted onto the target."""
    store = ctx.store
    for document in store.scan(WHOLE, None, 10_000).documents:
        plan = rekey_document(
            document.body, store.partition_key_of(document.body), target_kid=target_kid, keyring=ctx.keyring
        )
        assert not plan.failures
        if plan.new_body is not None:  # a product document holds no envelope
            store.replace(plan.new_body, document.etag)


def test_a_baseline_before_the_rotation_compares_with_one_after_it(tmp_path):
    rotation = make_rotation(tmp_path, DOCUMENTS)
    ctx = Context(Settings(store=rotation.store_url, keys=rotation.keys_url))
    path = tmp_path / "before.json"

    save_baseline(path, take_baseline(ctx.store, ctx.keyring, store_url=rotation.store_url, documents=200))
    rotate_every_field(ctx, rotation.v2)
    after = take_baseline(ctx.store, ctx.keyring, store_url=rotation.store_url, documents=200)

    before = load_baseline(path)
    comparison = compare(before, after, floor_ms=NOISE_FLOOR_MS)
    assert not comparison.failed, comparison.as_json()
    assert (before.documents, after.documents, after.failures) == (200, 200, {})
    rows = {row.figure: row for row in comparison.rows}
    assert rows["read p95"].verdict == rows["decrypt item p95"].verdict == "pass"
    assert rows["RU/read mean"].verdict == "pass" and comparison.request_units_source == "estimated"
    # The sweep shares one fresh data key among thousands of fields: a handful to unwrap after,
    # too few for a percentile to gate.
    assert after.unwrap_ms.count < before.unwrap_ms.count and rows["unwrap p99"].verdict == SHOWN
    # The vault's own unwrap is timed on fresh data keys under the versions in use (v1 before,
    # v2 after): always enough calls to be judged.
    assert before.vault_unwrap_ms.count == after.vault_unwrap_ms.count == 20
    assert rows["vault unwrap p95"].verdict == "pass"
    assert all(
        check.kid == rotation.v2
        for document in ctx.store.scan(WHOLE, None, 10_000).documents
        for check in check_document(document.body, document.body["productId"], None)
    )

    slow = take_baseline(
        ctx.store, ctx.keyring, store_url=rotation.store_url, documents=200, clock=lambda: time.perf_counter() * 10_000
    )
    assert compare(before, slow).failed  # every span ten thousand times longer
