"""Every preflight check in the runbook's order, for the command and the demo alike."""

from __future__ import annotations

from coordinator.context import Context
from coordinator.preflight.backup import check_backup
from coordinator.preflight.fleet import check_broker, check_fleet
from coordinator.preflight.result import CheckResult
from coordinator.preflight.store import check_store
from coordinator.preflight.vault import check_keys
from tracker_reencrypt.audit import actor
from tracker_reencrypt.errors import ReencryptError
from tracker_reencrypt.fleet import store_queue


def run_checks(
    ctx: Context, products: list[str], *, backup_confirmed: str | None, expect_workers: int
) -> list[CheckResult]:
    """The store first (the key checks need its products), then the keys, the backup, the
    broker and the fleet. A failed check never stops the others: the operator gets every
    ✗ of a run at once."""
    results = check_store(lambda: ctx.store, ctx.settings.partition_key_field, actor())
    store_ok = not any(r.failed for r in results)
    results += check_keys(ctx.keys, _products(ctx, products, store_ok))
    results.append(check_backup(ctx.settings.store, ctx.settings.cosmos_resource_id, backup_confirmed))
    broker, redis_url = check_broker(lambda: ctx.redis_url, ctx.settings.redis_url)
    results.append(broker)
    if redis_url is not None:
        results.append(check_fleet(ctx.celery, store_queue(ctx.settings), expect_workers))
    return results


def _products(ctx: Context, given: list[str], store_ok: bool) -> list[str]:
    """The products whose keys the sweep will touch: those given, else the container's (or,
    when the store cannot be read, those with a key)."""
    if given or not ctx.keys.per_product:
        return given
    return ctx.store.products() if store_ok else ctx.keys.products_with_keys()


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
