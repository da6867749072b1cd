"""``reencrypt demo``: a whole MEK rotation on embedded defaults, following the runbook.

Seed a container under v1, rotate to v2, sweep with two worker processes and live progress,
verify, disable v1, print the audit trail. Uses a SQLite store and a local keyring under
``$REENCRYPT_HOME/demo`` (default ``.reencrypt/demo``), the Redis at REDIS_URL or an embedded
one, and leaves nothing running.
"""

from __future__ import annotations

import shutil

from rich.console import Console

from coordinator import keyops, render, steering
from coordinator.context import Context, state_dir
from coordinator.launch import WorkerFleet
from coordinator.verify import verify_rotation
from tracker_reencrypt import embedded_redis
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.seed import seed_store, seeding_keyring


def run_demo(parent: Context, *, docs: int, workers: int, console: Console) -> int:
    home = state_dir() / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    ctx = Context(
        load_settings(
            store=f"sqlite:///{home.resolve()}/tracker.db",
            keys=f"local:{home.resolve()}/keyring.json",
            redis_url=parent.settings.redis_url,
        )
    )
    ctx.may_create_store = True  # the demo makes its own container, as 'keys init' and 'seed' would
    embedded = not ctx.settings.redis_url
    try:
        return _rotation(ctx, home, docs, workers, console)
    finally:
        if embedded:
            embedded_redis.stop(state_dir())


def _step(console: Console, text: str) -> None:
    console.rule(f"[bold]{text}")


def _rotation(ctx: Context, home, docs: int, workers: int, console: Console) -> int:
    _step(console, "1. create the MEK (v1) and seed the tracker container")
    v1, _ = keyops.init(ctx)
    with render.counter_progress(console, "seeding", docs) as advance:
        seed_store(ctx.store, seeding_keyring(ctx.provider), docs, progress=advance)
    console.print(f"{docs} documents in {ctx.store.describe()}, fields under {v1.kid}")

    _step(console, "2. rotate: new writes use v2, reads accept both")
    v2, _ = keyops.rotate(ctx)
    console.print(f"{v2.kid} is current")

    _step(console, f"3. sweep every field onto {v2.kid} with {workers} worker processes")
    console.print(f"broker: {'embedded Redis' if not ctx.settings.redis_url else 'REDIS_URL'}; worker logs in {home}")
    with WorkerFleet(ctx, workers, log_dir=home / "logs"):
        sweep = steering.start(ctx, to=v2.kid, sources=[], mode="reencrypt", slices=8)
        progress = render.follow(ctx, sweep.id, console, kick_stalled=True)
    render.summary(console, progress)
    if progress.sweep.status != "completed":
        return 1

    _step(console, f"4. verify: every field on {v2.kid} and decrypting")
    payload = verify_rotation(ctx, v2.kid)
    render.verify(console, payload)
    if not payload["ok"]:
        return 1

    _step(console, f"5. revoke: disable {v1.kid}")
    keyops.disable(ctx, v1.kid, force=False)
    render.key_table(console, ctx.provider.versions())

    _step(console, "6. the audit trail")
    render.audit(console, ctx.audit.entries(), keyops.audit_problems(ctx))
    console.print("[green]demo complete: rotation done, old key disabled, nothing left running[/]")
    return 0
