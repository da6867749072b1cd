"""Where the bench's data comes from: the seeded container (cached per docs, DEK share and seed
on SQLite; seeded once on a remote store; seeded afresh under the loopback vault, whose keys live
only as long as the invocation), and the working copies every measured run starts from."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from coordinator import render
from coordinator.bench.measure import Stopwatch
from coordinator.bench.options import BenchOptions
from coordinator.bench.results import Container
from coordinator.verify import scan_container
from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import ConfigError, KeyNotFoundError
from tracker_reencrypt.keys import open_key_provider
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.seed import seed_store, seeding_keyring
from tracker_reencrypt.stores import DocumentStore, open_store
from tracker_reencrypt.stores.sqlite import SqliteStore


class BenchContainers:
    """The seeded cache under ``home``/cache and this invocation's copies under ``run_dir``."""

    def __init__(
        self,
        settings: Settings,
        options: BenchOptions,
        home: Path,
        run_dir: Path,
        progress: Console | None,
        say: Callable[[str], None],
    ) -> None:
        self.settings, self.options, self.home, self.run_dir = settings, options, home, run_dir
        self.progress, self.say = progress, say
        self.remote_keys = bool(settings.keys) and not settings.keys.startswith("local:")
        #: The seeded SQLite file working copies are made of (the cache's, unless seeded here).
        self.seeded_file: Path | None = None

    def cache_dir(self) -> Path:
        o = self.options
        name = f"docs{o.docs}-share{o.dek_share}-seed{o.seed}"
        if self.remote_keys:
            name += "-" + hashlib.sha256(self.settings.keys.encode()).hexdigest()[:8]
        return self.home / "cache" / name

    def seeded_sqlite(self) -> tuple[Path, Container]:
        """The cached seeded container, made on first use (``container.json`` is written last)."""
        cache = self.cache_dir()
        meta = cache / "container.json"
        if meta.exists():
            self.say(f"reusing the seeded container in {cache}")
            _settled_file(cache / "tracker.db")  # a cache from an older layout is migrated once, not in every copy
            return cache, Container(**json.loads(meta.read_text()))
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        if self.remote_keys:
            provider = _existing_key(open_key_provider(self.settings.keys))
        else:
            provider = LocalKeyProvider(cache / "keyring.json")
            provider.init()
        store = SqliteStore(cache / "tracker.db", create=True)
        container = self._seed(store, provider)
        store.close()
        _settled_file(cache / "tracker.db")
        meta.write_text(json.dumps(asdict(container)))
        return cache, container

    def seeded_here(self, provider) -> Container:
        """A container seeded in this invocation's directory under ``provider`` (its MEK made
        first): for a vault whose keys do not outlive the invocation, so nothing is cached."""
        self.seeded_file = self.run_dir / "seeded" / "tracker.db"
        self.seeded_file.parent.mkdir(parents=True)
        provider.init()
        store = SqliteStore(self.seeded_file, create=True)
        container = self._seed(store, provider)
        store.close()
        _settled_file(self.seeded_file)
        return container

    def seed_remote(self, store_url: str, keys_url: str) -> Container:
        """The configured remote container, which must exist and be empty, seeded under ``keys_url``."""
        store = open_store(store_url, partition_key_field=self.settings.partition_key_field)
        if store.count():
            raise ConfigError(
                f"{store.describe()} is not empty: the bench seeds and sweeps a container once "
                "(v1 -> v2), so every run needs a fresh, empty container"
            )
        provider = open_key_provider(keys_url)
        if self.remote_keys:
            _existing_key(provider)
        elif not Path(keys_url[len("local:") :]).exists():
            provider.init()
        container = self._seed(store, provider)
        store.close()
        return container

    def _seed(self, store: DocumentStore, provider) -> Container:
        o = self.options
        keyring = seeding_keyring(provider)
        clock = Stopwatch()
        console = self.progress or Console(quiet=True)
        enabled = self.progress is not None
        with clock.span(), render.counter_progress(console, "seeding", o.docs, enabled=enabled) as advance:
            seed_store(store, keyring, o.docs, seed=o.seed, dek_share=o.dek_share, progress=advance)
        source_kid = keyring.current_kid()
        report = scan_container(store, keyring=None, sizing=True)
        return Container(
            documents=report.documents,
            fields=report.fields,
            document_bytes=report.document_bytes,
            distinct_source_deks=report.distinct_deks([source_kid]),
            source_kid=source_kid,
            seed_seconds=round(clock.seconds, 1),
        )

    def run_keyring(self, cache: Path) -> str:
        """The keys URL of this invocation: a copy of the cached local keyring, or the vault."""
        if self.remote_keys:
            return self.settings.keys
        copy = self.run_dir / "keyring.json"
        descriptor = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # as secret as the MEK
        with os.fdopen(descriptor, "wb") as handle:
            handle.write((cache / "keyring.json").read_bytes())
        return f"local:{copy.resolve()}"

    def working_copy(self, name: str) -> str:
        """A fresh copy of the seeded SQLite file: every run starts from v1."""
        target = self.run_dir / f"{name}.db"
        shutil.copyfile(self.seeded_file or self.cache_dir() / "tracker.db", target)
        return f"sqlite:///{target.resolve()}"

    def working_store(self, store_url: str | None, name: str) -> DocumentStore:
        url = store_url or self.working_copy(name)
        return open_store(url, partition_key_field=self.settings.partition_key_field)

    def drop_working_copy(self, name: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            (self.run_dir / f"{name}.db{suffix}").unlink(missing_ok=True)


def _settled_file(path: Path) -> None:
    """The SQLite file in the current layout with its WAL folded in: the file alone is the copy."""
    SqliteStore(path, create=False).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _existing_key(provider):
    """The provider, after creating its MEK if the vault has no version of it yet."""
    try:
        if provider.versions():
            return provider
    except KeyNotFoundError:
        pass  # no version yet: made below
    provider.init()
    return provider
