"""Key providers: where MEK versions live and how data keys are wrapped and unwrapped.

One small interface (:class:`KeyProvider`), one module per backend, one factory that picks
the backend from a URL:

- ``local:<path>``: a JWKS keyring file (:mod:`tracker_reencrypt.keys.local`), holding any
  number of keys (one per product with a per-product key name);
- ``https://<vault>.vault.azure.net``: Azure Key Vault (:mod:`tracker_reencrypt.keys.azure`);
  the older ``https://<vault>.vault.azure.net/keys/<name>`` still works and fixes the key name.

A provider is opened for one key name (``REENCRYPT_KEY_NAME``, see :mod:`.naming`), and reaches
the other keys in the same place through :meth:`KeyProvider.for_key`. Wrap and unwrap take a
versioned kid of any key there, so one provider serves a sweep over every product's key.

Both keep small string **metadata** with the MEK itself (outside any store), so what a key
protects and the audit trail's anchor travel with the key through rotations and rollbacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Protocol
from urllib.parse import urlparse

from tracker_reencrypt.errors import ConfigError, KeyProviderError, redact_url

WRAP_ALGORITHM = "RSA-OAEP-256"
# Key Vault records a promoted version under this tag (see keys.azure); no provider lets a
# caller set it through set_metadata, so code written against one provider runs on the other.
CURRENT_VERSION_ENTRY = "current-version"
#: When a promotion made its version current (ISO-8601 UTC), recorded beside it for the same
#: reason: a rotation's time is its version's creation, a rollback's is this.
CURRENT_SINCE_ENTRY = "current-since"
#: Metadata entries only the providers write.
RESERVED_ENTRIES = (CURRENT_VERSION_ENTRY, CURRENT_SINCE_ENTRY)
#: Operations in :attr:`KeyProvider.calls` that the fleet's Key Vault limit counts apart:
#: unwraps are charged before each call (through the keyring), and a wrap done in process
#: with the version's public key costs the vault nothing.
UNWRAP_CALL = "unwrap_key"
LOCAL_WRAP_CALL = "wrap_local"


@dataclass(frozen=True)
class KeyVersion:
    """One MEK version as an operator sees it (no key material)."""

    kid: str
    enabled: bool
    current: bool
    created: str
    #: For the current version, when it became current (ISO-8601 UTC): its creation for a
    #: rotation, the promotion for a rollback; writes after it should all use it (stale writers).
    #: Empty for the other versions.
    current_since: str = ""

    @property
    def status(self) -> str:
        return "enabled" if self.enabled else "disabled"

    def as_json(self) -> dict:
        return {**asdict(self), "status": self.status}


class KeyProvider(Protocol):
    """An MEK with versions; wraps and unwraps 256-bit data keys. Never exports the MEK.

    The administrative methods (init, versions, rotate, promote, metadata...) act on the key
    named :attr:`key_name`; wrap and unwrap accept a kid of any key in the same keyring or vault.
    """

    #: True when wrap and unwrap are calls to a service (worth overlapping: see keys.keyring).
    remote: bool

    #: The key this provider administers (with a per-product template: the template itself,
    #: which only wraps and unwraps; see ProductKeys for the keys themselves).
    key_name: str

    def for_key(self, name: str) -> KeyProvider:
        """A provider of key ``name`` in the same keyring file or vault, sharing this one's
        connections and call counters (the fleet's Key Vault limit charges them all)."""

    def key_names(self) -> list[str]:
        """The names of every key in this keyring file or vault, sorted."""

    def describe(self) -> str:
        """Where the keys live, for messages (no secrets)."""

    def init(self) -> KeyVersion:
        """Create the MEK with its first version; refuse if it already exists."""

    def versions(self) -> list[KeyVersion]: ...

    def current_kid(self, refresh: bool = False) -> str:
        """The version new writes use. Providers may answer from a short cache (a second for the
        keyring file, a minute for Key Vault); ``refresh`` asks the keyring or vault itself."""

    def current_version(self, refresh: bool = False) -> KeyVersion:
        """The current version with its ``current_since``, cached as :meth:`current_kid` is."""

    def rotate(self) -> KeyVersion:
        """Create a new version and make it current."""

    def set_enabled(self, kid: str, enabled: bool) -> KeyVersion:
        """Enable or disable ``kid``; disabling the current version is refused (KeyDisabledError)."""

    def promote(self, kid: str) -> KeyVersion:
        """Make an existing, enabled version current: the rollback of an abandoned rotation.

        New writes then go to ``kid``; the version that was current may be disabled. Unknown
        ``kid``: KeyNotFoundError; disabled: KeyDisabledError; already current: no change.
        A later :meth:`rotate` makes its new version current as usual.
        """

    def metadata(self) -> dict[str, str]:
        """The MEK's metadata: small string annotations kept with the key, as read now."""

    def set_metadata(self, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Set entries (a None value deletes one); returns the new full metadata.

        All changes are written at once or not at all; the metadata survives rotate and
        promote. A read-modify-write without a lock: callers serialise concurrent writers.
        """

    def wrap(self, kid: str, dek: bytes) -> bytes:
        """Wrap ``dek`` under ``kid`` with :data:`WRAP_ALGORITHM`."""

    def unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> bytes: ...

    @property
    def calls(self) -> Mapping[str, int]:
        """Operations so far, by name: every request sent to the key service (``unwrap_key``,
        ``wrap_key``, ``get_key``...) and :data:`LOCAL_WRAP_CALL` for each wrap done in
        process. The fleet's Key Vault limit charges these; a provider with no service counts none."""

    @property
    def throttled(self) -> int:
        """Answers "too many requests" (429) from the key service so far, every retry counted:
        the fleet's Key Vault limit backs off on them."""


def changed_metadata(metadata: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``metadata`` with ``changes`` applied (None deletes), or KeyProviderError for a bad entry."""
    updated = dict(metadata)
    for name, value in changes.items():
        if not isinstance(name, str) or not name:
            raise KeyProviderError(f"metadata entry name {name!r} is not a non-empty string: name each entry with text")
        if name in RESERVED_ENTRIES:
            raise KeyProviderError(f"metadata entry {name!r} is reserved (it marks a promoted version): pick another")
        if value is None:
            updated.pop(name, None)
        elif isinstance(value, str):
            updated[name] = value
        else:
            kind = type(value).__name__
            raise KeyProviderError(f"metadata entry {name!r} has a {kind} value: give a string, or None to delete it")
    return updated


def open_key_provider(url: str, key_name: str = "") -> KeyProvider:
    """Build the key provider a URL names, for key ``key_name`` (a name or a per-product
    template; empty: the name the URL fixes, else naming.DEFAULT_KEY_NAME), or raise ConfigError
    saying what is wrong."""
    if not url:
        raise ConfigError("no key provider given: set REENCRYPT_KEYS or --keys (e.g. local:keyring.json)")
    from tracker_reencrypt.keys.naming import DEFAULT_KEY_NAME, KeyNaming

    if url.startswith("local:"):
        from tracker_reencrypt.keys.local import LocalKeyProvider

        path = url[len("local:") :]
        if not path:
            raise ConfigError("key provider URL 'local:' names no file: use local:<path to keyring.json>")
        return LocalKeyProvider(path, key_name=KeyNaming(key_name or DEFAULT_KEY_NAME).template)
    parsed = urlparse(url)
    path = parsed.path.rstrip("/")
    names_a_vault = path in ("", "/keys") or (path.startswith("/keys/") and path.count("/") == 2)
    if parsed.scheme == "https" and parsed.netloc and names_a_vault:
        from tracker_reencrypt.keys.azure import AzureKeyVaultProvider

        fixed = path.split("/")[2] if path.count("/") == 2 else ""
        if fixed and key_name and key_name != fixed:
            raise ConfigError(
                f"key provider URL {redact_url(url)!r} fixes key name {fixed!r} but the key name setting is "
                f"{key_name!r}: give the vault alone (https://<vault>.vault.azure.net) with REENCRYPT_KEY_NAME"
            )
        name = KeyNaming(fixed or key_name or DEFAULT_KEY_NAME).template
        return AzureKeyVaultProvider(vault_url=f"https://{parsed.netloc}", key_name=name)
    raise ConfigError(
        f"key provider URL {redact_url(url)!r} is not understood: use local:<path> or https://<vault>.vault.azure.net"
    )
