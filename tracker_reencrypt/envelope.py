"""Envelope format v1: one encrypted field value, specified in docs/ENVELOPE.md.

An envelope is a JSON object::

    {"v": 1, "kid": "<full versioned MEK id>", "wrap": "RSA-OAEP-256",
     "dek": "<wrapped data key>", "alg": "A256GCM", "iv": "<12 bytes>", "ct": "<ct || tag>"}

Binary values are base64url without padding. The plaintext is the JSON encoding of the
original field value. The GCM associated data binds the ciphertext to where it lives (see
:func:`associated_data`) and deliberately leaves out ``kid`` and ``dek`` so that
:func:`rewrap` can move the data key to another MEK without touching the ciphertext.

Every way an envelope can be bad raises :class:`EnvelopeError`; nothing else escapes. The
checks run in the order docs/ENVELOPE.md ("Errors") gives: the location first, then the
envelope's shape, then the key (the keyring's unwrap cache, then the provider), then GCM, then
(``decrypt`` only) the payload as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tracker_reencrypt.errors import EnvelopeError, KeyDisabledError, KeyNotFoundError, UnwrapError

VERSION = 1
CONTENT_ALGORITHM = "A256GCM"
ENVELOPE_FIELDS = frozenset({"v", "kid", "wrap", "dek", "alg", "iv", "ct"})
AAD_CONTEXT = b"tracker-reencrypt/envelope/v1"
NONCE_BYTES = 12
TAG_BYTES = 16
DEK_BYTES = 32

#: The deepest nesting of objects and arrays, the outermost being level 1 (a scalar has none):
#: for a field value (``encrypt`` refuses deeper values, ``decrypt`` deeper payloads) and for a
#: whole document (tracker_reencrypt.documents). 128 is Cosmos DB's "Maximum level of nesting for
#: embedded objects / arrays" (Azure Cosmos DB service quotas): a deeper value could never be
#: stored in a document, so it is corrupt data, whichever side meets it.
MAX_DEPTH = 128


@dataclass(frozen=True)
class Location:
    """Where a field lives: what the ciphertext is bound to.

    ``field_path`` is a JSON Pointer (RFC 6901) to the field with every array index written
    as ``*`` (see :func:`tracker_reencrypt.documents.schema_path`), so reordering an array
    does not break decryption while moving an envelope to another field or document does.
    All three must be strings with a UTF-8 form: anything else is refused (``bad_location``),
    never turned into a string here, since no spelling of a number or boolean is portable.
    """

    document_id: str
    partition_key: str
    field_path: str


@dataclass(frozen=True)
class DataKey:
    """A plaintext data key with its wrapped form under ``kid``. Never logged."""

    kid: str
    wrap_algorithm: str
    plaintext: bytes
    wrapped: bytes

    def __repr__(self) -> str:  # keeps the DEK out of tracebacks and logs
        return f"DataKey(kid={self.kid!r}, wrap_algorithm={self.wrap_algorithm!r})"

    # A data key seals up to thousands of fields (see keys.keyring): its cipher and the
    # encoded wrapped form are made once, not once per field.
    @cached_property
    def cipher(self) -> AESGCM:
        return AESGCM(self.plaintext)

    @cached_property
    def wrapped_text(self) -> str:
        return b64encode(self.wrapped)


class KeySource(Protocol):
    """What the envelope needs from keys: see tracker_reencrypt.keys.keyring."""

    def data_key_for_encryption(self, kid: str | None = None) -> DataKey: ...

    def unwrap(self, kid: str, wrap_algorithm: str, wrapped: bytes) -> bytes: ...

    def wrap(self, kid: str, dek: bytes) -> tuple[str, bytes]: ...


def b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_URL_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
#: By length mod 4: the low bits of the last character that carry no data and must be zero.
_UNUSED_BITS = {0: 0, 2: 0b1111, 3: 0b11}


def b64decode(text: str, name: str) -> bytes:
    """Decode unpadded base64url, accepting only the one canonical spelling of the bytes.

    The standard decoder skips characters outside the alphabet and ignores non-zero unused
    trailing bits; both are refused here, checked directly rather than by re-encoding (this
    runs three times per field on the sweep's hot path).
    """
    if not isinstance(text, str):
        raise EnvelopeError("malformed", f"envelope field '{name}' must be a base64url string")
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise EnvelopeError("malformed", f"envelope field '{name}' is not unpadded base64url")
    if text and _ALPHABET.index(text[-1]) & _UNUSED_BITS[len(text) % 4]:
        raise EnvelopeError("malformed", f"envelope field '{name}' is not canonical unpadded base64url")
    padded = (text + "=" * (-len(text) % 4)).encode("ascii")
    return binascii.a2b_base64(padded.translate(_URL_TO_STANDARD))


def associated_data(where: Location) -> bytes:
    """The exact GCM associated data: context, then three length-prefixed UTF-8 strings.

    Each string is preceded by its byte length as a 4-byte big-endian unsigned integer, so
    no choice of ids or paths can make two different locations produce the same bytes.
    A member that is not a string, or has no UTF-8 form (a lone surrogate), is refused with
    ``bad_location``: every operation computes this first, before it looks at the envelope.
    """
    parts = [AAD_CONTEXT]
    for name, value in (
        ("document id", where.document_id),
        ("partition key", where.partition_key),
        ("field path", where.field_path),
    ):
        if not isinstance(value, str):
            raise EnvelopeError("bad_location", f"location {name} must be a string, not {type(value).__name__}")
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, so no portable AAD
            raise EnvelopeError("bad_location", f"location {name} is not valid Unicode (lone surrogate)") from None
        parts.append(struct.pack(">I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def is_envelope(value: Any) -> bool:
    """True for a JSON object shaped like an envelope of any version we might meet."""
    return isinstance(value, dict) and value.keys() == ENVELOPE_FIELDS


def encrypt(value: Any, where: Location, keyring: KeySource, kid: str | None = None) -> dict:
    """Encrypt a JSON value for ``where`` under ``kid`` (default: the current MEK version).

    An envelope is refused as input: encrypting one again would nest envelopes and hide the
    real value behind a key nobody expects. So is anything that is not JSON (NaN, infinity,
    a lone surrogate, a non-string member name, ...) and a value nested deeper than
    :data:`MAX_DEPTH`.
    """
    aad = associated_data(where)
    if is_envelope(value):
        raise EnvelopeError(
            "already_encrypted", f"field {where.field_path} already holds an envelope; refusing to nest it"
        )
    # json.dumps would write a member name 1 as "1" (so {1: "a", "1": "b"} as two "1"s) and recurse
    # without a limit: both are refused first, so that decrypt gives back exactly the value.
    problem = _shape_problem(value) if isinstance(value, _CONTAINERS) else ""
    if problem:
        raise EnvelopeError("not_json", f"field {where.field_path} holds {problem}")
    try:
        plaintext = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):
        raise EnvelopeError("not_json", f"field {where.field_path} holds a value that is not JSON-encodable") from None
    return _seal(plaintext, aad, keyring.data_key_for_encryption(kid))


def decrypt(envelope: Any, where: Location, keyring: KeySource) -> Any:
    """Return the original JSON value of an envelope bound to ``where``.

    The payload must be a JSON value :func:`encrypt` could have written: RFC 8259 text in
    UTF-8, with no NaN or Infinity, no number beyond a double's range, no lone surrogate and
    no nesting deeper than :data:`MAX_DEPTH`; anything else is ``malformed``.
    """
    aad = associated_data(where)
    plaintext = _open(_parse(envelope), where, aad, keyring)
    try:
        value = json.loads(plaintext.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
        if _has_lone_surrogate(value, plaintext):
            raise ValueError("lone surrogate")
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError("malformed", f"field {where.field_path}: decrypted payload is not JSON") from None
    # Every level opens a bracket: a text with at most MAX_DEPTH of them (nearly every field) needs no walk.
    if plaintext.count(b"[") + plaintext.count(b"{") > MAX_DEPTH and _shape_problem(value):
        raise EnvelopeError(
            "malformed", f"field {where.field_path}: decrypted payload nests deeper than {MAX_DEPTH} levels"
        )
    return value


def wrapped_data_key(envelope: Any) -> tuple[str, str, bytes] | None:
    """(kid, wrap algorithm, wrapped data key) of a well-formed envelope, for prefetching its
    unwrap; None for one that is not (it fails on its own when decrypted, with its reason)."""
    try:
        parsed = _parse(envelope)
    except EnvelopeError:
        return None
    return parsed.kid, parsed.wrap_algorithm, parsed.wrapped_dek


def reencrypt(envelope: Any, where: Location, keyring: KeySource, target_kid: str) -> dict:
    """A new envelope under ``target_kid``: data key and ciphertext both replaced.

    The data key comes from the keyring's encryption materials, which may share one fresh
    DEK among a bounded number of fields (see tracker_reencrypt.keys.keyring).
    """
    aad = associated_data(where)  # the field stays where it is: one AAD for both directions
    plaintext = _open(_parse(envelope), where, aad, keyring)
    return _seal(plaintext, aad, keyring.data_key_for_encryption(target_kid))


def rewrap(envelope: Any, where: Location, keyring: KeySource, target_kid: str) -> dict:
    """The same ciphertext with its data key re-wrapped under ``target_kid``.

    Only ``kid``, ``wrap`` and ``dek`` change. The associated data does not cover them, so
    the AAD contract holds. The payload is authenticated against ``where`` first (its
    plaintext is not parsed), so a tampered field is refused, never laundered under the new
    key; the envelope is parsed and its DEK unwrapped once for both.
    A target key the provider does not know or has disabled is not this envelope's fault:
    as in :func:`encrypt` and :func:`reencrypt`, that KeyProviderError propagates.
    """
    aad = associated_data(where)
    parsed = _parse(envelope)
    dek = _unwrap(parsed, keyring)
    _authenticate(dek, parsed, where, aad)
    wrap_algorithm, wrapped = keyring.wrap(target_kid, dek)
    return {**parsed.raw, "kid": target_kid, "wrap": wrap_algorithm, "dek": b64encode(wrapped)}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN, Infinity, -Infinity by default


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: valid JSON text, but no double holds it
        raise ValueError("number out of range")
    return number


#: A \uD800-\uDFFF escape: the only way JSON text can carry a surrogate (UTF-8 cannot).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any, plaintext: bytes) -> bool:
    """Whether a decoded value holds a string with no UTF-8 form; the full check only runs
    when the text escapes a surrogate at all (a pair is fine, an escaped emoji for one)."""
    if not _SURROGATE_ESCAPE.search(plaintext):
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


#: What json.dumps writes as an object or an array.
_CONTAINERS = (dict, list, tuple)


def _shape_problem(value: Any) -> str:
    """What keeps a container from being JSON that decodes to the same value: a member name
    that is not a string, or objects and arrays nested past :data:`MAX_DEPTH`; "" if neither.

    An explicit stack, never recursion, that stops at the limit (so a cycle ends there too).
    """
    pending = [(value, 1)]
    while pending:
        value, level = pending.pop()
        if level > MAX_DEPTH:
            return f"a value nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            if not all(isinstance(name, str) for name in value):
                return "an object member name that is not a string"
            children = value.values()
        else:
            children = value
        pending.extend((child, level + 1) for child in children if isinstance(child, _CONTAINERS))
    return ""


@dataclass(frozen=True)
class _Parsed:
    raw: dict
    kid: str
    wrap_algorithm: str
    wrapped_dek: bytes
    iv: bytes
    ct: bytes


def _parse(envelope: Any) -> _Parsed:
    if not isinstance(envelope, dict):
        raise EnvelopeError("malformed", "envelope is not a JSON object")
    if envelope.keys() != ENVELOPE_FIELDS:
        missing = sorted(ENVELOPE_FIELDS - envelope.keys())
        extra = sorted(envelope.keys() - ENVELOPE_FIELDS)
        raise EnvelopeError("malformed", f"envelope fields wrong (missing {missing}, unexpected {extra})")
    if envelope["v"] != VERSION or isinstance(envelope["v"], bool):
        raise EnvelopeError(
            "unsupported_version", f"envelope version {envelope['v']!r} is not supported (expected {VERSION})"
        )
    if envelope["alg"] != CONTENT_ALGORITHM:
        raise EnvelopeError(
            "unsupported_algorithm", f"envelope alg {envelope['alg']!r} is not supported (expected {CONTENT_ALGORITHM})"
        )
    for name in ("kid", "wrap"):
        if not isinstance(envelope[name], str) or not envelope[name]:
            raise EnvelopeError("malformed", f"envelope field '{name}' must be a non-empty string")
    iv = b64decode(envelope["iv"], "iv")
    ct = b64decode(envelope["ct"], "ct")
    wrapped = b64decode(envelope["dek"], "dek")
    if len(iv) != NONCE_BYTES:
        raise EnvelopeError("malformed", f"envelope iv must be {NONCE_BYTES} bytes, got {len(iv)}")
    if len(ct) < TAG_BYTES:
        raise EnvelopeError("truncated", "envelope ciphertext is shorter than its authentication tag")
    if not wrapped:
        raise EnvelopeError("malformed", "envelope dek is empty")
    return _Parsed(envelope, envelope["kid"], envelope["wrap"], wrapped, iv, ct)


def _seal(plaintext: bytes, aad: bytes, key: DataKey) -> dict:
    iv = os.urandom(NONCE_BYTES)
    ct = key.cipher.encrypt(iv, plaintext, aad)
    return {
        "v": VERSION,
        "kid": key.kid,
        "wrap": key.wrap_algorithm,
        "dek": key.wrapped_text,
        "alg": CONTENT_ALGORITHM,
        "iv": b64encode(iv),
        "ct": b64encode(ct),
    }


def _unwrap(parsed: _Parsed, keyring: KeySource) -> bytes:
    dek = _call_keyring(lambda: keyring.unwrap(parsed.kid, parsed.wrap_algorithm, parsed.wrapped_dek), parsed.kid)
    if len(dek) != DEK_BYTES:
        raise EnvelopeError("bad_dek", f"data key under {parsed.kid} is {len(dek)} bytes, expected {DEK_BYTES}")
    return dek


def _open(parsed: _Parsed, where: Location, aad: bytes, keyring: KeySource) -> bytes:
    return _authenticate(_unwrap(parsed, keyring), parsed, where, aad)


def _authenticate(dek: bytes, parsed: _Parsed, where: Location, aad: bytes) -> bytes:
    """The plaintext, once GCM has checked the tag over it and the location's AAD."""
    try:
        return AESGCM(dek).decrypt(parsed.iv, parsed.ct, aad)
    except InvalidTag:
        raise EnvelopeError(
            "authentication_failed",
            f"field {where.field_path} of document {where.document_id}: "
            "ciphertext tampered or bound to another location",
        ) from None


def _call_keyring(operation, kid: str):
    """Run a key operation, turning key provider refusals into EnvelopeError.

    Transient provider failures (vault unreachable, throttled beyond retries) are not the
    envelope's fault and propagate as KeyProviderError so a sweep can retry the batch.
    """
    try:
        return operation()
    except KeyNotFoundError:
        raise EnvelopeError("unknown_kid", f"key {kid} is not known to the key provider") from None
    except KeyDisabledError:
        raise EnvelopeError("kid_disabled", f"key {kid} is disabled; enable it to decrypt") from None
    except UnwrapError:
        raise EnvelopeError(
            "unwrap_failed", f"key {kid} could not unwrap the data key (tampered or foreign dek)"
        ) from None
