"""Per-product MEKs end to end, as an operator runs the tracker's rotations: the real
``reencrypt`` CLI in subprocesses, real Celery worker processes, a private Redis, and the
container on SQLite or on the Cosmos-protocol test server (tests/cosmos_server.py).

The key name is ``tracker-mek-{productId}``: one local JWKS keyring holds every product's key,
and ``seed --products 4`` creates each product's key and encrypts its documents under it.

- one product's rotation (env line, dotenv update, lagging verify, the disable gate, a sweep
  scoped to that product leaving every other product's documents byte-identical, rollback
  line) and an unmappable or keyless product met by a sweep to ``current`` run on both
  backends: they are what the Cosmos single-partition queries must get right;
- rotating every product (then rolling one back), the gate per product, a target of another
  product refused, and a one-key container run on SQLite only: they add no Cosmos-specific
  path (the product ranges and scans are the ones the first two already read), and each
  Cosmos case costs a container, a seed and a worker over HTTPS.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from azure.cosmos import PartitionKey

from tracker_reencrypt import envelope
from tracker_reencrypt.documents import check_document, location
from tracker_reencrypt.fleet import queue_for
from tracker_reencrypt.keys import open_key_provider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import DocumentStore, open_store, store_fingerprint
from tracker_reencrypt.stores.cosmos import CosmosStore

from conftest import FAST_RECOVERY, Fleet, run_cli
from cosmos_server import cosmos_server  # noqa: F401  (pytest fixture)

BACKENDS = ["sqlite", pytest.param("cosmos", marks=pytest.mark.cosmos)]
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
KEY_NAME = "tracker-mek-{productId}"
FIELD = "productId"
PRODUCTS = [f"product-{n:03d}" for n in range(4)]
DOCUMENTS = 240
#: Small batches, for the CLI (a product is cut into slices of about this many documents)
#: and the workers alike: product-001's ~60 documents become several slices.
SETTINGS = {**FAST_RECOVERY, "REENCRYPT_BATCH_DOCUMENTS": "20"}


# -- the container, its keys, and the fleet --------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where a container lives: its store URL and the environment that reaches it."""

    backend: str
    store_url: str
    store_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Tracker:
    """A tracker container and its keyring, as the CLI and the workers reach them
    (the shape conftest.Fleet starts workers for: ``queue()`` and ``env()``)."""

    home: Path
    place: Place
    redis_url: str
    key_name: str | None = KEY_NAME

    @property
    def keys_url(self) -> str:
        return f"local:{self.home / 'keyring.json'}"

    def queue(self) -> str:
        return queue_for(store_fingerprint(self.place.store_url))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_")}
        env.update(
            REENCRYPT_STORE=self.place.store_url,
            REENCRYPT_KEYS=self.keys_url,
            REDIS_URL=self.redis_url,
            REENCRYPT_HOME=str(self.home / "state"),
            **self.place.store_env,
            **SETTINGS,
        )
        if self.key_name is not None:
            env["REENCRYPT_KEY_NAME"] = self.key_name
        env.update(extra)
        return env

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return run_cli(*args, env=self.env(), timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        """A command that must succeed, with ``--json``; its parsed output."""
        result = self.cli(*args, "--json")
        assert result.returncode == 0, f"reencrypt {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    def store(self) -> DocumentStore:
        """The container opened directly, as another process would (never created here)."""
        if self.place.backend == "cosmos":
            return CosmosStore.from_url(
                self.place.store_url, partition_key_field=FIELD, environ=self.place.store_env, create=False
            )
        return open_store(self.place.store_url, partition_key_field=FIELD)

    def keyring(self) -> Keyring:
        return Keyring(open_key_provider(self.keys_url, self.key_name or ""))

    def versions(self) -> dict[str, dict]:
        """``keys list --json`` by kid."""
        return {version["kid"]: version for version in self.cli_json("keys", "list")}


@pytest.fixture(scope="module")
def cosmos_database(cosmos_server):  # noqa: F811
    client = cosmos_server.client()
    yield client.create_database_if_not_exists("product-rotation")
    client.close()


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Place:
    if request.param == "sqlite":
        return Place("sqlite", f"sqlite:///{tmp_path / 'tracker.db'}")
    server = request.getfixturevalue("cosmos_server")
    database = request.getfixturevalue("cosmos_database")
    # The tracker owns its container: reencrypt never creates one (only its state container beside it).
    name = f"tracker-{uuid.uuid4().hex[:12]}"
    database.create_container(name, partition_key=PartitionKey(path=f"/{FIELD}"))
    return Place("cosmos", server.url(database.id, name), server.env())


@pytest.fixture
def tracker(backend, tmp_path, redis_url) -> Tracker:
    """A container of 4 products, each product's documents under its own key's v1."""
    made = Tracker(tmp_path, backend, redis_url)
    seeded = made.cli_json("seed", "--docs", str(DOCUMENTS), "--products", str(len(PRODUCTS)))
    assert seeded["documents"] == DOCUMENTS
    assert seeded["kids"] == {product: f"tracker-mek-{product}/v1" for product in PRODUCTS}
    return made


def start_workers(tracker: Tracker, log_dir: Path) -> Fleet:
    log_dir.mkdir()
    fleet = Fleet(tracker, log_dir)  # type: ignore[arg-type]  # any object with queue() and env()
    fleet.start(count=1, concurrency=2, **SETTINGS)
    return fleet


@pytest.fixture
def workers(tracker, tmp_path):
    fleet = start_workers(tracker, tmp_path / "logs")
    yield fleet
    fleet.stop()


# -- reading the container directly ----------------------------------------------------------


def snapshot(tracker: Tracker) -> dict[tuple[str, str], tuple[str, str]]:
    """Every document by (product, id): its body as JSON text and its ETag."""
    store = tracker.store()
    documents = {}
    try:
        for feed_range in store.feed_ranges(1):
            continuation = None
            while True:
                page = store.scan(feed_range, continuation, 500)
                for stored in page.documents:
                    text = json.dumps(stored.body, sort_keys=True, separators=(",", ":"))
                    documents[(str(stored.body.get(FIELD)), stored.id)] = (text, stored.etag)
                continuation = page.continuation
                if continuation is None:
                    break
    finally:
        store.close()
    return documents


def kids_by_product(tracker: Tracker) -> dict[str, Counter]:
    """How many fields of each product are on each kid; every field must decrypt where it is."""
    keyring, by_product = tracker.keyring(), {}
    for (product, document_id), (text, _) in snapshot(tracker).items():
        for check in check_document(json.loads(text), product, keyring):
            assert check.decrypts, (product, document_id, check)
            by_product.setdefault(product, Counter())[check.kid] += 1
    return by_product


def documents_of(documents: dict, product: str) -> dict:
    return {key: value for key, value in documents.items() if key[0] == product}


def one_line(result: subprocess.CompletedProcess) -> str:
    """A refusal: non-zero exit, nothing on stdout, one line on stderr (no traceback)."""
    assert result.returncode != 0 and result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def env_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("TRACKER_MEK_ID_")]


def insert_encrypted(tracker: Tracker, document_id: str, product: str, kid: str) -> None:
    """A tracker document written by hand (as the tracker would), one field under ``kid``."""
    body = {"id": document_id, FIELD: product, "type": "comment", "author": "Ada"}
    where = location(body, product, ("body",))
    body["body"] = envelope.encrypt("Call Ada on +1-555-0100", where, tracker.keyring(), kid)
    store = tracker.store()
    try:
        store.create(body)
    finally:
        store.close()


# -- 1. one product's rotation ---------------------------------------------------------------


def test_rotating_one_product_moves_only_its_documents(tracker, workers, tmp_path):
    one, old, new = "product-001", "tracker-mek-product-001/v1", "tracker-mek-product-001/v2"
    others = [product for product in PRODUCTS if product != one]
    env_file = tmp_path / "tracker.env"
    before_env = [
        "# tracker-service\n",
        "LOG_LEVEL=info\n",
        "\n",
        f"TRACKER_MEK_ID_PRODUCT_001={old}\n",
        "export TRACKER_MEK_ID_PRODUCT_000=tracker-mek-product-000/v1\n",
        "FEATURE_FLAGS='a b'\n",
    ]
    env_file.write_text("".join(before_env))
    before = snapshot(tracker)

    rotated = tracker.cli("keys", "rotate", "--product", one, "--env-file", str(env_file))
    assert rotated.returncode == 0, rotated.stderr
    assert env_lines(rotated.stdout) == [f"TRACKER_MEK_ID_PRODUCT_001={new}"]
    after_env = list(before_env)
    after_env[3] = f"TRACKER_MEK_ID_PRODUCT_001={new}\n"  # replaced where it was, every other line kept
    assert env_file.read_text() == "".join(after_env)

    lagging = tracker.cli("verify", "--current", "--json")
    assert lagging.returncode == 1, lagging.stderr
    report = json.loads(lagging.stdout)
    assert report["ok"] is False
    assert set(report["lagging_products"]) == {one}
    assert report["lagging_products"][one] == report["off_target"] == report["fields_by_kid"][old]

    refusal = one_line(tracker.cli("keys", "disable", old))
    assert old in refusal and "still use" in refusal
    versions = tracker.versions()
    assert versions[old]["enabled"] is True and versions[old]["current"] is False
    assert sorted(kid for kid, version in versions.items() if version["current"]) == sorted(
        [new] + [f"tracker-mek-{product}/v1" for product in others]
    )

    result = tracker.cli("sweep", "start", "--product", one, "--to", "current", "--wait", "--json", timeout=180)
    assert result.returncode == 0, result.stderr + workers.logs()[-3000:]
    swept = json.loads(result.stdout)
    assert swept["sweep"]["status"] == "completed" and swept["sweep"]["products"] == [one]
    assert swept["sweep"]["slice_count"] > 1  # ~60 documents in slices of 20: the product is cut by id
    assert swept["totals"]["documents_scanned"] == len(documents_of(before, one))  # its partition only
    assert swept["totals"]["failures"] == 0
    assert set(swept["products"]) == {one}

    after = snapshot(tracker)
    assert len(after) == DOCUMENTS
    for product in others:
        assert documents_of(after, product) == documents_of(before, product), f"{product}'s documents were written"
    kids = kids_by_product(tracker)
    assert set(kids[one]) == {new}
    assert {product: set(kids[product]) for product in others} == {
        product: {f"tracker-mek-{product}/v1"} for product in others
    }
    assert swept["totals"]["fields_reencrypted"] == kids[one][new]

    proof = tracker.cli("verify", "--product", one, "--expect", new, "--json")
    assert proof.returncode == 0 and json.loads(proof.stdout)["ok"] is True, proof.stdout + proof.stderr
    assert tracker.cli("verify", "--current").returncode == 0

    [disabled] = tracker.cli_json("keys", "disable", old)
    assert (disabled["kid"], disabled["product"], disabled["enabled"]) == (old, one, False)

    rollback = tracker.cli("keys", "env", "--product", one, "--kid", old)
    assert rollback.returncode == 0, rollback.stderr
    assert rollback.stdout == f"TRACKER_MEK_ID_PRODUCT_001={old}\n"

    audit = tracker.cli_json("audit", "--check")
    assert audit["problems"] == []
    named = [(e["action"], e["details"].get("product"), e["details"].get("products")) for e in audit["entries"]]
    assert ("key rotated", one, None) in named and ("key disabled", one, None) in named
    assert ("sweep started", None, [one]) in named


# -- 2. the scheduled rotation: every product ------------------------------------------------


@SQLITE_ONLY
def test_rotating_every_product_then_sweeping_to_current(tracker, workers, tmp_path):
    env_file = tmp_path / "tracker.env"
    env_file.write_text("APP=tracker\nexport TRACKER_MEK_ID_PRODUCT_002=tracker-mek-product-002/v1\n")
    rotated = tracker.cli("keys", "rotate", "--all-products", "--env-file", str(env_file), "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = {product: f"tracker-mek-{product}/v2" for product in PRODUCTS}
    assert {version["product"]: version["kid"] for version in json.loads(rotated.stdout)} == new
    assert all(version["current"] for version in json.loads(rotated.stdout))
    lines = {product: f"TRACKER_MEK_ID_{product.upper().replace('-', '_')}={kid}" for product, kid in new.items()}
    assert env_file.read_text().splitlines() == [
        "APP=tracker",
        f"export {lines['product-002']}",  # replaced in place, its export kept; the others appended
        *(line for product, line in lines.items() if product != "product-002"),
    ]
    assert tracker.cli("keys", "env", "--all-products").stdout.splitlines() == list(lines.values())

    # A fixed target is one product's key: the sweep towards it reads that product alone.
    before = snapshot(tracker)
    first = tracker.cli("sweep", "start", "--to", new["product-000"], "--wait", "--json", timeout=180)
    assert first.returncode == 0, first.stderr + workers.logs()[-3000:]
    assert json.loads(first.stdout)["sweep"]["products"] == ["product-000"]
    after = snapshot(tracker)
    assert {key: value for key, value in after.items() if key[0] != "product-000"} == {
        key: value for key, value in before.items() if key[0] != "product-000"
    }

    result = tracker.cli("sweep", "start", "--to", "current", "--wait", "--json", timeout=180)
    assert result.returncode == 0, result.stderr + workers.logs()[-3000:]
    swept = json.loads(result.stdout)
    assert swept["sweep"]["target_kid"] == "current" and swept["sweep"]["products"] is None
    assert swept["totals"]["documents_scanned"] == DOCUMENTS and swept["totals"]["failures"] == 0
    assert swept["totals"]["fields_on_target"] == json.loads(first.stdout)["totals"]["fields_reencrypted"]
    assert {product: set(kids) for product, kids in kids_by_product(tracker).items()} == {
        product: {kid} for product, kid in new.items()
    }
    assert tracker.cli("verify", "--current").returncode == 0

    disabled = tracker.cli_json("keys", "disable", "--all-products")
    assert sorted((v["product"], v["kid"], v["enabled"]) for v in disabled) == [
        (product, f"tracker-mek-{product}/v1", False) for product in PRODUCTS
    ]

    # Rolling one product back: its previous version enabled, current again, the tracker-service
    # pointed back at it, and the same sweep to current moves that product's fields back.
    back, previous = "product-003", "tracker-mek-product-003/v1"
    [enabled] = tracker.cli_json("keys", "enable", "--product", back)
    assert (enabled["kid"], enabled["enabled"], enabled["current"]) == (previous, True, False)
    promoted = tracker.cli("keys", "promote", previous, "--env-file", str(env_file))
    assert promoted.returncode == 0, promoted.stderr
    assert env_lines(promoted.stdout) == [f"TRACKER_MEK_ID_PRODUCT_003={previous}"]
    assert f"TRACKER_MEK_ID_PRODUCT_003={previous}" in env_file.read_text().splitlines()
    before = snapshot(tracker)
    result = tracker.cli("sweep", "start", "--product", back, "--to", "current", "--wait", "--json", timeout=180)
    assert result.returncode == 0, result.stderr + workers.logs()[-3000:]
    after = snapshot(tracker)
    assert {key: value for key, value in after.items() if key[0] != back} == {
        key: value for key, value in before.items() if key[0] != back
    }
    assert tracker.cli("verify", "--product", back, "--expect", previous).returncode == 0


# -- 3. the disable gate is per product ------------------------------------------------------


@SQLITE_ONLY
def test_the_disable_gate_reads_each_product_on_its_own(tracker, workers):
    """A and C rotated and swept, B rotated only; only A verified. A's old version may go;
    B's is refused (its fields use it); C's too: A's verify says nothing about C."""
    a, b, c = PRODUCTS[:3]
    rotated = tracker.cli_json("keys", "rotate", "--product", a, "--product", b, "--product", c)
    assert [version["product"] for version in rotated] == [a, b, c]
    before = snapshot(tracker)

    result = tracker.cli("sweep", "start", "--product", a, "--product", c, "--to", "current", "--wait", "--json")
    assert result.returncode == 0, result.stderr + workers.logs()[-3000:]
    swept = json.loads(result.stdout)
    assert set(swept["products"]) == {a, c}
    for product in (a, c):
        progress = swept["products"][product]
        assert progress["slices_done"] == progress["slices"] >= 1
        assert progress["counts"]["documents_scanned"] == len(documents_of(before, product))
    after = snapshot(tracker)
    assert documents_of(after, b) == documents_of(before, b)
    assert documents_of(after, PRODUCTS[3]) == documents_of(before, PRODUCTS[3])

    proof = tracker.cli_json("verify", "--product", a, "--current")
    assert proof["ok"] is True and proof["products"] == [a]

    b_old, c_old, a_old = (f"tracker-mek-{product}/v1" for product in (b, c, a))
    refusal = one_line(tracker.cli("keys", "disable", b_old))
    assert b_old in refusal and "still use" in refusal and b in refusal
    refusal = one_line(tracker.cli("keys", "disable", c_old))
    assert f"no passing verify of product {c}" in refusal

    both = tracker.cli("keys", "disable", "--product", a, "--product", b, "--json")
    assert both.returncode == 1
    assert [version["kid"] for version in json.loads(both.stdout)] == [a_old]
    [refused] = [line for line in both.stderr.splitlines() if line.startswith("refused:")]
    assert b_old in refused and "still use" in refused
    assert json.loads(both.stdout)[0]["enabled"] is False


# -- 4. a fixed target belongs to its own product --------------------------------------------


@SQLITE_ONLY
def test_a_target_of_another_product_is_refused_and_nothing_starts(tracker):
    other = "tracker-mek-product-002/v1"
    refusal = one_line(tracker.cli("sweep", "start", "--to", other, "--product", "product-001"))
    assert other in refusal and "product-002" in refusal
    assert tracker.cli_json("sweep", "status", "--all") == []
    assert "sweep started" not in {entry["action"] for entry in tracker.cli_json("audit")}
    with redis.Redis.from_url(tracker.redis_url) as broker:
        assert broker.llen(tracker.queue()) == 0


# -- 5. products that have no key ------------------------------------------------------------


def test_unmappable_and_keyless_products_fail_alone_while_the_others_move(tracker, workers):
    bad = tracker.cli("keys", "init", "--product", "bad_id")
    assert bad.returncode == 2 and "'bad_id'" in one_line(bad)
    assert open_key_provider(tracker.keys_url, KEY_NAME).key_names() == [f"tracker-mek-{p}" for p in PRODUCTS]

    # Written as a tracker with a bug would: a product id no key can be named after, and a
    # product whose key was never created; both under product-000's key.
    borrowed = "tracker-mek-product-000/v1"
    insert_encrypted(tracker, "odd-1", "bad_id", borrowed)
    insert_encrypted(tracker, "orphan-1", "product-999", borrowed)
    tracker.cli_json("keys", "rotate", "--all-products")

    result = tracker.cli("sweep", "start", "--to", "current", "--wait", "--json", timeout=180)
    assert result.returncode == 1, result.stderr + workers.logs()[-3000:]
    swept = json.loads(result.stdout)
    # Every slice scanned to its end; a sweep that leaves failures behind ends 'failed'.
    assert swept["sweep"]["status"] == "failed" and all(piece["done"] for piece in swept["slices"])
    assert swept["totals"]["documents_scanned"] == DOCUMENTS + 2 and swept["totals"]["failures"] == 2
    failures = tracker.cli_json("sweep", "failures")
    assert sorted((f["document_id"], f["partition_key"], f["field_path"], f["reason"]) for f in failures) == [
        ("odd-1", "bad_id", "/body", "unmappable_product"),
        ("orphan-1", "product-999", "/body", "no_product_key"),
    ]

    kids = kids_by_product(tracker)
    assert {product: set(kids[product]) for product in PRODUCTS} == {
        product: {f"tracker-mek-{product}/v2"} for product in PRODUCTS
    }
    assert kids["bad_id"] == kids["product-999"] == Counter({borrowed: 1})  # left as they were

    lagging = tracker.cli("verify", "--current", "--json")
    assert lagging.returncode == 1
    report = json.loads(lagging.stdout)
    assert set(report["lagging_products"]) == set(report["products_without_key"]) == {"bad_id", "product-999"}


# -- 6. a container with one key for every product -------------------------------------------


@SQLITE_ONLY
def test_one_key_for_the_container_works_as_before(backend, tmp_path, redis_url):
    one_key = Tracker(tmp_path, backend, redis_url, key_name=None)
    assert one_key.cli_json("keys", "init")["kid"] == "tracker-mek/v1"
    one_key.cli_json("seed", "--docs", "120", "--products", "4")
    rotated = one_key.cli("keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout == "rotated: tracker-mek/v2 is now current\n"  # no TRACKER_MEK_ID_ line

    refused = one_key.cli("keys", "rotate", "--product", "product-001")
    assert refused.returncode == 2 and "one key for every product" in one_line(refused)
    # The tracker's per-product lines do not exist here: asked for, refused before rotating.
    env_file = tmp_path / "tracker.env"
    refused = one_key.cli("keys", "rotate", "--env-file", str(env_file))
    assert refused.returncode == 2 and "--env-file" in one_line(refused) and not env_file.exists()
    assert one_key.cli_json("keys", "current")["kid"] == "tracker-mek/v2"

    fleet = start_workers(one_key, tmp_path / "logs")
    try:
        result = one_key.cli("sweep", "start", "--to", "current", "--wait", "--json", timeout=180)
        assert result.returncode == 0, result.stderr + fleet.logs()[-3000:]
    finally:
        fleet.stop()
    swept = json.loads(result.stdout)
    assert swept["sweep"]["target_kid"] == "tracker-mek/v2"  # exactly what --to tracker-mek/v2 records
    assert swept["sweep"]["products"] is None
    assert swept["totals"]["documents_scanned"] == 120 and swept["totals"]["failures"] == 0
    assert one_key.cli("verify", "--expect", "tracker-mek/v2").returncode == 0
    assert {kid for kids in kids_by_product(one_key).values() for kid in kids} == {"tracker-mek/v2"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_rotation_stopped_part_way_still_hands_over_the_lines_it_made(tracker, tmp_path):
    """The second product has no key: the first was rotated already and is current now, so its
    line must reach the screen and the tracker-service's file, not vanish with the error."""
    env_file = tmp_path / "tracker.env"
    env_file.write_text("LOG_LEVEL=info\n")
    result = tracker.cli(
        "keys", "rotate", "--product", "product-000", "--product", "product-999", "--env-file", str(env_file)
    )
    assert result.returncode != 0
    assert env_lines(result.stdout) == ["TRACKER_MEK_ID_PRODUCT_000=tracker-mek-product-000/v2"]
    assert env_file.read_text() == "LOG_LEVEL=info\nTRACKER_MEK_ID_PRODUCT_000=tracker-mek-product-000/v2\n"
    assert "rotated 1 of 2 keys before stopping" in result.stderr
    assert tracker.versions()["tracker-mek-product-000/v2"]["current"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_env_file_that_cannot_be_written_is_refused_before_any_key_changes(tracker, tmp_path):
    result = tracker.cli("keys", "rotate", "--product", "product-000", "--env-file", str(tmp_path / "no" / "t.env"))
    assert result.returncode == 2 and "does not exist" in one_line(result)
    assert tracker.cli_json("keys", "current", "--product", "product-000") == [
        {"product": "product-000", "kid": "tracker-mek-product-000/v1"}
    ]
    assert "key rotated" not in {entry["action"] for entry in tracker.cli_json("audit")}
