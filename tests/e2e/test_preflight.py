"""``reencrypt preflight``: each check passing and failing for the reason an operator would be
told, against real parts: a SQLite store and a local keyring with real Celery workers, the
loopback Key Vault through the real SDK, the Cosmos-protocol server through azure-cosmos, and
the loopback ARM server through azure-mgmt-cosmosdb (the backup policy's own cases are in
tests/e2e/test_preflight_backup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from coordinator.preflight.result import FAIL, INFO, NOT_APPLICABLE, PASS
from coordinator.preflight.store import check_store
from coordinator.preflight.vault import check_keys
from tracker_reencrypt.audit import AuditTrail
from tracker_reencrypt.keys.products import ProductKeys
from tracker_reencrypt.stores import open_store

from arm_server import ArmServer
from conftest import ROOT, free_port, make_rotation, run_cli
from cosmos_server import cosmos_server  # noqa: F401  (pytest fixture)
from keyvault_server import KeyVaultServer
from loopback_vault import open_provider


def preflight(rotation, *args: str, **env: str) -> tuple[int, dict]:
    result = run_cli("preflight", "--json", *args, env=rotation.env(**env))
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def checks_named(report: dict, check: str) -> list[dict]:
    return [c for c in report["checks"] if c["check"] == check]


def test_passes_with_a_worker_on_the_stores_queue_and_records_itself(rotation, fleet):
    fleet.start(1, concurrency=2)
    fleet.wait_answering(1)
    code, report = preflight(rotation, "--backup-confirmed", "CHG-1234 restore point 02:00")
    assert code == 0 and report["passed"]
    (key,) = checks_named(report, "key vault")
    assert key["status"] == PASS and key["figures"]["kid"] == rotation.v2
    assert {"get_ms", "wrap_ms", "unwrap_ms"} <= set(key["figures"])
    statuses = {c["detail"].split(";")[0]: c["status"] for c in checks_named(report, "store")}
    assert list(statuses.values()).count(PASS) == 3 and NOT_APPLICABLE in statuses.values()
    # SQLite has no backup policy to read: shown as not applicable, never as passed.
    (backup,) = checks_named(report, "backup")
    assert backup["status"] == NOT_APPLICABLE and "CHG-1234" in backup["detail"]
    (workers,) = checks_named(report, "fleet")
    assert workers["figures"]["workers"] == 1 and list(workers["figures"]["concurrency"].values()) == [2]
    entry = AuditTrail(rotation.store().records()).entries()[-1]
    assert entry["action"] == "preflight" and entry["details"]["passed"] is True
    assert entry["details"]["backup_confirmed"] == "CHG-1234 restore point 02:00"


def test_fails_when_no_worker_serves_the_store_and_says_what_to_do(rotation):
    result = run_cli("preflight", env=rotation.env())
    assert result.returncode == 1
    assert "✗ fleet" in result.stdout and "0 worker(s) on queue " + rotation.queue() in result.stdout
    assert "--expect-workers 0" in result.stdout and "preflight failed" in result.stderr
    assert "– backup" in result.stdout and "not counted as passed" in result.stdout
    # Where workers start on demand (KEDA scales them from the queue), none is expected.
    code, report = preflight(rotation, "--expect-workers", "0")
    assert code == 0 and checks_named(report, "fleet")[0]["figures"]["workers"] == 0


def test_a_broker_that_does_not_answer_fails_the_broker_check_and_skips_no_other(rotation):
    port = free_port()  # a loopback port nobody listens on
    code, report = preflight(rotation, "--expect-workers", "0", REDIS_URL=f"redis://127.0.0.1:{port}/0")
    assert code == 1 and not report["passed"]
    (broker,) = checks_named(report, "broker")
    assert broker["status"] == FAIL and f"127.0.0.1:{port}" in broker["subject"]
    assert "REDIS_URL" in broker["fix"]
    (fleet,) = checks_named(report, "fleet")
    assert fleet["status"] == NOT_APPLICABLE and "not checked" in fleet["detail"]
    assert checks_named(report, "key vault")[0]["status"] == PASS
    assert all(check["status"] != FAIL for check in checks_named(report, "store"))


def test_a_missing_store_fails_the_store_check_and_skips_no_other(tmp_path, rotation):
    code, report = preflight(rotation, "--expect-workers", "0", REENCRYPT_STORE=f"sqlite:///{tmp_path}/typo.db")
    assert code == 1
    (store,) = checks_named(report, "store")
    assert store["status"] == FAIL and "does not exist" in store["detail"]
    assert not (tmp_path / "typo.db").exists()  # a typo never becomes an empty store
    assert checks_named(report, "key vault")[0]["status"] == PASS
    assert checks_named(report, "broker")[0]["status"] == PASS


def test_the_baseline_and_compare_round_trip_through_the_command(rotation, tmp_path):
    before = tmp_path / "before.json"
    code, report = preflight(rotation, "--expect-workers", "0", "--baseline", str(before), "--sample", "200")
    assert code == 0 and report["baseline"]["documents"] == 200 and json.loads(before.read_text())["format"] == 1
    # After the rotation no worker need be left (KEDA scales them to 0): --compare checks the
    # store and the keys, and says it did not check the backup or the fleet. The gate's verdicts
    # are tested on given figures (tests/unit/test_baseline.py); here two timings of one busy
    # machine (the suite runs two test processes and their workers) may differ several times
    # over, so the round trip states a tolerance that leaves only the plumbing to judge.
    code, report = preflight(
        rotation, "--compare", str(before), "--sample", "200", "--tolerance", "3000", REENCRYPT_COMPARE_TOLERANCE="2000"
    )
    comparison = report["comparison"]
    assert code == 0 and not comparison["failed"], comparison["rows"]
    assert "+3000%" in comparison["rule"]  # the flag wins over the setting
    assert "p95 (from 20 measurements) and p99 (from 1000) gate" in comparison["rule"]
    assert {row["figure"] for row in comparison["rows"]} >= {"read p95", "read p99", "vault unwrap p95"}
    assert {c["check"]: c["status"] for c in report["checks"] if c["check"] in ("backup", "fleet")} == {
        "backup": NOT_APPLICABLE,
        "fleet": NOT_APPLICABLE,
    }
    too_few = run_cli("preflight", "--compare", str(before), "--sample", "5", env=rotation.env())
    assert too_few.returncode == 2 and "--sample" in too_few.stderr  # 5 reads could not be judged

    other = make_rotation(tmp_path / "other", 50, rotation.redis_url)
    result = run_cli("preflight", "--expect-workers", "0", "--compare", str(before), env=other.env())
    assert result.returncode == 2 and "two stores" in result.stderr


def test_an_unreadable_baseline_file_is_refused_before_anything_runs(rotation, tmp_path):
    broken = tmp_path / "before.json"
    broken.write_text("{not json")
    entries = len(AuditTrail(rotation.store().records()).entries())
    result = run_cli("preflight", "--compare", str(broken), env=rotation.env())
    assert result.returncode == 2 and str(broken) in result.stderr and result.stdout == ""
    assert len(AuditTrail(rotation.store().records()).entries()) == entries


# -- Key Vault ----------------------------------------------------------------------------------


@pytest.fixture
def vault():
    with KeyVaultServer() as server:
        yield server


def test_a_vault_that_refuses_unwrap_names_the_crypto_user_role(vault):
    provider = open_provider(vault.url, "tracker-mek-{productId}", vault.cert_path)
    for product in ("acme", "globex"):
        provider.for_key(f"tracker-mek-{product}").init()
    keys = ProductKeys(provider)

    passing = check_keys(keys, ["acme", "globex"])
    assert [r.status for r in passing] == [PASS, PASS]
    assert passing[0].figures["wrap_in_process"] is True and passing[0].figures["unwrap_ms"] > 0

    vault.denied_operations.add("unwrap_key")  # the identity reads keys but is no Crypto User
    (denied,) = check_keys(keys, ["acme"])
    assert denied.status == FAIL and denied.subject == "tracker-mek-acme"
    assert "unwrapping" in denied.detail and "403" in denied.detail
    assert "Key Vault Crypto User" in denied.fix
    provider.close()


def test_a_product_without_a_key_fails_by_name(vault):
    provider = open_provider(vault.url, "tracker-mek-{productId}", vault.cert_path)
    provider.for_key("tracker-mek-acme").init()
    results = check_keys(ProductKeys(provider), ["acme", "initech", "bad/id"])
    assert [r.status for r in results] == [PASS, FAIL, FAIL]
    assert results[1].subject == "tracker-mek-initech" and "keys init" in results[1].fix + results[1].detail
    assert results[2].subject == "product bad/id"
    provider.close()


# -- Cosmos --------------------------------------------------------------------------------------


@pytest.fixture
def cosmos_env(cosmos_server, monkeypatch):  # noqa: F811
    for name, value in cosmos_server.env().items():
        monkeypatch.setenv(name, value)
    client = cosmos_server.client()
    database = client.create_database_if_not_exists(f"preflight-{uuid.uuid4().hex[:8]}")
    from azure.cosmos import PartitionKey

    database.create_container("tracker", PartitionKey("/productId"))
    database.get_container_client("tracker").create_item({"id": "doc-1", "productId": "acme"})
    yield cosmos_server, database.id
    client.delete_database(database.id)
    client.close()


@pytest.mark.cosmos
def test_cosmos_a_missing_container_fails_and_an_existing_one_reports_its_facts(cosmos_env):
    server, database = cosmos_env
    (missing,) = check_store(lambda: open_store(server.url(database, "trackr")), "productId", "test")
    assert missing.status == FAIL and f"container {database}/trackr does not exist" in missing.detail

    results = check_store(lambda: open_store(server.url(database, "tracker")), "productId", "test")
    by_status = [(r.status, r.detail.split(" ")[0]) for r in results]
    assert by_status[:3] == [(PASS, "read"), (PASS, "wrote"), (PASS, "partition")]
    throughput, priority = results[3], results[4]
    # The test server serves no offers (docs/COSMOS.md): reported as not readable, gating nothing.
    assert throughput.status == INFO and "not readable" in throughput.detail
    assert priority.status == INFO and "REENCRYPT_COSMOS_PRIORITY=low" in priority.detail


@pytest.mark.cosmos
def test_cosmos_a_periodic_four_hour_backup_fails_preflight(cosmos_env, tmp_path, redis_url):
    server, database = cosmos_env
    with ArmServer() as arm:
        resource_id = arm.add_account("tracker-acct", document_endpoint=server.endpoint)
        arm.set_periodic(resource_id, interval_minutes=240, retention_hours=8)
        arm.accounts[resource_id.lower()].priority_based_execution = False
        env = {
            **server.env(),
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}",
            "TEST_ARM_URL": arm.url,
            "TEST_ARM_CA": arm.cert_path,
            "REENCRYPT_STORE": server.url(database, "tracker"),
            "REENCRYPT_KEYS": f"local:{tmp_path / 'keyring.json'}",
            "REENCRYPT_COSMOS_RESOURCE_ID": resource_id,
            "REENCRYPT_HOME": str(tmp_path / "home"),
            "REENCRYPT_COSMOS_PRIORITY": "low",
            "REDIS_URL": redis_url,  # the tests' Redis: an embedded one would outlive the test
        }
        subprocess.run([sys.executable, "-m", "coordinator.cli", "keys", "init"], env=env, check=True, cwd=ROOT)
        result = subprocess.run(
            [sys.executable, "-m", "loopback_arm", "preflight", "--json", "--expect-workers", "0"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    (backup,) = checks_named(report, "backup")
    assert backup["status"] == FAIL and "240 minutes" in backup["detail"]
    # Low priority asked for, on an account that ignores it: the sweep would not yield to the tracker.
    (ignored,) = [c for c in checks_named(report, "store") if "priority-based execution off" in c["detail"]]
    assert ignored["status"] == FAIL and "--enable-priority-based-execution true" in ignored["fix"]
