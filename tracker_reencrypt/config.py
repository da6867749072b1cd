"""Settings: one typed object, read once from the environment (and CLI flags on top).

Every process (coordinator command, worker, exporter) builds a :class:`Settings` at start-up
and passes it down. Variables:

========================================  =============================================
``REENCRYPT_STORE``                        store URL (``sqlite:///...`` or ``cosmos://...``)
``REENCRYPT_KEYS``                         key provider URL (``local:...`` or a vault URL)
``REENCRYPT_KEY_NAME``                     the MEK's name, or a per-product template such as
                                           ``tracker-mek-{productId}`` (default ``tracker-mek``)
``REDIS_URL``                              broker; unset means an embedded Redis server
``REENCRYPT_QUEUE``                        optional: must equal the store's queue ('reencrypt queue')
``REENCRYPT_BATCH_DOCUMENTS``              documents one task handles at most (default 2000)
``REENCRYPT_BATCH_SECONDS``                seconds one task works at most (default 10)
``REENCRYPT_LEASE_SECONDS``                slice lease; a dead worker's slice is free after it
``REENCRYPT_VISIBILITY_TIMEOUT_SECONDS``   Redis redelivery of unacknowledged tasks
``REENCRYPT_CONFLICT_RETRIES``             re-reads of a document the tracker changed
``REENCRYPT_DEK_MAX_USES``/``_MAX_AGE_S``  encryption DEK reuse bounds
``REENCRYPT_UNWRAP_CONCURRENCY``           Key Vault unwraps one process keeps in flight (16)
``REENCRYPT_UNWRAP_RATE``                  one process's unwraps/s when the sweep sets no Key
                                           Vault budget (default 200: half a vault's 400/s)
``REENCRYPT_METRICS_PORT``                 worker metrics port (0: none)
``REENCRYPT_HEALTH_PORT``                  worker /livez and /readyz port (0: none)
``REENCRYPT_TASK_EVENTS``                  Celery task events for Flower and ``celery events``
                                           (workers: -E; senders: task-sent), default off
``REENCRYPT_COSMOS_RESOURCE_ID``           the Cosmos account's ARM resource id, for
                                           preflight's backup-policy check
========================================  =============================================

A few variables are read where they are used, on purpose, and only there:

- ``REENCRYPT_COSMOS_KEY``, ``REENCRYPT_COSMOS_CA_BUNDLE``, ``REENCRYPT_COSMOS_PRIORITY``
  (``stores/cosmos``): the account key is a secret, and keeping it out of the settings object
  keeps it out of every repr, log line and error that shows settings;
- ``REENCRYPT_HOME`` (``embedded_redis.home``): where the embedded services of the CLI keep
  their files, before any settings exist (and where ``worker.app`` finds the embedded broker);
- ``REENCRYPT_ACTOR`` (``audit.actor``): who the audit trail names, set by automation;
- ``REENCRYPT_LOG_FORMAT`` (``tracker_reencrypt.logs``): ``text`` (default) or ``json``; logging
  is set up before settings exist (the CLI's first step, the worker's celeryd_init), and an
  invalid setting's error must already come out in the chosen format;
- ``PROMETHEUS_MULTIPROC_DIR`` (``worker/metrics``): prometheus_client's own variable, read by
  the library when it is imported, so it must be in the environment before Python starts.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.keys.keyring import (
    DEFAULT_DEK_MAX_AGE_S,
    DEFAULT_DEK_MAX_USES,
    DEFAULT_UNWRAP_CONCURRENCY,
    DEFAULT_UNWRAP_RATE,
)

#: The shortest lease, in batch bounds.
LEASE_TO_BATCH = 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REENCRYPT_", extra="ignore", populate_by_name=True)

    store: str = ""
    keys: str = ""
    #: Empty: the name a ``.../keys/<name>`` URL fixes, else naming.DEFAULT_KEY_NAME.
    key_name: str = ""
    redis_url: str = Field("", validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    partition_key_field: str = "productId"
    #: Optional: the task queue a deployment expects (KEDA's list name); checked against the store's.
    queue: str = ""

    batch_documents: int = Field(2000, ge=1)
    batch_seconds: float = Field(10.0, gt=0)
    page_size: int = Field(100, ge=1, le=1000)
    lease_seconds: float = Field(60.0, gt=0)
    visibility_timeout_seconds: int = Field(900, ge=10)
    conflict_retries: int = Field(5, ge=0)
    #: How many percent a p95/p99 of the read path may grow before ``preflight --compare`` (and
    #: the demo's comparison) fails; ``--tolerance`` overrides it for one run.
    compare_tolerance: float = Field(50.0, ge=0)

    dek_max_uses: int = Field(DEFAULT_DEK_MAX_USES, ge=1)
    dek_max_age_s: float = Field(DEFAULT_DEK_MAX_AGE_S, gt=0)
    #: Unwraps in flight per process against a remote vault (a local keyring is sequential).
    unwrap_concurrency: int = Field(DEFAULT_UNWRAP_CONCURRENCY, ge=1, le=64)
    #: A process's own ceiling on vault unwraps/s where no fleet Key Vault budget governs it
    #: (a sweep without --kv-ops-per-s, verify, the dry run). A vault allows 4,000 RSA-2048
    #: operations per 10 s (400/s), shared with the tracker: one process alone takes half.
    unwrap_rate: float = Field(DEFAULT_UNWRAP_RATE, gt=0)

    #: /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.DocumentDB/databaseAccounts/<name>:
    #: where preflight reads the backup policy (management plane, Reader role).
    cosmos_resource_id: str = ""

    metrics_port: int = Field(0, ge=0, le=65535)
    health_port: int = Field(0, ge=0, le=65535)
    #: Celery task events (Flower, ``celery events``): a worker sends one event message per task
    #: state (received, started, succeeded/failed/retried), a sender one per message (sent).
    task_events: bool = False

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _lease_outlives_a_batch(self) -> Settings:
        # A batch may overrun its time bound by a page and a commit; a lease shorter than that
        # would let another worker take the slice from a live batch (safe, but wasted work).
        if self.lease_seconds < LEASE_TO_BATCH * self.batch_seconds:
            raise ValueError(
                f"REENCRYPT_LEASE_SECONDS ({self.lease_seconds:g}) must be at least {LEASE_TO_BATCH}x "
                f"REENCRYPT_BATCH_SECONDS ({self.batch_seconds:g}): raise the lease or shorten batches"
            )
        return self

    def require(self, *names: str) -> Settings:
        """Fail with one clear line if a setting a command needs is empty."""
        hints = {
            "store": "set REENCRYPT_STORE or --store (e.g. sqlite:///tracker.db)",
            "keys": "set REENCRYPT_KEYS or --keys (e.g. local:keyring.json)",
        }
        for name in names:
            if not getattr(self, name):
                raise ConfigError(f"no {name} configured: {hints[name]}")
        return self


#: The settings a global flag of the CLI overrides (``reencrypt --store URL ...``).
FLAGS = {"store": "--store", "keys": "--keys", "key_name": "--key-name", "redis_url": "--redis-url"}


def variable(name: str) -> str:
    """The environment variable of setting ``name``: ``REENCRYPT_BATCH_DOCUMENTS``, ``REDIS_URL``."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{Settings.model_config.get('env_prefix', '')}{name}".upper()


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with non-empty ``overrides`` (CLI flags) on top.

    An invalid one is named as the operator set it: the flag when one was given, else the
    variable (never the value: a broker URL may carry a password)."""
    given = {name: value for name, value in overrides.items() if value not in (None, "")}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        reason = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a check across settings: its message names the variables
            raise ConfigError(f"settings are inconsistent: {reason}") from None
        loc = str(first["loc"][0])  # the field's name, or its alias (REDIS_URL) when read through it
        name = next((field for field in Settings.model_fields if loc in (field, variable(field))), loc)
        if name in given:
            where = FLAGS.get(name, name)
        elif name in Settings.model_fields:
            where = variable(name) + (f" (or {FLAGS[name]})" if name in FLAGS else "")
        else:
            where = loc
        raise ConfigError(f"{where} is invalid: {reason}") from None
