"""Issue 13's operator-safety gates, each tried the way an operator meets it: through the real
`reencrypt` entry point, on stores and keyrings built with the CLI itself, with real Celery
workers where a sweep must move fields.

- a mistyped store, or another application's SQLite file, is refused by every command and left
  byte for byte as it was (nothing created, no table added, the keyring untouched);
- `keys disable` needs a passing verify made after writes under the version stopped, in every
  container the key protects (a verify from before the rotation, or of one container, is no proof);
- rollback: `keys promote OLD`, the sweep pointed back, verify, `keys disable NEW`;
- `audit --check` sees a trail cut short or rebuilt, against the anchor the key keeps;
- the smaller refusals: lease vs batch bound, `--slices` bound, `keys rotate` during a sweep; a
  killed `seed` resumed; the dry run telling fields under a kid nobody knows from fields that move.

Helpers (``cli``, ``invoke``, ``tree``...) are tests/e2e/test_cli.py's: every call is also checked
for a traceback and for private key material in what it printed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tracker_reencrypt import envelope
from tracker_reencrypt.audit import GENESIS, _digest
from tracker_reencrypt.custody import gate_problem
from tracker_reencrypt.documents import check_document, location
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.stores.sqlite import SqliteStore

from conftest import ROOT, Fleet, Rotation, free_port, run_cli, wait_for
from test_cli import assert_unchanged, base_env, cli, cli_json, invoke, invoke_all, one_error_line, records, tree

V1, V2, V9 = "tracker-mek/v1", "tracker-mek/v2", "tracker-mek/v9"


# -- set-up as an operator does it ---------------------------------------------------------------


def operator_env(home: Path, redis_url: str, store: str = "big.db", **extra: str) -> dict[str, str]:
    """REENCRYPT_STORE naming ``home/store``, the keyring ``home/keyring.json``, our Redis."""
    return base_env(
        home,
        REENCRYPT_STORE=f"sqlite:///{home / store}",
        REENCRYPT_KEYS=f"local:{home / 'keyring.json'}",
        REDIS_URL=redis_url,
        **extra,
    )


def seeded_container(env: dict[str, str], docs: int, *, init: bool = True) -> None:
    """`keys init` (unless the keyring exists) and `seed`: a container of ``docs`` documents under v1."""
    if init:
        cli("keys", "init", env=env)
    assert cli_json("seed", "--docs", str(docs), env=env)["documents"] == docs


def flat(text: str) -> str:
    """Output with rich's wrapping at 80 columns undone."""
    return " ".join(text.split())


def keyring_versions(env: dict[str, str]) -> list[tuple[str, str, bool]]:
    return [(v["kid"], v["status"], v["current"]) for v in cli_json("keys", "list", env=env)]


@pytest.fixture
def fleets(tmp_path):
    """Start real workers for any store of the test: ``start(env)`` -> the Fleet (stopped at the end)."""
    running: list[Fleet] = []

    def start(env: dict[str, str], count: int = 1) -> Fleet:
        rotation = Rotation(tmp_path, env["REENCRYPT_STORE"], env["REENCRYPT_KEYS"], V1, V2, 0, env["REDIS_URL"])
        fleet = Fleet(rotation, tmp_path / f"logs-{len(running)}")
        fleet.log_dir.mkdir()
        running.append(fleet)
        fleet.start(count=count)
        return fleet

    yield start
    for fleet in running:
        fleet.stop()


def sweep_to(env: dict[str, str], fleet: Fleet, to: str, *extra: str) -> dict:
    swept = cli_json("sweep", "start", "--to", to, "--slices", "2", *extra, "--wait", env=env, timeout=180)
    assert swept["sweep"]["status"] == "completed" and not swept["totals"].get("failures"), fleet.logs()[-3000:]
    return swept


# -- 1. a mistyped or foreign store --------------------------------------------------------------


def test_a_mistyped_or_foreign_store_is_refused_by_every_command_and_left_untouched(tmp_path, redis_url):
    env = operator_env(tmp_path, redis_url)
    seeded_container(env, 40)
    cli("keys", "rotate", env=env)
    typo = tmp_path / "bigg.db"
    foreign = tmp_path / "inventory.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE parts (sku TEXT PRIMARY KEY, stock INTEGER)")
        connection.execute("INSERT INTO parts VALUES ('bolt-m4', 1200)")
    connection.close()
    before = tree(tmp_path)  # the real container, its keyring (marks and anchors included), the foreign file

    commands = {
        "verify": ("verify", "--expect", V2),
        "sweep status": ("sweep", "status"),
        "sweep start": ("sweep", "start", "--to", V2),
        "dry run": ("sweep", "start", "--to", V2, "--dry-run"),
        "keys disable": ("keys", "disable", V1),
        # The key must not change either when the command is refused for its store (it did: the
        # version was disabled or made, then the audit entry failed to open the store).
        "keys disable --force": ("keys", "disable", V1, "--force"),
        "keys rotate": ("keys", "rotate"),
        "keys rotate --force": ("keys", "rotate", "--force"),
        "keys promote": ("keys", "promote", V1),
        "keys enable": ("keys", "enable", V1),
        "audit": ("audit",),
        "audit --check": ("audit", "--check"),
    }
    wrong = {"typo": (f"sqlite:///{typo}", "does not exist"), "foreign": (f"sqlite:///{foreign}", "did not make")}
    calls = {
        (which, name): (("--store", url, *args), env)
        for which, (url, _) in wrong.items()
        for name, args in commands.items()
    }
    # seed may create a store, never adopt another application's file (nor mark the key with it)
    calls[("foreign", "seed")] = (("--store", wrong["foreign"][0], "seed", "--docs", "5"), env)
    results = invoke_all({f"{which}: {name}": call for (which, name), call in calls.items()})
    port = free_port()
    for which, (url, _) in wrong.items():  # the exporter refuses at start instead of serving an empty store
        results[f"{which}: exporter"] = invoke("--store", url, "exporter", "--port", str(port), env=env, timeout=60)

    problems = []
    for name, result in results.items():
        url, reason = wrong[name.split(":")[0]]
        lines = result.stderr.strip().splitlines()
        if result.returncode != 2 or len(lines) != 1:
            problems.append(f"{name}: exit {result.returncode}\n{result.stderr}")
        elif not (url in lines[0] and reason in lines[0] and "check the path" in lines[0]):
            problems.append(f"{name}: {lines[0]}")
    assert not problems, "\n".join(problems)
    assert not typo.exists()
    assert_unchanged(before, tmp_path, "a command given a mistyped or foreign store")
    assert keyring_versions(env) == [(V1, "enabled", False), (V2, "enabled", True)]


def test_verify_fails_on_a_container_with_no_document_unless_allowed(tmp_path, redis_url):
    env = operator_env(tmp_path, redis_url, store="staging.db")
    cli("keys", "init", env=env)  # makes the keyring and an empty store

    empty = cli("verify", "--expect", V1, env=env, code=1)
    assert "FAIL" in empty.stdout and "0 documents" in flat(empty.stdout)
    assert "holds no document: check the store URL" in flat(empty.stdout) and "--allow-empty" in empty.stdout
    allowed = cli_json("verify", "--expect", V1, "--allow-empty", env=env)
    assert (allowed["ok"], allowed["documents"]) == (True, 0)
    assert allowed["store"] == f"SQLite store {tmp_path / 'staging.db'}"
    trail = [e["details"] for _, e in records(tmp_path / "staging.db", "audit") if e["action"] == "verify"]
    assert [(d["ok"], d["allow_empty"]) for d in trail] == [(False, False), (True, True)]


# -- 2. the disable gate -------------------------------------------------------------------------


def test_disable_needs_a_passing_verify_made_after_the_rotation(tmp_path, redis_url, fleets):
    env = operator_env(tmp_path, redis_url)
    db, keyring = tmp_path / "big.db", tmp_path / "keyring.json"
    seeded_container(env, 300)
    assert cli_json("verify", "--expect", V1, env=env)["ok"]  # passes, but long before writes under v1 stopped
    cli("keys", "rotate", env=env)
    fleet = fleets(env)
    sweep_to(env, fleet, V2)

    # No field uses v1 any more, yet nothing after the rotation proves it: refused, naming what to run.
    before = keyring.read_bytes()
    line = one_error_line(cli("keys", "disable", V1, env=env, code=1))
    assert f"{V1} not disabled" in line and f"container sqlite:{db} has no passing verify since" in line
    assert "verify --expect" in line
    assert keyring.read_bytes() == before

    assert cli_json("verify", "--expect", V2, env=env)["ok"]
    disabled = flat(cli("keys", "disable", V1, env=env).stdout)
    assert f"disabled {V1} (checked SQLite store {db} and every container the key protects)" in disabled
    assert keyring_versions(env) == [(V1, "disabled", False), (V2, "enabled", True)]
    entry = records(db, "audit")[-1][1]
    assert (entry["action"], entry["details"]) == (
        "key disabled",
        {"kid": V1, "forced": False, "store": f"SQLite store {db}"},
    )


def test_a_verify_older_than_the_rollback_is_no_proof(tmp_path, redis_url):
    """v2 was current for a while (the tracker may have written under it), then v1 promoted
    back: a verify from while v2 was current proves nothing about what came after it."""
    env = operator_env(tmp_path, redis_url)
    seeded_container(env, 30)
    cli("keys", "rotate", env=env)
    early = cli_json("verify", "--expect", V1, env=env)  # no field on v2 yet: would prove v2 unused
    assert early["ok"] and V2 not in early["fields_by_kid"]
    cli("keys", "promote", V1, env=env)

    line = one_error_line(cli("keys", "disable", V2, env=env, code=1))
    assert f"{V2} not disabled" in line and "has no passing verify since" in line
    cli("verify", "--expect", V1, env=env)
    cli("keys", "disable", V2, env=env)
    assert keyring_versions(env) == [(V1, "enabled", True), (V2, "disabled", False)]


def test_a_verify_in_the_same_second_before_the_key_operation_is_no_proof():
    """Audit timestamps are whole seconds: only the trail's order tells a verify made just
    before the promotion (while the tracker still wrote under v2) from one made after it."""
    second = "2026-11-29T10:00:00Z"

    def entry(seq: int, action: str, **details) -> dict:
        return {"seq": seq, "at": second if seq > 2 else "2026-11-29T09:00:00Z", "action": action, "details": details}

    trail = [
        entry(1, "key created", kid=V1),
        entry(2, "key rotated", kid=V2),
        entry(3, "verify", expect=V1, ok=True, fields_by_kid={V1: 10}, documents=5, undecryptable=0),
        entry(4, "key promoted", kid=V1),
    ]
    assert "has no passing verify since" in gate_problem(trail, V2, None, "container c")  # before it: none
    trail.append(entry(5, "verify", expect=V1, ok=True, fields_by_kid={V1: 10}, documents=5, undecryptable=0))
    # ...the same second, but after it: proof.
    assert gate_problem(trail, V2, None, "container c") is None


def test_a_key_protecting_two_containers_is_disabled_only_once_both_verified(tmp_path, redis_url, fleets):
    env_a = operator_env(tmp_path, redis_url, store="a.db")
    env_b = operator_env(tmp_path, redis_url, store="b.db")
    seeded_container(env_a, 150)
    seeded_container(env_b, 150, init=False)  # same keyring: seeding marks b.db on the key
    cli("keys", "rotate", env=env_a)
    sweep_to(env_a, fleets(env_a), V2)
    assert cli_json("verify", "--expect", V2, env=env_a)["ok"]

    keyring = tmp_path / "keyring.json"
    before = keyring.read_bytes()
    line = one_error_line(cli("keys", "disable", V1, env=env_a, code=1))
    assert f"container sqlite:{tmp_path / 'b.db'} has no passing verify since" in line
    assert keyring.read_bytes() == before

    sweep_to(env_b, fleets(env_b), V2)
    assert cli_json("verify", "--expect", V2, env=env_b)["ok"]
    cli("keys", "disable", V1, env=env_a)
    assert keyring_versions(env_a) == [(V1, "disabled", False), (V2, "enabled", True)]


# -- 3. rollback ---------------------------------------------------------------------------------


def sweep_record(db: Path, sweep_id: str) -> dict:
    return dict(records(db, "sweep"))[sweep_id]


def test_rollback_promotes_the_old_version_sweeps_back_and_disables_the_new(tmp_path, redis_url, fleets):
    env = operator_env(tmp_path, redis_url)
    db = tmp_path / "big.db"
    seeded_container(env, 300)
    cli("keys", "rotate", env=env)
    fleet = fleets(env)

    # The forward sweep, slowed down, abandoned half-way: some fields are on v2 already.
    forward = cli_json("sweep", "start", "--to", V2, "--slices", "2", "--rate", "40", env=env)["id"]
    wait_for(
        lambda: (
            sum(
                body["counts"]["fields_reencrypted"]
                for _, body in records(db, "slice")
                if body.get("sweep_id") == forward
            )
            > 0
        ),
        60,
        message="the forward sweep to move fields",
    )
    cli("sweep", "cancel", forward, env=env)  # the worker settles it once its batch in hand is over
    wait_for(lambda: sweep_record(db, forward)["status"] == "cancelled", 30, message="the forward sweep to settle")

    cli("keys", "promote", V1, env=env)
    assert keyring_versions(env) == [(V1, "enabled", True), (V2, "enabled", False)]
    assert cli_json("keys", "current", env=env)["kid"] == V1
    back = sweep_to(env, fleet, V1, "--from", V2)
    assert back["totals"]["fields_reencrypted"] > 0  # the fields the forward sweep moved, moved back
    verified = cli_json("verify", "--expect", V1, env=env)
    assert verified["ok"] and set(verified["fields_by_kid"]) == {V1}
    cli("keys", "disable", V2, env=env)
    assert keyring_versions(env) == [(V1, "enabled", True), (V2, "disabled", False)]
    assert "audit chain intact" in cli("audit", "--check", env=env).stdout

    before = tree(tmp_path)
    refused = invoke_all({"unknown": (("keys", "promote", V9), env), "disabled": (("keys", "promote", V2), env)})
    assert f"key '{V9}' is unknown" in one_error_line(refused["unknown"]) and refused["unknown"].returncode == 2
    assert f"key {V2} is disabled" in one_error_line(refused["disabled"])
    assert f"keys enable {V2}" in refused["disabled"].stderr
    assert_unchanged(before, tmp_path, "a refused keys promote")


# -- 4. the audit anchor -------------------------------------------------------------------------


def audit_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT kind, id, etag, body FROM records WHERE kind = 'audit' ORDER BY id"
        ).fetchall()
    connection.close()
    return rows


def put_audit(db: Path, rows: list[tuple]) -> None:
    """Replace the whole trail with ``rows``: what anyone who can write the store can do."""
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM records WHERE kind = 'audit'")
        connection.executemany("INSERT INTO records (kind, id, etag, body) VALUES (?, ?, ?, ?)", rows)
    connection.close()


def test_audit_check_sees_a_trail_cut_short_or_rebuilt(tmp_path, redis_url):
    env = operator_env(tmp_path, redis_url)
    db = tmp_path / "big.db"
    seeded_container(env, 20)
    cli("keys", "rotate", env=env)
    cli("keys", "promote", V1, env=env)
    cli("keys", "promote", V2, env=env)  # entry 4, anchored in the keyring
    original = audit_rows(db)
    assert [json.loads(row[3])["action"] for row in original] == [
        "key created",
        "key rotated",
        "key promoted",
        "key promoted",
    ]
    intact = cli("audit", "--check", env=env)
    assert "audit chain intact" in intact.stdout

    def check_fails() -> str:
        checked = cli_json("audit", "--check", env=env, code=1)
        return "\n".join(checked["problems"])

    put_audit(db, original[:2])  # the newest entries deleted: the chain that is left is flawless
    assert "entries were deleted from its end" in check_fails() and "anchors entry 4" in check_fails()
    put_audit(db, [])
    assert "the trail ends at entry 0" in check_fails()

    # Rebuilt: entry 2 rewritten to claim another key, every hash after it recomputed.
    rebuilt, previous = [], GENESIS
    for kind, record_id, etag, body in original:
        entry = json.loads(body)
        if entry["seq"] == 2:
            entry["details"] = {"kid": V9}
        entry["prev_hash"] = previous
        entry["hash"] = previous = _digest(previous, entry)
        rebuilt.append((kind, record_id, etag, json.dumps(entry)))
    put_audit(db, rebuilt)
    problems = check_fails()
    assert "entry 4 differs from the one" in problems and "the trail was rebuilt" in problems
    assert "altered" not in problems and "does not chain" not in problems  # the chain alone looks intact

    put_audit(db, original)
    assert "audit chain intact" in cli("audit", "--check", env=env).stdout


# -- 5. the smaller points -----------------------------------------------------------------------


def test_a_lease_shorter_than_two_batches_is_refused(tmp_path, redis_url):
    short = operator_env(tmp_path, redis_url, REENCRYPT_LEASE_SECONDS="15", REENCRYPT_BATCH_SECONDS="10")
    results = invoke_all({"keys list": (("keys", "list"), short), "sweep status": (("sweep", "status"), short)})
    for result in results.values():
        line = one_error_line(result)
        assert result.returncode == 2
        assert "REENCRYPT_LEASE_SECONDS (15)" in line and "REENCRYPT_BATCH_SECONDS (10)" in line and "2x" in line
    assert not (tmp_path / "big.db").exists() and not (tmp_path / "keyring.json").exists()
    exact = operator_env(tmp_path, redis_url, REENCRYPT_LEASE_SECONDS="20", REENCRYPT_BATCH_SECONDS="10")
    cli("keys", "init", env=exact)  # twice the batch bound is enough


def test_too_many_slices_are_refused_at_once_writing_nothing(tmp_path, redis_url):
    env = operator_env(tmp_path, redis_url)
    seeded_container(env, 50)
    cli("keys", "rotate", env=env)
    before = tree(tmp_path)
    started = time.monotonic()
    refused = cli("sweep", "start", "--to", V2, "--slices", "5000", env=env, code=2)  # bad input
    assert time.monotonic() - started < 20
    assert "Invalid value for '--slices': Input should be less than or equal to 1024" in refused.stderr
    assert_unchanged(before, tmp_path, "a sweep start with --slices 5000")
    assert records(tmp_path / "big.db", "sweep") == [] and records(tmp_path / "big.db", "slice") == []


def test_keys_rotate_is_refused_while_a_sweep_runs_unless_forced(tmp_path, redis_url):
    env = operator_env(tmp_path, redis_url)
    seeded_container(env, 50)
    cli("keys", "rotate", env=env)
    sweep_id = cli_json("sweep", "start", "--to", V2, "--slices", "2", env=env)["id"]  # no worker: stays running
    keyring = tmp_path / "keyring.json"
    before = keyring.read_bytes()

    line = one_error_line(cli("keys", "rotate", env=env, code=1))
    assert f"sweep {sweep_id} is running towards {V2}" in line and "--force" in line
    assert keyring.read_bytes() == before
    assert cli_json("keys", "rotate", "--force", env=env)["kid"] == "tracker-mek/v3"
    assert keyring_versions(env)[-1] == ("tracker-mek/v3", "enabled", True)


def document_count(db: Path) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as connection:
        return connection.execute("SELECT COUNT(*) FROM documents").fetchone()[0]


def test_a_killed_seed_is_resumed_by_the_same_command(tmp_path, redis_url):
    env = operator_env(tmp_path, redis_url)
    db, docs = tmp_path / "big.db", 20_000
    cli("keys", "init", env=env)
    seeding = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "seed", "--docs", str(docs)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: seeding.poll() is not None or document_count(db) > 0,
            60,
            interval=0.01,
            message="the first documents",
        )
        seeding.send_signal(signal.SIGKILL)
    finally:
        seeding.kill()
        seeding.wait()
    interrupted = document_count(db)
    assert 0 < interrupted < docs, f"the seed was not interrupted mid-way ({interrupted} documents)"

    resumed = cli_json("seed", "--docs", str(docs), env=env, timeout=300)
    assert resumed["documents"] == docs
    store = SqliteStore(db, create=False)
    try:
        ids = [d.id for d in store.scan(store.feed_ranges(1)[0], None, docs + 1).documents]
    finally:
        store.close()
    assert sorted(ids) == [f"doc-{index:07d}" for index in range(docs)]  # each once, none beyond N
    # Kept and added documents alike decrypt (a sample: the full verify is test_cli's business).
    keyring = Keyring(LocalKeyProvider(tmp_path / "keyring.json"))
    sample = SqliteStore(db, create=False)
    try:
        for document in sample.scan(sample.feed_ranges(1)[0], None, 300).documents:
            assert all(check.decrypts for check in check_document(document.body, document.body["productId"], keyring))
    finally:
        sample.close()


def add_document_under_unknown_kid(rotation: Rotation) -> int:
    """A comment whose fields name kid v9, which no provider knows (made by another deployment,
    say); returns how many fields it holds."""
    keyring = Keyring(rotation.provider())
    body = {"id": "doc-orphan", "productId": "product-001", "type": "comment", "author": "Ada"}
    for name in ("body", "note"):
        sealed = envelope.encrypt(f"{name} text", location(body, "product-001", (name,)), keyring, rotation.v1)
        body[name] = {**sealed, "kid": V9}
    store = rotation.store()
    try:
        store.create(body)
    finally:
        store.close()
    return 2


def test_the_dry_run_reports_fields_under_an_unknown_kid_apart(rotation, fleet):
    env = rotation.env()
    orphans = add_document_under_unknown_kid(rotation)
    store = rotation.store()
    try:
        on_v1 = sum(
            1
            for d in store.scan(store.feed_ranges(1)[0], None, 10_000).documents
            for c in check_document(d.body, d.body["productId"], None)
            if c.kid == rotation.v1
        )
    finally:
        store.close()

    results = invoke_all(
        {
            "json": (("sweep", "start", "--to", rotation.v2, "--dry-run", "--json"), env),
            "human": (("sweep", "start", "--to", rotation.v2, "--dry-run"), env),
        }
    )
    payload = json.loads(results["json"].stdout)
    assert payload["fields_by_kid"] == {rotation.v1: on_v1, V9: orphans}  # seen...
    assert list(payload["would_move"]) == [rotation.v1] and payload["fields_to_move"] == on_v1  # ...not "would move"
    assert payload["unknown_kids"] == {V9: orphans}
    human = flat(results["human"].stdout)
    assert f"{on_v1} fields would move to {rotation.v2}" in human
    assert f"{orphans} fields are under kids the key provider does not know ({V9}: {orphans})" in human
    assert "cannot be moved; the sweep will record each as a failure" in human

    # What the dry run said is what the sweep does.
    fleet.start(count=1)
    swept = cli_json("sweep", "start", "--to", rotation.v2, "--slices", "2", "--wait", env=env, code=1, timeout=180)
    totals = swept["totals"]
    assert (totals["fields_reencrypted"], totals["failures"]) == (on_v1, orphans), fleet.logs()[-3000:]
    failures = cli_json("sweep", "failures", swept["sweep"]["id"], env=env)
    assert {(f["document_id"], f["reason"]) for f in failures} == {("doc-orphan", "unknown_kid")}
    assert len(failures) == orphans


def test_the_dry_run_reports_fields_under_a_disabled_kid_apart(rotation):
    """v1 disabled by force with fields still on it: they cannot move, so they are not 'would move'."""
    env = rotation.env()
    forced = run_cli("keys", "disable", rotation.v1, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    dry = run_cli("sweep", "start", "--to", rotation.v2, "--dry-run", "--json", env=env)
    payload = json.loads(dry.stdout)
    on_v1 = payload["fields_by_kid"][rotation.v1]
    assert on_v1 > 0 and payload["fields_to_move"] == 0 and payload["would_move"] == {}
    assert payload["disabled_kids"] == {rotation.v1: on_v1}


def test_what_counts_as_proof_that_no_field_uses_a_version():
    """A verify proves a version unused when it counted every field and none on it, whatever
    its own expectation; one that could not read every document, or saw none, proves nothing.
    And writes under the version may have lasted until the key's own last switch (a promotion
    made with another store configured leaves no entry in this trail)."""

    def verify(seq: int, at: str, **details) -> dict:
        return {"seq": seq, "at": at, "action": "verify", "details": {"undecryptable": 0, "documents": 5, **details}}

    created = {"seq": 0, "at": "2026-11-29T08:00:00Z", "action": "key created", "details": {"kid": V1}}
    rotated = {"seq": 1, "at": "2026-11-29T09:00:00Z", "action": "key rotated", "details": {"kid": V2}}
    later = "2026-11-29T10:00:00Z"
    moved_on = verify(2, later, expect="tracker-mek/v3", ok=False, fields_by_kid={V2: 7})  # v3 already current
    assert gate_problem([created, rotated, moved_on], V1, None, "container c") is None
    unread = verify(2, later, expect=V2, ok=False, fields_by_kid={V2: 7}, undecryptable=1)
    assert "has no passing verify" in gate_problem([created, rotated, unread], V1, None, "container c")
    empty = verify(2, later, expect=V2, ok=False, fields_by_kid={}, documents=0)
    assert "has no passing verify" in gate_problem([created, rotated, empty], V1, None, "container c")

    proof = verify(2, later, expect=V2, ok=True, fields_by_kid={V2: 7})
    assert gate_problem([created, rotated, proof], V1, None, "container c") is None
    # The key records a switch after that verify (a promotion made elsewhere): no longer proof.
    assert "since 2026-11-29T11:00:00Z" in gate_problem(
        [created, rotated, proof], V1, "2026-11-29T11:00:00Z", "container c"
    )
