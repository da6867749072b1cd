"""How commands look to a person: tables, progress bars and live status (rich)."""

from __future__ import annotations

import contextlib
import json
import time

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

from coordinator import follow as following
from coordinator import steering
from coordinator.context import Context
from coordinator.throughput import duration_text, rate_text
from tracker_reencrypt.pacing.limits import describe_limits
from tracker_reencrypt.stale import StaleWrite
from tracker_reencrypt.sweep.records import FINISHED, PAUSED, Failure, Slice, Sweep, stale_write_examples, sum_checked

REFRESH_S = 1.0
#: The unfinished products a status lists by name; the rest are counted ("and N more").
LISTED_PRODUCTS = 10
#: Stale-write examples shown to a person (``--json`` carries the report's bound).
LISTED_STALE_WRITES = 5
#: Where an operator reads what to do about stale writes.
STALE_WRITES_RUNBOOK = "ops/runbooks/MEK_ROTATION.md, 2.3 (the tracker-service's restart)"


def key_table(console: Console, versions) -> None:
    table = Table("kid", "status", "current", "created")
    for v in versions:
        table.add_row(v.kid, v.status, "yes" if v.current else "", v.created)
    console.print(table)


@contextlib.contextmanager
def counter_progress(console: Console, label: str, total: int, *, enabled: bool = True, incremental: bool = False):
    """A progress bar; yields ``advance(n)``: n is a running total, or an increment if ``incremental``.

    The bar appears at the first ``advance``, so an error raised before any work (a missing
    store, an unsafe keyring file) is the only line on stderr, not a bar stuck at 0.
    """
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with contextlib.ExitStack() as stack:
        shown: dict = {}

        def advance(n: int) -> None:
            if not shown:
                shown["bar"] = bar = stack.enter_context(Progress(*columns, console=console, transient=False))
                shown["task"] = bar.add_task(label, total=total)
            bar, task = shown["bar"], shown["task"]
            if incremental:
                bar.advance(task, n)
            else:
                bar.update(task, completed=n)

        yield advance


def limits_text(sweep: Sweep) -> str:
    return describe_limits(sweep.limits) or "none"


def duration_hm(seconds: float) -> str:
    """A duration for a person: 1h05m, or 4m07s under an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def target_text(sweep: Sweep) -> str:
    """Where the sweep moves fields: its kid, or each product's current version of its key."""
    if not sweep.to_current:
        return sweep.target_kid
    return f"current (each product's current version of {sweep.key_name})" if sweep.key_name else "current"


def products_brief(sweep: Sweep, shown: int = 3) -> str:
    """The products a sweep reads, short enough for a table cell: 'all', or the first few named."""
    if sweep.products is None:
        return "all"
    named = ", ".join(sweep.products[:shown])
    more = len(sweep.products) - shown
    return f"{named} +{more} more" if more > 0 else named


def products_view(progress: steering.Progress) -> list[RenderableType]:
    """A product-scoped sweep's products: how many are done, then the unfinished ones (the first
    LISTED_PRODUCTS by name, with their state and documents read). Product ids are arbitrary
    strings: every part that holds one is a Text, never read as markup."""
    by_product = progress.by_product()
    if by_product is None:
        return [Text("products: whole container")]
    states = {product: steering.product_state(entry) for product, entry in by_product.items()}
    counted = {state: sum(1 for s in states.values() if s == state) for state in steering.PRODUCT_STATES}
    started = [f"{counted['in_progress']} in progress"] if counted["in_progress"] else []
    waiting = [f"{counted['pending']} pending"] if counted["pending"] else []
    head = Text(", ".join([f"products: {counted['done']} of {len(by_product)} done", *started, *waiting]))
    unfinished = [product for product, state in states.items() if state != "done"]
    if not unfinished:
        return [head]
    table = Table("product", "state", "slices", "docs", "fields", "failures", box=None)
    for product in unfinished[:LISTED_PRODUCTS]:
        entry = by_product[product]
        counts = entry["counts"]
        table.add_row(
            Text(product),
            states[product].replace("_", " "),
            f"{entry['slices_done']}/{entry['slices']}",
            str(counts.get("documents_scanned", 0)),
            str(counts.get("fields_reencrypted", 0)),
            str(counts.get("failures", 0)),
        )
    parts: list[RenderableType] = [head, table]
    if len(unfinished) > LISTED_PRODUCTS:
        parts.append(Text(f"and {len(unfinished) - LISTED_PRODUCTS} more not done ('sweep status --json' lists all)"))
    return parts


def stale_writes_view(count: int, examples: list[StaleWrite], shown: int = LISTED_STALE_WRITES) -> list[Text]:
    """The stale-writes warning: the count, what it means, and the newest examples. Document and
    product ids come from the documents: Text, never markup. Nothing when there is none."""
    if not count:
        return []
    lines = [
        Text(
            f"stale writes: {count} documents written under a retired version after rotation: a tracker "
            f"instance still uses the old key id; see {STALE_WRITES_RUNBOOK}",
            style="bold red",
        )
    ]
    for example in examples[:shown]:
        lines.append(
            Text(
                f"  {example.document_id} (product {example.product}) written {example.written_at} "
                f"under {example.kid}, current {example.current_kid}"
            )
        )
    if count > min(shown, len(examples)):
        lines.append(Text(f"  ({count - min(shown, len(examples))} more; examples in --json)"))
    return lines


def _fields(sweep: Sweep, piece: Slice) -> int:
    """A slice's fields: moved, or for a verify sweep checked."""
    return piece.checked.fields if sweep.checks_only else piece.counts["fields_reencrypted"]


def _verify_line(progress: steering.Progress) -> Text:
    """What a verify sweep found so far, and where its result is."""
    sweep, checked = progress.sweep, sum_checked(progress.slices)
    expected = "their product's current version" if sweep.to_current else sweep.target_kid
    return Text(
        f"verify: {checked.fields} fields checked, {checked.off_target} not on {expected}, "
        f"{checked.undecryptable} undecryptable; the result: reencrypt verify --sweep {sweep.id}"
    )


def _status_view(progress: steering.Progress, notice: str = "") -> Group:
    sweep, totals = progress.sweep, progress.totals
    estimate = max(1, sweep.documents_estimate)
    per_slice = max(1, estimate / max(1, len(progress.slices)))
    # One line that wraps between words: a grid cut the sweep id (what every command takes) to "sw-2026…".
    head = (
        f"[bold]{sweep.id}[/]  status [bold]{sweep.status}[/]  → [bold]{escape(target_text(sweep))}[/]  "
        f"mode {sweep.mode}  limits {limits_text(sweep)}"
    )
    overall = Table.grid(padding=(0, 2))
    done = totals.get("documents_scanned", 0)
    overall.add_row(
        ProgressBar(total=estimate, completed=min(done, estimate), width=40),
        f"{done}/{sweep.documents_estimate} docs",
        f"{sum(_fields(sweep, s) for s in progress.slices)} fields {'checked' if sweep.checks_only else 'moved'}",
        rate_text(progress.throughput),
        f"ETA {'-' if progress.eta_s is None else duration_hm(progress.eta_s)}",
        f"conflicts {totals.get('conflicts', 0)}",
        f"failures {totals.get('failures', 0)}",
        f"workers {progress.active_leases}",
    )
    slices = Table("slice", "progress", "docs", "fields", "conflicts", "failures", "state", box=None)
    now = time.time()
    for s in progress.slices:
        counts = s.counts
        state = slice_state(s, now)
        bar = ProgressBar(
            total=per_slice,
            completed=per_slice if s.done else min(counts["documents_scanned"], per_slice * 0.99),
            width=20,
        )
        slices.add_row(
            str(s.index),
            bar,
            str(counts["documents_scanned"]),
            str(_fields(sweep, s)),
            str(counts["conflicts"]),
            str(counts["failures"]),
            state,
        )
    stale = stale_writes_view(progress.stale_writes, stale_write_examples(progress.slices))
    parts: list[RenderableType] = [head, *stale, overall, *products_view(progress), slices]
    if sweep.checks_only:
        parts.append(_verify_line(progress))
    if progress.budget_estimate and not sweep.finished:
        parts.append(f"remaining under its limits: {progress.budget_estimate}")
    if sweep.paused_reason:
        parts.append(
            f"[red]paused because: {escape(sweep.paused_reason)}[/]\nfix it, then 'reencrypt sweep resume {sweep.id}'"
        )
    elif sweep.last_error:
        parts.append(f"[yellow]last error (retrying): {escape(sweep.last_error)}[/]")
    if notice:
        parts.append(f"[yellow]{notice}[/]")
    return Group(*parts)


def slice_state(piece: Slice, now: float) -> str:
    """A slice's line in the status table; one waiting out a back-off after a failed batch says
    when its retry is due (the lease watch sends it then)."""
    if piece.done:
        return "done"
    if piece.lease_owner:
        return "working"
    if piece.retry_at > now:
        return f"retry in {piece.retry_at - now:.0f}s ({piece.error_retries} failed)"
    return "queued"


def status(console: Console, progress: steering.Progress) -> None:
    console.print(_status_view(progress))


def follow(ctx: Context, sweep_id: str, console: Console | None, *, kick_stalled: bool) -> steering.Progress:
    """Refresh the status until the sweep finishes; returns the final progress.

    A paused sweep ends the following too (paused by an operator, or by the fleet for a
    problem only a person can fix): waiting on it would wait for ever. Ctrl-C raises
    KeyboardInterrupt out of here with the sweep untouched: the CLI says what goes on running
    and how to stop it.
    """
    sweep = ctx.state.get_sweep(sweep_id)
    window = steering.throughput_window(sweep)  # this follower's reads: the rate over the last minute
    progress = steering.progress(ctx, sweep, window)
    recovery = following.Recovery(ctx) if kick_stalled else None
    if console:
        console.print(
            f"following sweep {sweep_id} ({following.broker_text(ctx)}); Ctrl-C stops following, not the sweep"
        )
    live = Live(_status_view(progress), console=console, refresh_per_second=2, transient=False) if console else None
    with live if live is not None else contextlib.nullcontext():
        while progress.sweep.status not in FINISHED | {PAUSED}:
            time.sleep(REFRESH_S)
            progress = steering.progress(ctx, ctx.state.get_sweep(sweep_id), window)
            if recovery is not None:
                recovery.step(progress)
            if live is not None:
                live.update(_status_view(progress, following.no_worker_notice(ctx, progress)))
    if console is not None and not console.is_terminal:
        console.line()  # off a terminal, Live leaves its last line open: what follows starts on its own
    return progress


def summary(console: Console, progress: steering.Progress) -> None:
    totals = progress.totals
    # The target (a kid, or a key name) and the products are arbitrary text: never markup.
    console.print(
        f"sweep {progress.sweep.id} {progress.sweep.status}: {totals.get('documents_scanned', 0)} documents scanned, "
        f"{totals.get('documents_written', 0)} rewritten, {totals.get('fields_reencrypted', 0)} fields moved to "
        f"{target_text(progress.sweep)}, {totals.get('conflicts', 0)} conflicts retried, "
        f"{totals.get('failures', 0)} failures in {duration_text(progress.elapsed_s)}"
        + (f", {rate_text(progress.throughput)}" if progress.docs_per_s is not None else ""),
        markup=False,
    )
    if progress.sweep.products is not None:
        for part in products_view(progress):
            console.print(part)
    for line in stale_writes_view(progress.stale_writes, stale_write_examples(progress.slices)):
        console.print(line)
    if totals.get("failures"):
        console.print(f"see them with: reencrypt sweep failures {progress.sweep.id}")


def sweep_list(console: Console, listed: list[Sweep]) -> None:
    # The id is what every other sweep command takes: never cut it (nor status and target) to fit 80 columns.
    table = Table(
        *(Column(name, no_wrap=True) for name in ("sweep", "status", "target")),
        "products",
        "mode",
        "started by",
        "started at",
    )
    for s in listed:
        table.add_row(s.id, s.status, Text(s.target_kid), Text(products_brief(s)), s.mode, s.started_by, s.started_at)
    console.print(table)


def failures(console: Console, rows: list[Failure]) -> None:
    table = Table("document", "partition key", "field", "kid", "reason")
    for row in rows:
        # Ids, product ids and paths come from the documents: text, never read as markup.
        cells = (row.document_id, str(row.partition_key), row.field_path or "(document)", row.kid or "-", row.reason)
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)
    console.print(f"{len(rows)} failures")


def dry_run(console: Console, payload: dict) -> None:
    target = "each product's current version" if payload["target_kid"] == "current" else payload["target_kid"]
    scope = f" of products {', '.join(payload['products'])}" if payload.get("products") else ""
    console.print(
        f"dry run: {payload['documents']} documents{scope}; {payload['fields_to_move']} fields would move to {target}",
        markup=False,
        highlight=False,
    )
    table = Table("from kid", "kind", "fields")
    for kid, kinds in payload["would_move"].items():
        for kind, count in sorted(kinds.items()):
            table.add_row(kid, kind, str(count))
    console.print(table)
    for key, what in (("unknown_kids", "kids the key provider does not know"), ("disabled_kids", "disabled kids")):
        stuck = payload.get(key) or {}
        if stuck:
            listed = ", ".join(f"{kid}: {count}" for kid, count in sorted(stuck.items()))
            # kids come from the documents: printed as text, never read as markup
            console.print(
                f"{sum(stuck.values())} fields are under {what} ({listed}): they cannot be moved; "
                f"the sweep will record each as a failure",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    console.print(f"estimate: {payload['estimate']['text']}")


def verify(console: Console, payload: dict) -> None:
    table = Table("kid", "fields")
    for kid, count in sorted(payload["fields_by_kid"].items()):
        table.add_row(kid, str(count))
    console.print(table)
    for example in payload["undecryptable_examples"]:
        console.print(f"undecryptable: {example['document_id']} {example['field_path']} ({example['reason']})")
    for product, count in payload.get("lagging_products", {}).items():
        missing = payload.get("products_without_key", {}).get(product)
        text = f"lagging: product {product}: {count} fields not on target" + (f" ({missing})" if missing else "")
        console.print(text, markup=False, highlight=False)
    examples = [StaleWrite.from_record(example) for example in payload.get("stale_write_examples", [])]
    for line in stale_writes_view(payload.get("stale_writes", 0), examples):
        console.print(line)
    verdict = "[green]PASS[/]" if payload["ok"] else "[red]FAIL[/]"
    target = "their product's current version" if payload["expect"] == "current" else payload["expect"]
    scope = f" (products {', '.join(payload['products'])})" if payload.get("products") else ""
    scope += f" by verify sweep {payload['sweep_id']}" if payload.get("sweep_id") else ""
    console.print(
        f"verify {verdict} on {payload['store']}{scope}: {payload['documents']} documents, {payload['fields']} fields, "
        f"{payload['off_target']} not on {target}, {payload['undecryptable']} undecryptable"
    )
    if payload["empty"] and not payload["ok"]:
        console.print("the container holds no document: check the store URL (pass --allow-empty if it really is empty)")
    elif payload.get("reason"):
        console.print(f"why: {payload['reason']}", markup=False, highlight=False)


def audit(console: Console, entries: list[dict], problems: list[str] | None) -> None:
    table = Table("#", "at", "who", "action")
    table.add_column("details", overflow="fold")  # ids must stay whole: operators copy them
    for e in entries:
        # Product ids, references and paths are the operator's text: never read as markup.
        cells = (str(e["seq"]), e["at"], e["who"], e["action"], audit_details(e["details"]))
        table.add_row(*(Text(cell) for cell in cells))
    console.print(table)
    if problems is not None:
        for problem in problems:
            console.print(f"[red]{problem}[/]")
        console.print(
            "[green]audit chain intact[/]" if not problems else f"[red]audit chain broken: {len(problems)} problems[/]"
        )


def audit_details(details: dict) -> str:
    """An entry's details as ``key=value`` text, in logfmt's manner: nested objects flattened
    (``totals.documents_written=60``), lists comma-separated, a value with spaces, commas or
    quotes quoted, None as ``-``."""
    return " ".join(f"{key}={value}" for key, value in _flattened(details))


def _flattened(details: dict, prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in details.items():
        if isinstance(value, dict) and value:
            pairs += _flattened(value, f"{prefix}{key}.")
        else:
            pairs.append((f"{prefix}{key}", _detail_value(value)))
    return pairs


def _detail_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_detail_value(item) for item in value) if value else "-"
    if isinstance(value, dict):
        return "-"  # an empty one (a filled one is flattened)
    text = str(value)
    if not text or any(char.isspace() or char in ',"=' for char in text):
        return json.dumps(text, ensure_ascii=False)
    return text
