"""Preflight's backup check: could the container be restored to a point less than an hour old?

The runbook's checklist asks for a backup less than 1 h old before a rotation: a sweep
rewrites every sensitive field, and a restore is what undoes a bad one. For a Cosmos store the
check reads the account's backup policy through the Azure management plane
(``azure-mgmt-cosmosdb``): continuous backup (point-in-time restore) passes, periodic backup
passes when it runs at least hourly. Reading it takes the account's ARM resource id (setting
``REENCRYPT_COSMOS_RESOURCE_ID``) and a control-plane role on the account (Reader), which the
data-plane roles the sweep runs with do not include.

Where the policy cannot be read (no resource id, no role, ARM unreachable, no credential), the
operator may check the backup themselves and say so with ``--backup-confirmed "<reference>"``:
the check then passes, saying that the policy was not read and which reference stands in for
it. A confirmation never overrides what this check can see for itself: a policy that was read
and backs up every 4 h fails with or without one, and so do a malformed resource id and one
that names another account than the store's (the document endpoint ARM reports for the
account must be the store URL's host).

A SQLite store is a file the operator backs up themselves: the check does not apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, ClientAuthenticationError, ServiceRequestError, ServiceResponseError

from coordinator.preflight.result import FAIL, NOT_APPLICABLE, PASS, CheckResult
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.stores.cosmos_access import parse_url

if TYPE_CHECKING:
    from azure.mgmt.cosmosdb import CosmosDBManagementClient

CHECK = "backup"
#: The figure a readable account adds: whether it enables priority-based execution.
PRIORITY_BASED_EXECUTION = "priority_based_execution"
ENV_RESOURCE_ID = "REENCRYPT_COSMOS_RESOURCE_ID"
#: The runbook's recovery point: the latest backup is less than an hour old.
MAX_BACKUP_INTERVAL_MIN = 60
#: The built-in Azure role whose Microsoft.DocumentDB/databaseAccounts/read reads the policy.
READER_ROLE = "Reader"
RESOURCE_ID_FORMAT = (
    "/subscriptions/<subscription id>/resourceGroups/<resource group>"
    "/providers/Microsoft.DocumentDB/databaseAccounts/<account>"
)
#: Bounded, so a dead or silent endpoint costs preflight seconds, not minutes (the SDK's
#: defaults retry ten times and wait up to 300 s for each connection and each answer).
MANAGEMENT_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 2,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 2,
    "connection_timeout": 5,
    "read_timeout": 10,
    "timeout": 20,
}

# ARM matches the fixed segments in any case; names follow Azure's naming rules (a resource
# group: 1-90 of letters, digits, - _ . ( ); a Cosmos account: 3-44 of a-z 0-9 -).
_RESOURCE_ID = re.compile(
    r"/subscriptions/(?P<subscription>[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12})"
    r"/resourceGroups/(?P<group>[-\w.()]{1,90})"
    r"/providers/Microsoft\.DocumentDB/databaseAccounts/(?P<account>[a-z0-9-]{3,44})",
    re.IGNORECASE,
)
_TIER_DAYS = re.compile(r"Continuous(\d+)Days", re.IGNORECASE)


@dataclass(frozen=True)
class AccountId:
    """A Cosmos DB account's place in Azure Resource Manager."""

    subscription: str
    resource_group: str
    account: str


@dataclass(frozen=True)
class BackupPolicy:
    """The account's backup policy as read; what the account did not report is None."""

    #: "Continuous", "Periodic", or whatever else the service says.
    kind: str
    #: Continuous: the point-in-time restore window, "Continuous7Days" or "Continuous30Days".
    tier: str | None = None
    #: Periodic: how often a backup is taken, and how long each is kept.
    interval_min: int | None = None
    retention_h: int | None = None
    #: The status of a migration from periodic to continuous backup, when one was started.
    migration: str | None = None

    @classmethod
    def of(cls, policy: Any) -> BackupPolicy:
        """From the SDK's model (``account.backup_policy``; None when the account reports none)."""
        if policy is None:
            return cls(kind="")
        continuous = getattr(policy, "continuous_mode_properties", None)
        periodic = getattr(policy, "periodic_mode_properties", None)
        migration = getattr(policy, "migration_state", None)
        return cls(
            kind=str(getattr(policy, "type", "") or ""),
            tier=_text(getattr(continuous, "tier", None)),
            interval_min=getattr(periodic, "backup_interval_in_minutes", None),
            retention_h=getattr(periodic, "backup_retention_interval_in_hours", None),
            migration=_text(getattr(migration, "status", None)),
        )


class _NotRead(Exception):
    """The policy could not be read: why (one line, no secrets) and what would let it be read."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def open_management_client(subscription_id: str) -> CosmosDBManagementClient:
    """The management-plane client, signed in as ``DefaultAzureCredential`` finds (managed or
    workload identity, ``az login``). The one place the client is built: tests point it at a
    loopback ARM server by replacing this function (tests/loopback_arm.py)."""
    from azure.identity import DefaultAzureCredential
    from azure.mgmt.cosmosdb import CosmosDBManagementClient

    return CosmosDBManagementClient(DefaultAzureCredential(), subscription_id, **MANAGEMENT_CLIENT_OPTIONS)


def check_backup(store_url: str, resource_id: str, confirmed: str | None) -> CheckResult:
    """The backup check for the store ``store_url`` names. ``resource_id`` is the Cosmos
    account's ARM id (empty when unset); ``confirmed`` the operator's reference to a backup
    they checked themselves (``--backup-confirmed``), which stands in for a policy that cannot
    be read and for nothing else."""
    confirmed = " ".join(confirmed.split()) if confirmed else None
    if store_url.startswith("sqlite:"):
        return _sqlite(confirmed)
    try:
        store_host = parse_url(store_url)[0]
    except ConfigError as error:
        return CheckResult(CHECK, "store", FAIL, str(error), "set REENCRYPT_STORE to the store's URL")
    resource_id = resource_id.strip()
    if not resource_id:
        reason = f"{ENV_RESOURCE_ID} is not set"
        fix = f"set {ENV_RESOURCE_ID} to {RESOURCE_ID_FORMAT} and grant this identity the '{READER_ROLE}' role on it"
        return _not_read(store_host, _NotRead(reason, fix), confirmed)
    try:
        account_id = parse_resource_id(resource_id)
    except ConfigError as error:
        # Set but wrong: a confirmation would hide a typo the operator meant to have read.
        detail = f"{error}{_not_overridden(confirmed)}"
        return CheckResult(CHECK, store_host, FAIL, detail, f"set {ENV_RESOURCE_ID} to {RESOURCE_ID_FORMAT}")
    try:
        document_endpoint, policy, priority = read_account(account_id)
    except _NotRead as not_read:
        return _not_read(account_id.account, not_read, confirmed)
    if not same_host(store_host, document_endpoint):
        return CheckResult(
            CHECK,
            account_id.account,
            FAIL,
            f"{ENV_RESOURCE_ID} names account {account_id.account}, whose endpoint "
            f"{document_endpoint or '(none reported)'} is not the store's host {store_host}"
            + _not_overridden(confirmed),
            f"set {ENV_RESOURCE_ID} to the id of the store's own account "
            f"(az cosmosdb show -g <resource group> -n <account> --query id -o tsv)",
        )
    verdict = judge(policy, account_id.account, confirmed)
    if priority is None:
        return verdict
    # Read with the policy, for the store's priority line (coordinator.preflight.run).
    return replace(verdict, figures={**verdict.figures, PRIORITY_BASED_EXECUTION: priority})


def parse_resource_id(text: str) -> AccountId:
    """``/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.DocumentDB/databaseAccounts/<account>``."""
    found = _RESOURCE_ID.fullmatch(text.strip())
    if found is None:
        # The value is not echoed: a mis-pasted connection string or token must not reach a log.
        raise ConfigError(
            f"{ENV_RESOURCE_ID} is not a Cosmos DB account's resource id ({_id_problem(text.strip())}): "
            f"expected {RESOURCE_ID_FORMAT}"
        )
    return AccountId(found["subscription"], found["group"], found["account"])


def _id_problem(text: str) -> str:
    """Which part of a malformed resource id is wrong, without repeating it."""
    parts = text.split("/")
    fixed = {1: "subscriptions", 3: "resourceGroups", 5: "providers", 6: "Microsoft.DocumentDB", 7: "databaseAccounts"}
    for index, word in fixed.items():
        if len(parts) <= index or parts[index].lower() != word.lower():
            if index == 1:
                return "it does not start with /subscriptions/"
            return f"it ends before {word}" if len(parts) <= index else f"segment {index} is not {word}"
    if len(parts) != 9 or parts[0]:
        return f"{len(parts) - 1} segments where an account's id has 8"
    if not re.fullmatch(r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}", parts[2], re.IGNORECASE):
        return "the subscription id is not a GUID"
    if not re.fullmatch(r"[-\w.()]{1,90}", parts[4]):
        return "the resource group name is not 1-90 letters, digits or - _ . ( )"
    return "the account name is not 3-44 of a-z, 0-9 and -"


def read_account(account_id: AccountId) -> tuple[str, BackupPolicy, bool | None]:
    """The account's document endpoint, backup policy and priority-based execution setting (None:
    not reported), from ARM; _NotRead when it cannot say."""
    try:
        with open_management_client(account_id.subscription) as client:
            account = client.database_accounts.get(account_id.resource_group, account_id.account)
            priority = getattr(account, "enable_priority_based_execution", None)
            return (
                str(account.document_endpoint or ""),
                BackupPolicy.of(account.backup_policy),
                priority if isinstance(priority, bool) else None,
            )
    except AzureError as error:
        raise _why_not_read(error, account_id) from None


def judge(policy: BackupPolicy, subject: str, confirmed: str | None) -> CheckResult:
    """The verdict on a policy that was read (pure)."""
    migration = f"; migration to continuous backup: {policy.migration}" if policy.migration else ""
    figures: dict[str, Any] = {"policy": policy.kind}
    if policy.migration:
        figures["migration"] = policy.migration
    if policy.kind.lower() == "continuous":
        days = _TIER_DAYS.fullmatch(policy.tier or "")
        window = f", {days[1]} days" if days else ""
        figures["tier"] = policy.tier
        return CheckResult(
            CHECK, subject, PASS, f"continuous backup (point-in-time restore{window}){migration}", figures=figures
        )
    if policy.kind.lower() == "periodic" and policy.interval_min is not None:
        interval, retention = policy.interval_min, policy.retention_h
        figures.update(interval_min=interval, retention_h=retention)
        kept = f", kept {retention} h" if retention is not None else ""
        if interval <= MAX_BACKUP_INTERVAL_MIN:
            detail = f"periodic backup every {interval} minutes{kept}: the latest is at most {interval} minutes old"
            return CheckResult(CHECK, subject, PASS, detail + migration, figures=figures)
        return CheckResult(
            CHECK,
            subject,
            FAIL,
            f"periodic backup every {interval} minutes{kept}: the latest may be {interval} minutes old, "
            f"the runbook asks for less than 1 h{migration}{_not_overridden(confirmed)}",
            f"lower the backup interval to {MAX_BACKUP_INTERVAL_MIN} minutes or less in the account's Backup & "
            f"Restore settings (az cosmosdb update --backup-interval {MAX_BACKUP_INTERVAL_MIN}), "
            "or switch it to continuous backup (--backup-policy-type Continuous)",
            figures,
        )
    # Read, but not in a shape this check can judge: the operator can.
    what = f"backup policy type {policy.kind!r}" if policy.kind else "no backup policy"
    if policy.kind.lower() == "periodic":
        what = "a periodic backup policy without its interval"
    reason = f"the account reports {what}"
    fix = "check the account's Backup & Restore settings in the portal"
    return _not_read(subject, _NotRead(reason, fix), confirmed)


def same_host(store_host: str, document_endpoint: str) -> bool:
    """Whether the store URL's ``host[:port]`` is the endpoint's (any case; 443 when unsaid)."""
    store = urlsplit(f"//{store_host}")
    endpoint = urlsplit(document_endpoint)
    try:
        store_port, endpoint_port = store.port or 443, endpoint.port or 443
    except ValueError:
        return False
    return bool(endpoint.hostname) and (store.hostname, store_port) == (endpoint.hostname, endpoint_port)


def _sqlite(confirmed: str | None) -> CheckResult:
    noted = f"; noted: {confirmed}" if confirmed else ""
    return CheckResult(
        CHECK,
        "sqlite",
        NOT_APPLICABLE,
        "a Cosmos backup policy does not apply to a SQLite file: back the file up yourself "
        f"(e.g. copy it while no sweep runs){noted}",
        figures={"confirmed": confirmed} if confirmed else {},
    )


def _not_overridden(confirmed: str | None) -> str:
    return "; --backup-confirmed does not override what was read" if confirmed else ""


def _not_read(subject: str, not_read: _NotRead, confirmed: str | None) -> CheckResult:
    if confirmed:
        detail = f"backup policy not read ({not_read.reason}); confirmed by operator: {confirmed}"
        return CheckResult(CHECK, subject, PASS, detail, figures={"confirmed": confirmed})
    return CheckResult(
        CHECK,
        subject,
        FAIL,
        f"backup policy not read: {not_read.reason}",
        f'{not_read.fix}; or check the backup yourself and pass --backup-confirmed "<reference>"',
    )


def _why_not_read(error: AzureError, account_id: AccountId) -> _NotRead:
    """One line naming the exception type, status and ARM error code (never a message: they
    can echo tokens or claims), and the fix."""
    kind = type(error).__name__
    status = getattr(error, "status_code", None)
    body = getattr(error, "error", None)
    code = f" {body.code}" if body is not None and getattr(body, "code", None) else ""
    role = f"grant this identity the '{READER_ROLE}' role on account {account_id.account}"
    if isinstance(error, ClientAuthenticationError) and status is None:
        return _NotRead(
            f"no token for Azure Resource Manager: {kind}",
            f"sign in (az login) or give this host a managed identity, and {role}",
        )
    if status == 401:
        return _NotRead(
            f"ARM rejected the token: 401{code}", f"sign in again or check the identity's tenant, and {role}"
        )
    if status == 403:
        return _NotRead(
            f"ARM refused to read account {account_id.account}: 403{code}",
            f"{role} (a control-plane role: the Cosmos data-plane roles do not include it)",
        )
    if status == 404:
        return _NotRead(
            f"ARM has no account {account_id.account} in resource group {account_id.resource_group}: 404{code}",
            f"check {ENV_RESOURCE_ID} (az cosmosdb show -g <resource group> -n <account> --query id -o tsv)",
        )
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        return _NotRead(
            f"cannot reach Azure Resource Manager: {kind}", "check that this host reaches management.azure.com"
        )
    if status is not None:
        return _NotRead(f"ARM answered {status}{code}: {kind}", "try again later")
    return _NotRead(f"reading the account failed: {kind}", "try again later")


def _text(value: Any) -> str | None:
    """An SDK enum or string as its plain value."""
    if value is None:
        return None
    return str(getattr(value, "value", value))
