"""The `reencrypt` CLI through its real entry point: every command, and every way it refuses.

Each call is the real program in a subprocess (``run_cli``), as an operator runs it. Every
call, passing or failing, is also checked for two things an operator must never see: a Python
traceback, and key material (the private members of any key in the keyring it was given).
Refusals are checked to write nothing: the store file, the keyring and the home directory
stay byte for byte as they were.

Sweeps here run without workers, so a started sweep stays active and its controls (pause,
resume, throttle, cancel) can be observed; sweeps under real workers are tests/e2e/test_sweep_fleet.py.
Independent read-only calls run a few at a time to keep the file fast. Redis is conftest's: each
store has its own task queue, so no database of this file's own is needed (nor flushed).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from tracker_reencrypt import envelope
from tracker_reencrypt.documents import check_document, find_envelopes, location
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.state import SweepState

from conftest import ROOT, TEST_DB, Rotation, make_rotation, run_cli

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
PARALLEL = 3


# -- running the CLI ---------------------------------------------------------------------------


def _keyring_path(env: dict[str, str]) -> Path | None:
    url = env.get("REENCRYPT_KEYS", "")
    return Path(url[len("local:") :]) if url.startswith("local:") else None


def key_material(path: Path | None) -> set[str]:
    """The private members of every key in a keyring file (empty if there is none)."""
    if path is None or not path.is_file():
        return set()
    try:
        document = json.loads(path.read_text())
    except ValueError:
        return set()
    return {jwk[name] for jwk in document.get("keys", []) for name in PRIVATE_MEMBERS if isinstance(jwk.get(name), str)}


def invoke(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI; check what every call must satisfy, whatever its exit code."""
    secrets = key_material(_keyring_path(env))
    result = run_cli(*args, env=env, timeout=timeout)
    secrets |= key_material(_keyring_path(env))  # a rotation may have added a key
    shown = result.stdout + result.stderr
    assert "Traceback" not in shown, f"reencrypt {' '.join(args)} printed a traceback:\n{result.stderr}"
    leaked = [secret for secret in secrets if secret in shown]
    assert not leaked, f"reencrypt {' '.join(args)} printed private key material"
    return result


def cli(*args: str, env: dict[str, str], code: int = 0, timeout: float = 120) -> subprocess.CompletedProcess:
    result = invoke(*args, env=env, timeout=timeout)
    assert result.returncode == code, (
        f"reencrypt {' '.join(args)}: exit {result.returncode}, expected {code}\n"
        f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
    )
    return result


def cli_json(*args: str, env: dict[str, str], code: int = 0, timeout: float = 120):
    return json.loads(cli(*args, "--json", env=env, code=code, timeout=timeout).stdout)


def invoke_all(calls: dict[str, tuple[tuple[str, ...], dict[str, str]]]) -> dict[str, subprocess.CompletedProcess]:
    """Independent calls, a few at a time."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {name: pool.submit(invoke, *args, env=env) for name, (args, env) in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The refusal: a non-zero exit and exactly one line on stderr, ``error: ...``."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{result.stderr}"
    return lines[0]


def base_env(home: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without our settings, plus ``settings``; state under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_") and k != "REDIS_URL"}
    env["REENCRYPT_HOME"] = str(home / "state")
    env.update(settings)
    return env


# -- looking at what was written ---------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes; SQLite's shared-memory index and an empty WAL
    carry no data and are left out."""
    files = {}
    for path in sorted(root.rglob("*")):
        if (
            not path.is_file()
            or path.name.endswith("-shm")
            or (path.name.endswith("-wal") and path.stat().st_size == 0)
        ):
            continue
        files[str(path.relative_to(root))] = path.read_bytes()
    return files


def assert_unchanged(before: dict[str, bytes], root: Path, what: str) -> None:
    after = tree(root)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"{what} wrote: {changed}"


def records(db: Path, kind: str) -> list[tuple[str, dict]]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT id, body FROM records WHERE kind = ? ORDER BY id", (kind,)).fetchall()
    connection.close()
    return [(record_id, json.loads(body)) for record_id, body in rows]


def field_census(rotation: Rotation) -> tuple[int, Counter, dict[str, Counter]]:
    """Documents, fields by kid, and kinds by kid: counted here, independently of the CLI."""
    store = rotation.store()
    try:
        scanned = store.scan(store.feed_ranges(1)[0], None, 100_000).documents
    finally:
        store.close()
    documents, by_kid, kinds = 0, Counter(), {}
    for document in scanned:
        documents += 1
        for check in check_document(document.body, document.body["productId"], None):
            by_kid[check.kid] += 1
            kinds.setdefault(check.kid, Counter())[check.kind] += 1
    return documents, by_kid, kinds


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, redis_server_url) -> Rotation:
    """A small store under v1 with v2 current, shared by tests that must change nothing."""
    rotation = make_rotation(tmp_path_factory.mktemp("seeded"), 60, f"{redis_server_url}/{TEST_DB}")
    rotation.home.joinpath("state").mkdir()
    return rotation


# -- help and usage ----------------------------------------------------------------------------

SUBCOMMANDS = [
    (),
    ("keys",),
    ("sweep",),
    ("keys", "init"),
    ("keys", "rotate"),
    ("keys", "list"),
    ("keys", "disable"),
    ("keys", "enable"),
    ("sweep", "start"),
    ("sweep", "status"),
    ("sweep", "pause"),
    ("sweep", "resume"),
    ("sweep", "cancel"),
    ("sweep", "throttle"),
    ("sweep", "failures"),
    ("seed",),
    ("worker",),
    ("verify",),
    ("audit",),
    ("demo",),
]


def test_every_help_works(tmp_path):
    env = base_env(tmp_path)
    results = invoke_all({" ".join(words) or "(top)": ((*words, "--help"), env) for words in SUBCOMMANDS})
    for name, result in results.items():
        assert result.returncode == 0, f"{name} --help: {result.stderr}"
        assert "Usage:" in result.stdout and "--help" in result.stdout, name
    assert "--dry-run" in results["sweep start"].stdout and "--from" in results["sweep start"].stdout
    assert "--force" in results["keys disable"].stdout
    for command in ("seed", "verify", "audit", "demo", "keys", "sweep"):
        assert command in results["(top)"].stdout
    # The console script itself, not only `python -m coordinator.cli`.
    script = subprocess.run(
        [str(Path(sys.executable).parent / "reencrypt"), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert script.returncode == 0 and "Usage:" in script.stdout, script.stderr


def test_usage_errors_are_short_and_exit_2(tmp_path):
    """Typer vendors Click: its usage errors escaped main() as tracebacks before this was fixed."""
    env = base_env(tmp_path)
    results = invoke_all(
        {
            "no command": ((), env),
            "unknown command": (("bogus",), env),
            "missing --to": (("sweep", "start"), env),
            "missing --expect": (("verify",), env),
            "bad number": (("sweep", "start", "--to", "x", "--slices", "many"), env),
            "unknown option": (("keys", "list", "--colour"), env),
        }
    )
    for name, result in results.items():
        assert result.returncode == 2, f"{name}: exit {result.returncode}\n{result.stderr}"
    assert "Usage:" in results["no command"].stdout + results["no command"].stderr
    assert "No such command 'bogus'" in results["unknown command"].stderr
    assert "Missing option '--to'" in results["missing --to"].stderr
    assert "give exactly one of --expect KID and --current" in results["missing --expect"].stderr
    assert "Invalid value for '--slices'" in results["bad number"].stderr
    assert "No such option: --colour" in results["unknown option"].stderr
    assert not (tmp_path / "state").exists()


# -- keys --------------------------------------------------------------------------------------


def test_keys_init_rotate_list_on_a_local_keyring(tmp_path):
    keyring = tmp_path / "keys" / "keyring.json"
    env = base_env(tmp_path, REENCRYPT_KEYS=f"local:{keyring}")

    created = cli("keys", "init", "--json", env=env)
    assert json.loads(created.stdout) == {
        **json.loads(created.stdout),
        "kid": "tracker-mek/v1",
        "status": "enabled",
        "current": True,
    }
    assert "not recorded in the audit trail" in created.stderr  # no store configured: said, not hidden
    assert keyring.stat().st_mode & 0o777 == 0o600
    before = keyring.read_bytes()

    again = cli("keys", "init", env=env, code=2)
    assert "already exists" in one_error_line(again) and "keys rotate" in again.stderr
    assert keyring.read_bytes() == before

    rotated = cli_json("keys", "rotate", env=env)
    assert (rotated["kid"], rotated["current"], rotated["status"]) == ("tracker-mek/v2", True, "enabled")

    before = keyring.read_bytes()
    results = invoke_all(
        {
            "json": (("keys", "list", "--json"), env),
            "table": (("keys", "list"), env),
            # Disabling the current version is refused even with --force.
            "disable current": (("keys", "disable", "tracker-mek/v2", "--force"), env),
            "enable unknown": (("keys", "enable", "tracker-mek/v9"), env),
        }
    )
    assert [(v["kid"], v["status"], v["current"]) for v in json.loads(results["json"].stdout)] == [
        ("tracker-mek/v1", "enabled", False),
        ("tracker-mek/v2", "enabled", True),
    ]
    assert "tracker-mek/v1" in results["table"].stdout and "tracker-mek/v2" in results["table"].stdout
    assert "current version" in one_error_line(results["disable current"])
    assert "'tracker-mek/v9' is unknown" in one_error_line(results["enable unknown"])
    assert keyring.read_bytes() == before


def test_keys_disable_is_refused_while_fields_use_the_version(rotation):
    env = rotation.env()
    keyring, db = rotation.home / "keyring.json", rotation.home / "tracker.db"
    _, by_kid, _ = field_census(rotation)
    in_use = by_kid[rotation.v1]
    assert in_use > 0
    before = keyring.read_bytes()

    refused = invoke_all(
        {
            "in use": (("keys", "disable", rotation.v1), env),
            "current": (("keys", "disable", rotation.v2), env),
        }
    )
    line = one_error_line(refused["in use"])
    assert f"{in_use} fields in SQLite store {rotation.home / 'tracker.db'} still use {rotation.v1}" in line
    assert "--force" in line
    assert "current version" in one_error_line(refused["current"])
    assert keyring.read_bytes() == before

    def statuses() -> dict[str, str]:
        return {v.kid: v.status for v in LocalKeyProvider(keyring).versions()}

    forced = cli_json("keys", "disable", rotation.v1, "--force", env=env)
    assert (forced["kid"], forced["status"], forced["store"]) == (rotation.v1, "disabled", f"SQLite store {db}")
    assert statuses() == {rotation.v1: "disabled", rotation.v2: "enabled"}

    enabled = cli_json("keys", "enable", rotation.v1, env=env)
    assert enabled["status"] == "enabled"
    assert statuses() == {rotation.v1: "enabled", rotation.v2: "enabled"}

    trail = [(e["action"], e["details"]) for _, e in records(db, "audit")]
    assert trail == [
        ("key disabled", {"kid": rotation.v1, "forced": True, "store": f"SQLite store {db}"}),
        ("key enabled", {"kid": rotation.v1}),
    ]


# -- seed --------------------------------------------------------------------------------------


def _set(body, parts, value) -> None:
    for part in parts[:-1]:
        body = body[part]
    body[parts[-1]] = value


def plaintext_documents(db: Path, keyring: Keyring) -> tuple[dict[str, dict], int]:
    """Every document with each envelope replaced by what it decrypts to, field by field."""
    store = SqliteStore(db)
    try:
        documents = store.scan(store.feed_ranges(1)[0], None, 100_000).documents
    finally:
        store.close()
    plain, fields = {}, 0
    for document in documents:
        body = json.loads(json.dumps(document.body))
        for parts, sealed in find_envelopes(document.body):
            _set(
                body,
                parts,
                envelope.decrypt(sealed, location(document.body, document.body["productId"], parts), keyring),
            )
            fields += 1
        plain[body["id"]] = body
    return plain, fields


def test_seed_is_deterministic_and_every_field_decrypts(tmp_path):
    keyring = tmp_path / "keyring.json"
    ignored = tmp_path / "from-env.db"
    env = base_env(tmp_path, REENCRYPT_KEYS=f"local:{keyring}")
    cli("keys", "init", env=env)

    env["REENCRYPT_STORE"] = f"sqlite:///{ignored}"
    seeds = invoke_all(
        {
            name: (
                ("--store", f"sqlite:///{tmp_path / name}.db", "seed", "--docs", "200", "--seed", "7", "--json"),
                env,
            )
            for name in ("a", "b")
        }
    )
    for result in seeds.values():
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {**json.loads(result.stdout), "documents": 200, "kid": "tracker-mek/v1"}
    assert not ignored.exists(), "--store must beat REENCRYPT_STORE"

    ring = Keyring(LocalKeyProvider(keyring))
    first, fields = plaintext_documents(tmp_path / "a.db", ring)
    second, _ = plaintext_documents(tmp_path / "b.db", ring)
    assert len(first) == 200 and fields > 200
    assert first == second
    assert {body["type"] for body in first.values()} >= {"item", "comment", "attachment", "api_key"}
    assert any("@example.com" in str(body.get("reporterEmail")) for body in first.values())
    # Same content, fresh ciphertext: nonces and data keys are random.
    raw_a = {
        d.id: d.body
        for d in SqliteStore(tmp_path / "a.db").scan({"epk_min": 0, "epk_max": 2**32}, None, 1000).documents
    }
    raw_b = {
        d.id: d.body
        for d in SqliteStore(tmp_path / "b.db").scan({"epk_min": 0, "epk_max": 2**32}, None, 1000).documents
    }
    item = next(i for i, body in raw_a.items() if body["type"] == "item")
    assert raw_a[item]["title"]["ct"] != raw_b[item]["title"]["ct"]


# -- sweep start: dry run and refusals ---------------------------------------------------------


def test_dry_run_reports_counts_by_kid_and_kind_and_writes_nothing(seeded):
    env = seeded.env()
    before = tree(seeded.home)
    documents, by_kid, kinds = field_census(seeded)

    results = invoke_all(
        {
            "json": (("sweep", "start", "--to", seeded.v2, "--dry-run", "--json"), env),
            "human": (("sweep", "start", "--to", seeded.v2, "--from", seeded.v1, "--dry-run"), env),
        }
    )
    assert results["json"].returncode == 0 and results["human"].returncode == 0, (
        results["json"].stderr + results["human"].stderr
    )
    payload = json.loads(results["json"].stdout)
    assert payload["dry_run"] is True and payload["target_kid"] == seeded.v2
    assert payload["documents"] == documents == seeded.documents
    assert payload["fields_by_kid"] == dict(by_kid)
    assert payload["would_move"] == {seeded.v1: dict(kinds[seeded.v1])}
    assert payload["fields_to_move"] == by_kid[seeded.v1]

    assert f"{by_kid[seeded.v1]} fields would move to {seeded.v2}" in results["human"].stdout
    assert_unchanged(before, seeded.home, "sweep start --dry-run")

    after = invoke_all({"latest": (("sweep", "status"), env), "all": (("sweep", "status", "--all", "--json"), env)})
    assert "no sweep" in one_error_line(after["latest"])
    assert json.loads(after["all"].stdout) == []


def test_sweep_start_refusals_write_nothing(rotation):
    env = rotation.env()
    cli("keys", "rotate", env=env)  # v3 current; v2 becomes a disabled target below
    cli("verify", "--expect", rotation.v1, env=env)  # no field on v2 since v3 replaced it: what the gate needs
    cli("keys", "disable", rotation.v2, env=env)
    before = tree(rotation.home)
    start = ("sweep", "start", "--to")
    v3 = "tracker-mek/v3"
    results = invoke_all(
        {
            "unknown target": ((*start, "tracker-mek/v9"), env),
            "unknown target (dry run)": ((*start, "tracker-mek/v9", "--dry-run"), env),
            "disabled target": ((*start, rotation.v2), env),
            "--from is the target": ((*start, v3, "--from", v3), env),
            "unknown --from": ((*start, v3, "--from", "tracker-mek/v8"), env),
            "unknown mode": ((*start, v3, "--mode", "shuffle"), env),
            "no slices": ((*start, v3, "--slices", "0"), env),
            "negative rate": ((*start, v3, "--rate", "-5"), env),
        }
    )
    expected = {
        "unknown target": "target key 'tracker-mek/v9' is unknown",
        "unknown target (dry run)": "target key 'tracker-mek/v9' is unknown",
        "disabled target": f"target key {rotation.v2} is disabled",
        "--from is the target": "is the target itself",
        "unknown --from": "source key 'tracker-mek/v8' is unknown",
        "negative rate": "--rate must be positive",
    }
    usage = {"unknown mode": "Invalid value for '--mode'", "no slices": "Invalid value for '--slices'"}
    for name, result in results.items():
        assert result.returncode == 2, f"{name}: exit {result.returncode}, bad input is 2\n{result.stderr}"
        if name in usage:  # Click's own usage error, naming the choices and the range
            assert usage[name] in result.stderr and "Usage:" in result.stderr, result.stderr
            continue
        line = one_error_line(result)
        assert expected[name] in line, f"{name}: {line}"
    assert "'reencrypt', 'rewrap'" in results["unknown mode"].stderr
    assert "greater than or equal to 1" in results["no slices"].stderr
    assert f"keys enable {rotation.v2}" in results["disabled target"].stderr
    assert "known: tracker-mek/v1, tracker-mek/v2, tracker-mek/v3" in results["unknown target"].stderr
    assert_unchanged(before, rotation.home, "refused sweep start")
    assert records(rotation.home / "tracker.db", "sweep") == []


def test_a_second_sweep_is_refused_while_one_is_active(rotation):
    env = rotation.env()
    first = cli_json("sweep", "start", "--to", rotation.v2, "--slices", "4", env=env)["id"]
    db = rotation.home / "tracker.db"
    before = tree(rotation.home)

    second = cli("sweep", "start", "--to", rotation.v2, env=env, code=1)
    line = one_error_line(second)
    assert f"sweep {first} is still active" in line and f"reencrypt sweep cancel {first}" in line
    assert_unchanged(before, rotation.home, "the refused second sweep start")
    assert [body["id"] for _, body in records(db, "sweep")] == [first]
    assert len(records(db, "slice")) == 4

    # Once the first is cancelled, the container is free again.
    cli("sweep", "cancel", first, env=env)
    third = cli_json("sweep", "start", "--to", rotation.v2, "--slices", "2", env=env)["id"]
    assert third != first
    assert [s["id"] for s in cli_json("sweep", "status", "--all", env=env)] == [first, third]


# -- steering a sweep --------------------------------------------------------------------------


def test_sweep_status_pause_resume_throttle_cancel(rotation):
    env = rotation.env()
    sweep_id = cli_json("sweep", "start", "--to", rotation.v2, "--slices", "3", "--rate", "40", env=env)["id"]

    def status() -> dict:
        return cli_json("sweep", "status", sweep_id, env=env)

    looks = invoke_all(
        {
            "by id": (("sweep", "status", sweep_id, "--json"), env),
            "latest": (("sweep", "status", "--json"), env),
            "human": (("sweep", "status"), env),
            "unknown": (("sweep", "status", "sw-19990101-000000-abcdef"), env),
            "all": (("sweep", "status", "--all", "--json"), env),
            "all human": (("sweep", "status", "--all"), env),
            "bare throttle": (("sweep", "throttle", sweep_id), env),
        }
    )
    shown = json.loads(looks["by id"].stdout)
    assert (shown["sweep"]["id"], shown["sweep"]["status"], shown["sweep"]["rate"]) == (sweep_id, "running", 40)
    assert len(shown["slices"]) == 3 and shown["totals"]["documents_scanned"] == 0 and shown["active_leases"] == 0
    assert shown["budget_estimate"].startswith("at 40 docs/s: ~")  # time left under the sweep's budget
    assert json.loads(looks["latest"].stdout)["sweep"]["id"] == sweep_id  # the latest by default
    assert sweep_id in looks["human"].stdout and "running" in looks["human"].stdout
    assert (
        "no sweep 'sw-19990101-000000-abcdef'" in one_error_line(looks["unknown"])
        and "--all" in looks["unknown"].stderr
    )
    assert [(s["id"], s["status"]) for s in json.loads(looks["all"].stdout)] == [(sweep_id, "running")]
    assert sweep_id in looks["all human"].stdout
    assert "--rate" in one_error_line(looks["bare throttle"]) and "--unlimited" in looks["bare throttle"].stderr

    assert cli_json("sweep", "throttle", sweep_id, "--rate", "5", env=env)["rate"] == 5
    assert cli_json("sweep", "throttle", sweep_id, "--unlimited", env=env)["rate"] is None

    assert cli_json("sweep", "pause", sweep_id, env=env)["status"] == "paused"
    paused = invoke_all(
        {"status": (("sweep", "status", sweep_id, "--json"), env), "again": (("sweep", "pause", sweep_id), env)}
    )
    assert json.loads(paused["status"].stdout)["sweep"]["status"] == "paused"
    assert "is paused" in one_error_line(paused["again"])

    resumed = cli_json("sweep", "resume", sweep_id, env=env)
    assert (resumed["id"], resumed["status"], resumed["slices_queued"]) == (sweep_id, "running", 3)  # the sweep
    unlimited = status()
    assert (unlimited["sweep"]["status"], unlimited["sweep"]["rate"]) == (
        "running",
        None,
    )  # --unlimited held through pause and resume
    assert unlimited["budget_estimate"] == ""  # no budget, no estimate under one

    assert cli_json("sweep", "cancel", sweep_id, env=env)["status"] == "cancelled"
    assert status()["sweep"]["status"] == "cancelled"
    before = tree(rotation.home)
    refused = invoke_all(
        {
            "resume": (("sweep", "resume", sweep_id), env),
            "cancel": (("sweep", "cancel", sweep_id), env),
            "throttle": (("sweep", "throttle", sweep_id, "--rate", "3"), env),
            "pause": (("sweep", "pause", sweep_id), env),
        }
    )
    assert "only a paused or running sweep can be resumed" in one_error_line(refused["resume"])
    for name in ("cancel", "throttle", "pause"):
        assert f"sweep {sweep_id} is cancelled" in one_error_line(refused[name]), name
    assert_unchanged(before, rotation.home, "refused controls of a cancelled sweep")

    actions = [body["action"] for _, body in records(rotation.home / "tracker.db", "audit")]
    assert actions == [
        "sweep started",
        "sweep throttled",
        "sweep throttled",
        "sweep paused",
        "sweep resumed",
        "sweep cancel requested",
        "sweep cancelled",
    ]  # no batch in hand: settled at once


def test_sweep_failures_as_csv_and_json(rotation):
    env = rotation.env()
    sweep_id = cli_json("sweep", "start", "--to", rotation.v2, "--slices", "2", env=env)["id"]

    empty = invoke_all(
        {
            "csv": (("sweep", "failures", sweep_id, "--format", "csv"), env),
            "json": (("sweep", "failures", sweep_id, "--format", "json"), env),
        }
    )
    assert empty["csv"].stdout.splitlines() == ["document_id,partition_key,field_path,kid,reason,slice,at"]
    assert json.loads(empty["json"].stdout) == []

    # A failure as a worker records it (workers themselves are test_sweep_fleet.py's business).
    store = rotation.store()
    SweepState(store.records()).record_failure(
        sweep_id, 1, "doc-0000042", "product-007", "/customFields/1/value", "authentication_failed", kid=rotation.v1
    )
    store.close()
    results = invoke_all(
        {
            "csv": (("sweep", "failures", sweep_id, "--format", "csv"), env),
            "json": (("sweep", "failures", sweep_id, "--format", "json"), env),
            "table": (("sweep", "failures", sweep_id), env),
            "--json": (("sweep", "failures", sweep_id, "--json"), env),
            "format": (("sweep", "failures", sweep_id, "--format", "xml"), env),
            "both": (("sweep", "failures", sweep_id, "--format", "csv", "--json"), env),
            "sweep": (("sweep", "failures", "sw-nope", "--format", "csv"), env),
        }
    )
    rows = list(csv.DictReader(io.StringIO(results["csv"].stdout)))
    assert [
        (r["document_id"], r["partition_key"], r["field_path"], r["kid"], r["reason"], r["slice"]) for r in rows
    ] == [
        ("doc-0000042", "product-007", "/customFields/1/value", rotation.v1, "authentication_failed", "1"),
    ]
    listed = json.loads(results["json"].stdout)
    assert [(f["document_id"], f["field_path"], f["kid"], f["reason"]) for f in listed] == [
        ("doc-0000042", "/customFields/1/value", rotation.v1, "authentication_failed"),
    ]
    assert json.loads(results["--json"].stdout) == listed  # --json is --format json
    assert "doc-0000042" in results["table"].stdout and "1 failures" in results["table"].stdout
    assert results["format"].returncode == 2 and "Invalid value for '--format'" in results["format"].stderr
    assert results["format"].stdout == ""
    assert "--json is --format json" in one_error_line(results["both"]) and results["both"].returncode == 2
    assert "no sweep 'sw-nope'" in one_error_line(results["sweep"])


# -- verify ------------------------------------------------------------------------------------


def test_verify_fails_on_the_old_key_and_passes_after_a_sweep(rotation, fleet):
    env = rotation.env()
    _, by_kid, _ = field_census(rotation)
    fields = by_kid[rotation.v1]

    results = invoke_all(
        {
            "verify": (("verify", "--expect", rotation.v2, "--json"), env),
            "unknown": (("verify", "--expect", "tracker-mek/v7"), env),
        }
    )
    assert results["verify"].returncode == 1, results["verify"].stderr
    before = json.loads(results["verify"].stdout)
    assert before["documents"] == rotation.documents
    assert before["fields_by_kid"] == {rotation.v1: fields}
    assert (before["undecryptable"], before["off_target"], before["ok"]) == (0, fields, False)
    assert "key 'tracker-mek/v7' is unknown" in one_error_line(results["unknown"])
    assert results["unknown"].returncode == 2  # a typo, told apart from a failed verify (1)

    fleet.start(count=1)
    swept = cli_json("sweep", "start", "--to", rotation.v2, "--slices", "2", "--wait", env=env, timeout=120)
    assert swept["sweep"]["status"] == "completed", fleet.logs()[-3000:]

    after = cli_json("verify", "--expect", rotation.v2, env=env)
    assert after["fields_by_kid"] == {rotation.v2: fields}
    assert (after["documents"], after["undecryptable"], after["off_target"], after["ok"]) == (
        rotation.documents,
        0,
        0,
        True,
    )
    # Nothing uses it any more and the passing verify is in the trail: no --force needed.
    disabled = " ".join(cli("keys", "disable", rotation.v1, env=env).stdout.split())  # rich wraps at 80 columns
    assert f"disabled {rotation.v1} (checked SQLite store {rotation.home / 'tracker.db'}" in disabled


# -- audit -------------------------------------------------------------------------------------


def test_audit_trail_records_who_did_what_and_detects_tampering(tmp_path, redis_url):
    db = tmp_path / "tracker.db"
    env = base_env(
        tmp_path,
        REENCRYPT_STORE=f"sqlite:///{db}",
        REENCRYPT_KEYS=f"local:{tmp_path / 'keyring.json'}",
        REDIS_URL=redis_url,
        REENCRYPT_ACTOR="alice@ops",
    )
    started = datetime.now(UTC).replace(microsecond=0)
    cli("keys", "init", env=env)
    cli("seed", "--docs", "20", env=env)
    cli("keys", "rotate", env=env)
    sweep_id = cli_json("sweep", "start", "--to", "tracker-mek/v2", "--slices", "2", env=env)["id"]
    cli("verify", "--expect", "tracker-mek/v2", env=env, code=1)
    cli("keys", "disable", "tracker-mek/v1", "--force", env=env)

    entries = cli_json("audit", env=env)
    assert [e["action"] for e in entries] == ["key created", "key rotated", "sweep started", "verify", "key disabled"]
    assert {e["who"] for e in entries} == {"alice@ops"}
    for entry in entries:
        when = datetime.strptime(entry["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert started <= when <= datetime.now(UTC)
    assert entries[1]["details"] == {"kid": "tracker-mek/v2"}
    assert entries[2]["details"]["sweep_id"] == sweep_id
    assert (entries[3]["details"]["expect"], entries[3]["details"]["ok"]) == ("tracker-mek/v2", False)
    assert entries[4]["details"] == {"kid": "tracker-mek/v1", "forced": True, "store": f"SQLite store {db}"}

    intact = cli("audit", "--check", env=env)
    assert "audit chain intact" in intact.stdout and "alice@ops" in intact.stdout and "key rotated" in intact.stdout

    # Altered details: entry 2 now claims another key was rotated in.
    original = dict(records(db, "audit"))["000000000002"]
    with sqlite3.connect(db) as connection:
        connection.execute(
            "UPDATE records SET body = ? WHERE kind = 'audit' AND id = '000000000002'",
            (json.dumps({**original, "details": {"kid": "tracker-mek/v9"}}),),
        )
    connection.close()
    altered = cli_json("audit", "--check", env=env, code=1)
    assert altered["problems"] == ["entry 2 was altered (hash mismatch)"]

    # Put it back, then delete a middle entry instead.
    with sqlite3.connect(db) as connection:
        connection.execute(
            "UPDATE records SET body = ? WHERE kind = 'audit' AND id = '000000000002'", (json.dumps(original),)
        )
        connection.execute("DELETE FROM records WHERE kind = 'audit' AND id = '000000000003'")
    connection.close()
    deleted = cli("audit", "--check", env=env, code=1)
    assert "entry 3 is missing (found 4 in its place)" in deleted.stdout
    assert "entry 4 does not chain onto the entry before it" in deleted.stdout
    assert "audit chain broken" in deleted.stdout


# -- configuration errors ----------------------------------------------------------------------

SECRET = "S3cr3tAccountKey"


def _config_cases(rotation: Rotation, tmp_path: Path):
    """(name, args, env changes, fragments the one error line must contain)."""
    open_keyring = tmp_path / "open-keyring.json"
    shutil.copyfile(rotation.home / "keyring.json", open_keyring)
    open_keyring.chmod(0o644)
    to = ("sweep", "start", "--to", rotation.v2)
    return {
        "no store (status)": (
            ("sweep", "status"),
            {"REENCRYPT_STORE": None},
            ["no store configured", "REENCRYPT_STORE", "--store"],
        ),
        "no store (seed)": (("seed", "--docs", "5"), {"REENCRYPT_STORE": None}, ["no store configured"]),
        "no store (verify)": (("verify", "--expect", rotation.v2), {"REENCRYPT_STORE": None}, ["no store configured"]),
        "no keys": (("keys", "list"), {"REENCRYPT_KEYS": None}, ["no keys configured", "REENCRYPT_KEYS"]),
        "mongodb store": (
            ("sweep", "status"),
            {"REENCRYPT_STORE": "mongodb://x"},
            ["store URL 'mongodb://x' is not understood"],
        ),
        "relative sqlite url": (
            ("sweep", "status"),
            {"REENCRYPT_STORE": "sqlite://relative"},
            ["'sqlite://relative' is not a SQLite file URL"],
        ),
        "bad keys url": (
            ("keys", "list"),
            {"REENCRYPT_KEYS": "foo:bar"},
            ["key provider URL 'foo:bar' is not understood"],
        ),
        # A credential pasted into a URL is never echoed back (SECRET is checked absent below).
        "cosmos url with a key": (
            ("sweep", "status"),
            {"REENCRYPT_STORE": f"cosmos://acct:{SECRET}@host/db/c"},
            ["'cosmos://***@host/db/c' must name"],
        ),
        "store url with a query": (
            ("sweep", "status"),
            {"REENCRYPT_STORE": f"cosmos://host/db/c?key={SECRET}"},
            ["'cosmos://host/db/c?***' must name"],
        ),
        "missing keyring": (
            ("keys", "rotate"),
            {"REENCRYPT_KEYS": f"local:{tmp_path / 'absent.json'}"},
            ["absent.json does not exist", "keys init"],
        ),
        "missing keyring (sweep)": (to, {"REENCRYPT_KEYS": f"local:{tmp_path / 'absent.json'}"}, ["does not exist"]),
        "world-readable keyring": (
            ("keys", "rotate"),
            {"REENCRYPT_KEYS": f"local:{open_keyring}"},
            ["readable by group or others", f"chmod 600 {open_keyring}"],
        ),
        "world-readable keyring (verify)": (
            ("verify", "--expect", rotation.v2),
            {"REENCRYPT_KEYS": f"local:{open_keyring}"},
            ["chmod 600"],
        ),
        "malformed REDIS_URL": (to, {"REDIS_URL": "http://x"}, ["REDIS_URL", "redis://"]),
        # Named as the operator set it: the variable, not the Python field (batch_documents).
        "malformed setting": (
            ("sweep", "status"),
            {"REENCRYPT_BATCH_DOCUMENTS": "0"},
            ["REENCRYPT_BATCH_DOCUMENTS is invalid", "greater than or equal to 1"],
        ),
        "unreachable Redis": (
            to,
            {"REDIS_URL": "redis://127.0.0.1:1/0"},
            ["redis://127.0.0.1:1/0 is unreachable", "REDIS_URL"],
        ),
        "unreachable Redis (flag)": (
            ("--redis-url", "redis://127.0.0.1:1/0", *to),
            {},
            ["redis://127.0.0.1:1/0 is unreachable"],
        ),
    }


#: A broker that does not answer may be restarting: exit 3 (try again), not a configuration error.
UNAVAILABLE = {"unreachable Redis", "unreachable Redis (flag)"}


def test_configuration_errors_are_one_line_exit_2_and_write_nothing(seeded, tmp_path):
    cases = _config_cases(seeded, tmp_path)
    before, side = tree(seeded.home), tree(tmp_path)
    # Nothing may appear in the checkout either (a relative SQLite path, a default state dir).
    # The demo, run first as the README says, leaves its own .reencrypt/ there: compare, not "absent".
    in_checkout = {name: ((ROOT / name).exists(), tree(ROOT / name)) for name in ("relative", ".reencrypt")}

    def env_for(changes: dict) -> dict[str, str]:
        env = seeded.env()
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    results = invoke_all({name: (args, env_for(changes)) for name, (args, changes, _) in cases.items()})
    problems = []
    for name, result in results.items():
        lines = result.stderr.strip().splitlines()
        code = 3 if name in UNAVAILABLE else 2
        if result.returncode != code or len(lines) != 1 or not lines[0].startswith("error: "):
            problems.append(f"{name}: exit {result.returncode}, stderr:\n{result.stderr}")
        elif missing := [f for f in cases[name][2] if f not in lines[0]]:
            problems.append(f"{name}: {missing} not in {lines[0]!r}")
        if SECRET in result.stdout + result.stderr:
            problems.append(f"{name}: a credential from the URL was printed")
    assert not problems, "\n".join(problems)
    assert_unchanged(before, seeded.home, "a command refused for its configuration")
    assert_unchanged(side, tmp_path, "a command refused for its configuration")
    assert {name: ((ROOT / name).exists(), tree(ROOT / name)) for name in in_checkout} == in_checkout
    assert records(seeded.home / "tracker.db", "sweep") == []


def test_flags_override_the_environment(seeded):
    env = {**seeded.env(), "REENCRYPT_STORE": "mongodb://x", "REENCRYPT_KEYS": "foo:bar", "REDIS_URL": "http://x"}
    results = invoke_all(
        {
            "store": (
                (
                    "--store",
                    seeded.store_url,
                    "--redis-url",
                    "redis://127.0.0.1:1/0",
                    "sweep",
                    "status",
                    "--all",
                    "--json",
                ),
                env,
            ),
            "keys": (
                ("--keys", seeded.keys_url, "--redis-url", "redis://127.0.0.1:1/0", "keys", "list", "--json"),
                env,
            ),
        }
    )
    assert results["store"].returncode == 0 and json.loads(results["store"].stdout) == [], results["store"].stderr
    assert results["keys"].returncode == 0, results["keys"].stderr
    assert [v["kid"] for v in json.loads(results["keys"].stdout)] == [seeded.v1, seeded.v2]


def test_errors_never_show_key_material(seeded, tmp_path):
    """A damaged keyring is reported by key id, never by its contents."""
    damaged = tmp_path / "keyring.json"
    document = json.loads((seeded.home / "keyring.json").read_text())
    original = document["keys"][0]["d"]
    document["keys"][0]["d"] = original[:40] + ("A" if original[40] != "A" else "B") + original[41:]
    document["keys"][1]["p"] = "not base64url!"
    damaged.write_text(json.dumps(document))
    damaged.chmod(0o600)
    env = {**seeded.env(), "REENCRYPT_KEYS": f"local:{damaged}"}

    results = invoke_all(
        {
            "verify": (("verify", "--expect", seeded.v2), env),
            "seed": (("--store", f"sqlite:///{tmp_path / 'new.db'}", "seed", "--docs", "3"), env),
            "listed": (("keys", "list", "--json"), env),
        }
    )
    assert f"keyring key '{seeded.v1}' is not a complete RSA private JWK" in one_error_line(results["verify"])
    assert f"keyring key '{seeded.v2}' is not a complete RSA private JWK" in one_error_line(results["seed"])
    assert results["listed"].returncode == 0
    for result in results.values():  # invoke() checked the damaged file's members; the original too:
        assert original not in result.stdout + result.stderr


# -- demo --------------------------------------------------------------------------------------


def _processes_mentioning(marker: str) -> list[psutil.Process]:
    """Live processes whose command line or environment names ``marker``."""
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline", "environ", "status"]):
        info = process.info
        if process.pid == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(info["cmdline"] or []) + " " + " ".join(f"{k}={v}" for k, v in (info["environ"] or {}).items())
        if marker in text:
            found.append(process)
    return found


def test_demo_runs_a_whole_rotation_and_leaves_nothing_running(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))  # short: the embedded Redis socket lives here
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REENCRYPT_") and k != "REDIS_URL"}
    env["REENCRYPT_HOME"] = str(home)
    # The demo's comparison times this busy machine: its verdicts are tested on given figures.
    env["REENCRYPT_COMPARE_TOLERANCE"] = "2000"
    seen: set[str] = set()
    demo = subprocess.Popen(
        [str(Path(sys.executable).parent / "reencrypt"), "demo", "--docs", "300"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while demo.poll() is None and time.monotonic() < deadline:
            for process in _processes_mentioning(str(home)):
                seen.add(
                    "redis-server"
                    if "redis-server" in (process.info["name"] or "")
                    else "celery"
                    if "celery" in " ".join(process.info["cmdline"] or [])
                    else "other"
                )
            time.sleep(0.4)
        stdout, stderr = demo.communicate(timeout=max(1, deadline - time.monotonic()))
        assert "Traceback" not in stderr
        assert not [secret for secret in key_material(home / "demo" / "keyring.json") if secret in stdout + stderr]
        assert demo.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert "verify PASS" in stdout
        # One product's old version disabled after its own rotation, then every product's.
        assert re.search(r"tracker-mek-product-002/v1\s*│\s*disabled", stdout), stdout[-3000:]
        assert re.search(r"tracker-mek-product-005/v1\s*│\s*disabled", stdout), stdout[-3000:]
        assert "documents not written (ETags unchanged)" in stdout
        # Preflight passes on embedded defaults; the backup check does not apply to SQLite and
        # says so rather than passing.
        assert "✓ key vault tracker-mek-product-000" in stdout and "✓ fleet" in stdout and "✗" not in stdout
        assert re.search(r"– backup .*SQLite.*not counted as passed", stdout), stdout[:3000]
        assert re.search(r"read p95 \(ms\)\s*│.*│\s*pass", stdout), stdout[-6000:]
        assert "demo complete" in stdout and "audit chain intact" in stdout
        assert {"redis-server", "celery"} <= seen, f"the process check saw only {seen}: it would prove nothing"
        time.sleep(0.5)
        left = _processes_mentioning(str(home))
        assert not left, f"left running: {[(p.pid, p.info['cmdline']) for p in left]}"
        assert list(cwd.iterdir()) == [], "the demo wrote into the working directory"
        assert not (home / "redis.sock").exists()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for process in _processes_mentioning(str(home)):  # only what this demo started
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(home, ignore_errors=True)
