"""preflight --baseline / --compare: the read path's figures before and after a rotation, over a
real SQLite store and a real local keyring. Timings come from a step clock (each call one step
later), so figures are exact and the gate's verdicts never depend on the machine's load."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import replace

import pytest

from coordinator.preflight.baseline import (
    FORMAT,
    SHOWN,
    Baseline,
    Percentiles,
    compare,
    load_baseline,
    sample_documents,
    save_baseline,
    take_baseline,
)
from tracker_reencrypt import envelope
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import store_location
from tracker_reencrypt.stores.sqlite import effective_partition_key

from conftest import make_rotation

DOCUMENTS = 240
WHOLE = {"epk_min": 0, "epk_max": 2**32}


class StepClock:
    """perf_counter's stand-in: ``step`` seconds later at each call, so every span is one step."""

    def __init__(self, step: float) -> None:
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(scope="module")
def rotation(tmp_path_factory):
    return make_rotation(tmp_path_factory.mktemp("baseline"), DOCUMENTS)


def baseline_of(rotation, step: float = 0.001, documents: int = 1000) -> Baseline:
    return take_baseline(
        rotation.store(),
        Keyring(rotation.provider()),
        store_url=rotation.store_url,
        documents=documents,
        clock=StepClock(step),
    )


def test_the_sample_is_spread_over_the_feed_ranges_and_stops_at_its_size(rotation):
    store = rotation.store()
    sampled, ranges = sample_documents(store, 48)
    assert len(sampled) == 48 and len({d.id for d in sampled}) == 48
    bounds = store.feed_ranges(min_count=16)
    hit = {
        i
        for d in sampled
        for i, r in enumerate(bounds)
        if r["epk_min"] <= effective_partition_key(d.body["productId"]) < r["epk_max"]
    }
    assert ranges == len(hit) > 4
    assert len({d.body["productId"] for d in sampled}) > 4

    baseline = baseline_of(rotation, documents=48)
    assert (baseline.documents, baseline.feed_ranges, baseline.read_ms.count) == (48, ranges, 48)


def test_a_baseline_times_reads_decrypts_per_kind_and_each_data_key_once(rotation):
    baseline = baseline_of(rotation)  # asks for 1,000: the container holds fewer
    fields = sum(p.count for p in baseline.decrypt_ms.values())
    assert baseline.documents == baseline.read_ms.count == DOCUMENTS
    assert baseline.store == store_location(rotation.store_url)
    assert set(baseline.decrypt_ms) == {"item", "comment", "attachment", "api_key"}  # products hold no envelope
    assert fields > DOCUMENTS / 2 and baseline.failures == {}
    assert 1 < baseline.unwrap_ms.count < fields  # seeded fields share data keys: one unwrap per key
    assert baseline.read_ms == Percentiles(DOCUMENTS, 1.0, 1.0, 1.0)  # one step of 1 ms, in ms
    assert all(p.p99 == 1.0 for p in baseline.decrypt_ms.values())
    units = baseline.request_units_per_read
    assert units.source == "estimated" and units.per_read.count == DOCUMENTS and units.mean and units.mean >= 1.0


def test_a_second_baseline_with_the_same_keyring_still_unwraps_cold(rotation):
    keyring = Keyring(rotation.provider())
    first, second = (
        take_baseline(rotation.store(), keyring, store_url=rotation.store_url, clock=StepClock(0.001)) for _ in range(2)
    )
    assert first.unwrap_ms.count == second.unwrap_ms.count > 1


def test_the_json_round_trip_keeps_every_figure_and_holds_no_plaintext_or_id(rotation, tmp_path):
    baseline = baseline_of(rotation)
    path = tmp_path / "baseline.json"
    save_baseline(path, baseline)
    save_baseline(path, baseline)  # overwriting is fine
    assert load_baseline(path) == baseline
    text = path.read_text()
    assert json.loads(text)["format"] == FORMAT and [p.name for p in tmp_path.iterdir()] == ["baseline.json"]
    body = rotation.store().scan(WHOLE, None, 1).documents[0].body
    assert body["id"] not in text and "productId" not in text and '"ct"' not in text


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "does not exist: take one before the rotation with reencrypt preflight --baseline"),
        ('{"format": 1, "store"', "is not JSON (line 1)"),
        ('{"format": 2}', "is a baseline of format 2, this version reads format 1"),
        ("[1, 2]", "is not a preflight baseline"),
        ("BASELINE_WITHOUT_READS", "is not a well-formed baseline (no 'read_ms')"),
    ],
)
def test_a_baseline_file_that_is_missing_corrupt_or_of_another_format_is_refused_in_one_line(
    rotation, tmp_path, content, says
):
    path = tmp_path / "before.json"
    if content == "BASELINE_WITHOUT_READS":
        data = baseline_of(rotation, documents=10).as_json()
        del data["read_ms"]
        content = json.dumps(data)
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as refused:
        load_baseline(path)
    message = str(refused.value)
    assert says in message and str(path) in message and "\n" not in message


def test_identical_baselines_pass_and_every_figure_is_shown(rotation):
    baseline = baseline_of(rotation)
    comparison = compare(baseline, baseline)
    assert not comparison.failed
    figures = [row.figure for row in comparison.rows]
    assert figures[:6] == ["read p50", "read p95", "read p99", "RU/read p50", "RU/read p95", "RU/read mean"]
    assert "decrypt comment p99" in figures and figures[-4:] == [
        "unwrap p99",
        *(f"vault unwrap {p}" for p in ("p50", "p95", "p99")),
    ]
    assert {row.verdict for row in comparison.rows if row.figure.endswith("p50")} == {SHOWN}
    assert all(row.change == 0 for row in comparison.rows if row.change is not None)
    assert comparison.as_json()["rule"].startswith("fails past +50% (and > 2 ms, > 0.5 RU)")
    json.dumps(comparison.as_json())


def test_reads_and_decrypts_slower_past_the_tolerance_fail_the_comparison(rotation):
    before, after = baseline_of(rotation, step=0.001), baseline_of(rotation, step=0.004)
    comparison = compare(before, after)
    assert comparison.failed
    verdicts = {row.figure: (row.before, row.after, row.change, row.verdict) for row in comparison.rows}
    assert verdicts["read p95"] == (1.0, 4.0, 3.0, "fail")
    assert verdicts["decrypt item p95"][3] == "fail"
    assert verdicts["read p50"][3] == SHOWN  # shown, never gated
    # A p99 of a few hundred measurements is the slowest few calls: shown, judged from 1,000 on.
    assert verdicts["decrypt item p99"][3] == SHOWN
    assert compare(figures(read=1, count=1000), figures(read=4, count=1000)).failed
    assert verdicts["RU/read mean"][3] == "pass"  # the same documents cost the same
    assert not compare(before, after, tolerance=3.5).failed  # +300% is within +350%


def figures(read: float, count: int = 100, store: str = "sqlite:/x/tracker.db", **extra) -> Baseline:
    """A baseline built from its JSON: reads at ``read`` ms, one kind of field at 0.05 ms."""
    data = {
        "format": 1,
        "taken_at": "2026-01-01T00:00:00Z",
        "store": store,
        "documents": count,
        "feed_ranges": 4,
        "read_ms": {"p50": read / 2, "p95": read, "p99": read, "count": count},
        "request_units_per_read": {"p50": 1, "p95": 1, "p99": 1, "mean": 1, "count": count, "source": "estimated"},
        "decrypt_ms": {"item": {"p50": 0.05, "p95": 0.05, "p99": 0.05, "count": count}},
        "unwrap_ms": {"p50": 1.5, "p95": 1.5, "p99": 1.5, "count": 3},
        "vault_unwrap_ms": {"p50": 1.5, "p95": 1.5, "p99": 1.5, "count": 20},
        "failures": {},
    }
    data.update(extra)
    return Baseline.from_json(data)


def test_the_floor_keeps_sub_millisecond_growth_passing():
    tripled = compare(figures(read=0.4), figures(read=1.2))
    assert not tripled.failed  # +200%, but 0.8 ms
    assert compare(figures(read=0.4), figures(read=2.5)).failed  # +525% and 2.1 ms
    assert not compare(figures(read=10), figures(read=14.9)).failed  # 4.9 ms, but +49%
    assert compare(figures(read=10), figures(read=15.1)).failed


def test_figures_from_too_few_measurements_are_shown_not_gated():
    comparison = compare(figures(read=1), figures(read=1))
    assert not comparison.failed
    assert all(row.verdict == SHOWN for row in comparison.rows if row.figure.startswith("unwrap"))  # 3 unwraps
    vault = {row.figure: row for row in comparison.rows if row.figure.startswith("vault unwrap p9")}
    assert vault["vault unwrap p95"].verdict == "pass"  # 20 measurements judge a p95...
    assert (vault["vault unwrap p99"].verdict, vault["vault unwrap p99"].note) == (
        SHOWN,
        "fewer than 1000 measurements",
    )  # ...not a p99: that is the slowest of them


def test_a_comparison_that_cannot_judge_the_read_path_fails():
    """Ten reads a side judge nothing: the gate must not pass on nothing (1 ms to 100 ms here)."""
    comparison = compare(figures(read=1, count=10), figures(read=100, count=10))
    assert comparison.failed
    (read_p95,) = [row for row in comparison.rows if row.figure == "read p95"]
    assert read_p95.verdict == "fail" and "cannot be judged (fewer than 20 measurements)" in read_p95.note
    none = {"p50": None, "p95": None, "p99": None, "count": 0}
    assert compare(figures(read=1), figures(read=1, read_ms=none)).failed  # the after side read nothing
    assert compare(figures(read=1), figures(read=1, vault_unwrap_ms=none)).failed


def test_a_kind_measured_on_one_side_only_is_shown_not_dropped():
    item = {"p50": 0.05, "p95": 0.05, "p99": 0.05, "count": 100}
    before = figures(read=1, decrypt_ms={"item": item, "comment": item})
    after = figures(read=1, decrypt_ms={"item": item, "api_key": item})
    rows = {row.figure: row for row in compare(before, after).rows}
    assert (rows["decrypt comment p95"].after, rows["decrypt comment p95"].note) == (None, "not measured after")
    assert (rows["decrypt api_key p95"].before, rows["decrypt api_key p95"].note) == (None, "not measured before")
    assert [f for f in rows if f.startswith("decrypt") and f.endswith("p95")] == [
        "decrypt item p95",
        "decrypt comment p95",
        "decrypt api_key p95",
    ]


def test_baselines_of_two_stores_are_refused_naming_both():
    with pytest.raises(ConfigError, match="sqlite:/a/tracker.db before, sqlite:/b/tracker.db after"):
        compare(figures(read=1, store="sqlite:/a/tracker.db"), figures(read=1, store="sqlite:/b/tracker.db"))


def test_more_failures_per_document_after_fail_the_comparison():
    clean, broken = figures(read=1), figures(read=1, failures={"authentication_failed": 1})
    rows = compare(clean, broken).rows
    assert rows[-1].figure == "failures authentication_failed" and rows[-1].verdict == "fail"
    assert not compare(broken, broken).failed and not compare(broken, clean).failed
    assert not compare(broken, replace(broken, documents=200)).failed  # the same one in twice the documents


def test_a_field_that_fails_to_decrypt_and_an_unreadable_row_are_counted_and_the_baseline_completes(tmp_path):
    rotation = make_rotation(tmp_path, 40)
    store = rotation.store()
    victim = next(d for d in store.scan(WHOLE, None, 100).documents if d.body["type"] == "item")
    body = json.loads(json.dumps(victim.body))
    raw = bytearray(envelope.b64decode(body["description"]["ct"], "ct"))
    raw[3] ^= 1
    body["description"]["ct"] = envelope.b64encode(bytes(raw))
    store.replace(body, victim.etag)
    with closing(sqlite3.connect(rotation.home / "tracker.db")) as db, db:
        db.execute(
            "INSERT INTO documents (epk, pk, id, etag, body) VALUES (?, ?, ?, ?, ?)",
            (effective_partition_key("p"), "p", "garbled", '"raw"', '{"id": "garbled", "productId": "p", "title": "'),
        )

    baseline = baseline_of(rotation)
    assert baseline.documents == 41 and baseline.read_ms.count == 40
    assert baseline.failures == {"authentication_failed": 1, "invalid_json": 1}
    assert sum(p.count for p in baseline.decrypt_ms.values()) > 0
