"""Every preflight check in the runbook's order, for the command and the demo alike."""

from __future__ import annotations

from coordinator.context import Context
from coordinator.preflight.backup import PRIORITY_BASED_EXECUTION, check_backup
from coordinator.preflight.fleet import check_broker, check_fleet
from coordinator.preflight.result import FAIL, INFO, NOT_APPLICABLE, CheckResult
from coordinator.preflight.store import check_store
from coordinator.preflight.vault import CHECK as KEY_CHECK
from coordinator.preflight.vault import check_keys
from tracker_reencrypt.audit import actor
from tracker_reencrypt.errors import ReencryptError, first_line
from tracker_reencrypt.fleet import store_queue


def run_checks(
    ctx: Context,
    products: list[str],
    *,
    backup_confirmed: str | None,
    expect_workers: int,
    after_rotation: bool = False,
) -> list[CheckResult]:
    """The store first (the key checks need its products), then the keys, the backup, the
    broker and the fleet. A failed check never stops the others: the operator gets every
    ✗ of a run at once.

    ``after_rotation`` (``--compare``): only what the rotation can have broken, the store and
    the keys; the backup and the fleet mattered before it, and under KEDA no worker is left
    once the sweep is done. They are listed as not checked, never as passed."""
    results = check_store(lambda: ctx.store, ctx.settings.partition_key_field, actor())
    store_ok = not any(r.failed for r in results)
    try:
        touched = _products(ctx, products, store_ok)
    except ReencryptError as error:
        results.append(
            CheckResult(
                KEY_CHECK,
                "products",
                FAIL,
                f"cannot list the products: {first_line(error)}",
                "give them with --product, or fix the store or vault and run it again",
            )
        )
    else:
        results += check_keys(ctx.keys, touched)
    if after_rotation:
        results += [
            CheckResult(check, subject, NOT_APPLICABLE, "not checked with --compare (it mattered before the rotation)")
            for check, subject in (("backup", "backup policy"), ("fleet", "workers"))
        ]
        return results
    backup = check_backup(ctx.settings.store, ctx.settings.cosmos_resource_id, backup_confirmed)
    results.append(backup)
    results += _priority_enabled(results, backup)
    broker, redis_url = check_broker(lambda: ctx.redis_url, ctx.settings.redis_url)
    results.append(broker)
    queue = store_queue(ctx.settings)
    if redis_url is None:  # listed, so the checklist shows every line; the broker's failure fails it
        results.append(CheckResult("fleet", queue, NOT_APPLICABLE, "not checked: no broker to ask the workers through"))
    else:
        results.append(check_fleet(ctx.celery, queue, expect_workers))
    return results


def _products(ctx: Context, given: list[str], store_ok: bool) -> list[str]:
    """The products whose keys the sweep will touch: those given, else the container's (or,
    when the store cannot be read, those with a key)."""
    if given or not ctx.keys.per_product:
        return given
    return ctx.store.products() if store_ok else ctx.keys.products_with_keys()


def _priority_enabled(results: list[CheckResult], backup: CheckResult) -> list[CheckResult]:
    """Whether the account honours the priority the sweep's requests carry: Cosmos DB ignores
    the header where priority-based execution is off, so "Low" would only look safe. The
    account's setting comes with the backup policy's read (ARM); unread, nothing is claimed."""
    requested = next((r for r in results if r.check == "store" and "priority" in r.figures), None)
    if requested is None:
        return []
    enabled = backup.figures.get(PRIORITY_BASED_EXECUTION)
    priority = requested.figures["priority"]
    if enabled is False:
        return [
            CheckResult(
                "store",
                requested.subject,
                FAIL,
                f"the sweep's requests carry priority {priority}, but the account has priority-based execution "
                "off: Cosmos DB ignores it and the sweep competes with the tracker as an equal",
                "enable it (az cosmosdb update --enable-priority-based-execution true) "
                "or unset REENCRYPT_COSMOS_PRIORITY",
            )
        ]
    known = "enables" if enabled else "may not enable (not read: set REENCRYPT_COSMOS_RESOURCE_ID)"
    return [CheckResult("store", requested.subject, INFO, f"the account {known} priority-based execution")]


def record(ctx: Context, results: list[CheckResult], passed: bool, backup_confirmed: str | None) -> str | None:
    """Append the run to the audit trail (with the operator's backup reference); the reason
    when it could not be (the store check then says why)."""
    details: dict[str, object] = {
        "passed": passed,
        "failed_checks": [f"{r.check}: {r.subject}" for r in results if r.failed],
    }
    if backup_confirmed is not None:
        details["backup_confirmed"] = backup_confirmed
    try:
        ctx.record("preflight", **details)
    except ReencryptError as error:
        return str(error)
    return None
