"""``reencrypt bench`` end to end: real worker processes, real Redis, a small container; and
its in-process references over a row the store cannot parse. The remote-vault mode end to end
against the loopback vault, the arithmetic of its call windows, and the dry run's estimate
from a measured vault latency.

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

from coordinator import steering
from coordinator.bench import references, vault
from coordinator.bench.results import vault_calls
from coordinator.context import Context
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.documents import find_envelopes
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.keys.keyring import DEFAULT_UNWRAP_CONCURRENCY
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.keys.products import ProductKeys
from tracker_reencrypt.seed import seed_store, seeding_keyring
from tracker_reencrypt.stores.sqlite import SqliteStore, effective_partition_key

from conftest import make_rotation, run_cli
from keyvault_server import KeyVaultServer
from loopback_vault import open_provider

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


# -- the remote-vault mode ---------------------------------------------------------------------

VAULT_DOCS, BUDGET, POOL = 120, 150.0, DEFAULT_UNWRAP_CONCURRENCY


@pytest.mark.slow
def test_bench_remote_vault_mode_sweeps_through_the_loopback_vault(tmp_path, redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_")}
    env.update(REENCRYPT_HOME=str(tmp_path / "home"), REDIS_URL=redis_url)
    args = ["--docs", str(VAULT_DOCS), "--dek-share", "1", "--slices", "4", "--vault-latency-ms", "5"]
    result = run_cli("bench", *args, "--kv-ops-per-s", str(BUDGET), "--json", env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)

    assert report["mode"] == "remote-vault" and report["vault_latency_ms"] == 5 and report["kv_ops_per_s"] == BUDGET
    assert report["docs"] == VAULT_DOCS and report["dek_share"] == 1
    assert report["worker_settings"]["unwrap_concurrency"] == POOL
    distinct = report["distinct_source_deks"]
    assert 0 < distinct <= VAULT_DOCS  # a data key per document with fields
    fleets = {fleet["workers"]: fleet for fleet in report["fleets"]}
    runs = {run["workers"]: run for run in report["runs"]["fleet"]}
    assert sorted(fleets) == sorted(runs) == [1, 2]
    for workers, fleet in fleets.items():
        run = runs[workers]
        assert run["status"] == "completed" and run["failures"] == 0 and run["documents"] == VAULT_DOCS
        assert distinct <= run["unwraps"] <= workers * distinct
        # The vault's own record agrees with the workers' counters: every unwrap reached it.
        assert run["vault"]["unwraps"] == run["unwraps"] == fleet["unwraps"]
        assert run["vault"]["calls"] >= run["unwraps"]
        assert 1 <= fleet["max_in_flight"] <= workers * POOL
        assert fleet["limit_per_s"] == BUDGET
        assert fleet["sequential_bound_per_s"] == pytest.approx(workers / 0.005)
        assert fleet["mean_latency_ms"] >= 5  # the vault waits 5 ms in every call
        assert fleet["burst_used_calls"] >= 1
        assert len(fleet["peak_rss_mb_per_worker"]) == workers
    assert fleets[1]["unwraps"] == distinct
    names = [target["name"] for target in report["targets"]]
    assert any("share of the budget" in name for name in names)
    assert sum("every 2 s window" in name for name in names) == 2
    # 5 ms is not a latency the targets are stated for: measured, judged n/a.
    assert report["targets"][0]["result"] == "n/a"
    assert {t["result"] for t in report["targets"]} <= {"PASS", "MISS", "n/a"}


def test_the_remote_vault_mode_names_what_a_checkout_without_tests_lacks(tmp_path, monkeypatch):
    monkeypatch.setattr(vault, "TESTS_DIR", tmp_path)
    with pytest.raises(ConfigError) as refused:
        vault.LoopbackVault(0.01)
    message = str(refused.value)
    assert "\n" not in message and "source checkout" in message
    assert all(name in message for name in ("keyvault_server.py", "loopback_vault.py", "vault_worker.py"))


def test_call_windows_and_the_burst_a_token_bucket_needed():
    rate = 100.0
    # 50 calls at once (a full bucket's burst), then one every 1/rate seconds for 5 s.
    starts = [0.0] * 50 + [index / rate for index in range(1, 501)]
    calls = vault_calls({"unwrap_key": starts, "get_key": [0.0]}, max_in_flight=8, limit_per_s=rate)
    assert calls.unwraps == 550 and calls.calls == 551
    assert calls.burst_used_calls == pytest.approx(51, abs=1)  # the burst, the key read and the first call
    assert calls.max_window_per_s == pytest.approx((51 + 200) / 2, abs=1)  # the first 2 s hold the burst
    assert calls.max_window_after_first_per_s == pytest.approx(rate, abs=1)  # later windows: the rate
    assert calls.steady_unwraps_per_s == pytest.approx(rate, abs=1)
    assert calls.limit_per_s == rate and calls.max_in_flight == 8


def test_dry_run_estimate_uses_the_measured_vault_latency_and_the_pool(tmp_path):
    """The dry run times a few unwraps of the container's own data keys: at 30 ms a call, one
    process with 8 in flight makes at most ~8/0.03 unwraps/s, whatever budget is given above it."""
    with KeyVaultServer() as server:
        provider = open_provider(server.url, vault.KEY_NAME, server.cert_path)
        try:
            provider.init()
            store = SqliteStore(tmp_path / "tracker.db")
            seed_store(store, seeding_keyring(provider), 60, dek_share=1)
            store.close()
            target = provider.rotate().kid
            server.latency_s["unwrap_key"] = 0.03

            def dry_run(budget: float | None) -> dict:
                ctx = Context(load_settings(store=f"sqlite:///{tmp_path / 'tracker.db'}", keys=server.url))
                ctx.keys = ProductKeys(provider)  # a fresh keyring, as each 'sweep start --dry-run' has
                limits = steering.LimitFlags(kv_ops_per_s=budget)
                return steering.dry_run(ctx, to=target, sources=[], limits=limits)["estimate"]

            fast_budget, slow_budget, none = dry_run(10_000), dry_run(5), dry_run(None)
        finally:
            provider.close()

    assert fast_budget["vault_latency_ms"] >= 30 and fast_budget["unwrap_concurrency"] == POOL
    assert fast_budget["bound_by"] == "Key Vault latency"
    assert fast_budget["kv_ops_per_s"] == pytest.approx(POOL * 1000 / fast_budget["vault_latency_ms"], rel=0.01)
    assert fast_budget["seconds"] == pytest.approx(fast_budget["kv_ops"] / fast_budget["kv_ops_per_s"], rel=0.01)
    assert "one process assumed" in fast_budget["text"]
    assert slow_budget["bound_by"] == "Key Vault" and slow_budget["kv_ops_per_s"] == 5
    # No budget: the process's own ceiling (200/s) or its pool at the measured latency, the lower.
    pool_bound = POOL * 1000 / none["vault_latency_ms"]
    assert none["kv_ops_per_s"] == pytest.approx(min(200, pool_bound), rel=0.01)
    assert none["bound_by"] == ("the per-process unwrap ceiling" if pool_bound > 200 else "Key Vault latency")
    assert none["seconds"] == pytest.approx(none["kv_ops"] / none["kv_ops_per_s"], rel=0.01)
    assert none["text"].startswith("no budget given")
