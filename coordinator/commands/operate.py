"""The root-level commands that operate the rotation: seed, worker, queue, verify, stale-writes, audit, demo,
bench, exporter.

``register`` adds them to the root app (in this order, the order ``reencrypt --help`` lists them).
"""

from __future__ import annotations

import typer

from coordinator import keyops, render, steering
from coordinator.commands.common import JsonOption, ProductOption, emit, err, follow_or_exit, out
from coordinator.commands.stale import stale_writes
from coordinator.context import Context
from coordinator.launch import DEFAULT_HOSTNAME
from coordinator.verify import documents_in_scope, fleet_verify, verify_rotation
from tracker_reencrypt.errors import EXIT_FAILED, ConfigError, SweepError, redact_url
from tracker_reencrypt.seed import DEFAULT_DEK_SHARE, DEFAULT_PRODUCTS, product_ids, seed_store, seeding_keyring
from tracker_reencrypt.sweep.records import COMPLETED, FAILED, PAUSED, Sweep


def seed(
    c: typer.Context,
    docs: int = typer.Option(10_000, "--docs", min=1, help="How many documents to generate."),
    seed_value: int = typer.Option(1, "--seed", help="Content seed: same seed, same documents."),
    products: int = typer.Option(DEFAULT_PRODUCTS, "--products", min=1, help="Distinct partition keys."),
    dek_share: int = typer.Option(DEFAULT_DEK_SHARE, "--dek-share", min=1, help="Documents sharing one data key."),
    as_json: bool = JsonOption,
) -> None:
    """Fill the store with realistic tracker documents encrypted under the current MEK (with a
    per-product key name: each product's under its own key, created where missing).

    Run again with the same options after an interruption: documents already written are kept
    and only the missing ones are added. To start over, delete the store (the SQLite file)."""
    ctx: Context = c.obj
    ctx.may_create_store = True
    keyring = seeding_keyring(ctx.keys.root)
    kids = keyops.ensure_keys(ctx, product_ids(products))
    with render.counter_progress(err, "seeding", docs, enabled=not as_json) as advance:
        written = seed_store(
            ctx.store,
            keyring,
            docs,
            seed=seed_value,
            products=products,
            dek_share=dek_share,
            progress=advance,
            kid_of=kids.__getitem__,
        )
    one_kid = next(iter(kids.values())) if len(set(kids.values())) == 1 else None
    under = one_kid or f"{len(kids)} products' keys"
    # The store as configured (credentials redacted), as 'queue --json' gives it; kid: null when
    # the products are under keys of their own (kids: each product's).
    payload: dict[str, object] = {"documents": written, "kid": one_kid, "store": redact_url(ctx.settings.store)}
    if ctx.keys.per_product:
        payload["kids"] = kids
    emit(
        ctx,
        as_json,
        payload,
        lambda: out.print(f"seeded {written} documents under {under} into {ctx.store.describe()}"),
    )


def worker(
    c: typer.Context,
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-c", min=1, help="Pool processes of this member of the fleet (default 1)."
    ),
    pool: str = typer.Option(
        "prefork",
        "--pool",
        "-P",
        help="Celery pool: prefork (processes) or solo (one batch at a time in the main process).",
    ),
    autoscale: str | None = typer.Option(
        None,
        "--autoscale",
        metavar="MAX,MIN",
        help="Grow the prefork pool up to MAX processes while there is work, shrink it to MIN (instead of -c).",
    ),
    max_tasks_per_child: int | None = typer.Option(
        None, "--max-tasks-per-child", min=1, help="Replace a pool process after it ran this many batches."
    ),
    max_memory_per_child: int | None = typer.Option(
        None,
        "--max-memory-per-child",
        min=1,
        metavar="KIB",
        help="Replace a pool process once its resident memory passes this many KiB (after its batch).",
    ),
    queues: str | None = typer.Option(
        None,
        "--queues",
        "-Q",
        help="Queues to consume, comma-separated: only this store's ('reencrypt queue') can be given, the default.",
    ),
    hostname: str = typer.Option(
        DEFAULT_HOSTNAME,
        "--hostname",
        "-n",
        help="Celery node name (%h: this host's name), as 'celery inspect -d' and Flower name it. "
        "Give each worker on one host its own.",
    ),
    task_events: bool = typer.Option(
        False,
        "--task-events",
        "-E",
        help="Send Celery task events, for Flower and 'celery events' (one message per task state; "
        "also REENCRYPT_TASK_EVENTS=1).",
    ),
    heartbeat: bool = typer.Option(
        True, "--heartbeat/--without-heartbeat", help="Worker heartbeat events (Flower shows workers online)."
    ),
    gossip: bool = typer.Option(False, "--gossip/--without-gossip", help="Celery gossip between workers."),
    mingle: bool = typer.Option(False, "--mingle/--without-mingle", help="Celery mingle at start-up."),
    metrics_port: int = typer.Option(0, "--metrics-port", help="Serve Prometheus metrics on this port (0: off)."),
    health_port: int = typer.Option(
        0,
        "--health-port",
        min=0,
        max=65535,
        help="Serve /livez and /readyz for Kubernetes probes on this port (0: off).",
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Run one member of the worker fleet (a Celery worker) until stopped (SIGTERM finishes the batch in hand).

    It checks its configuration first (store, keys, broker, the pool and queues given) and exits
    non-zero, naming the problem, when any is broken. It consumes only its own store's queue
    ('reencrypt queue'). The Celery flags are Celery's own; see 'celery worker --help'."""
    from coordinator.launch import WorkerOptions, exec_worker

    ctx: Context = c.obj
    if autoscale is not None and concurrency is not None:
        raise ConfigError("--autoscale MAX,MIN sets the pool's size: drop --concurrency")
    options = WorkerOptions(
        concurrency=concurrency,
        pool=pool,
        hostname=hostname,
        task_events=task_events or ctx.settings.task_events,
        autoscale=None if autoscale is None else _autoscale(autoscale),
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        queues=tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else None,
        heartbeat=heartbeat,
        gossip=gossip,
        mingle=mingle,
        loglevel=loglevel,
    )
    exec_worker(ctx, options, metrics_port=metrics_port, health_port=health_port)


def _autoscale(text: str) -> str:
    """``MAX,MIN`` (or ``MAX``: down to 0) as Celery reads it, checked: MAX >= 1, MAX >= MIN >= 0."""
    parts = text.split(",")
    try:
        most, least = int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    except ValueError:
        most, least = 0, -1
    if len(parts) > 2 or most < 1 or not 0 <= least <= most:
        raise ConfigError(f"--autoscale {text}: give MAX,MIN pool processes, e.g. 8,2 (MAX >= 1, MAX >= MIN >= 0)")
    return f"{most},{least}"


def queue(c: typer.Context, as_json: bool = JsonOption) -> None:
    """The broker queue of this store's sweeps (what workers consume and KEDA scales on)."""
    from tracker_reencrypt.fleet import store_queue

    name = store_queue(c.obj.settings)
    emit(c.obj, as_json, {"queue": name, "store": redact_url(c.obj.settings.store)}, lambda: out.print(name))


def verify(
    c: typer.Context,
    expect: str | None = typer.Option(None, "--expect", metavar="KID", help="The key id every field must be on."),
    current: bool = typer.Option(
        False, "--current", help="Every field must be on its product's current key version (instead of --expect)."
    ),
    products: list[str] = ProductOption,
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Pass on a container (or product) with no documents (else it fails)."
    ),
    fleet: bool = typer.Option(
        False, "--fleet", help="Check on the worker fleet, slice by slice (a verify sweep), not in this process."
    ),
    slices: int | None = typer.Option(
        None,
        "--slices",
        min=1,
        max=steering.MAX_SLICES,
        help=f"With --fleet: slices to split the container into (default {steering.DEFAULT_SLICES}).",
    ),
    sweep_id: str | None = typer.Option(
        None,
        "--sweep",
        metavar="SWEEP_ID",
        help="The result of verify sweep SWEEP_ID (followed to its end first if it still runs).",
    ),
    rate: float | None = typer.Option(None, "--rate", help="With --fleet: fleet-wide limit in documents/s."),
    kv_ops_per_s: float | None = typer.Option(
        None, "--kv-ops-per-s", help="With --fleet: fleet-wide Key Vault budget in calls/s."
    ),
    ru_per_s: float | None = typer.Option(
        None, "--ru-per-s", help="With --fleet: fleet-wide store budget in request units/s."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Scan every field: count by kid and kind, check each decrypts. Exit 0 only if all are on
    EXPECT (or, with --current, on their product's current version) and decrypt.

    --fleet starts a verify sweep that the running workers check slice by slice (it writes
    nothing), follows it, and reports the same result; Ctrl-C stops following, not the sweep,
    and --sweep ID collects its result later."""
    ctx: Context = c.obj
    limits = steering.LimitFlags(rate=rate, kv_ops_per_s=kv_ops_per_s, ru_per_s=ru_per_s)
    fleet_only = slices is not None or bool(limits.given())
    if sweep_id is not None:
        if expect is not None or current or products or allow_empty or fleet_only:
            raise ConfigError("--sweep ID takes what to verify from the verify sweep: give no other option but --json")
        _verify_on_fleet(ctx, ctx.state.get_sweep(sweep_id), as_json)
        return
    if (expect is None) == (not current):
        raise ConfigError("give exactly one of --expect KID and --current")
    scope = products or None
    if fleet:
        sweep = steering.start_verify(
            ctx,
            expect=expect,
            products=scope or (),
            slices=steering.DEFAULT_SLICES if slices is None else slices,
            allow_empty=allow_empty,
            limits=limits,
        )
        err.print(f"verify sweep {sweep.id} started ({sweep.slice_count} slices)")
        _verify_on_fleet(ctx, sweep, as_json)
        return
    if fleet_only:
        raise ConfigError("--slices and the limits are for a verify on the fleet: add --fleet")
    total = documents_in_scope(ctx.store, scope)
    with render.counter_progress(err, "verifying", total, enabled=not as_json, incremental=True) as advance:
        payload = verify_rotation(ctx, expect, progress=advance, allow_empty=allow_empty, products=scope)
    emit(ctx, as_json, payload, lambda: render.verify(out, payload))
    if not payload["ok"]:
        raise typer.Exit(EXIT_FAILED)


def _verify_on_fleet(ctx: Context, sweep: Sweep, as_json: bool) -> None:
    """Follow a verify sweep to its end (as 'sweep start --wait' does), then report its result."""
    if not sweep.checks_only:
        raise SweepError(f"sweep {sweep.id} is a {sweep.mode} sweep, not a verify sweep ('verify --fleet' starts one)")
    if not sweep.finished:
        sweep = follow_or_exit(
            ctx,
            sweep.id,
            None if as_json else err,
            kick_stalled=True,
            what="verify sweep",
            later=f"Its result, once it ends: reencrypt verify --sweep {sweep.id}",
        ).sweep
    if sweep.status not in (COMPLETED, FAILED):  # both mean every slice was checked
        why = f" ({sweep.paused_reason})" if sweep.paused_reason else ""
        err.print(
            f"verify sweep {sweep.id} is {sweep.status}{why}: no result. "
            + (
                f"Resume it: reencrypt sweep resume {sweep.id}, then reencrypt verify --sweep {sweep.id}"
                if sweep.status == PAUSED
                else "Start another: reencrypt verify --fleet ..."
            ),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED)
    payload = fleet_verify(ctx, sweep)
    emit(ctx, as_json, payload, lambda: render.verify(out, payload))
    if not payload["ok"]:
        raise typer.Exit(EXIT_FAILED)


def audit_trail(
    c: typer.Context,
    check: bool = typer.Option(
        False, "--check", help="Verify the hash chain; exit 1 if an entry was removed or altered."
    ),
    as_json: bool = JsonOption,
) -> None:
    """The rotation's audit trail: who did what, when."""
    ctx: Context = c.obj
    entries = ctx.audit.entries()
    problems = keyops.audit_problems(ctx) if check else []
    emit(
        ctx,
        as_json,
        {"entries": entries, "problems": problems} if check else entries,
        lambda: render.audit(out, entries, problems if check else None),
    )
    if problems:
        raise typer.Exit(EXIT_FAILED)


def demo(
    c: typer.Context,
    docs: int = typer.Option(5_000, "--docs", min=1, help="Documents to seed."),
    workers: int = typer.Option(2, "--workers", min=1, help="Worker processes to start."),
) -> None:
    """The whole rotation on embedded defaults: seed, rotate, sweep, verify, disable, audit."""
    from coordinator.demo import run_demo

    raise typer.Exit(run_demo(c.obj, docs=docs, workers=workers, console=out))


def bench(
    c: typer.Context,
    docs: int | None = typer.Option(
        None,
        "--docs",
        min=1,
        help="Documents in the benchmark container (default 100,000; 3,000 with --vault-latency-ms).",
    ),
    dek_share: int = typer.Option(
        DEFAULT_DEK_SHARE, "--dek-share", min=1, help="Documents sharing one source data key (1: worst case)."
    ),
    seed_value: int = typer.Option(
        1, "--seed", help="Content seed (the seeded container is cached per docs/dek-share/seed)."
    ),
    sample: int = typer.Option(
        2_000,
        "--sample",
        min=1,
        help="Documents the naive way, the in-process bound and the store-only pass are measured on.",
    ),
    slices: int = typer.Option(steering.DEFAULT_SLICES, "--slices", min=1, help="Slices of each benchmark sweep."),
    vault_latency_ms: float | None = typer.Option(
        None,
        "--vault-latency-ms",
        min=0,
        help="Remote-vault mode: the fleets unwrap through the Azure Key Vault provider against a loopback vault "
        "adding this latency to every call, and the report sets unwraps/s against the budget and W/L. Needs a "
        "source checkout: the vault and its worker app are tests/keyvault_server.py and tests/vault_worker.py.",
    ),
    kv_ops_per_s: float | None = typer.Option(
        None, "--kv-ops-per-s", min=0.001, help="Remote-vault mode: the sweeps' fleet Key Vault budget (calls/s)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Measure a full sweep with 1 and 2 worker processes against the naive way and the in-process
    bound; with --vault-latency-ms, against a loopback Key Vault (docs/BENCHMARK.md)."""
    from coordinator.bench import BenchOptions, render_report, run_bench
    from coordinator.bench.options import DEFAULT_DOCS, DEFAULT_VAULT_DOCS

    if kv_ops_per_s is not None and vault_latency_ms is None:
        raise ConfigError("--kv-ops-per-s is the remote-vault mode's budget: add --vault-latency-ms")
    options = BenchOptions(
        docs=docs or (DEFAULT_DOCS if vault_latency_ms is None else DEFAULT_VAULT_DOCS),
        dek_share=dek_share,
        seed=seed_value,
        sample=sample,
        slices=slices,
        vault_latency_ms=vault_latency_ms,
        kv_ops_per_s=kv_ops_per_s,
    )
    report = run_bench(c.obj, options, progress=err)
    emit(c.obj, as_json, report, lambda: render_report(out, report))


def exporter(
    c: typer.Context,
    port: int = typer.Option(9809, "--port", min=1, max=65535, help="Serve /metrics and /healthz on this port."),
    bind: str = typer.Option(
        "0.0.0.0", "--bind", help="Address to listen on (default: every interface; 127.0.0.1: this host only)."
    ),
    interval: float = typer.Option(
        5.0, "--interval", min=0.5, help="Seconds between reads of the sweep state and the queue."
    ),
) -> None:
    """Serve sweep-level Prometheus metrics (progress, ETA, totals, failures, workers, queue depth) until stopped."""
    from coordinator.exporter import serve

    serve(
        c.obj,
        port=port,
        bind=bind,
        interval=interval,
        ready=lambda where: err.print(
            f"serving sweep metrics on http://{where}/metrics (health: /healthz), refreshed every {interval:g}s"
        ),
    )


COMMANDS = (
    ("seed", seed),
    ("worker", worker),
    ("queue", queue),
    ("verify", verify),
    ("stale-writes", stale_writes),
    ("audit", audit_trail),
    ("demo", demo),
    ("bench", bench),
    ("exporter", exporter),
)


def register(app: typer.Typer) -> None:
    """Add the commands above to the root app."""
    for name, command in COMMANDS:
        app.command(name)(command)
