"""Preflight's backup check without a server: the resource id, the endpoint guard and the verdict
on a policy (the SDK against the loopback ARM server: tests/e2e/test_preflight_backup.py)."""

from __future__ import annotations

import pytest

from coordinator.preflight.backup import (
    RESOURCE_ID_FORMAT,
    AccountId,
    BackupPolicy,
    check_backup,
    judge,
    parse_resource_id,
    same_host,
)
from coordinator.preflight.result import FAIL, NOT_APPLICABLE, PASS
from tracker_reencrypt.errors import ConfigError

SUB = "00000000-1111-2222-3333-444444444444"
ID = f"/subscriptions/{SUB}/resourceGroups/tracker-rg/providers/Microsoft.DocumentDB/databaseAccounts/tracker-cosmos"


def test_a_resource_id_names_subscription_group_and_account_in_any_case_of_its_fixed_words():
    assert parse_resource_id(ID) == AccountId(SUB, "tracker-rg", "tracker-cosmos")
    lower = f"  /SUBSCRIPTIONS/{SUB}/resourcegroups/rg.(1)/providers/microsoft.documentdb/databaseaccounts/acct\n"
    assert parse_resource_id(lower) == AccountId(SUB, "rg.(1)", "acct")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            f"subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.DocumentDB/databaseAccounts/a1",
            "does not start with /subscriptions/",
        ),
        (f"/subscriptions/{SUB}/resourceGroups/rg", "ends before providers"),
        (
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a1",
            "segment 6 is not Microsoft.DocumentDB",
        ),
        (ID + "/sqlDatabases/tracker", "10 segments where an account's id has 8"),
        (ID + "/", "9 segments"),
        (ID.replace(SUB, "my-subscription"), "subscription id is not a GUID"),
        (ID.replace("tracker-rg", "rg with spaces"), "resource group name"),
        (ID.replace("tracker-cosmos", "Tracker_Cosmos"), "account name"),
        (ID.replace("tracker-cosmos", "ab"), "account name"),
    ],
)
def test_a_malformed_resource_id_is_refused_naming_the_part_and_the_format(text, problem):
    with pytest.raises(ConfigError) as refused:
        parse_resource_id(text)
    assert problem in str(refused.value)
    assert RESOURCE_ID_FORMAT in str(refused.value)


def test_a_malformed_resource_id_is_not_echoed_since_it_may_be_a_mis_pasted_secret():
    pasted = "AccountEndpoint=https://a.documents.azure.com:443/;AccountKey=c2VjcmV0LWtleQ==;"
    with pytest.raises(ConfigError) as refused:
        parse_resource_id(pasted)
    assert "c2VjcmV0LWtleQ" not in str(refused.value)


@pytest.mark.parametrize(
    ("store_host", "endpoint", "same"),
    [
        ("acct.documents.azure.com", "https://acct.documents.azure.com:443/", True),
        ("ACCT.Documents.Azure.com:443", "https://acct.documents.azure.com/", True),
        ("127.0.0.1:8081", "https://127.0.0.1:8081/", True),
        ("127.0.0.1:8081", "https://127.0.0.1:8082/", False),
        ("acct.documents.azure.com", "https://other.documents.azure.com:443/", False),
        ("acct.documents.azure.com", "", False),
        ("acct.documents.azure.com", "https://acct.documents.azure.com:99999/", False),
    ],
)
def test_the_store_and_the_account_must_be_one_host_and_port(store_host, endpoint, same):
    assert same_host(store_host, endpoint) is same


def test_continuous_backup_passes_naming_its_window():
    seven = judge(BackupPolicy("Continuous", tier="Continuous7Days"), "acct", None)
    assert (seven.status, seven.detail) == (PASS, "continuous backup (point-in-time restore, 7 days)")
    assert seven.figures == {"policy": "Continuous", "tier": "Continuous7Days"}
    untiered = judge(BackupPolicy("Continuous"), "acct", None)
    assert untiered.status == PASS and untiered.detail == "continuous backup (point-in-time restore)"


def test_periodic_backup_passes_at_an_hour_and_fails_beyond_even_when_confirmed():
    hourly = judge(BackupPolicy("Periodic", interval_min=60, retention_h=8), "acct", None)
    assert hourly.status == PASS
    assert hourly.figures == {"policy": "Periodic", "interval_min": 60, "retention_h": 8}
    for confirmed in (None, "INC-7"):
        default = judge(BackupPolicy("Periodic", interval_min=240, retention_h=8), "acct", confirmed)
        assert default.status == FAIL and "every 240 minutes" in default.detail
        assert "60 minutes or less" in default.fix and "continuous" in default.fix
    assert "does not override" in default.detail and "INC-7" not in default.detail


def test_a_policy_the_check_cannot_judge_is_treated_as_not_read():
    for policy in (BackupPolicy(""), BackupPolicy("Snapshot"), BackupPolicy("Periodic")):
        unjudged = judge(policy, "acct", None)
        assert unjudged.status == FAIL and unjudged.detail.startswith("backup policy not read")
        assert "--backup-confirmed" in unjudged.fix
        assert judge(policy, "acct", "INC-7").status == PASS


def test_a_migration_in_progress_is_shown():
    migrating = judge(BackupPolicy("Continuous", tier="Continuous30Days", migration="InProgress"), "acct", None)
    assert "migration to continuous backup: InProgress" in migrating.detail
    assert migrating.figures["migration"] == "InProgress"


def test_sqlite_is_not_applicable_and_a_confirmation_is_noted():
    result = check_backup("sqlite:///tracker.db", "", None)
    assert result.status == NOT_APPLICABLE and "SQLite" in result.detail and "back the file up" in result.detail
    noted = check_backup("sqlite:///tracker.db", ID, "nightly copy 2024-05-01")
    assert noted.status == NOT_APPLICABLE and "noted: nightly copy 2024-05-01" in noted.detail


def test_without_a_resource_id_the_check_fails_unless_confirmed():
    unset = check_backup("cosmos://acct.documents.azure.com/db/tracker", "", None)
    assert unset.status == FAIL
    assert "REENCRYPT_COSMOS_RESOURCE_ID" in unset.fix and "'Reader'" in unset.fix
    assert '--backup-confirmed "<reference>"' in unset.fix
    confirmed = check_backup("cosmos://acct.documents.azure.com/db/tracker", "  ", "  INC-7\nrestore tested ")
    assert confirmed.status == PASS
    assert confirmed.detail.endswith("confirmed by operator: INC-7 restore tested")
    assert confirmed.figures == {"confirmed": "INC-7 restore tested"}
    assert check_backup("cosmos://acct.documents.azure.com/db/tracker", "", "   ").status == FAIL


def test_a_malformed_id_or_store_url_fails_even_when_confirmed():
    malformed = check_backup("cosmos://acct.documents.azure.com/db/tracker", "tracker-cosmos", "INC-7")
    assert malformed.status == FAIL and RESOURCE_ID_FORMAT in malformed.fix and "does not override" in malformed.detail
    bad_store = check_backup("cosmos://acct.documents.azure.com/tracker", ID, "INC-7")
    assert bad_store.status == FAIL and "database and a container" in bad_store.detail
