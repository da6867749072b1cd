"""Azure Key Vault key provider: each MEK is an RSA-2048 key whose versions live in a vault.

**One provider per vault, a sibling per key.** The tracker keeps one key per product
(``tracker-mek-<productId>``, see :mod:`tracker_reencrypt.keys.naming`), all in one vault. A
provider administers the key it was opened for (:attr:`key_name`); :meth:`for_key` gives a
sibling for another key that shares the credential, the KeyClient, the per-kid clients and
public keys, and the call counters: the vault's throttling limit is per vault, so the fleet's
Key Vault budget must see every sibling's calls in one tally. Wrap and unwrap take a versioned
kid of any key in the vault, so one provider serves a sweep over every product.

Through the real ``azure-keyvault-keys`` SDK:

- **kid** is always the full versioned key id, ``https://<vault>/keys/<name>/<version>``;
  a versionless id would follow "latest" and stop unwrapping after the next rotation.
- **wrap** runs in process with the version's public key, fetched once per kid with
  ``get_key`` (Microsoft's guidance: public-key operations locally). Where the key cannot
  be fetched (no keys/get permission) it falls back to the vault's wrapKey.
- **unwrap** always runs in the vault (the private key never leaves it), through one warm
  CryptographyClient per kid. The keyring's unwrap cache keeps these calls rare.
- **throttling**: the SDK's RetryPolicy retries 429s, sleeping what Retry-After asks; we
  bound it (retry count and a cap on each wait) rather than add tenacity on top, so one
  policy owns retries and every 429 response is counted in :attr:`throttled`.
- **metadata** is the tags of the newest version (by created date): tags belong to one
  version, and the newest is the one the versionless key resolves to, so every reader finds
  it there. :meth:`rotate` creates the new version with the previous newest version's tags.
  Key Vault's limits (15 tags per version, names <= 512 and values <= 256 characters) are
  checked before anything is written. A change is read-modify-write with no ETag to guard
  it (Key Vault offers none for keys): concurrent writers must be serialised by the caller.
- **promote** (rollback to an older version): the vault always resolves the versionless key
  to its newest version and cannot be told otherwise, so the promoted version is recorded
  in the newest version's ``current-version`` tag (hidden from :meth:`metadata`), and
  :meth:`current_kid` returns it while that version exists and is enabled, else the newest.
  Its time goes in ``current-since`` (also hidden): writes under any other version after it
  come from a tracker instance that missed the change (stale writers). Metadata may use 13
  of the 15 tags, so these two always fit: a rollback is never refused for want of room.
  :meth:`rotate` leaves the tag behind, so its new version is current. Only this tool reads
  the tag: the tracker-service itself must be pointed at the promoted id through its
  ``TRACKER_MEK_ID_<PRODUCTID>`` setting, since the vault's versionless get still returns
  the newest version.

Every SDK error is translated into the project's hierarchy (see
:func:`tracker_reencrypt.keys.azure_errors.translate`); none escapes. Messages name the vault,
the key id and the fix, never a data key or key material.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import AzureError, HttpResponseError
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyClient, KeyOperation, KeyProperties, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tracker_reencrypt.errors import (
    ConfigError,
    KeyDisabledError,
    KeyNotFoundError,
    KeyProviderError,
    KeyProviderUnavailableError,
    UnwrapError,
    first_line,
)
from tracker_reencrypt.keys import (
    CURRENT_SINCE_ENTRY,
    CURRENT_VERSION_ENTRY,
    LOCAL_WRAP_CALL,
    RESERVED_ENTRIES,
    UNWRAP_CALL,
    WRAP_ALGORITHM,
    KeyVersion,
    changed_metadata,
)
from tracker_reencrypt.keys.azure_errors import (
    MAX_RETRY_AFTER_S,
    RETRY_DEFAULTS,
    BoundedRetryPolicy,
    is_disabled,
    translate,
)
from tracker_reencrypt.keys.naming import PRODUCT_PLACEHOLDER, KeyNaming, key_name_of_kid

log = logging.getLogger(__name__)

RSA_BITS = 2048
#: Writes of the key's tags before giving up on a concurrent writer (see set_metadata).
METADATA_WRITE_TRIES = 5
# Key Vault's limits on one key version's tags (Key Vault "about keys, secrets and certificates").
MAX_TAGS = 15
#: Metadata leaves room for the promotion record's tags, so a rollback is never refused for want of one.
MAX_METADATA_ENTRIES = MAX_TAGS - len(RESERVED_ENTRIES)
MAX_TAG_NAME_CHARS = 512
MAX_TAG_VALUE_CHARS = 256
KEY_OPERATIONS: list[str | KeyOperation] = [KeyOperation.wrap_key, KeyOperation.unwrap_key]
# How long a resolved current version is trusted: the keyring asks for it on every new data
# key, and a rotation made by another process reaches this one within this time.
CURRENT_KID_TTL_S = 60.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class _CallTally:
    """The calls and 429s of every provider of one vault (siblings share one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self.throttled = 0

    @property
    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def count(self, operation: str) -> None:
        with self._lock:
            self._calls[operation] = self._calls.get(operation, 0) + 1

    def on_response(self, response) -> None:
        """Sees every attempt's response (the hook sits inside the retry loop)."""
        if response.http_response.status_code == 429:
            with self._lock:
                self.throttled += 1


@dataclass(frozen=True)
class _Version:
    """What one kid needs: its warm CryptographyClient and, when fetched, its public key."""

    crypto: CryptographyClient
    public_key: rsa.RSAPublicKey | None


class _Vault:
    """What every provider of one vault shares: the credential, the SDK clients and their
    options, the per-kid cache and the call tally."""

    def __init__(self, vault_url: str, credential, max_retry_after_s: float, client_kwargs: dict) -> None:
        self.tally = _CallTally()
        self.credential = credential or DefaultAzureCredential()
        self._retry = {
            **RETRY_DEFAULTS,
            **{k: client_kwargs.pop(k) for k in list(client_kwargs) if k.startswith("retry_")},
        }
        self._max_retry_after_s = max_retry_after_s
        self._client_kwargs = {**client_kwargs, "raw_response_hook": self.tally.on_response}
        self.lock = threading.Lock()  # guards the per-kid cache; held while a kid is fetched
        self.versions: dict[str, _Version] = {}
        self.keys = KeyClient(vault_url, self.credential, **self.sdk_kwargs())

    def sdk_kwargs(self) -> dict:
        """Options for one SDK client: the caller's, our response hook and a fresh retry policy."""
        retry_policy = BoundedRetryPolicy(self._max_retry_after_s, **self._retry)
        return {**self._client_kwargs, "retry_policy": retry_policy}

    def close(self) -> None:
        with self.lock:
            clients = [self.keys] + [v.crypto for v in self.versions.values()]
            self.versions.clear()
        for client in clients:
            client.close()


class AzureKeyVaultProvider:
    """One key's MEK versions in Azure Key Vault; wraps locally, unwraps in the vault, under a
    version of any key in the vault. Thread-safe.

    ``client_kwargs`` go to every SDK client (``connection_verify``, ``api_version``,
    ``verify_challenge_resource``...); ``retry_*`` keys there override :data:`RETRY_DEFAULTS`.
    """

    remote = True  # every unwrap is an HTTPS call to the vault

    def __init__(
        self,
        vault_url: str,
        key_name: str,
        credential=None,
        *,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
        **client_kwargs,
    ) -> None:
        self.vault_url = vault_url.rstrip("/")
        self.key_name = key_name
        try:
            self._vault = _Vault(self.vault_url, credential, max_retry_after_s, client_kwargs)
        except ValueError as error:  # the SDK's own argument checks (an empty vault URL)
            raise ConfigError(f"cannot open {self.describe()}: {first_line(error)}") from None
        self._current: tuple[KeyVersion, float] | None = None

    def for_key(self, name: str) -> AzureKeyVaultProvider:
        """A provider of key ``name`` in this vault, sharing this one's clients, cache and counters."""
        sibling = object.__new__(AzureKeyVaultProvider)
        sibling.vault_url, sibling.key_name = self.vault_url, KeyNaming(name).template
        sibling._vault, sibling._current = self._vault, None
        return sibling

    def key_names(self) -> list[str]:
        """Every key in the vault (keys/list permission), whatever its versions' state."""
        items = self._call("list_keys", lambda: list(self._vault.keys.list_properties_of_keys()))
        return sorted(properties.name for properties in items)

    def describe(self) -> str:
        return f"Azure Key Vault {self.vault_url} key {self.key_name}"

    @property
    def calls(self) -> Mapping[str, int]:
        """KeyProvider.calls: a snapshot of the tally every sibling adds to."""
        return self._vault.tally.calls

    @property
    def throttled(self) -> int:
        return self._vault.tally.throttled

    def close(self) -> None:
        """Close every client's connections: this provider's and its siblings' (none is usable afterwards)."""
        self._vault.close()

    # -- reading ---------------------------------------------------------------------------

    def current_kid(self, refresh: bool = False) -> str:
        """The promoted version if one is recorded and usable, else the newest; cached for CURRENT_KID_TTL_S.

        KeyDisabledError when the newest version is disabled and no usable version is promoted.
        """
        return self.current_version(refresh).kid

    def current_version(self, refresh: bool = False) -> KeyVersion:
        current = self._current
        if current and not refresh and time.monotonic() - current[1] < CURRENT_KID_TTL_S:
            return current[0]
        newest = self._newest()
        version = _key_version(self._resolve_current(newest), None, current=True, promoted_at=_promoted_at(newest))
        self._current = (version, time.monotonic())
        return version

    def versions(self) -> list[KeyVersion]:
        items = self._list_versions()
        try:
            current = self.current_version(refresh=True)
        except KeyDisabledError:  # the latest version is disabled: none is current
            return [_key_version(p, None) for p in items]
        return [current if p.id == current.kid else _key_version(p, None) for p in items]

    def metadata(self) -> dict[str, str]:
        return _metadata(self._newest().tags)

    def _list_versions(self) -> list[KeyProperties]:
        """Every version's properties (tags included), oldest first."""
        name = self._administered()
        items = self._call("list_versions", lambda: list(self._vault.keys.list_properties_of_key_versions(name)))
        # A stable sort: versions created within the same second keep the vault's order.
        items.sort(key=lambda p: (p.created_on is None, p.created_on))
        return items

    def _newest(self) -> KeyProperties:
        """The newest version's properties: where the metadata and a promoted version are recorded."""
        try:
            name = self._administered()
            key = self._call("get_key", lambda: self._vault.keys.get_key(name), self._versionless_id())
        except KeyDisabledError:  # the vault refuses get on a disabled version but lists it, tags included
            return self._list_versions()[-1]
        return key.properties

    def _resolve_current(self, newest: KeyProperties) -> KeyProperties:
        promoted = self._promoted(newest)
        if promoted is not None:
            return promoted
        if newest.enabled is False:
            raise KeyDisabledError(
                f"key {newest.id}, the newest version, is disabled in {self.vault_url}: enable it, or rotate"
            )
        return newest

    def _promoted(self, newest: KeyProperties) -> KeyProperties | None:
        """The version the newest one's tags promote, while it exists and is enabled."""
        version = (newest.tags or {}).get(CURRENT_VERSION_ENTRY)
        if not version or version == newest.version:
            return None
        kid = f"{self._versionless_id()}/{version}"
        try:
            key = self._call("get_key", lambda: self._vault.keys.get_key(self.key_name, version), kid)
        except (KeyNotFoundError, KeyDisabledError):
            # Disabled or deleted behind our back (set_enabled refuses it): the newest takes over
            # again, as it does for the vault's own versionless get. Not an error for anyone.
            log.debug("promoted version %s of %s is gone or disabled: the newest is current", version, self.key_name)
            return None
        return key.properties if key.properties.enabled is not False else None

    def _versionless_id(self) -> str:
        return f"{self.vault_url}/keys/{self.key_name}"

    # -- crypto ----------------------------------------------------------------------------

    def wrap(self, kid: str, dek: bytes) -> bytes:
        version = self._version(kid)
        if version.public_key is not None:
            self._count(LOCAL_WRAP_CALL)
            return version.public_key.encrypt(dek, _OAEP)
        result = self._call("wrap_key", lambda: version.crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek), kid)
        return result.encrypted_key

    def unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> bytes:
        if wrap_algorithm != WRAP_ALGORITHM:
            raise UnwrapError(f"wrap algorithm {wrap_algorithm!r} is not supported by {self.describe()}")
        crypto = self._version(kid).crypto
        result = self._call(UNWRAP_CALL, lambda: crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped), kid)
        return result.key

    def _version(self, kid: str) -> _Version:
        vault = self._vault
        version = vault.versions.get(kid)
        if version is not None:
            return version
        with vault.lock:
            version = vault.versions.get(kid)
            if version is None:
                version = vault.versions[kid] = self._fetch(kid)
            return version

    def _fetch(self, kid: str) -> _Version:
        """Get the version's public key once; without keys/get, the vault does the wrapping."""
        identifier = self._parse_kid(kid)
        vault = self._vault
        vault.tally.count("get_key")
        try:
            key = vault.keys.get_key(identifier.name, identifier.version)
        except HttpResponseError as error:
            if error.status_code != 403 or is_disabled(error):
                raise translate(error, "get_key", kid, self.vault_url, identifier.name) from None
            # No keys/get permission: the SDK client tries once more itself, then goes remote.
            return _Version(CryptographyClient(kid, vault.credential, **vault.sdk_kwargs()), None)
        except (AzureError, ValueError) as error:
            raise translate(error, "get_key", kid, self.vault_url, identifier.name) from None
        if key.properties.enabled is False:
            raise KeyDisabledError(f"key {kid} is disabled in {self.vault_url}: refused until it is enabled again")
        crypto = CryptographyClient(key, vault.credential, **vault.sdk_kwargs())
        jwk: Any = key.key  # JsonWebKey sets its members (key_ops, n, e) dynamically: untyped in the SDK
        local = KeyOperation.wrap_key in (jwk.key_ops or []) and jwk.n and jwk.e
        return _Version(crypto, _public_key(key) if local else None)

    def _parse_kid(self, kid: str) -> KeyVaultKeyIdentifier:
        """A versioned id of any key in this vault, or KeyNotFoundError without a call."""
        try:
            identifier = KeyVaultKeyIdentifier(kid)
        except ValueError:
            raise KeyNotFoundError(
                f"{kid!r} is not a Key Vault key id (https://<vault>/keys/<name>/<version>)"
            ) from None
        if urlparse(identifier.vault_url).netloc.lower() != urlparse(self.vault_url).netloc.lower():
            raise KeyNotFoundError(f"key {kid} is not in {self.vault_url}: it reaches that vault's keys only")
        if not identifier.version:
            raise KeyNotFoundError(f"key id {kid} names no version: envelopes must carry the full versioned key id")
        return identifier

    def _own_version(self, kid: str) -> str:
        """The version ``kid`` names, refused unless it is one of this key's (administration)."""
        identifier = self._parse_kid(kid)
        # Key Vault matches key names without regard to case, and so does this check.
        if identifier.name.lower() != self._administered().lower():
            raise KeyNotFoundError(
                f"key {kid} is not a version of {self.describe()}: see the versions with 'reencrypt keys list'"
            )
        return str(identifier.version)

    def _administered(self) -> str:
        """This provider's key name, refused when it is a per-product template (it names no one key)."""
        if PRODUCT_PLACEHOLDER in self.key_name:
            raise ConfigError(
                f"key name {self.key_name!r} is a template for every product's key, so it administers none: "
                f"name one key (the template with a product id in place of {PRODUCT_PLACEHOLDER})"
            )
        return self.key_name

    # -- administration --------------------------------------------------------------------

    def init(self) -> KeyVersion:
        self._administered()
        try:
            existing = self.current_kid(refresh=True)
        except KeyNotFoundError:
            return self._create_version()
        except KeyDisabledError:
            existing = f"{self.vault_url}/keys/{self.key_name}"
        raise KeyProviderError(f"key {existing} already exists: use 'reencrypt keys rotate' to add a version")

    def rotate(self) -> KeyVersion:
        """A new newest version, carrying the metadata over and leaving any promotion behind.

        A disabled newest version is no obstacle: a new version is exactly what it needs.
        """
        try:
            newest = self._newest()
        except KeyNotFoundError:
            raise KeyNotFoundError(f"{self.describe()} does not exist: create it with 'reencrypt keys init'") from None
        tags = {name: value for name, value in (newest.tags or {}).items() if name not in RESERVED_ENTRIES}
        return self._create_version(tags)

    def promote(self, kid: str) -> KeyVersion:
        target = self._existing_enabled(kid)
        newest = self._newest()
        tags = dict(newest.tags or {})
        try:
            current_id = self._resolve_current(newest).id
        except KeyDisabledError:  # the newest is disabled and nothing promoted: none is current
            current_id = None
        if target.id != current_id:  # promoting the current version writes nothing
            if target.properties.version == newest.version:
                tags.pop(CURRENT_VERSION_ENTRY, None)  # back to the vault's own choice
            else:
                tags[CURRENT_VERSION_ENTRY] = str(target.properties.version)
            tags[CURRENT_SINCE_ENTRY] = _now_text()
            self._write_tags(newest, tags)
        version = _key_version(target.properties, None, current=True, promoted_at=tags.get(CURRENT_SINCE_ENTRY, ""))
        self._current = (version, time.monotonic())
        return version

    def _existing_enabled(self, kid: str) -> KeyVaultKey:
        """The version ``kid`` names, refused unless it exists and is enabled."""
        disabled = KeyDisabledError(f"key {kid} is disabled: enable it first with 'reencrypt keys enable {kid}'")
        try:
            version = self._own_version(kid)
            key = self._call("get_key", lambda: self._vault.keys.get_key(self.key_name, version), kid)
        except KeyNotFoundError:
            raise KeyNotFoundError(
                f"key {kid} is not a version of {self.describe()}: see the versions with 'reencrypt keys list'"
            ) from None
        except KeyDisabledError:
            raise disabled from None
        if key.properties.enabled is False:
            raise disabled
        return key

    def set_metadata(self, changes: Mapping[str, str | None]) -> dict[str, str]:
        """Key Vault has no conditional write of tags: a command changing them at the same time
        could write its read over ours. So read back after writing, and write again (on what is
        there now) until every change of ours holds, a few times at most."""
        for _ in range(METADATA_WRITE_TRIES):
            newest = self._newest()
            tags = changed_metadata(_metadata(newest.tags), changes)
            if len(tags) > MAX_METADATA_ENTRIES:
                raise KeyProviderError(
                    f"{newest.id} would hold {len(tags)} metadata entries but at most {MAX_METADATA_ENTRIES} fit: "
                    f"Key Vault allows {MAX_TAGS} tags per version and a rollback (keys promote) needs "
                    f"{len(RESERVED_ENTRIES)}; delete metadata entries first"
                )
            tags.update({name: value for name, value in (newest.tags or {}).items() if name in RESERVED_ENTRIES})
            self._write_tags(newest, tags)
            now = _metadata(self._newest().tags)
            if all(now.get(name) == value for name, value in changes.items()):
                return now
        raise KeyProviderUnavailableError(
            f"the metadata of {self.describe()} kept changing under this write: try again"
        )

    def _write_tags(self, newest: KeyProperties, tags: dict[str, str]) -> dict[str, str]:
        """Replace the newest version's tags, within Key Vault's limits or not at all."""
        _check_tag_limits(tags, newest.id)
        key = self._call(
            "update_key",
            lambda: self._vault.keys.update_key_properties(self.key_name, newest.version, tags=tags),
            newest.id,
        )
        return key.properties.tags or {}

    def set_enabled(self, kid: str, enabled: bool) -> KeyVersion:
        version = self._own_version(kid)
        current = self.current_kid(refresh=True)
        if not enabled and kid == current:
            raise KeyDisabledError(f"key {kid} is the current version; rotate to a new version before disabling it")
        key = self._call(
            "update_key", lambda: self._vault.keys.update_key_properties(self.key_name, version, enabled=enabled), kid
        )
        with self._vault.lock:  # the next wrap or unwrap, by any sibling, re-reads the version's state
            self._vault.versions.pop(kid, None)
        return _key_version(key.properties, current)

    def _create_version(self, tags: dict[str, str] | None = None) -> KeyVersion:
        name = self._administered()
        key = self._call(
            "create_key",
            lambda: self._vault.keys.create_rsa_key(
                name, size=RSA_BITS, key_operations=KEY_OPERATIONS, tags=tags or None
            ),
        )
        version = _key_version(key.properties, key.id)
        self._current = (version, time.monotonic())
        return version

    # -- calls, counters and errors --------------------------------------------------------

    def _count(self, operation: str) -> None:
        self._vault.tally.count(operation)

    def _call(self, operation: str, call, kid: str | None = None):
        self._count(operation)
        try:
            return call()
        except (AzureError, ValueError) as error:
            name = key_name_of_kid(kid) if kid else self.key_name
            raise translate(error, operation, kid, self.vault_url, name) from None


def _key_version(properties, current_kid: str | None, *, current: bool = False, promoted_at: str = "") -> KeyVersion:
    """An operator's view of a version; for the current one, when it became current: the later
    of its creation and the last promotion (a promotion back to the newest version keeps its
    time too, so the rollback's rollback is dated)."""
    created = properties.created_on.strftime(_TIME_FORMAT) if properties.created_on else ""
    current = current or properties.id == current_kid
    return KeyVersion(
        kid=properties.id,
        enabled=bool(properties.enabled),
        current=current,
        created=created,
        current_since=max(created, promoted_at) if current else "",
    )


def _promoted_at(newest: KeyProperties) -> str:
    """When the last promotion happened, as recorded on the newest version ("" if never)."""
    return (newest.tags or {}).get(CURRENT_SINCE_ENTRY, "")


def _now_text() -> str:
    return datetime.now(UTC).strftime(_TIME_FORMAT)


def _metadata(tags: dict[str, str] | None) -> dict[str, str]:
    """A version's tags as metadata: the promotion record is the provider's own business."""
    return {name: value for name, value in (tags or {}).items() if name not in RESERVED_ENTRIES}


def _check_tag_limits(tags: dict[str, str], where: str) -> None:
    """Refuse, before any write, tags Key Vault would refuse (names the limit, never a value)."""
    if len(tags) > MAX_TAGS:
        raise KeyProviderError(
            f"{where} would need {len(tags)} tags but Key Vault allows at most {MAX_TAGS} per key version: "
            "delete metadata entries first"
        )
    for name, value in tags.items():
        if len(name) > MAX_TAG_NAME_CHARS:
            raise KeyProviderError(
                f"metadata entry name {name[:40]!r}... has {len(name)} characters but Key Vault allows at most "
                f"{MAX_TAG_NAME_CHARS} per tag name: shorten it"
            )
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise KeyProviderError(
                f"metadata entry {name!r} has a {len(value)}-character value but Key Vault allows at most "
                f"{MAX_TAG_VALUE_CHARS} per tag value: shorten it"
            )


def _public_key(key: KeyVaultKey) -> rsa.RSAPublicKey:
    jwk: Any = key.key  # as in _fetch: the SDK's JsonWebKey members are untyped
    n, e = (int.from_bytes(value, "big") for value in (jwk.n, jwk.e))
    return rsa.RSAPublicNumbers(e, n).public_key()
