"""``reencrypt demo``: the tracker's two MEK rotations on embedded defaults, following the runbook.

The tracker keeps one key per product (``tracker-mek-{productId}``). The demo seeds a container
of six products, each under its own key, then:

1. runs preflight, the runbook's checklist (the backup check is not applicable to SQLite and
   says so), and takes a baseline of the read path;
2. rotates one product's key, sweeps that product alone, shows that no document of any other
   product was written (their ETags are unchanged), verifies it and disables its old version;
3. rotates every product's key, sweeps the whole container to each product's current version,
   verifies with ``--current`` and disables every product's previous version, and compares the
   read path with the baseline.

It writes the tracker-service's ``TRACKER_MEK_ID_<PRODUCTID>`` lines into ``tracker.env`` as the
runbook's env step does, and prints the audit trail. Uses a SQLite store and a local keyring
under ``$REENCRYPT_HOME/demo`` (default ``.reencrypt/demo``), the Redis at REDIS_URL or an
embedded one, and leaves nothing running.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console

from coordinator import keyops, render, steering
from coordinator.context import Context, state_dir
from coordinator.envfile import update_env_file
from coordinator.launch import WorkerFleet
from coordinator.preflight import baseline as baselines
from coordinator.preflight import report
from coordinator.preflight.fleet import wait_for_workers
from coordinator.preflight.run import record, run_checks
from coordinator.verify import scan_ranges, verify_rotation
from tracker_reencrypt import embedded_redis
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.keys.naming import env_line
from tracker_reencrypt.seed import product_ids, seed_store, seeding_keyring
from tracker_reencrypt.stores import DocumentStore

KEY_NAME = "tracker-mek-{productId}"
PRODUCTS = 6
#: The product whose key is rotated alone first (a suspected leak, a customer's request).
ONE_PRODUCT = "product-002"
#: Documents the read-path baseline samples (preflight's default is 1,000).
BASELINE_SAMPLE = 500
#: How long the demo's workers have to answer preflight's fleet check.
WORKERS_START_S = 30.0


def run_demo(parent: Context, *, docs: int, workers: int, console: Console) -> int:
    home = state_dir() / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    ctx = Context(
        load_settings(
            store=f"sqlite:///{home.resolve()}/tracker.db",
            keys=f"local:{home.resolve()}/keyring.json",
            key_name=KEY_NAME,
            redis_url=parent.settings.redis_url,
        )
    )
    ctx.may_create_store = True  # the demo makes its own container, as 'keys init' and 'seed' would
    # Stop the embedded Redis only if the demo started it: one already running serves others
    # (workers started with 'reencrypt worker' in this home), as bench also leaves it.
    ours = not ctx.settings.redis_url and not embedded_redis.is_running(state_dir())
    try:
        return _rotation(ctx, home, docs, workers, console)
    finally:
        if ours:
            embedded_redis.stop(state_dir())


def _step(console: Console, text: str) -> None:
    console.rule(f"[bold]{text}")


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _rotation(ctx: Context, home: Path, docs: int, workers: int, console: Console) -> int:
    products = product_ids(PRODUCTS)
    others = [product for product in products if product != ONE_PRODUCT]
    _step(console, f"1. create each product's MEK (v1) and seed the tracker container ({PRODUCTS} products)")
    kids = keyops.ensure_keys(ctx, products)
    with render.counter_progress(console, "seeding", docs) as advance:
        seed_store(
            ctx.store,
            seeding_keyring(ctx.keys.root),
            docs,
            products=PRODUCTS,
            progress=advance,
            kid_of=kids.__getitem__,
        )
    _say(console, f"{docs} documents in {ctx.store.describe()}, each product's fields under its own key")
    env_file = home / "tracker.env"
    _tracker_env(ctx, console, env_file, kids.values())

    with WorkerFleet(ctx, workers, log_dir=home / "logs"):
        _say(
            console, f"broker: {'embedded Redis' if not ctx.settings.redis_url else 'REDIS_URL'}; worker logs in {home}"
        )
        _step(console, "2. preflight: the runbook's checklist, and a baseline of the read path")
        before = _preflight(ctx, console, workers)
        if before is None:
            return 1
        _step(console, f"3. rotate {ONE_PRODUCT}'s key alone and sweep only its documents")
        provider = ctx.keys.provider_for(ONE_PRODUCT)
        old = provider.current_kid()
        new, _ = keyops.rotate(ctx, provider)
        _tracker_env(ctx, console, env_file, [new.kid])
        etags = _etags(ctx.store, others)
        if not _sweep(ctx, console, products=[ONE_PRODUCT]):
            return 1
        untouched = sum(1 for key, etag in _etags(ctx.store, others).items() if etags.get(key) == etag)
        _say(
            console,
            f"the other {len(others)} products: {untouched} of {len(etags)} documents not written (ETags unchanged)",
        )
        if untouched != len(etags):
            return 1
        if not _verify_and_disable(ctx, console, new.kid, [old], products=[ONE_PRODUCT]):
            return 1

        _step(console, "4. the scheduled rotation: every product's key, one sweep to each product's current version")
        previous = {product: ctx.keys.provider_for(product).current_kid() for product in products}
        rotated = [keyops.rotate(ctx, ctx.keys.provider_for(product))[0] for product in products]
        _tracker_env(ctx, console, env_file, [version.kid for version in rotated])
        if not _sweep(ctx, console, products=None):
            return 1
        if not _verify_and_disable(ctx, console, None, list(previous.values()), products=None):
            return 1
        comparison = baselines.compare(before, _read_path(ctx), tolerance=ctx.settings.compare_tolerance / 100)
        report.print_comparison(console, comparison)
        if comparison.failed:
            return 1

    _step(console, "5. the keys and the audit trail")
    render.key_table(console, [v for product in products for v in ctx.keys.provider_for(product).versions()])
    render.audit(console, ctx.audit.entries(), keyops.audit_problems(ctx))
    console.print("[green]demo complete: one product rotated, then all; old versions disabled, nothing left running[/]")
    return 0


def _preflight(ctx: Context, console: Console, workers: int) -> baselines.Baseline | None:
    """The checklist once the workers answer (they take a few seconds to start), and the
    baseline; None when a check failed."""
    wait_for_workers(ctx, workers, WORKERS_START_S)
    results = run_checks(ctx, [], backup_confirmed=None, expect_workers=workers)
    report.print_results(console, results)
    failed = any(result.failed for result in results)
    record(ctx, results, not failed, None)
    if failed:
        return None
    before = _read_path(ctx)
    _say(console, f"baseline: read p95 {before.read_ms.p95} ms over {before.documents} sampled documents")
    return before


def _read_path(ctx: Context) -> baselines.Baseline:
    return baselines.take_baseline(ctx.store, ctx.keyring, store_url=ctx.settings.store, documents=BASELINE_SAMPLE)


def _tracker_env(ctx: Context, console: Console, env_file: Path, kids: Iterable[str]) -> None:
    """The runbook's env step: the tracker-service's lines, written into its dotenv file."""
    lines = [env_line(str(ctx.keys.product_of_kid(kid)), kid) for kid in kids]
    update_env_file(env_file, lines)
    _say(console, f"tracker-service env, written into {env_file.name}:")
    for line in lines:
        _say(console, f"  {line}")


def _sweep(ctx: Context, console: Console, *, products: list[str] | None) -> bool:
    sweep = steering.start(ctx, to="current", sources=[], mode="reencrypt", slices=8, products=products or ())
    progress = render.follow(ctx, sweep.id, console, kick_stalled=True)
    render.summary(console, progress)
    return progress.sweep.status == "completed" and not progress.totals.get("failures")


def _verify_and_disable(
    ctx: Context, console: Console, expect: str | None, old_kids: list[str], *, products: list[str] | None
) -> bool:
    payload = verify_rotation(ctx, expect, products=products)
    render.verify(console, payload)
    if not payload["ok"]:
        return False
    for kid in old_kids:
        keyops.disable(ctx, kid, force=False)
        _say(console, f"disabled {kid}")
    return True


def _etags(store: DocumentStore, products: list[str]) -> dict[tuple[str, str], str]:
    """Every document of ``products`` by (product, id), with its ETag."""
    etags = {}
    for feed_range in scan_ranges(store, products):
        continuation = None
        while True:
            page = store.scan(feed_range, continuation, 500)
            etags.update({(str(doc.body.get("productId")), doc.id): doc.etag for doc in page.documents})
            continuation = page.continuation
            if continuation is None:
                break
    return etags
