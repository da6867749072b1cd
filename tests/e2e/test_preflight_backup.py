"""Preflight's backup check through the real azure-mgmt-cosmosdb SDK, against the loopback ARM
server (tests/arm_server.py), with the check's factory replaced as ``python -m loopback_arm``
replaces it (tests/loopback_arm.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import coordinator.preflight.backup as backup
from coordinator.preflight.backup import check_backup
from coordinator.preflight.result import FAIL, PASS

import loopback_arm
from arm_server import CALLER, ArmServer, resource_id

TESTS = Path(__file__).resolve().parent.parent
STORE = "cosmos://127.0.0.1:8081/tracker/items"
ENDPOINT = "https://127.0.0.1:8081/"


@pytest.fixture
def arm(monkeypatch):
    with ArmServer() as server:
        monkeypatch.setenv(loopback_arm.ENV_URL, server.url)
        monkeypatch.setenv(loopback_arm.ENV_CA, server.cert_path)
        monkeypatch.setattr(backup, "open_management_client", loopback_arm.open_management_client)
        yield server


@pytest.fixture
def account(arm) -> str:
    return arm.add_account("tracker-cosmos", document_endpoint=ENDPOINT)


@pytest.mark.parametrize(("tier", "days"), [("Continuous7Days", 7), ("Continuous30Days", 30)])
def test_continuous_backup_passes_naming_its_tier(arm, account, tier, days):
    arm.set_continuous(account, tier)
    result = check_backup(STORE, account, None)
    assert result.status == PASS, result
    assert result.detail == f"continuous backup (point-in-time restore, {days} days)"
    assert (result.subject, result.figures) == ("tracker-cosmos", {"policy": "Continuous", "tier": tier})
    # The account was read through ARM's path, with the SDK's api-version.
    assert arm.requests == [f"GET {account}"] and arm.api_versions[0][:2] == "20"


def test_hourly_periodic_backup_passes_with_its_figures(arm, account):
    arm.set_periodic(account, interval_minutes=60, retention_hours=48)
    result = check_backup(STORE, account, None)
    assert result.status == PASS, result
    assert result.figures == {"policy": "Periodic", "interval_min": 60, "retention_h": 48}


@pytest.mark.parametrize("confirmed", [None, "INC-4711 restore drill"])
def test_four_hourly_periodic_backup_fails_and_a_confirmation_does_not_override_it(arm, account, confirmed):
    arm.set_periodic(account, interval_minutes=240, retention_hours=8)
    result = check_backup(STORE, account, confirmed)
    assert result.status == FAIL, result
    assert "every 240 minutes" in result.detail and "less than 1 h" in result.detail
    assert "60 minutes or less" in result.fix
    assert result.figures == {"policy": "Periodic", "interval_min": 240, "retention_h": 8}
    assert ("does not override" in result.detail) is bool(confirmed)


def test_without_the_reader_role_the_check_fails_naming_the_role(arm, account):
    arm.deny()
    result = check_backup(STORE, account, None)
    assert result.status == FAIL, result
    assert "403 AuthorizationFailed" in result.detail
    assert "'Reader' role on account tracker-cosmos" in result.fix and "--backup-confirmed" in result.fix
    # ARM's message names the caller's object id: only codes reach the line.
    assert CALLER not in result.detail + result.fix


def test_without_the_reader_role_a_confirmation_passes_showing_its_reference(arm, account):
    arm.deny()
    result = check_backup(STORE, account, "INC-4711: PITR to 09:00 checked in portal")
    assert result.status == PASS, result
    assert result.detail == (
        "backup policy not read (ARM refused to read account tracker-cosmos: 403 AuthorizationFailed); "
        "confirmed by operator: INC-4711: PITR to 09:00 checked in portal"
    )
    assert result.figures == {"confirmed": "INC-4711: PITR to 09:00 checked in portal"}


def test_an_account_arm_does_not_know_fails_naming_the_setting(arm, account):
    missing = check_backup(STORE, resource_id("tracker-cosmos-old"), None)
    assert missing.status == FAIL and "404 ResourceNotFound" in missing.detail
    assert "REENCRYPT_COSMOS_RESOURCE_ID" in missing.fix
    group = check_backup(STORE, resource_id("tracker-cosmos", resource_group="other-rg"), None)
    assert group.status == FAIL and "404 ResourceGroupNotFound" in group.detail


def test_a_rejected_token_fails_with_the_status_and_code(arm, account):
    arm.rejected_tokens.add("test-token")
    result = check_backup(STORE, account, None)
    assert result.status == FAIL and "401 InvalidAuthenticationToken" in result.detail
    assert "test-token" not in result.detail + result.fix


def test_an_account_of_another_endpoint_fails_naming_both(arm, account):
    arm.set_document_endpoint(account, "https://tracker-cosmos-staging.documents.azure.com:443/")
    result = check_backup(STORE, account, "INC-4711")
    assert result.status == FAIL, result
    assert "tracker-cosmos-staging.documents.azure.com" in result.detail and "127.0.0.1:8081" in result.detail
    assert "REENCRYPT_COSMOS_RESOURCE_ID" in result.fix and "does not override" in result.detail


def test_the_endpoint_guard_ignores_case_and_the_default_port(arm):
    account = arm.add_account("tracker-cosmos")  # https://tracker-cosmos.documents.azure.com:443/
    result = check_backup("cosmos://Tracker-Cosmos.documents.azure.com/tracker/items", account, None)
    assert result.status == PASS, result


def test_no_resource_id_and_a_malformed_one_fail_before_any_call(arm):
    unset = check_backup(STORE, "", None)
    assert unset.status == FAIL and "REENCRYPT_COSMOS_RESOURCE_ID is not set" in unset.detail
    malformed = check_backup(STORE, "/subscriptions/tracker/resourceGroups/tracker-rg", None)
    assert malformed.status == FAIL and backup.RESOURCE_ID_FORMAT in malformed.fix
    assert arm.requests == []


def test_an_unreachable_arm_fails_quickly(arm, account, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv(loopback_arm.ENV_URL, closed)
    result = check_backup(STORE, account, None)
    assert result.status == FAIL and "cannot reach Azure Resource Manager: ServiceRequestError" in result.detail
    assert check_backup(STORE, account, "INC-4711").status == PASS


def test_python_m_loopback_arm_runs_the_cli_with_the_factory_replaced(arm):
    probe = (
        "import runpy, sys; sys.argv = ['loopback_arm', '--help']; "
        "import loopback_arm, coordinator.preflight.backup as b; "
        "assert b.open_management_client is loopback_arm.open_management_client; "
        "runpy.run_module('loopback_arm', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
