"""One ``reencrypt bench`` invocation: seed (or reuse) the container, measure the references in
spans around the fleets, and make the report."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from coordinator.bench.containers import BenchContainers
from coordinator.bench.fleet import POLL_S, REMOTE_POLL_S, run_fleet
from coordinator.bench.options import BenchOptions
from coordinator.bench.references import ReferenceSpans, load_sample
from coordinator.bench.report import build_report
from coordinator.bench.results import FleetRun
from coordinator.bench.vault_run import run_vault_bench
from coordinator.context import Context, state_dir
from tracker_reencrypt import embedded_redis
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.keys import open_key_provider

WORKER_COUNTS = (1, 2)


def run_bench(parent: Context, options: BenchOptions, progress: Console | None) -> dict:
    """Seed (or reuse), measure bound, naive and the fleet at each size; return the report. In the
    remote-vault mode (``options.vault_latency_ms``), the fleets alone, against the loopback vault."""
    home = state_dir() / "bench"
    run_dir = home / "last"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    redis_was_running = embedded_redis.is_running(state_dir())
    try:
        if options.remote_vault:
            return run_vault_bench(parent, options, home, run_dir, progress)
        return _BenchRun(parent, options, home, run_dir, progress).run()
    finally:
        if not parent.settings.redis_url and not redis_was_running:
            embedded_redis.stop(state_dir())


class _BenchRun:
    def __init__(
        self, parent: Context, options: BenchOptions, home: Path, run_dir: Path, progress: Console | None
    ) -> None:
        self.parent, self.options, self.home, self.run_dir, self.progress = parent, options, home, run_dir, progress
        settings = parent.settings
        self.remote_store = bool(settings.store) and not settings.store.startswith("sqlite:")
        self.remote_keys = bool(settings.keys) and not settings.keys.startswith("local:")
        self.containers = BenchContainers(settings, options, home, run_dir, progress, self.say)
        self.notes: list[str] = []
        if settings.store and not self.remote_store:
            self.notes.append(f"the configured SQLite store ({settings.store}) is not touched: the bench seeds its own")
        if settings.keys and not self.remote_keys:
            self.notes.append("the configured local keyring is not touched: the bench keeps its own")

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.print(text, markup=False, highlight=False)

    def run(self) -> dict:
        options, settings, containers = self.options, self.parent.settings, self.containers
        if self.remote_store:
            keys_url = settings.keys if self.remote_keys else f"local:{(self.home / 'remote-keyring.json').resolve()}"
            store_url = settings.store
            container = containers.seed_remote(store_url, keys_url)
        else:
            cache, container = containers.seeded_sqlite()
            keys_url = containers.run_keyring(cache)
            store_url = None
        provider = open_key_provider(keys_url)
        target_kid = _target(provider, container.source_kid)
        self.say(f"sweeping {container.source_kid} -> {target_kid}")

        # The in-process references run in spans around the fleets (before W=1, between, after
        # W=2): this machine's speed drifts, and each reference should see it as the fleets did.
        counts = WORKER_COUNTS[-1:] if self.remote_store else WORKER_COUNTS
        work = containers.working_store(store_url, "in-process")
        references = ReferenceSpans(
            work,
            load_sample(work, options.sample),
            provider,
            target_kid,
            settings,
            spans=1 if self.remote_store else len(counts) + 1,
            container_documents=options.sample if self.remote_store else container.documents,
        )
        references.measure_span(self.say)
        if self.remote_store:
            self.notes.append(
                f"store only and naive ran first on the same container: the {options.sample} sample "
                f"documents were already on {target_kid} when the fleet scanned them (skipped, counted "
                "as scanned)"
            )

        fleets: dict[int, FleetRun] = {}
        for workers in counts:
            name = f"fleet-w{workers}"
            ctx = Context(
                load_settings(
                    store=store_url or containers.working_copy(name), keys=keys_url, redis_url=settings.redis_url
                )
            )
            fleets[workers] = run_fleet(
                ctx,
                workers,
                target_kid=target_kid,
                container=container,
                slices=options.slices,
                poll_s=REMOTE_POLL_S if self.remote_store else POLL_S,
                log_dir=self.run_dir / f"logs-w{workers}",
                say=self.say,
            )
            ctx.store.close()
            containers.drop_working_copy(name)
            self.say(f"fleet W={workers}: {fleets[workers].docs_per_s:,.0f} docs/s")
            if not references.done:
                references.measure_span(self.say)
        work.close()
        containers.drop_working_copy("in-process")
        if self.remote_store:
            self.notes.append(
                f"only W={counts[0]} measured: the container was swept once ({container.source_kid} -> "
                f"{target_kid}); a rerun needs a fresh, empty container"
            )
        return build_report(
            container,
            fleets,
            references.results(),
            target_kid=target_kid,
            options=options,
            settings=settings,
            store=settings.store if self.remote_store else "SQLite (a fresh copy of the seeded file per run)",
            keys=provider.describe() if self.remote_keys else "local JWKS keyring (RSA-2048, RSA-OAEP-256)",
            remote_store=self.remote_store,
            notes=self.notes,
        )


def _target(provider, source_kid: str) -> str:
    """The version to sweep to: a new one, unless a newer one than the data's exists."""
    if provider.current_kid() == source_kid:
        return provider.rotate().kid
    return provider.current_kid()
