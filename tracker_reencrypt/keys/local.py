"""The embedded key provider: a JWKS keyring file (RFC 7517) of RSA MEK versions.

File shape::

    {"name": "tracker-mek",
     "keys": [{"kty": "RSA", "kid": "tracker-mek/v1", "alg": "RSA-OAEP-256", "use": "enc",
               "n": ..., "e": ..., "d": ..., "p": ..., "q": ..., "dp": ..., "dq": ..., "qi": ...,
               "status": "enabled", "current": true, "created": "2026-11-28T02:00:00Z"}],
     "metadata": {"store-3f9a0c12ab45": "12:ab34...|sqlite:/srv/tracker.db"}}

Exactly one key is ``current``: the newest after a rotation, an older one after a promote
(rollback). ``metadata`` (optional) holds the MEK's string annotations; every change, like
every rotation or promotion, rewrites the whole file atomically.

The private parts make this file as secret as the MEK itself: it is written atomically with
mode 0600 and refused when group or others can read it. Several processes may share it;
each reloads it when it changes on disk, so a rotation or a disable reaches running workers.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tracker_reencrypt.envelope import b64decode, b64encode
from tracker_reencrypt.errors import (
    EnvelopeError,
    KeyDisabledError,
    KeyNotFoundError,
    KeyringFileError,
    UnwrapError,
)
from tracker_reencrypt.keys import WRAP_ALGORITHM, KeyVersion, changed_metadata

DEFAULT_NAME = "tracker-mek"
RSA_BITS = 2048
RELOAD_CHECK_SECONDS = 1.0
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PRIVATE_MEMBERS = ("n", "e", "d", "p", "q", "dp", "dq", "qi")


def _int_to_b64(value: int) -> str:
    return b64encode(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _b64_to_int(text: str, name: str) -> int:
    return int.from_bytes(b64decode(text, name), "big")


def jwk_from_private_key(key: rsa.RSAPrivateKey, kid: str) -> dict:
    numbers = key.private_numbers()
    public = numbers.public_numbers
    values = {
        "n": public.n,
        "e": public.e,
        "d": numbers.d,
        "p": numbers.p,
        "q": numbers.q,
        "dp": numbers.dmp1,
        "dq": numbers.dmq1,
        "qi": numbers.iqmp,
    }
    return {
        "kty": "RSA",
        "kid": kid,
        "alg": WRAP_ALGORITHM,
        "use": "enc",
        **{k: _int_to_b64(v) for k, v in values.items()},
    }


def private_key_from_jwk(jwk: dict) -> rsa.RSAPrivateKey:
    try:
        v = {name: _b64_to_int(jwk[name], name) for name in _PRIVATE_MEMBERS}
        public = rsa.RSAPublicNumbers(v["e"], v["n"])
        return rsa.RSAPrivateNumbers(v["p"], v["q"], v["d"], v["dp"], v["dq"], v["qi"], public).private_key()
    except (KeyError, ValueError, EnvelopeError):
        raise KeyringFileError(f"keyring key {jwk.get('kid')!r} is not a complete RSA private JWK") from None


class LocalKeyProvider:
    """MEK versions in a local JWKS file; wraps and unwraps with RSA-OAEP-256 in process."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._document: dict | None = None
        self._private_keys: dict[str, rsa.RSAPrivateKey] = {}
        self._loaded_stamp: bytes | None = None
        self._checked_at = 0.0

    def describe(self) -> str:
        return f"local keyring {self.path}"

    # -- reading ---------------------------------------------------------------------------

    def _load(self, force: bool = False) -> dict:
        """The keyring document, re-read when the file changed (checked at most once a second)."""
        now = time.monotonic()
        if self._document is not None and not force and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return self._document
        with self._lock:
            self._checked_at = now
            try:
                info = self.path.stat()
            except FileNotFoundError:
                raise KeyringFileError(
                    f"keyring file {self.path} does not exist: create it with 'reencrypt keys init'"
                ) from None
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyringFileError(
                    f"keyring file {self.path} is readable by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):o}): run 'chmod 600 {self.path}'"
                )
            try:
                # The bytes themselves tell whether the file changed: (mtime, size) misses a
                # same-size rewrite within the file system's timestamp granularity, such as
                # a disable followed by an enable, and the file is a few kilobytes.
                stamp = self.path.read_bytes()
            except OSError:
                raise KeyringFileError(f"keyring file {self.path} cannot be read") from None
            if self._document is not None and stamp == self._loaded_stamp:
                return self._document
            try:
                document = json.loads(stamp.decode("utf-8"))
                keys = document["keys"]
                if not (isinstance(keys, list) and isinstance(document.get("name"), str)):
                    raise ValueError("not a keyring")  # not an assert: python -O would skip it
            except (ValueError, KeyError, TypeError, AttributeError):
                raise KeyringFileError(f"keyring file {self.path} is not a JWKS keyring this tool wrote") from None
            self._document, self._loaded_stamp = document, stamp
            self._private_keys = {}
            return document

    def _jwk(self, kid: str) -> dict:
        for jwk in self._load()["keys"]:
            if jwk.get("kid") == kid:
                return jwk
        # Another process may have rotated a moment ago: look once more at the file itself.
        for jwk in self._load(force=True)["keys"]:
            if jwk.get("kid") == kid:
                return jwk
        raise KeyNotFoundError(f"key {kid} is not in {self.describe()}")

    def _private_key(self, kid: str, for_what: str) -> rsa.RSAPrivateKey:
        jwk = self._jwk(kid)
        if jwk.get("status") != "enabled":
            raise KeyDisabledError(f"key {kid} is disabled in {self.describe()}; it cannot {for_what}")
        key = self._private_keys.get(kid)
        if key is None:
            key = self._private_keys[kid] = private_key_from_jwk(jwk)
        return key

    def versions(self) -> list[KeyVersion]:
        return [
            KeyVersion(
                kid=j["kid"],
                enabled=j.get("status") == "enabled",
                current=bool(j.get("current")),
                created=j.get("created", ""),
            )
            for j in self._load()["keys"]
        ]

    def current_kid(self) -> str:
        for version in self.versions():
            if version.current:
                return version.kid
        raise KeyringFileError(f"{self.describe()} marks no version current: run 'reencrypt keys rotate'")

    def metadata(self) -> dict[str, str]:
        # Read from the file itself: callers anchor checks on it, a second-old copy will not do.
        return self._metadata_of(self._load(force=True))

    def _metadata_of(self, document: dict) -> dict[str, str]:
        metadata = document.get("metadata", {})
        if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
            raise KeyringFileError(f'keyring file {self.path} has a "metadata" that is not an object of strings')
        return dict(metadata)

    # -- crypto ----------------------------------------------------------------------------

    def wrap(self, kid: str, dek: bytes) -> bytes:
        return self._private_key(kid, "wrap").public_key().encrypt(dek, _OAEP)

    def unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> bytes:
        if wrap_algorithm != WRAP_ALGORITHM:
            raise UnwrapError(f"wrap algorithm {wrap_algorithm!r} is not supported by {self.describe()}")
        key = self._private_key(kid, "unwrap")
        try:
            return key.decrypt(wrapped, _OAEP)
        except ValueError:
            raise UnwrapError(f"key {kid} cannot unwrap this data key") from None

    # Every operation runs in this process and reaches no key service: no service call to
    # count, nothing to answer 429.
    @property
    def calls(self) -> Mapping[str, int]:
        return {}

    @property
    def throttled(self) -> int:
        return 0

    # -- administration --------------------------------------------------------------------

    @contextmanager
    def _changing(self, *, creating: bool = False) -> Iterator[None]:
        """Hold the keyring's write lock for one read-modify-write: two commands changing the
        keyring at once (a rotation, a store mark, a promotion) must each see the other's change,
        not write over it. The lock is a flock on the keyring's directory, not on a lock file: a
        command refused before it writes must leave no file behind."""
        directory = self.path.parent if str(self.path.parent) else Path(".")
        if creating:  # 'keys init' makes the keyring, and the directories it lives in
            directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(directory, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyringFileError(f"directory {directory} of keyring file {self.path} does not exist") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def init(self, name: str = DEFAULT_NAME) -> KeyVersion:
        with self._changing(creating=True):
            if self.path.exists():
                raise KeyringFileError(
                    f"keyring file {self.path} already exists: use 'reencrypt keys rotate' to add a version"
                )
            self._write({"name": name, "keys": []})
            return self._rotate()

    def rotate(self) -> KeyVersion:
        with self._changing():
            return self._rotate()

    def _rotate(self) -> KeyVersion:
        document = self._load(force=True)
        number = 1 + max((int(j["kid"].rsplit("/v", 1)[1]) for j in document["keys"]), default=0)
        kid = f"{document['name']}/v{number}"
        jwk = jwk_from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS), kid)
        jwk.update(status="enabled", current=True, created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        keys = [{**j, "current": False} for j in document["keys"]] + [jwk]
        self._write({**document, "keys": keys})
        return next(v for v in self.versions() if v.kid == kid)

    def set_enabled(self, kid: str, enabled: bool) -> KeyVersion:
        with self._changing():
            return self._set_enabled(kid, enabled)

    def _set_enabled(self, kid: str, enabled: bool) -> KeyVersion:
        document = self._load(force=True)
        jwk = self._jwk(kid)
        if not enabled and jwk.get("current"):
            raise KeyDisabledError(f"key {kid} is the current version; rotate to a new version before disabling it")
        keys = [
            {**j, "status": "enabled" if enabled else "disabled"} if j["kid"] == kid else j for j in document["keys"]
        ]
        self._write({**document, "keys": keys})
        return next(v for v in self.versions() if v.kid == kid)

    def promote(self, kid: str) -> KeyVersion:
        with self._changing():
            return self._promote(kid)

    def _promote(self, kid: str) -> KeyVersion:
        document = self._load(force=True)
        jwk = next((j for j in document["keys"] if j.get("kid") == kid), None)
        if jwk is None:
            raise KeyNotFoundError(
                f"key {kid} is not in {self.describe()}: see the versions with 'reencrypt keys list'"
            )
        if jwk.get("status") != "enabled":
            raise KeyDisabledError(f"key {kid} is disabled: enable it first with 'reencrypt keys enable {kid}'")
        if not jwk.get("current"):
            keys = [{**j, "current": j["kid"] == kid} for j in document["keys"]]
            self._write({**document, "keys": keys})
        return next(v for v in self.versions() if v.kid == kid)

    def set_metadata(self, changes: Mapping[str, str | None]) -> dict[str, str]:
        with self._changing():
            document = self._load(force=True)
            metadata = changed_metadata(self._metadata_of(document), changes)
            self._write({**document, "metadata": metadata})
            return metadata

    def _write(self, document: dict) -> None:
        """Replace the file atomically: a crash leaves either the old or the new keyring.

        The temporary file is created 0600 in the same directory, synced, then renamed over
        the target; the directory is synced so the rename itself survives a power cut.
        """
        directory = self.path.parent if str(self.path.parent) else Path(".")
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._document = None
        self._load(force=True)
