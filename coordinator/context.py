"""What a command needs, built lazily from one Settings object so each command opens only
the systems it uses (``keys list`` never touches Redis, ``sweep status`` never the vault)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import redis

from tracker_reencrypt import custody, embedded_redis
from tracker_reencrypt.audit import AuditTrail
from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import BrokerUnavailableError, redact_url
from tracker_reencrypt.fleet import make_celery
from tracker_reencrypt.keys import KeyProvider, open_key_provider
from tracker_reencrypt.keys.keyring import Keyring, ProcessRate
from tracker_reencrypt.keys.products import ProductKeys
from tracker_reencrypt.stores import open_store
from tracker_reencrypt.sweep.state import SweepState


def state_dir() -> Path:
    """Where embedded services keep their files: $REENCRYPT_HOME, else ./.reencrypt."""
    return embedded_redis.home()


class Context:
    def __init__(self, settings: Settings, as_json: bool = False) -> None:
        self.settings = settings
        self.as_json = as_json
        #: Only 'seed' and 'keys init' may create a store; every other command refuses one
        #: that does not exist or was not made by this tool (a typo must not pass a gate).
        self.may_create_store = False

    @cached_property
    def store(self):
        self.settings.require("store")
        return open_store(
            self.settings.store, partition_key_field=self.settings.partition_key_field, create=self.may_create_store
        )

    def store_text(self) -> str:
        return self.store.describe() if self.settings.store else "no store"

    @cached_property
    def keys(self) -> ProductKeys:
        """Every product's key (one key for all of them without a per-product key name)."""
        self.settings.require("keys")
        return ProductKeys(open_key_provider(self.settings.keys, self.settings.key_name))

    @cached_property
    def keyring(self) -> Keyring:
        """Unwraps and wraps under any product's key (the root provider reaches them all)."""
        return Keyring(
            self.keys.root,
            dek_max_uses=self.settings.dek_max_uses,
            dek_max_age_s=self.settings.dek_max_age_s,
            # verify and the dry run keep to the process's own ceiling: no fleet budget paces them
            before_provider_call=ProcessRate(self.settings.unwrap_rate) if self.keys.root.remote else None,
            unwrap_concurrency=self.settings.unwrap_concurrency,
        )

    @cached_property
    def state(self) -> SweepState:
        return SweepState(self.store.records())

    @cached_property
    def audit(self) -> AuditTrail:
        return AuditTrail(self.store.records())

    @cached_property
    def redis_url(self) -> str:
        """REDIS_URL if given (checked reachable), else the embedded server (started if needed)."""
        if not self.settings.redis_url:
            return embedded_redis.ensure_running(state_dir())
        try:
            redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=3, socket_timeout=3).ping()
        except (redis.RedisError, OSError, ValueError) as exc:
            raise BrokerUnavailableError(
                f"Redis at {redact_url(self.settings.redis_url)} is unreachable ({type(exc).__name__}): "
                "start it or fix REDIS_URL"
            ) from None
        return self.settings.redis_url

    @cached_property
    def celery(self):
        return make_celery(self.settings, self.redis_url)

    def record(self, action: str, **details) -> bool:
        """Append to the audit trail when a store is configured; False when there is none."""
        if not self.settings.store:
            return False
        self.audit.append(action, **details)
        return True

    def record_key_operation(self, action: str, provider: KeyProvider, **details) -> bool:
        """Audit an operation on ``provider``'s key, then mark the store with that key and anchor
        the trail's new head there (tracker_reencrypt.custody); False when no store is configured."""
        if not self.settings.store:
            return False
        entry = self.audit.append(action, **details)
        custody.mark_store(provider, self.settings.store, entry)
        return True

    def mark_store_with_keys(self, providers: Iterable[KeyProvider]) -> None:
        """Record that this store holds (or will hold) fields under these keys: seed, sweep start.
        The store is opened first: one refused (a typo, another application's file) is never recorded."""
        self.store  # noqa: B018 - opening it is the check
        for provider in providers:
            custody.mark_store(provider, self.settings.store, None)
