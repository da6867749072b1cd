"""The embedded key provider: a JWKS keyring file (RFC 7517) of RSA MEK versions.

File shape (layout 2)::

    {"layout": 2,
     "keys": [{"kty": "RSA", "kid": "tracker-mek-acme/v1", "alg": "RSA-OAEP-256", "use": "enc",
               "n": ..., "e": ..., "d": ..., "p": ..., "q": ..., "dp": ..., "dq": ..., "qi": ...,
               "status": "enabled", "current": true, "created": "2026-11-28T02:00:00Z"},
              {"kty": "RSA", "kid": "tracker-mek-globex/v1", ...}],
     "metadata": {"tracker-mek-acme": {"store-3f9a0c12ab45": "12:ab34...|sqlite:/srv/tracker.db"}}}

**One file holds every key.** The tracker keeps one MEK per product (``tracker-mek-<productId>``,
see :mod:`tracker_reencrypt.keys.naming`), as one vault holds them all: a kid is
``<key name>/v<n>``, so the JWKS itself says which key each version belongs to, and one file
(one secret to guard, one lock, one reload) serves a sweep over every product.
``metadata`` (optional) holds each key's string annotations under its name.

Each key has exactly one ``current`` version: its newest after a rotation, an older one after a
promote (rollback), which records when in its ``current_since``. A provider is opened for one
key name and administers that key only;
wrap and unwrap take a kid of any key in the file.

Layout 1, written before per-product keys, held one key: ``{"name": "tracker-mek", "keys": [...],
"metadata": {flat entries}}``. It is still read (its metadata belongs to its ``name``), and
the first change rewrites it as layout 2.

The private parts make this file as secret as the MEKs themselves: every change rewrites the
whole file atomically with mode 0600, and a file group or others can read is refused.
Several processes may share it; each reloads it when it changes on disk, so a rotation or a
disable reaches running workers.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tracker_reencrypt.atomicfile import replace_file
from tracker_reencrypt.envelope import b64decode, b64encode
from tracker_reencrypt.errors import (
    ConfigError,
    EnvelopeError,
    KeyDisabledError,
    KeyNotFoundError,
    KeyringFileError,
    UnwrapError,
)
from tracker_reencrypt.keys import WRAP_ALGORITHM, KeyVersion, changed_metadata
from tracker_reencrypt.keys.naming import DEFAULT_KEY_NAME, PRODUCT_PLACEHOLDER, KeyNaming, key_name_of_kid

LAYOUT = 2
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


def private_key_from_jwk(jwk: dict, *, validate: bool = True) -> rsa.RSAPrivateKey:
    """The JWK's private key, refused (KeyringFileError, naming the kid) when its numbers do not
    belong together. ``validate`` True runs cryptography's full check, primality tests included
    (~40 ms a key on this machine); False, only the arithmetic that ties the numbers together
    (n = pq, and d, dp, dq, qi derived from them: well under a millisecond), which any damage to
    a stored member breaks. A worker meeting 400 product keys spent 16 s in the full check; a
    wrapping key still gets it, since fields sealed under a bad one could never be opened."""
    try:
        v = {name: _b64_to_int(jwk[name], name) for name in _PRIVATE_MEMBERS}
        public = rsa.RSAPublicNumbers(v["e"], v["n"])
        numbers = rsa.RSAPrivateNumbers(v["p"], v["q"], v["d"], v["dp"], v["dq"], v["qi"], public)
        if not validate and not _consistent(v):
            raise ValueError("inconsistent RSA numbers")
        return numbers.private_key(unsafe_skip_rsa_key_validation=not validate)
    except (KeyError, ValueError, EnvelopeError):
        raise KeyringFileError(f"keyring key {jwk.get('kid')!r} is not a complete RSA private JWK") from None


def _consistent(v: dict[str, int]) -> bool:
    p, q, d, e = v["p"], v["q"], v["d"], v["e"]
    if p < 3 or q < 3 or p * q != v["n"]:
        return False
    carmichael = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    return d * e % carmichael == 1 and v["dp"] == d % (p - 1) and v["dq"] == d % (q - 1) and v["qi"] * q % p == 1


def _as_layout_2(raw: object) -> dict:
    """The document in layout 2, from either layout (ValueError, saying what is missing in words
    of our own, never the file's content: not a keyring at all)."""
    if not isinstance(raw, dict):
        raise ValueError("its JSON is not an object")  # not an assert: python -O would skip it
    if not isinstance(raw.get("keys"), list):
        raise ValueError('it has no "keys" list')
    if not all(isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) for jwk in raw["keys"]):
        raise ValueError('a key has no "kid"')
    if "layout" in raw:
        if raw["layout"] != LAYOUT:
            raise ValueError("another layout")
        return {"layout": LAYOUT, "keys": raw["keys"], "metadata": raw.get("metadata", {})}
    if not isinstance(raw.get("name"), str):
        raise ValueError('it has neither a "layout" nor a "name"')
    metadata = {raw["name"]: raw["metadata"]} if "metadata" in raw else {}
    return {"layout": LAYOUT, "keys": raw["keys"], "metadata": metadata}


def _parse(content: bytes) -> object:
    """The file's JSON; a ValueError saying where it breaks (line, column and the parser's
    reason, which names the character class expected, never the text found: the file holds
    private keys, and the part that fails to parse may be one)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as problem:  # its own text quotes the bytes: only the offset is said
        raise ValueError(f"not UTF-8 text (at byte {problem.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as problem:
        raise ValueError(f"invalid JSON at line {problem.lineno}, column {problem.colno} ({problem.msg})") from None


class _KeyringFile:
    """One keyring file as every provider of its keys shares it: the parsed document, the
    private keys already built, and the read-modify-write lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._document: dict | None = None
        self._private_keys: dict[tuple[str, bool], rsa.RSAPrivateKey] = {}
        self._loaded_stamp: bytes | None = None
        self._checked_at = 0.0

    def load(self, force: bool = False) -> dict:
        """The keyring document in layout 2, re-read when the file changed (checked at most once a second)."""
        now = time.monotonic()
        document = self._document
        if document is not None and not force and now - self._checked_at < RELOAD_CHECK_SECONDS:
            return document
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
                # a disable followed by an enable, and the file is a few kilobytes per key.
                stamp = self.path.read_bytes()
            except OSError:
                raise KeyringFileError(f"keyring file {self.path} cannot be read") from None
            if self._document is not None and stamp == self._loaded_stamp:
                return self._document
            try:
                raw = _parse(stamp)
                if isinstance(raw, dict) and "layout" in raw and raw["layout"] != LAYOUT:
                    raise KeyringFileError(
                        f"keyring file {self.path} has layout {raw['layout']!r}; this tool reads layouts 1 and "
                        f"{LAYOUT}: use the version of reencrypt that wrote it"
                    )
                document = _as_layout_2(raw)
            except ValueError as problem:
                raise KeyringFileError(
                    f"keyring file {self.path} is not a JWKS keyring this tool wrote: {problem}"
                ) from None
            self._document, self._loaded_stamp = document, stamp
            self._private_keys = {}
            return document

    def jwk(self, kid: str) -> dict | None:
        """The JWK of ``kid``, whatever key it belongs to; None when the file has none."""
        for force in (False, True):  # another process may have rotated a moment ago: look at the file itself
            for jwk in self.load(force=force)["keys"]:
                if jwk["kid"] == kid:
                    return jwk
        return None

    def private_key(self, jwk: dict, *, validated: bool) -> rsa.RSAPrivateKey:
        """The JWK's key, loaded once per process (and checked once, the first time a wrap asks)."""
        cached = self._private_keys.get((jwk["kid"], validated)) or (
            None if validated else self._private_keys.get((jwk["kid"], True))
        )
        if cached is None:
            cached = self._private_keys[(jwk["kid"], validated)] = private_key_from_jwk(jwk, validate=validated)
        return cached

    @contextmanager
    def changing(self, *, creating: bool = False) -> Iterator[None]:
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

    def write(self, document: dict) -> None:
        """Replace the file atomically: a crash leaves either the old or the new keyring. The
        temporary file is 0600 from the start; the directory is synced too, so the rename itself
        survives a power cut (tracker_reencrypt.atomicfile)."""
        directory = self.path.parent if str(self.path.parent) else Path(".")
        directory.mkdir(parents=True, exist_ok=True)
        replace_file(directory / self.path.name, json.dumps(document, indent=1), mode=0o600, sync_directory=True)
        self._document = None
        self.load(force=True)


class LocalKeyProvider:
    """One key's MEK versions in a local JWKS file; wraps and unwraps with RSA-OAEP-256 in
    process, under a version of any key in the file."""

    remote = False  # every operation is CPU in this process

    def __init__(self, path: str | os.PathLike, key_name: str = DEFAULT_KEY_NAME) -> None:
        self.path = Path(path)
        self.key_name = KeyNaming(key_name).template
        self._file = _KeyringFile(self.path)
        self._version_kid = re.compile(re.escape(self.key_name) + r"/v(\d+)")

    def for_key(self, name: str) -> LocalKeyProvider:
        sibling = LocalKeyProvider(self.path, name)
        sibling._file = self._file  # one parsed file, one private-key cache for all its keys
        return sibling

    def key_names(self) -> list[str]:
        return sorted({key_name_of_kid(jwk["kid"]) for jwk in self._file.load()["keys"]})

    def describe(self) -> str:
        return f"local keyring {self.path} key {self.key_name}"

    # -- reading ---------------------------------------------------------------------------

    def _owns(self, kid: str) -> bool:
        return key_name_of_kid(kid) == self.key_name

    def _administered(self) -> None:
        """Refuse administration through a per-product template: it names no one key."""
        if PRODUCT_PLACEHOLDER in self.key_name:
            raise ConfigError(
                f"key name {self.key_name!r} is a template for every product's key, so it administers none: "
                f"name one key (the template with a product id in place of {PRODUCT_PLACEHOLDER})"
            )

    def _own_jwks(self, document: dict) -> list[dict]:
        self._administered()
        return [jwk for jwk in document["keys"] if self._owns(jwk["kid"])]

    def _own_jwk(self, document: dict, kid: str) -> dict:
        for jwk in self._own_jwks(document):
            if jwk["kid"] == kid:
                return jwk
        raise KeyNotFoundError(
            f"key {kid} is not a version of {self.describe()}: see the versions with 'reencrypt keys list'"
        )

    def _private_key(self, kid: str, for_what: str) -> rsa.RSAPrivateKey:
        jwk = self._file.jwk(kid)
        if jwk is None:
            raise KeyNotFoundError(f"key {kid} is not in keyring file {self.path}")
        if jwk.get("status") != "enabled":
            raise KeyDisabledError(f"key {kid} is disabled in keyring file {self.path}; it cannot {for_what}")
        # Fields are written under a wrapping key: it must be checked whole, or a damaged keyring
        # could seal data keys no one can unwrap again. Unwrapping fails loudly on a damaged key.
        return self._file.private_key(jwk, validated=for_what == "wrap")

    def versions(self) -> list[KeyVersion]:
        return [_key_version(jwk) for jwk in self._own_jwks(self._file.load())]

    def current_kid(self, refresh: bool = False) -> str:
        return self.current_version(refresh).kid

    def current_version(self, refresh: bool = False) -> KeyVersion:
        versions = [_key_version(jwk) for jwk in self._own_jwks(self._file.load(force=refresh))]
        for version in versions:
            if version.current:
                return version
        if not versions:
            raise KeyNotFoundError(f"{self.describe()} does not exist: create it with 'reencrypt keys init'")
        raise KeyringFileError(f"{self.describe()} marks no version current: run 'reencrypt keys rotate'")

    def metadata(self) -> dict[str, str]:
        # Read from the file itself: callers anchor checks on it, a second-old copy will not do.
        return self._metadata_of(self._existing(self._file.load(force=True)))

    def _metadata_of(self, document: dict) -> dict[str, str]:
        every = document["metadata"]
        if not (
            isinstance(every, dict)
            and all(isinstance(entries, dict) for entries in every.values())
            and all(isinstance(value, str) for entries in every.values() for value in entries.values())
        ):
            raise KeyringFileError(f'keyring file {self.path} has a "metadata" that is not an object of strings')
        return dict(every.get(self.key_name, {}))

    def _existing(self, document: dict) -> dict:
        """``document``, refused unless this key has a version in it."""
        if not self._own_jwks(document):
            raise KeyNotFoundError(f"{self.describe()} does not exist: create it with 'reencrypt keys init'")
        return document

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

    def init(self) -> KeyVersion:
        """Create this key's first version: the file too when it is missing, else beside its other keys."""
        self._administered()
        with self._file.changing(creating=True):
            if not self.path.exists():
                return self._rotate({"layout": LAYOUT, "keys": [], "metadata": {}})
            document = self._file.load(force=True)
            if self._own_jwks(document):
                raise KeyringFileError(
                    f"key {self.key_name} already exists in keyring file {self.path}: "
                    "use 'reencrypt keys rotate' to add a version"
                )
            return self._rotate(document)

    def rotate(self) -> KeyVersion:
        with self._file.changing():
            return self._rotate(self._existing(self._file.load(force=True)))

    def _rotate(self, document: dict) -> KeyVersion:
        """A new version of this key after its highest, made its only current one."""
        numbers = (self._version_kid.fullmatch(jwk["kid"]) for jwk in self._own_jwks(document))
        number = 1 + max((int(match.group(1)) for match in numbers if match), default=0)
        kid = f"{self.key_name}/v{number}"
        jwk = jwk_from_private_key(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS), kid)
        jwk.update(status="enabled", current=True, created=_now_text())
        keys = [{**j, "current": False} if self._owns(j["kid"]) else j for j in document["keys"]]
        self._file.write({**document, "keys": keys + [jwk]})
        return _key_version(jwk)

    def set_enabled(self, kid: str, enabled: bool) -> KeyVersion:
        with self._file.changing():
            document = self._file.load(force=True)
            jwk = self._own_jwk(document, kid)
            if not enabled and jwk.get("current"):
                raise KeyDisabledError(f"key {kid} is the current version; rotate to a new version before disabling it")
            status = "enabled" if enabled else "disabled"
            keys = [{**j, "status": status} if j["kid"] == kid else j for j in document["keys"]]
            self._file.write({**document, "keys": keys})
            return _key_version({**jwk, "status": status})

    def promote(self, kid: str) -> KeyVersion:
        with self._file.changing():
            document = self._file.load(force=True)
            jwk = self._own_jwk(document, kid)
            if jwk.get("status") != "enabled":
                raise KeyDisabledError(f"key {kid} is disabled: enable it first with 'reencrypt keys enable {kid}'")
            if jwk.get("current"):
                return _key_version(jwk)
            promoted = {**jwk, "current": True, "current_since": _now_text()}
            keys = [
                promoted if j["kid"] == kid else {**j, "current": False} if self._owns(j["kid"]) else j
                for j in document["keys"]
            ]
            self._file.write({**document, "keys": keys})
            return _key_version(promoted)

    def set_metadata(self, changes: Mapping[str, str | None]) -> dict[str, str]:
        with self._file.changing():
            document = self._existing(self._file.load(force=True))
            metadata = changed_metadata(self._metadata_of(document), changes)
            every = {**document["metadata"], self.key_name: metadata}
            if not metadata:
                del every[self.key_name]
            self._file.write({**document, "metadata": every})
            return metadata


def _key_version(jwk: dict) -> KeyVersion:
    created, current = jwk.get("created", ""), bool(jwk.get("current"))
    return KeyVersion(
        kid=jwk["kid"],
        enabled=jwk.get("status") == "enabled",
        current=current,
        created=created,
        # A promotion (rollback) records its time; a rotation's new version became current when made.
        current_since=max(created, jwk.get("current_since", "")) if current else "",
    )


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
