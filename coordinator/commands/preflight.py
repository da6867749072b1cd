"""``reencrypt preflight``: the runbook's pre-rotation checklist, each item a check with a verdict.

Exit 0 only when no check failed. Checks that do not apply (a Cosmos backup policy for a SQLite
file) and facts that gate nothing (throughput) are shown as such, never as passed.
"""

from __future__ import annotations

from pathlib import Path

import typer

from coordinator.commands.common import JsonOption, ProductOption, emit, err, out
from coordinator.context import Context
from coordinator.preflight import baseline as baselines
from coordinator.preflight import report
from coordinator.preflight.result import FAIL, CheckResult
from coordinator.preflight.run import record, run_checks
from tracker_reencrypt.errors import EXIT_FAILED, ConfigError, ReencryptError


def preflight(
    c: typer.Context,
    products: list[str] = ProductOption,
    backup_confirmed: str | None = typer.Option(
        None,
        "--backup-confirmed",
        metavar="REFERENCE",
        help="Where the backup policy cannot be read: your reference to a backup you checked (a ticket, a "
        "restore point); recorded in the audit trail. Never overrides a policy that was read.",
    ),
    expect_workers: int = typer.Option(
        1, "--expect-workers", min=0, help="Workers that must answer on this store's queue (0 under KEDA)."
    ),
    baseline_file: Path | None = typer.Option(
        None, "--baseline", metavar="FILE", help="Also sample the read path and save its figures to FILE."
    ),
    compare_file: Path | None = typer.Option(
        None, "--compare", metavar="FILE", help="Also sample the read path and compare it with the baseline in FILE."
    ),
    sample: int = typer.Option(
        baselines.DEFAULT_DOCUMENTS,
        "--sample",
        min=baselines.DEFAULT_MIN_SAMPLES,
        help="Documents the baseline samples (fewer could not be judged).",
    ),
    tolerance: float | None = typer.Option(
        None,
        "--tolerance",
        min=0,
        show_default=False,
        help="With --compare: how many percent a p95/p99 may grow before it fails "
        "[default: REENCRYPT_COMPARE_TOLERANCE, or 50].",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Check this host can run the rotation: each key the sweep touches (current version, a
    wrap+unwrap round trip, with latencies), the store (read, state write, partition key,
    throughput), the backup policy, the broker and the fleet. Exit 0 only when none failed.

    --baseline FILE also records the read path's latency before the rotation; --compare FILE
    after it prints both side by side and fails past the tolerance."""
    ctx: Context = c.obj
    if backup_confirmed is not None and not backup_confirmed.strip():
        raise ConfigError('--backup-confirmed needs a reference to the backup you checked, e.g. "CHG-1234"')
    if baseline_file is not None and compare_file is not None:
        raise ConfigError("give --baseline (before the rotation) or --compare (after it), not both")
    before = baselines.load_baseline(compare_file) if compare_file is not None else None  # bad file: nothing run
    ctx.settings.require("store", "keys")

    results = run_checks(
        ctx,
        products,
        backup_confirmed=backup_confirmed,
        expect_workers=expect_workers,
        after_rotation=before is not None,
    )
    store_ok = not any(r.failed for r in results if r.check == "store")
    failed = any(r.failed for r in results)

    taken = comparison = None
    if baseline_file is not None or before is not None:
        percent = ctx.settings.compare_tolerance if tolerance is None else tolerance
        taken, comparison = _baseline(ctx, results, sample, before, percent / 100)
        if taken is not None and baseline_file is not None:
            baselines.save_baseline(baseline_file, taken)
        failed = failed or taken is None or (comparison is not None and comparison.failed)
        if comparison is not None and comparison.failed:
            results.append(
                CheckResult(
                    "baseline",
                    "read path",
                    FAIL,
                    "the read path is slower than the baseline",
                    "see the comparison: the decrypt and unwrap rows, and the runbook's rollback",
                )
            )
    if store_ok:
        problem = record(ctx, results, not failed, backup_confirmed)
        if problem and backup_confirmed is not None:
            # The reference stands in for a backup policy no one could read: it must be on record.
            results.append(
                CheckResult(
                    "backup",
                    "audit trail",
                    FAIL,
                    f"--backup-confirmed not recorded: {problem}",
                    "fix the state store's write access and run preflight again",
                )
            )
            failed = True
        elif problem:
            err.print(f"note: preflight not recorded in the audit trail ({problem})", markup=False, highlight=False)

    payload = {
        "passed": not failed,
        "checks": [r.as_json() for r in results],
        "baseline": taken.as_json() if taken is not None else None,
        "comparison": comparison.as_json() if comparison is not None else None,
    }

    def human() -> None:
        report.print_results(out, results)
        if taken is not None and baseline_file is not None:
            report.print_baseline(out, taken, str(baseline_file))
        if comparison is not None:
            report.print_comparison(out, comparison)
        verdict = "preflight failed: fix the ✗ lines above and run it again" if failed else "preflight passed"
        (err if failed else out).print(verdict, markup=False, highlight=False)

    emit(ctx, as_json, payload, human)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _baseline(ctx: Context, results: list[CheckResult], sample: int, before, tolerance: float):
    """The read path's figures now (and against ``before``), or (None, None) when the store or
    keys failed their checks: figures through a broken read path mean nothing."""
    if any(r.failed for r in results if r.check in ("store", "key vault")):
        results.append(
            CheckResult("baseline", "read path", FAIL, "not sampled: the store or key checks failed", "fix those first")
        )
        return None, None
    try:
        taken = baselines.take_baseline(ctx.store, ctx.keyring, store_url=ctx.settings.store, documents=sample)
    except ReencryptError as error:
        results.append(CheckResult("baseline", "read path", FAIL, f"sampling failed: {error}", "try again"))
        return None, None
    comparison = baselines.compare(before, taken, tolerance=tolerance) if before is not None else None
    return taken, comparison


def register(app: typer.Typer) -> None:
    app.command()(preflight)
