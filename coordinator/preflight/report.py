"""Preflight's output for people: one line per check, a mark, the finding and, on failure,
the fix; the baseline comparison as a table. The JSON form is the results' own ``as_json``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from coordinator.preflight.baseline import Baseline, Comparison
from coordinator.preflight.result import FAIL, INFO, NOT_APPLICABLE, PASS, CheckResult
from coordinator.preflight.vault import CHECK as KEY_CHECK
from coordinator.preflight.vault import KEYS_SHOWN

MARKS = {PASS: ("✓", "green"), FAIL: ("✗", "bold red"), NOT_APPLICABLE: ("–", "dim"), INFO: ("i", "cyan")}


def print_results(console: Console, results: list[CheckResult]) -> None:
    for result in _condensed(results):
        mark, style = MARKS[result.status]
        line = Text(f"{mark} ", style=style)
        line.append(f"{result.check:<9} ", style="bold")
        line.append(f"{result.subject}: {result.detail}")
        if result.status == NOT_APPLICABLE:
            line.append(" — not counted as passed", style="dim")
        if result.fix:
            line.append(f" — fix: {result.fix}", style="red")
        console.print(line, soft_wrap=True)


def _condensed(results: list[CheckResult]) -> list[CheckResult]:
    """Past KEYS_SHOWN keys, the passing ones as one line with the slowest calls: a container of
    200 products must not print 200 lines to say they are fine. Failures are always listed."""
    keys = [r for r in results if r.check == KEY_CHECK]
    if len(keys) <= KEYS_SHOWN:
        return results
    passed = [r for r in keys if r.status == PASS]
    slowest = {
        call: max(r.figures.get(f"{call}_ms", 0.0) for r in passed) if passed else 0.0
        for call in ("get", "wrap", "unwrap")
    }
    summary = CheckResult(
        KEY_CHECK,
        f"{len(passed)} of {len(keys)} keys",
        PASS if len(passed) == len(keys) else INFO,
        "current version read, wrap+unwrap round trip; slowest get {get} ms, wrap {wrap} ms, unwrap {unwrap} ms".format(
            **slowest
        ),
    )
    first = results.index(keys[0])
    rest = [r for r in results if r.check != KEY_CHECK]
    failed = [r for r in keys if r.status != PASS]
    return [*rest[:first], summary, *failed, *rest[first:]]


def print_baseline(console: Console, baseline: Baseline, path: str) -> None:
    console.print(
        f"baseline of {baseline.documents} documents over {baseline.feed_ranges} feed range(s) saved to {path}: "
        f"read p95 {baseline.read_ms.p95} ms, unwrap p95 {baseline.unwrap_ms.p95} ms",
        markup=False,
        highlight=False,
    )


def print_comparison(console: Console, comparison: Comparison) -> None:
    table = Table(title=f"read path before ({comparison.before_taken_at}) and after ({comparison.after_taken_at})")
    for column in ("figure", "before", "after", "change", "verdict"):
        table.add_column(column, justify="left" if column in ("figure", "verdict") else "right")
    for row in comparison.rows:
        change = "" if row.change is None else f"{row.change:+.0%}"
        verdict = Text(row.verdict + (f" ({row.note})" if row.note else ""), style=_verdict_style(row.verdict))
        table.add_row(f"{row.figure} ({row.unit})", _number(row.before), _number(row.after), change, verdict)
    console.print(table)
    console.print(comparison.rule, markup=False, highlight=False)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _verdict_style(verdict: str) -> str:
    return {PASS: "green", FAIL: "bold red"}.get(verdict, "dim")
