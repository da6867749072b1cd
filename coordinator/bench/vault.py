"""The loopback Key Vault the bench's remote-vault mode sweeps against, and the workers that reach it.

The vault is the tests' own server (``tests/keyvault_server.py``: the keys REST subset of Azure
Key Vault over real HTTPS, real RSA-2048 keys, a chosen latency per call), run on threads of
the bench's process. Workers are the project's worker app behind ``tests/vault_worker.py``,
which gives the Azure provider a static token and the vault's CA (``tests/loopback_vault.py``);
every call goes through the real SDK, its pipeline and its connection pool. So this mode needs a
source checkout: an installed wheel has no ``tests/`` and is refused with one line naming it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from azure.core.credentials import AccessToken

from coordinator.context import Context
from coordinator.launch import WorkerFleet
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.keys.azure import AzureKeyVaultProvider

TESTS_DIR = Path(__file__).resolve().parents[2] / "tests"
#: What the mode needs from a source checkout's tests directory.
NEEDED = ("keyvault_server.py", "loopback_vault.py", "vault_worker.py")
WORKER_APP = "vault_worker"
KEY_NAME = "tracker-mek"
#: Every operation the loopback vault serves: a real vault's latency is not an unwrap's alone.
OPERATIONS = ("list_keys", "get_key", "list_versions", "create_key", "update_key", "wrap_key", "unwrap_key")


def _server_module() -> ModuleType:
    missing = [name for name in NEEDED if not (TESTS_DIR / name).is_file()]
    if missing:
        raise ConfigError(
            f"bench --vault-latency-ms needs a source checkout: {', '.join(missing)} not found in {TESTS_DIR} "
            "(the loopback Key Vault and its worker app live in the tests directory)"
        )
    name = "keyvault_server"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, TESTS_DIR / "keyvault_server.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return module


class _StaticToken:
    """The loopback vault accepts any Bearer token (tests/loopback_vault.py's credential)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("bench-token", int(time.time()) + 3600)


class LoopbackVault:
    """The tests' Key Vault server on this process's threads; ``latency_s`` is added to every call
    from :meth:`slow_down` on (seeding and rotating run without it)."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.server: Any = _server_module().KeyVaultServer()

    def __enter__(self) -> LoopbackVault:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def keys_url(self) -> str:
        return f"{self.server.url}/keys/{KEY_NAME}"

    def provider(self) -> AzureKeyVaultProvider:
        """The bench's own client of the vault, built as tests/loopback_vault.py builds the workers'
        (a static token, the vault's certificate, no challenge-domain check; short SDK back-off)."""
        return AzureKeyVaultProvider(
            self.server.url,
            KEY_NAME,
            _StaticToken(),
            connection_verify=self.server.cert_path,
            verify_challenge_resource=False,
            retry_backoff_factor=0.001,
        )

    def slow_down(self) -> None:
        self.server.latency_s.update(dict.fromkeys(OPERATIONS, self.latency_s))

    def mark(self) -> dict[str, int]:
        """How many calls of each operation have started so far: where a run's own calls begin."""
        return {operation: len(times) for operation, times in self.server.started_at.items()}

    def starts_since(self, mark: dict[str, int]) -> dict[str, list[float]]:
        """Start times (``time.monotonic``, the vault's clock) of the calls served after ``mark``."""
        return {operation: list(times[mark.get(operation, 0) :]) for operation, times in self.server.started_at.items()}

    def reset_in_flight(self) -> None:
        """Forget the most calls ever in flight (between runs, when none is)."""
        self.server.max_in_flight.clear()

    def max_in_flight(self, operation: str = "unwrap_key") -> int:
        return int(self.server.max_in_flight[operation])

    def worker_fleet(self, ctx: Context, count: int, *, log_dir: Path, metrics_ports: list[int]) -> WorkerFleet:
        return VaultWorkerFleet(ctx, count, log_dir=log_dir, metrics_ports=metrics_ports, vault=self)


class VaultWorkerFleet(WorkerFleet):
    """:class:`WorkerFleet`'s processes (one pool process each, the same flags and environment)
    running ``celery -A vault_worker``, with the tests directory on their path and the vault's CA."""

    def __init__(
        self, ctx: Context, count: int, *, log_dir: Path, metrics_ports: list[int], vault: LoopbackVault
    ) -> None:
        self.vault = vault
        super().__init__(ctx, count, log_dir=log_dir, metrics_ports=metrics_ports)

    def adapted(self, argv: list[str], env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        argv = [WORKER_APP if part == "worker.app" else part for part in argv]
        env = {
            **env,
            "TEST_VAULT_CA": self.vault.server.cert_path,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")])),
        }
        return argv, env
