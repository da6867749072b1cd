"""``reencrypt bench`` end to end: real worker processes, real Redis, a small container; and
its in-process references over a row the store cannot parse.

No timing is asserted (this machine may be shared and slow). What is asserted is what the
design guarantees whatever the speed: every document and field is swept, rates are positive,
and the unwrap counts obey the per-process DEK cache: with one worker process every distinct
source DEK is unwrapped exactly once; with W processes, each with its own cache, at least
once and at most W times.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing

import pytest

from coordinator.bench import references
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.documents import find_envelopes
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.stores.sqlite import SqliteStore, effective_partition_key

from conftest import make_rotation, run_cli

DOCS, SAMPLE, DEK_SHARE = 300, 100, 64


def _distinct_deks(db_path) -> tuple[int, int]:
    """(encrypted fields, distinct wrapped DEKs) in the seeded container, counted independently."""
    fields, deks = 0, set()
    with sqlite3.connect(db_path) as db:
        for (text,) in db.execute("SELECT body FROM documents"):
            for _, sealed in find_envelopes(json.loads(text)):
                fields += 1
                deks.add((sealed["kid"], sealed["dek"]))
    return fields, len(deks)


def _fields_of_first(db_path, count: int) -> int:
    """Encrypted fields among the first ``count`` documents in scan order (EPK, partition key, id)."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT body FROM documents ORDER BY epk, pk, id LIMIT ?", (count,)).fetchall()
    return sum(1 for (text,) in rows for _ in find_envelopes(json.loads(text)))


@pytest.mark.slow
def test_bench_json_reports_every_figure_with_sane_values(tmp_path, redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_")}
    env.update(REENCRYPT_HOME=str(tmp_path / "home"), REDIS_URL=redis_url)
    result = run_cli("bench", "--docs", str(DOCS), "--sample", str(SAMPLE), "--json", env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)

    for name in (
        "docs",
        "fleet_docs_per_s",
        "w1_docs_per_s",
        "naive_docs_per_s",
        "bound_docs_per_s",
        "unwraps",
        "distinct_source_deks",
        "peak_rss_mb_per_worker",
        "fleet_vs_naive",
        "w2_vs_w1",
        "fleet_per_core_vs_bound",
        "targets",
        "runs",
    ):
        assert name in report, name
    assert report["docs"] == DOCS
    assert report["sample"] == SAMPLE
    assert report["dek_share"] == DEK_SHARE  # the seed's default
    for rate in ("fleet_docs_per_s", "w1_docs_per_s", "naive_docs_per_s", "bound_docs_per_s"):
        assert report[rate] > 0, rate
    assert report["fleet_vs_naive"] == pytest.approx(report["fleet_docs_per_s"] / report["naive_docs_per_s"], rel=0.01)
    assert report["w2_vs_w1"] == pytest.approx(report["fleet_docs_per_s"] / report["w1_docs_per_s"], rel=0.01)

    # The container, counted here from the cached seed file, not from the bench's own figures.
    seeded = tmp_path / "home" / "bench" / "cache" / f"docs{DOCS}-share{DEK_SHARE}-seed1" / "tracker.db"
    fields, distinct = _distinct_deks(seeded)
    assert report["distinct_source_deks"] == distinct
    assert 1 <= distinct <= -(-DOCS // DEK_SHARE)
    assert report["container"]["fields"] == fields

    fleets = {run["workers"]: run for run in report["runs"]["fleet"]}
    assert sorted(fleets) == [1, 2]
    for workers, run in fleets.items():
        assert run["status"] == "completed" and run["failures"] == 0
        assert run["documents"] == DOCS and run["fields"] == fields  # every field moved
        # Per-process caches: each distinct DEK unwrapped once per process that meets it.
        assert distinct <= run["unwraps"] <= distinct * workers
        assert 0 < run["dek_cache_hit_ratio"] <= 1
        assert len(run["peak_rss_mb_per_worker"]) == workers
        assert all(10 < mb < 2048 for mb in run["peak_rss_mb_per_worker"])
    assert fleets[1]["unwraps"] == distinct  # one process, one cache, nothing evicted at this size
    assert report["unwraps"] == fleets[2]["unwraps"]
    assert report["peak_rss_mb_per_worker"] == max(fleets[2]["peak_rss_mb_per_worker"])

    runs = report["runs"]
    naive, bound, warm, store_only = runs["naive"], runs["bound"], runs["rekey_warm"], runs["store_only"]
    assert naive["documents"] == SAMPLE
    assert store_only["documents"] == DOCS
    assert store_only["docs_per_s"] > 0 and store_only["unwraps"] == 0
    assert naive["unwraps"] == naive["fields"] > 0  # no cache: one unwrap per field
    # The bound re-keys the whole container once, from v1, with one cache that starts cold
    # (store only, which runs after it in each span, writes the bodies back unchanged).
    assert bound["documents"] == DOCS and bound["fields"] == fields
    assert bound["unwraps"] == distinct
    assert warm["unwraps"] == 0 and report["rekey_warm_docs_per_s"] == warm["docs_per_s"] > 0
    # Measured in three spans around the two fleets; the bound's and naive's spans take
    # consecutive parts of what they cover, so every field is re-keyed exactly once by each
    # (none found already on target).
    for run in (naive, bound, warm, store_only):
        assert len(run["span_docs_per_s"]) == 3 and all(rate > 0 for rate in run["span_docs_per_s"])
    assert naive["fields"] == _fields_of_first(seeded, SAMPLE)

    # Re-keying plus the store, serially: the two single-process costs per document added up.
    assert report["rekey_and_store_docs_per_s"] == pytest.approx(
        1 / (1 / bound["docs_per_s"] + 1 / store_only["docs_per_s"]), rel=0.01
    )

    assert {t["result"] for t in report["targets"]} <= {"PASS", "MISS", "n/a"}
    assert len(report["targets"]) == 7
    assert report["w1_per_core_vs_bound"] == pytest.approx(
        report["w1_docs_per_s"] / report["bound_docs_per_s"], rel=0.01
    )


def test_references_scan_an_unreadable_row_but_never_write_it(tmp_path, monkeypatch):
    """Store only writes back what it scans, except a row the store could not parse: the body it
    returns for one is a stand-in (id and partition key), and writing it would replace the row."""
    monkeypatch.setattr(references, "WARM_MIN_S", 0.01)
    rotation = make_rotation(tmp_path, 20)
    garbled = '{"id": "garbled", "productId": "p", "title": "'
    with closing(sqlite3.connect(tmp_path / "tracker.db")) as db, db:
        db.execute(
            "INSERT INTO documents (epk, pk, id, etag, body) VALUES (?, ?, ?, ?, ?)",
            (effective_partition_key("p"), "p", "garbled", '"raw"', garbled),
        )
    store = SqliteStore(tmp_path / "tracker.db", create=False)
    provider = LocalKeyProvider(tmp_path / "keyring.json")
    spans = references.ReferenceSpans(
        store,
        references.load_sample(store, 21),
        provider,
        rotation.v2,
        load_settings(),
        spans=1,
        container_documents=21,
    )
    spans.measure_span(lambda _: None)
    runs = spans.results()
    store.close()

    assert runs.store_only.documents == runs.bound.documents == runs.naive.documents == 21
    with closing(sqlite3.connect(tmp_path / "tracker.db")) as db:
        assert db.execute("SELECT etag, CAST(body AS TEXT) FROM documents WHERE id = 'garbled'").fetchone() == (
            '"raw"',
            garbled,
        )
