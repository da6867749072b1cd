"""``reencrypt``: the one command an operator runs during an MEK rotation.

Built with Typer (on Click): typed options, ``--help`` everywhere, and a test runner. Every
error of ours ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Optional

import typer
from rich.console import Console

from coordinator import keyops, render, sweeps
from coordinator.context import Context
from coordinator.verify import verify_rotation
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.errors import ReencryptError, SweepError
from tracker_reencrypt.sweep.records import Sweep
from tracker_reencrypt.seed import DEFAULT_DEK_SHARE, DEFAULT_PRODUCTS, seed_store, seeding_keyring

app = typer.Typer(help="Re-encrypt the tracker's fields onto a new MEK version, safely and in the background.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
keys_app = typer.Typer(help="Manage MEK versions (init, rotate, list, disable, enable).", no_args_is_help=True)
sweep_app = typer.Typer(help="Start and steer a re-encryption sweep.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(sweep_app, name="sweep")

# soft_wrap: a line is never broken at the terminal's width (80 columns when piped), so logs
# and scripts see ids, URLs and queue names whole; tables still fit the width.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")


@app.callback()
def main_options(
    ctx: typer.Context,
    store: Optional[str] = typer.Option(None, "--store", help="Store URL (overrides REENCRYPT_STORE), e.g. sqlite:///tracker.db"),
    keys: Optional[str] = typer.Option(None, "--keys", help="Key provider URL (overrides REENCRYPT_KEYS), e.g. local:keyring.json"),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="Broker URL (overrides REDIS_URL); unset: an embedded Redis"),
) -> None:
    ctx.obj = Context(load_settings(store=store, keys=keys, redis_url=redis_url))


def emit(ctx: Context, as_json: bool, payload, human) -> None:
    """Print JSON for scripts or the human form for people."""
    if as_json:
        out.print_json(json.dumps(payload, default=str))
    else:
        human()


def _note_unaudited(action: str, recorded: bool) -> None:
    if not recorded:
        err.print(f"note: '{action}' not recorded in the audit trail (no store configured)")


# -- keys ------------------------------------------------------------------------------------

@keys_app.command("init")
def keys_init(c: typer.Context, as_json: bool = JsonOption) -> None:
    """Create the MEK with its first version (and the store, when one is configured and new)."""
    c.obj.may_create_store = True
    version, recorded = keyops.init(c.obj)
    _note_unaudited("key created", recorded)
    emit(c.obj, as_json, version.as_json(), lambda: out.print(f"created {version.kid} (current) in {c.obj.provider.describe()}"))


@keys_app.command("rotate")
def keys_rotate(
    c: typer.Context,
    force: bool = typer.Option(False, "--force", help="Rotate even while a sweep runs on this store."),
    as_json: bool = JsonOption,
) -> None:
    """Create a new MEK version and make it current for new writes."""
    version, recorded = keyops.rotate(c.obj, force=force)
    _note_unaudited("key rotated", recorded)
    emit(c.obj, as_json, version.as_json(), lambda: out.print(f"rotated: {version.kid} is now current"))


@keys_app.command("list")
def keys_list(c: typer.Context, as_json: bool = JsonOption) -> None:
    """List MEK versions with their status."""
    versions = c.obj.provider.versions()
    emit(c.obj, as_json, [v.as_json() for v in versions], lambda: render.key_table(out, versions))


@keys_app.command("current")
def keys_current(c: typer.Context, as_json: bool = JsonOption) -> None:
    """Print the current version's full key id (for scripts: NEW=$(reencrypt keys current))."""
    kid = c.obj.provider.current_kid()
    emit(c.obj, as_json, {"kid": kid}, lambda: print(kid))


@keys_app.command("disable")
def keys_disable(
    c: typer.Context, kid: str,
    force: bool = typer.Option(False, "--force", help="Disable even though fields still use it (they become unreadable)."),
    as_json: bool = JsonOption,
) -> None:
    """Disable a version: refused until every container the key protects verified it unused."""
    version, recorded = keyops.disable(c.obj, kid, force=force)
    _note_unaudited("key disabled", recorded)
    emit(c.obj, as_json, {**version.as_json(), "store": c.obj.store_text()},
         lambda: out.print(f"disabled {kid} (checked {c.obj.store_text()} and every container the key protects)"
                           if not force else f"disabled {kid} (forced: nothing was checked)"))


@keys_app.command("promote")
def keys_promote(c: typer.Context, kid: str = typer.Argument(..., help="The enabled version to make current again."),
                 as_json: bool = JsonOption) -> None:
    """Make an older enabled version current again (rollback); new writes use it."""
    version, recorded = keyops.promote(c.obj, kid)
    _note_unaudited("key promoted", recorded)
    emit(c.obj, as_json, version.as_json(), lambda: out.print(f"promoted: {version.kid} is current again"))


@keys_app.command("enable")
def keys_enable(c: typer.Context, kid: str, as_json: bool = JsonOption) -> None:
    """Enable a version again (rollback)."""
    version, recorded = keyops.enable(c.obj, kid)
    _note_unaudited("key enabled", recorded)
    emit(c.obj, as_json, version.as_json(), lambda: out.print(f"enabled {kid}"))


# -- seed, worker ----------------------------------------------------------------------------

@app.command("seed")
def seed(
    c: typer.Context,
    docs: int = typer.Option(10_000, "--docs", min=1, help="How many documents to generate."),
    seed_value: int = typer.Option(1, "--seed", help="Content seed: same seed, same documents."),
    products: int = typer.Option(DEFAULT_PRODUCTS, "--products", min=1, help="Distinct partition keys."),
    dek_share: int = typer.Option(DEFAULT_DEK_SHARE, "--dek-share", min=1, help="Documents sharing one data key."),
    as_json: bool = JsonOption,
) -> None:
    """Fill the store with realistic tracker documents encrypted under the current MEK.

    Run again with the same options after an interruption: documents already written are kept
    and only the missing ones are added. To start over, delete the store (the SQLite file)."""
    ctx: Context = c.obj
    ctx.may_create_store = True
    keyring = seeding_keyring(ctx.provider)
    ctx.mark_store_with_key()
    with render.counter_progress(err, "seeding", docs, enabled=not as_json) as advance:
        written = seed_store(ctx.store, keyring, docs, seed=seed_value, products=products, dek_share=dek_share, progress=advance)
    emit(ctx, as_json, {"documents": written, "kid": keyring.current_kid(), "store": ctx.store.describe()},
         lambda: out.print(f"seeded {written} documents under {keyring.current_kid()} into {ctx.store.describe()}"))


@app.command("worker")
def worker(
    c: typer.Context,
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Worker processes in this member of the fleet."),
    metrics_port: int = typer.Option(0, "--metrics-port", help="Serve Prometheus metrics on this port (0: off)."),
    health_port: int = typer.Option(0, "--health-port", min=0, max=65535,
                                    help="Serve /livez and /readyz for Kubernetes probes on this port (0: off)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
) -> None:
    """Run one member of the worker fleet (a Celery worker) until stopped (SIGTERM finishes the batch in hand).

    It checks its configuration first (store, keys, broker) and exits non-zero, naming the
    problem, when any is broken. It consumes only its own store's queue ('reencrypt queue')."""
    from coordinator.launch import exec_worker

    exec_worker(c.obj, concurrency=concurrency, metrics_port=metrics_port, health_port=health_port, loglevel=loglevel)


@app.command("queue")
def queue(c: typer.Context, as_json: bool = JsonOption) -> None:
    """The broker queue of this store's sweeps (what workers consume and KEDA scales on)."""
    from tracker_reencrypt.fleet import store_queue

    name = store_queue(c.obj.settings)
    emit(c.obj, as_json, {"queue": name, "store": c.obj.settings.store}, lambda: out.print(name))


# -- sweep -----------------------------------------------------------------------------------

@sweep_app.command("start")
def sweep_start(
    c: typer.Context,
    to: str = typer.Option(..., "--to", help="Target key id (full, versioned)."),
    sources: list[str] = typer.Option([], "--from", help="Only move fields on these key ids (default: every other kid)."),
    mode: str = typer.Option("reencrypt", "--mode", help="reencrypt (fresh DEK and ciphertext) or rewrap (DEK re-wrapped only)."),
    slices: int = typer.Option(sweeps.DEFAULT_SLICES, "--slices", help="Work slices (feed ranges) to split the container into."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Fleet-wide limit in documents/s (default: none)."),
    kv_ops_per_s: Optional[float] = typer.Option(None, "--kv-ops-per-s", help="Fleet-wide Key Vault budget in calls/s."),
    ru_per_s: Optional[float] = typer.Option(None, "--ru-per-s", help="Fleet-wide store budget in request units/s."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Scan and report what would change; write nothing."),
    wait: bool = typer.Option(False, "--wait", help="Follow the sweep to its end; exit 0 only if it completed with no failures."),
    as_json: bool = JsonOption,
) -> None:
    """Plan and start a sweep; prints its id."""
    ctx: Context = c.obj
    limits = sweeps.LimitFlags(rate=rate, kv_ops_per_s=kv_ops_per_s, ru_per_s=ru_per_s)
    if dry_run:
        payload = sweeps.dry_run(ctx, to=to, sources=sources, limits=limits)
        emit(ctx, as_json, payload, lambda: render.dry_run(out, payload))
        return
    sweep = sweeps.start(ctx, to=to, sources=sources, mode=mode, slices=slices, limits=limits)
    if not wait:
        emit(ctx, as_json, {"sweep_id": sweep.id, "slices": sweep.slice_count}, lambda: out.print(sweep.id))
        return
    err.print(f"sweep {sweep.id} started ({sweep.slice_count} slices)")
    final = _following(ctx, sweep.id, err if not as_json else None, kick_stalled=True)
    _finish(ctx, final, as_json)


def _following(ctx: Context, sweep_id: str, console: Console | None, *, kick_stalled: bool) -> sweeps.Progress:
    """Follow the sweep; on Ctrl-C say that it goes on and how to stop it, and exit 130."""
    try:
        return render.follow(ctx, sweep_id, console, kick_stalled=kick_stalled)
    except KeyboardInterrupt:
        err.print(f"\nstopped following; sweep {sweep_id} goes on running on the workers. "
                  f"Follow it again: reencrypt sweep status --watch {sweep_id}; "
                  f"stop it: reencrypt sweep pause {sweep_id} (resumable) or reencrypt sweep cancel {sweep_id}",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _finish(ctx: Context, progress: sweeps.Progress, as_json: bool) -> None:
    emit(ctx, as_json, progress.as_json(), lambda: render.summary(out, progress))
    if progress.sweep.status != "completed" or progress.totals.get("failures"):
        raise typer.Exit(1)


@sweep_app.command("status")
def sweep_status(
    c: typer.Context, sweep_id: Optional[str] = typer.Argument(None, help="Sweep id (default: the latest)."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until the sweep finishes."),
    all_sweeps: bool = typer.Option(False, "--all", help="List every sweep on this store."),
    as_json: bool = JsonOption,
) -> None:
    """Progress per slice and overall: documents, fields, rate, ETA, conflicts, failures."""
    ctx: Context = c.obj
    if all_sweeps:
        listed = ctx.state.sweeps()
        emit(ctx, as_json, [sweep.to_record() for sweep in listed], lambda: render.sweep_list(out, listed))
        return
    sweep = sweeps.resolve(ctx, sweep_id)
    if watch and not as_json:
        _following(ctx, sweep.id, out, kick_stalled=False)
        return
    progress = sweeps.progress(ctx, sweep)
    emit(ctx, as_json, progress.as_json(), lambda: render.status(out, progress))


@sweep_app.command("pause")
def sweep_pause(c: typer.Context, sweep_id: Optional[str] = typer.Argument(None), as_json: bool = JsonOption) -> None:
    """Stop taking new batches (each worker finishes the batch in hand)."""
    sweep = sweeps.pause(c.obj, sweep_id)
    emit(c.obj, as_json, sweep.to_record(), lambda: out.print(f"sweep {sweep.id} paused"))


@sweep_app.command("resume")
def sweep_resume(c: typer.Context, sweep_id: Optional[str] = typer.Argument(None), as_json: bool = JsonOption) -> None:
    """Resume a paused sweep, or re-queue a running one from its checkpoints (after Redis lost its queue)."""
    sweep, queued = sweeps.resume(c.obj, sweep_id)
    emit(c.obj, as_json, {"sweep_id": sweep.id, "status": sweep.status, "slices_queued": queued},
         lambda: out.print(f"sweep {sweep.id} running; {queued} slices queued from their checkpoints"))


@sweep_app.command("cancel")
def sweep_cancel(c: typer.Context, sweep_id: Optional[str] = typer.Argument(None), as_json: bool = JsonOption) -> None:
    """Cancel a sweep; fields already moved stay moved (both keys remain readable). Run it again
    on a sweep still cancelling to settle it once its batches in hand are over."""
    sweep = sweeps.cancel(c.obj, sweep_id)
    emit(c.obj, as_json, sweep.to_record(), lambda: _cancel_text(c.obj, sweep))


def _cancel_text(ctx: Context, sweep: Sweep) -> None:
    if sweep.status != "cancelling":
        out.print(f"sweep {sweep.id} {sweep.status}")
        return
    batches, seconds = sweeps.leases_in_hand(ctx, sweep.id)
    out.print(f"sweep {sweep.id} cancelling: {batches} batches in hand finish first (their leases end within "
              f"{seconds:.0f} s); it becomes cancelled then, or run 'reencrypt sweep cancel {sweep.id}' again")


@sweep_app.command("throttle")
def sweep_throttle(
    c: typer.Context, sweep_id: Optional[str] = typer.Argument(None),
    rate: Optional[float] = typer.Option(None, "--rate", help="New fleet-wide limit in documents/s."),
    kv_ops_per_s: Optional[float] = typer.Option(None, "--kv-ops-per-s", help="New Key Vault budget in calls/s."),
    ru_per_s: Optional[float] = typer.Option(None, "--ru-per-s", help="New store budget in request units/s."),
    unlimited: bool = typer.Option(False, "--unlimited", help="Remove every limit."),
    as_json: bool = JsonOption,
) -> None:
    """Change a running sweep's limits; workers pick them up at their next batch."""
    limits = sweeps.LimitFlags(rate=rate, kv_ops_per_s=kv_ops_per_s, ru_per_s=ru_per_s)
    sweep = sweeps.throttle(c.obj, sweep_id, limits, unlimited=unlimited)
    emit(c.obj, as_json, sweep.to_record(), lambda: out.print(
        f"sweep {sweep.id} limits: {render.limits_text(sweep)}"))


@sweep_app.command("failures")
def sweep_failures(
    c: typer.Context, sweep_id: Optional[str] = typer.Argument(None),
    output_format: str = typer.Option("table", "--format", help="table, csv or json."),
    as_json: bool = JsonOption,
) -> None:
    """Fields a sweep could not move: document id, partition key, field path, reason."""
    ctx: Context = c.obj
    failures = ctx.state.failures(sweeps.resolve(ctx, sweep_id).id)
    rows = [failure.to_record() for failure in failures]
    output_format = "json" if as_json else output_format
    if output_format == "json":
        out.print_json(json.dumps(rows))
    elif output_format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=["document_id", "partition_key", "field_path", "reason", "slice", "at"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    elif output_format == "table":
        render.failures(out, failures)
    else:
        raise SweepError(f"--format {output_format!r} is unknown: use table, csv or json")


# -- verify, audit, demo ---------------------------------------------------------------------

@app.command("verify")
def verify(
    c: typer.Context,
    expect: str = typer.Option(..., "--expect", help="The key id every field must be on."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Pass on a container with no documents (else it fails)."),
    as_json: bool = JsonOption,
) -> None:
    """Scan every field: count by kid and kind, check each decrypts. Exit 0 only if all are on EXPECT and decrypt."""
    ctx: Context = c.obj
    with render.counter_progress(err, "verifying", ctx.store.count(), enabled=not as_json, incremental=True) as advance:
        payload = verify_rotation(ctx, expect, progress=advance, allow_empty=allow_empty)
    emit(ctx, as_json, payload, lambda: render.verify(out, payload))
    if not payload["ok"]:
        raise typer.Exit(1)


@app.command("audit")
def audit_trail(
    c: typer.Context,
    check: bool = typer.Option(False, "--check", help="Verify the hash chain; exit 1 if an entry was removed or altered."),
    as_json: bool = JsonOption,
) -> None:
    """The rotation's audit trail: who did what, when."""
    ctx: Context = c.obj
    entries = ctx.audit.entries()
    problems = keyops.audit_problems(ctx) if check else []
    emit(ctx, as_json, {"entries": entries, "problems": problems} if check else entries,
         lambda: render.audit(out, entries, problems if check else None))
    if problems:
        raise typer.Exit(1)


@app.command("demo")
def demo(
    c: typer.Context,
    docs: int = typer.Option(5_000, "--docs", min=1, help="Documents to seed."),
    workers: int = typer.Option(2, "--workers", min=1, help="Worker processes to start."),
) -> None:
    """The whole rotation on embedded defaults: seed, rotate, sweep, verify, disable, audit."""
    from coordinator.demo import run_demo

    raise typer.Exit(run_demo(c.obj, docs=docs, workers=workers, console=out))


@app.command("bench")
def bench(
    c: typer.Context,
    docs: int = typer.Option(100_000, "--docs", min=1, help="Documents in the benchmark container."),
    dek_share: int = typer.Option(DEFAULT_DEK_SHARE, "--dek-share", min=1, help="Documents sharing one source data key (1: worst case)."),
    seed_value: int = typer.Option(1, "--seed", help="Content seed (the seeded container is cached per docs/dek-share/seed)."),
    sample: int = typer.Option(2_000, "--sample", min=1, help="Documents the naive way, the in-process bound and the store-only pass are measured on."),
    slices: int = typer.Option(sweeps.DEFAULT_SLICES, "--slices", min=1, help="Slices of each benchmark sweep."),
    as_json: bool = JsonOption,
) -> None:
    """Measure a full sweep with 1 and 2 worker processes against the naive way and the in-process bound."""
    from coordinator.bench import BenchOptions, render_report, run_bench

    report = run_bench(c.obj, BenchOptions(docs=docs, dek_share=dek_share, seed=seed_value, sample=sample, slices=slices),
                       progress=err)
    emit(c.obj, as_json, report, lambda: render_report(out, report))


@app.command("exporter")
def exporter(
    c: typer.Context,
    port: int = typer.Option(9809, "--port", min=1, max=65535, help="Serve the metrics on this port (all interfaces)."),
    interval: float = typer.Option(5.0, "--interval", min=0.5, help="Seconds between reads of the sweep state and the queue."),
) -> None:
    """Serve sweep-level Prometheus metrics (progress, ETA, totals, failures, workers, queue depth) until stopped."""
    from coordinator.exporter import serve

    serve(c.obj, port=port, interval=interval,
          ready=lambda bound: err.print(f"serving sweep metrics on :{bound}/metrics, refreshed every {interval:g}s"))


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except ReencryptError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:
        # Usage errors (missing option, bad value, unknown command). Typer vendors Click since
        # 0.26, so these are not click.ClickException: catching that let them escape as tracebacks.
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
