"""Stale writers end to end (issue 17), as an operator notices one: the real ``reencrypt`` CLI in
subprocesses, a real Celery worker, a private Redis, a SQLite container under per-product keys.

After ``keys rotate --product product-001``, a test "tracker writer" thread keeps writing some of
product-001's documents with a field encrypted under the OLD key id (the envelope library with
an explicit kid, through a conditional replace, as a tracker instance that missed the new key
id would), before, during and after a sweep. It must be named, by count and by example
(document id, product, time, kid), in ``sweep status --json``, ``verify --json`` (which fails
naming stale writers as the reason) and the exporter's metrics; ``stale-writes`` exits 1 while
it writes and 0 once it has been quiet for ``--quiet-for``. Nothing the sweep itself wrote is
ever counted.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from coordinator.context import Context
from coordinator.exporter import Exporter, SweepCollector
from tracker_reencrypt import envelope
from tracker_reencrypt.config import Settings
from tracker_reencrypt.documents import location
from tracker_reencrypt.errors import ConflictError
from tracker_reencrypt.fleet import queue_for
from tracker_reencrypt.keys import open_key_provider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.products import epoch_seconds
from tracker_reencrypt.stale import GRACE_S
from tracker_reencrypt.stores import open_store, store_fingerprint

from conftest import FAST_RECOVERY, Fleet, run_cli

KEY_NAME = "tracker-mek-{productId}"
PRODUCT = "product-001"
WRITTEN = 4  # documents of PRODUCT the stale writer keeps writing


class Tracker:
    """The container and its keyring, as the CLI and conftest.Fleet reach them."""

    def __init__(self, home: Path, redis_url: str) -> None:
        self.home, self.redis_url = home, redis_url
        self.store_url = f"sqlite:///{home / 'tracker.db'}"
        self.keys_url = f"local:{home / 'keyring.json'}"

    def queue(self) -> str:
        return queue_for(store_fingerprint(self.store_url))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_")}
        env.update(
            REENCRYPT_STORE=self.store_url,
            REENCRYPT_KEYS=self.keys_url,
            REENCRYPT_KEY_NAME=KEY_NAME,
            REDIS_URL=self.redis_url,
            REENCRYPT_HOME=str(self.home / "state"),
            **FAST_RECOVERY,
        )
        env.update(extra)
        return env

    def cli(self, *args: str):
        return run_cli(*args, env=self.env())

    def cli_json(self, *args: str, code: int = 0):
        result = self.cli(*args, "--json")
        assert result.returncode == code, f"reencrypt {' '.join(args)}: exit {result.returncode}: {result.stderr}"
        return json.loads(result.stdout)


class StaleWriter(threading.Thread):
    """A tracker instance that missed the rotation: it writes ``ids`` over and over, each time a
    field encrypted under ``kid``, through a conditional replace (a lost race is simply retried)."""

    def __init__(self, tracker: Tracker, ids: list[str], kid: str) -> None:
        super().__init__(daemon=True)
        self.tracker, self.ids, self.kid = tracker, ids, kid
        self.stop = threading.Event()
        self.writes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            store = open_store(self.tracker.store_url)
            keyring = Keyring(open_key_provider(self.tracker.keys_url, KEY_NAME))
            while not self.stop.wait(0.05):
                document_id = self.ids[self.writes % len(self.ids)]
                document = store.read(document_id, PRODUCT)
                body = {**document.body, "counter": self.writes}
                where = location(body, PRODUCT, ("trackerNote",))
                body["trackerNote"] = envelope.encrypt(f"note {self.writes}", where, keyring, self.kid)
                try:
                    store.replace(body, document.etag)
                except ConflictError:
                    continue  # the sweep wrote it meanwhile: write again, as the tracker would
                self.writes += 1
            store.close()
        except BaseException as error:  # noqa: BLE001 - surfaced by the test
            self.error = error


def exporter_text(tracker: Tracker) -> str:
    """The exporter's /metrics text, from one read of the durable state."""
    ctx = Context(
        Settings(store=tracker.store_url, keys=tracker.keys_url, key_name=KEY_NAME, redis_url=tracker.redis_url)
    )
    exporter = Exporter(ctx)
    exporter.refresh()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SweepCollector(exporter))
    return generate_latest(registry).decode()


@pytest.fixture
def tracker(tmp_path, redis_url) -> Tracker:
    return Tracker(tmp_path, redis_url)


def test_a_stale_writer_is_named_by_count_and_example_everywhere_and_the_wait_ends_once_it_stops(tracker, tmp_path):
    seeded = tracker.cli_json("seed", "--docs", "60", "--products", "2")
    old = seeded["kids"][PRODUCT]
    fleet = Fleet(tracker, tmp_path / "logs")  # type: ignore[arg-type]  (the shape Fleet needs)
    fleet.log_dir.mkdir()
    fleet.start(1)  # starting while the key rotates
    writer = None
    try:
        new = tracker.cli_json("keys", "rotate", "--product", PRODUCT)
        rotated_at = time.time()
        new_kid = new[0]["kid"]
        store = open_store(tracker.store_url)
        ids = [d.id for d in store.written_after(PRODUCT, 0.0, None, 100).documents][:WRITTEN]
        untouched = {d.id: d.etag for d in store.written_after("product-000", 0.0, None, 100).documents}
        writer = StaleWriter(tracker, ids, old)
        writer.start()

        time.sleep(max(0.0, rotated_at + GRACE_S + 1.5 - time.time()))  # past the grace: stale from here
        watching = tracker.cli_json("stale-writes", "--product", PRODUCT, "--quiet-for", "3", code=1)
        assert watching["stale_writes"] >= 1 and not watching["quiet"]
        assert {e["document_id"] for e in watching["stale_write_examples"]} <= set(ids)

        swept = tracker.cli_json("sweep", "start", "--product", PRODUCT, "--to", "current", "--wait")
        assert swept["sweep"]["status"] == "completed"
        status = tracker.cli_json("sweep", "status")
        assert status["stale_writes"] >= 1
        examples = status["stale_write_examples"]
        # Only the writer's documents: the sweep rewrote every other document of the product after
        # the rotation, on the new version, and none of those is counted.
        assert examples and {e["document_id"] for e in examples} <= set(ids)
        assert {(e["product"], e["kid"], e["current_kid"]) for e in examples} == {(PRODUCT, old, new_kid)}
        assert all(rotated_at + GRACE_S - 1 < e["ts"] < time.time() for e in examples)

        verified = tracker.cli_json("verify", "--product", PRODUCT, "--current", code=1)  # the writer writes on
        assert not verified["ok"] and 1 <= verified["stale_writes"] <= WRITTEN
        assert verified["stale_write_fields"] == verified["off_target"]  # every field left behind is the writer's
        assert "written after rotation under a retired version" in verified["reason"]
        assert "a tracker instance still uses the old key id" in verified["reason"]
        assert {(e["product"], e["kid"]) for e in verified["stale_write_examples"]} == {(PRODUCT, old)}

        metrics = exporter_text(tracker)
        line = next(line for line in metrics.splitlines() if line.startswith("reencrypt_stale_writes_total{"))
        assert f'sweep="{status["sweep"]["id"]}"' in line and float(line.split()[-1]) == status["stale_writes"]

        writer.stop.set()
        writer.join(5)
        assert writer.error is None and writer.writes > 0
        stopped = time.time()
        quiet = tracker.cli_json(
            "stale-writes", "--product", PRODUCT, "--quiet-for", "2", "--wait", "--interval", "0.3"
        )
        assert quiet["quiet"] and quiet["stale_writes"] >= 1 and time.time() - stopped >= 2
        assert quiet["products"][PRODUCT]["current_kid"] == new_kid
        after = {d.id: d.etag for d in store.written_after("product-000", 0.0, None, 100).documents}
        assert after == untouched  # the other product was never read for writing
        store.close()
    finally:
        if writer is not None:
            writer.stop.set()
        fleet.stop()


def test_right_after_a_rotation_the_gate_waits_for_quiet_for_past_the_grace_and_refuses_what_it_cannot_judge(tracker):
    """The runbook's step run at once after ``keys rotate``: nothing written since is judged yet,
    so --quiet-for 300 fails at once (saying how long is left) and --quiet-for 2 --wait (the
    default --interval of 10 s) returns once 2 s past the grace have been seen, not earlier and
    not an interval later. A product the store does not hold fails the gate, with or without --wait."""
    tracker.cli_json("seed", "--docs", "20", "--products", "2")
    tracker.cli_json("keys", "rotate", "--product", PRODUCT)
    versions = tracker.cli_json("keys", "list", "--product", PRODUCT)
    since_s = next(epoch_seconds(v["current_since"]) for v in versions if v["current"])
    assert since_s is not None

    at_once = tracker.cli_json("stale-writes", "--product", PRODUCT, "--quiet-for", "300", code=1)
    assert not at_once["quiet"] and at_once["stale_writes"] == 0 and at_once["quiet_left_s"] > 290
    assert "s left" in at_once["reason"]

    waited = tracker.cli_json("stale-writes", "--product", PRODUCT, "--quiet-for", "2", "--wait")
    ended = time.time()
    assert waited["quiet"] and waited["products_checked"] == 1
    assert since_s + GRACE_S + 2 <= ended < since_s + 1 + GRACE_S + 2 + 4  # current_since is whole seconds

    for wait in ([], ["--wait"]):
        unknown = tracker.cli_json("stale-writes", "--product", "product-0007", "--quiet-for", "0", *wait, code=1)
        assert unknown["products_checked"] == 0 and "product-0007" in unknown["products_not_checked"]
