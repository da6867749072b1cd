"""Key providers: where MEK versions live and how data keys are wrapped and unwrapped.

One small interface (:class:`KeyProvider`), one module per backend, one factory that picks
the backend from a URL:

- ``local:<path>``: a JWKS keyring file (:mod:`tracker_reencrypt.keys.local`);
- ``https://<vault>.vault.azure.net/keys/<name>``: Azure Key Vault
  (:mod:`tracker_reencrypt.keys.azure`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol
from urllib.parse import urlparse

from tracker_reencrypt.errors import ConfigError, redact_url

WRAP_ALGORITHM = "RSA-OAEP-256"


@dataclass(frozen=True)
class KeyVersion:
    """One MEK version as an operator sees it (no key material)."""

    kid: str
    enabled: bool
    current: bool
    created: str

    @property
    def status(self) -> str:
        return "enabled" if self.enabled else "disabled"

    def as_json(self) -> dict:
        return {**asdict(self), "status": self.status}


class KeyProvider(Protocol):
    """An MEK with versions; wraps and unwraps 256-bit data keys. Never exports the MEK."""

    def describe(self) -> str:
        """Where the keys live, for messages (no secrets)."""

    def init(self) -> KeyVersion:
        """Create the MEK with its first version; refuse if it already exists."""

    def versions(self) -> list[KeyVersion]: ...

    def current_kid(self) -> str: ...

    def rotate(self) -> KeyVersion:
        """Create a new version and make it current."""

    def set_enabled(self, kid: str, enabled: bool) -> KeyVersion: ...

    def wrap(self, kid: str, dek: bytes) -> bytes:
        """Wrap ``dek`` under ``kid`` with :data:`WRAP_ALGORITHM`."""

    def unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> bytes: ...


def open_key_provider(url: str) -> KeyProvider:
    """Build the key provider a URL names, or raise ConfigError saying what is wrong."""
    if not url:
        raise ConfigError("no key provider given: set REENCRYPT_KEYS or --keys (e.g. local:keyring.json)")
    if url.startswith("local:"):
        from tracker_reencrypt.keys.local import LocalKeyProvider

        path = url[len("local:"):]
        if not path:
            raise ConfigError("key provider URL 'local:' names no file: use local:<path to keyring.json>")
        return LocalKeyProvider(path)
    parsed = urlparse(url)
    if parsed.scheme == "https" and parsed.path.startswith("/keys/") and parsed.path.count("/") == 2:
        from tracker_reencrypt.keys.azure import AzureKeyVaultProvider

        return AzureKeyVaultProvider(vault_url=f"https://{parsed.netloc}", key_name=parsed.path.split("/")[2])
    raise ConfigError(
        f"key provider URL {redact_url(url)!r} is not understood: use local:<path> or https://<vault>.vault.azure.net/keys/<name>"
    )
