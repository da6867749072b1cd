"""Write tests/vectors/envelope-v1.json: known-answer vectors for envelope format v1.

Run from the repository root::

    .venv/bin/python tests/vectors/generate.py          # (re)write the file
    .venv/bin/python tests/vectors/generate.py --check  # fail if the file would change

Everything is fixed except what cannot be: RSA key generation and RSA-OAEP wrapping are
randomized, so the MEK private JWKs and the wrapped data keys are made once and read back
from the existing file on every later run. Given that file, the generator reproduces it byte
for byte. AES-256-GCM with a fixed DEK, nonce, AAD and plaintext is deterministic, so every
``ct`` here can be recomputed exactly by any implementation (docs/ENVELOPE.md, "Vectors").

The generator builds envelopes from the primitives (AESGCM, RSA-OAEP, the AAD rule) rather
than through ``envelope.encrypt``, then checks every vector against the library.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tracker_reencrypt import envelope  # noqa: E402
from tracker_reencrypt.errors import EnvelopeError  # noqa: E402
from tracker_reencrypt.keys.keyring import Keyring  # noqa: E402
from tracker_reencrypt.keys.local import LocalKeyProvider, jwk_from_private_key, private_key_from_jwk  # noqa: E402

OUTPUT = Path(__file__).with_name("envelope-v1.json")
OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

KEYRING_NAME = "tracker-mek"
V1, V2, V3 = "tracker-mek/v1", "tracker-mek/v2", "tracker-mek/v3"
AZURE_KID = "https://tracker-vectors.vault.azure.net/keys/tracker-mek/4f5c2d1e9b8a47c6a3e2d1f0b9c8a7e6"
#: kid -> (status, current, created). v3 is disabled: envelopes under it must be refused.
KEY_STATES = {
    V1: ("enabled", False, "2026-01-01T00:00:00Z"),
    V2: ("enabled", True, "2026-02-01T00:00:00Z"),
    V3: ("disabled", False, "2026-03-01T00:00:00Z"),
    AZURE_KID: ("enabled", False, "2026-04-01T00:00:00Z"),
}

DEK_A = bytes(range(0x00, 0x20))
DEK_B = bytes(range(0x20, 0x40))
DEK_C = hashlib.sha256(b"tracker-reencrypt/vectors/dek/C").digest()
DEK_D = hashlib.sha256(b"tracker-reencrypt/vectors/dek/D").digest()
DEK_SHORT = bytes(range(0x40, 0x50))  # 16 bytes: unwraps fine, but is not an AES-256 key


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fixed_iv(name: str) -> bytes:
    return hashlib.sha256(b"tracker-reencrypt/vectors/iv/" + name.encode("utf-8")).digest()[:12]


def plaintext_of(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def aad_of(location: dict) -> bytes:
    """The AAD rule written out independently of envelope.associated_data (checked equal below)."""
    out = b"tracker-reencrypt/envelope/v1"
    for name in ("document_id", "partition_key", "field_path"):
        raw = location[name].encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return out


def loc(document_id: str, partition_key: str, field_path: str) -> dict:
    return {"document_id": document_id, "partition_key": partition_key, "field_path": field_path}


def nested(levels: int, leaf="deep"):
    """``leaf`` inside ``levels`` arrays: nesting depth ``levels`` (docs/ENVELOPE.md, MAX_DEPTH)."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


# name, description, value, location, kid, DEK
CASES = [
    (
        "string-ascii",
        "a plain ASCII string",
        "alice@example.com",
        loc("item-0001", "product-42", "/reporter/email"),
        V1,
        DEK_A,
    ),
    (
        "string-non-ascii",
        "2-, 3- and 4-byte UTF-8 sequences, written raw (not \\u-escaped)",
        "Zoë Ångström — 東京 🚀",
        loc("item-0001", "product-42", "/reporter/name"),
        V1,
        DEK_A,
    ),
    (
        "string-empty",
        'the empty string: plaintext is the two bytes ""',
        "",
        loc("item-0001", "product-42", "/notes"),
        V1,
        DEK_A,
    ),
    (
        "string-escapes",
        "JSON escapes: quote, backslash, control characters (\\n, \\t, \\u0000, \\u001f); U+2028 raw",
        'line1\nline2\t"quoted" \\ nul\u0000 unit\u001f sep\u2028end',
        loc("item-0001", "product-42", "/description"),
        V1,
        DEK_A,
    ),
    (
        "string-long",
        "longer than a few GCM blocks",
        "lorem ipsum dolor sit amet " * 12,
        loc("item-0001", "product-42", "/body"),
        V1,
        DEK_A,
    ),
    ("number-integer", "an integer", 42, loc("item-0001", "product-42", "/estimate/hours"), V1, DEK_A),
    ("number-zero", "zero", 0, loc("item-0001", "product-42", "/estimate/days"), V1, DEK_A),
    (
        "number-negative-fraction",
        "a negative binary fraction (exact in every IEEE-754 decoder)",
        -12.5,
        loc("item-0001", "product-42", "/budget/delta"),
        V1,
        DEK_A,
    ),
    ("bool-true", "true", True, loc("item-0001", "product-42", "/flags/confidential"), V1, DEK_A),
    (
        "bool-false",
        "false (note: one byte longer than true; see Limits)",
        False,
        loc("item-0001", "product-42", "/flags/escalated"),
        V1,
        DEK_A,
    ),
    ("null", "null", None, loc("item-0001", "product-42", "/assignee"), V1, DEK_A),
    (
        "object",
        "an object; member order as written",
        {"street": "1 Main St", "city": "München", "zip": "80331"},
        loc("item-0001", "product-42", "/address"),
        V1,
        DEK_A,
    ),
    ("object-empty", "an empty object", {}, loc("item-0001", "product-42", "/extra"), V1, DEK_A),
    ("array", "a mixed array", ["a", 1, None, True, 2.5], loc("item-0001", "product-42", "/tags"), V1, DEK_A),
    ("array-empty", "an empty array", [], loc("item-0001", "product-42", "/watchers"), V1, DEK_A),
    (
        "nested",
        "objects in arrays in objects",
        {"history": [{"by": "ops", "at": "2026-01-02T03:04:05Z", "changes": [1, [2, [3]]]}], "empty": {}, "none": []},
        loc("item-0001", "product-42", "/audit"),
        V1,
        DEK_A,
    ),
    (
        "array-element-path",
        "a field inside array elements: document pointer /contacts/3/email, bound to /contacts/*/email",
        "bob@example.com",
        loc("item-0001", "product-42", "/contacts/*/email"),
        V1,
        DEK_A,
    ),
    (
        "escaped-path",
        "member names containing '/' and '~' (pointer parts 'custom/fields', 'm~n')",
        "x",
        loc("item-0001", "product-42", "/custom~1fields/m~0n"),
        V1,
        DEK_A,
    ),
    (
        "non-ascii-location",
        "non-ASCII id, partition key and path: length prefixes count UTF-8 bytes, not characters",
        "Grüße",
        loc("ticket-é-1", "produkt-ü-東京", "/beschreibung/überschrift"),
        V2,
        DEK_B,
    ),
    (
        "key-vault-kid",
        "a Key Vault style kid: the kid is opaque to the format",
        {"api_key": "sk-test-123"},
        loc("apikey-7", "product-42", "/secrets/*"),
        AZURE_KID,
        DEK_C,
    ),
    (
        "partition-key-digits",
        'a partition key that looks like a number is still a string: "42" (the negative '
        "partition-key-number has the JSON number 42 instead)",
        "carol@example.com",
        loc("item-0001", "42", "/reporter/email"),
        V1,
        DEK_A,
    ),
    (
        "depth-limit",
        f"a value nested exactly {envelope.MAX_DEPTH} levels (arrays), the most encrypt and decrypt accept",
        nested(envelope.MAX_DEPTH),
        loc("item-0001", "product-42", "/deep"),
        V1,
        DEK_A,
    ),
]

#: Authentic envelopes (they pass GCM) of payloads decrypt must refuse: name, description, plaintext.
BAD_PAYLOADS = [
    ("payload-nan", "the payload is NaN: not JSON, although Python's json.loads accepts it", b"NaN"),
    ("payload-infinity", "-Infinity inside an array: not JSON", b"[1,-Infinity]"),
    (
        "payload-number-overflow",
        "1e999 is JSON text, but no IEEE-754 double holds it (it parses to Infinity)",
        b"1e999",
    ),
    (
        "payload-lone-surrogate",
        "a string escaping a lone surrogate (\\ud800): no UTF-8 form, never written by an "
        "encoder (an escaped pair such as \\ud83d\\ude80 is fine)",
        b'"\\ud800"',
    ),
    (
        "payload-too-deep",
        f"arrays nested {envelope.MAX_DEPTH + 1} levels, one past the limit",
        json.dumps(nested(envelope.MAX_DEPTH + 1), separators=(",", ":")).encode(),
    ),
    ("payload-not-utf8", "a string holding the byte ff: not UTF-8", b'"\xff"'),
    (
        "payload-bom",
        "a UTF-8 byte order mark before the JSON (JavaScript's TextDecoder strips it unless ignoreBOM)",
        b'\xef\xbb\xbf"x"',
    ),
    ("payload-not-json", "an object missing its closing brace", b'{"a":1'),
]

# Pointer parts (strings are member names, integers are array indices) and the two pointers.
FIELD_PATHS = [
    (["reporter", "email"], "/reporter/email", "/reporter/email"),
    (["contacts", 3, "email"], "/contacts/3/email", "/contacts/*/email"),
    (["phones", 0], "/phones/0", "/phones/*"),
    (["matrix", 1, 0], "/matrix/1/0", "/matrix/*/*"),
    (["0"], "/0", "/0"),
    (["custom/fields", "m~n"], "/custom~1fields/m~0n", "/custom~1fields/m~0n"),
    (["~1"], "/~01", "/~01"),
    (["", "x"], "//x", "//x"),
    (["beschreibung", "überschrift"], "/beschreibung/überschrift", "/beschreibung/überschrift"),
]


class Wrapper:
    """RSA-OAEP-256 wraps, made once and then read back from the existing file."""

    def __init__(self, keys: dict[str, rsa.RSAPrivateKey], known: list[dict]) -> None:
        self.keys = keys
        self.known = {(w["kid"], w["dek_hex"]): w["wrapped"] for w in known}
        self.used: dict[tuple[str, str], str] = {}

    def __call__(self, kid: str, dek: bytes) -> str:
        key = (kid, dek.hex())
        wrapped = self.known.get(key)
        if wrapped is None or self.keys[kid].decrypt(unb64(wrapped), OAEP) != dek:
            wrapped = self.known[key] = b64(self.keys[kid].public_key().encrypt(dek, OAEP))
        self.used[key] = wrapped
        return wrapped

    def listing(self) -> list[dict]:
        return [{"kid": kid, "dek_hex": dek_hex, "wrapped": wrapped} for (kid, dek_hex), wrapped in self.used.items()]


def load_or_make_keys(existing: dict | None) -> dict[str, rsa.RSAPrivateKey]:
    keys = {}
    if existing:
        for jwk in existing["keyring"]["keys"]:
            keys[jwk["kid"]] = private_key_from_jwk(jwk)
    for kid in KEY_STATES:
        if kid not in keys:
            keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return keys


def seal(name: str, value, location: dict, kid: str, dek: bytes, wrap: Wrapper) -> dict:
    return seal_plaintext(name, plaintext_of(value), location, kid, dek, wrap)


def seal_plaintext(name: str, plaintext: bytes, location: dict, kid: str, dek: bytes, wrap: Wrapper) -> dict:
    aad = aad_of(location)
    iv = fixed_iv(name)
    ct = AESGCM(dek).encrypt(iv, plaintext, aad)
    return {
        "plaintext_hex": plaintext.hex(),
        "aad_hex": aad.hex(),
        "kid": kid,
        "dek_hex": dek.hex(),
        "iv_hex": iv.hex(),
        "ct_hex": ct.hex(),
        "envelope": {
            "v": 1,
            "kid": kid,
            "wrap": "RSA-OAEP-256",
            "dek": wrap(kid, dek),
            "alg": "A256GCM",
            "iv": b64(iv),
            "ct": b64(ct),
        },
    }


def flip(text: str, byte_index: int, bit: int = 0x01) -> str:
    raw = bytearray(unb64(text))
    raw[byte_index] ^= bit
    return b64(bytes(raw))


def noncanonical(text: str) -> str:
    """The same bytes spelled with non-zero unused trailing bits (needs len(bytes) % 3 != 0)."""
    assert len(unb64(text)) % 3, "needs a byte string whose length is not a multiple of 3"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spelled = text[:-1] + alphabet[alphabet.index(text[-1]) + 1]
    assert unb64(spelled) == unb64(text)
    return spelled


def negatives(cases: dict[str, dict], wrap: Wrapper) -> list[dict]:
    base = cases["string-ascii"]
    env, where = base["envelope"], base["location"]
    out: list[dict] = []

    def add(name: str, description: str, reason: str, envelope_value, location: dict | None = None) -> None:
        out.append(
            {
                "name": name,
                "description": description,
                "location": location or where,
                "envelope": envelope_value,
                "reason": reason,
            }
        )

    def edit(**changes) -> dict:
        return {**copy.deepcopy(env), **changes}

    ct_len = len(unb64(env["ct"]))
    # Tampering with the sealed payload or moving it: GCM refuses.
    add(
        "ct-bit-flipped",
        "first ciphertext byte has bit 0 flipped",
        "authentication_failed",
        edit(ct=flip(env["ct"], 0)),
    )
    add(
        "tag-bit-flipped",
        "last byte of ct (inside the 16-byte tag) has bit 7 flipped",
        "authentication_failed",
        edit(ct=flip(env["ct"], ct_len - 1, 0x80)),
    )
    add("iv-bit-flipped", "nonce byte 5 has bit 0 flipped", "authentication_failed", edit(iv=flip(env["iv"], 5)))
    add(
        "ct-truncated-one-byte",
        "ct lost its last byte (still >= 16 bytes)",
        "authentication_failed",
        edit(ct=b64(unb64(env["ct"])[:-1])),
    )
    add(
        "other-document-id",
        "the envelope copied to another document",
        "authentication_failed",
        env,
        {**where, "document_id": "item-0002"},
    )
    add(
        "other-partition-key",
        "the same document id under another partition key",
        "authentication_failed",
        env,
        {**where, "partition_key": "product-43"},
    )
    add(
        "other-field-path",
        "the envelope moved to another field of the same document",
        "authentication_failed",
        env,
        {**where, "field_path": "/reporter/name"},
    )
    add(
        "length-prefix-boundary",
        "id and partition key whose concatenation is unchanged ('item-0001' 'product-42' vs "
        "'item-0001p' 'roduct-42'): only the length prefixes tell them apart",
        "authentication_failed",
        env,
        {**where, "document_id": "item-0001p", "partition_key": "roduct-42"},
    )
    indexed = cases["array-element-path"]
    add(
        "concrete-index-path",
        "an array element's envelope checked against the concrete pointer /contacts/3/email "
        "instead of the schema path /contacts/*/email",
        "authentication_failed",
        indexed["envelope"],
        {**indexed["location"], "field_path": "/contacts/3/email"},
    )
    add(
        "ct-shorter-than-tag",
        "ct of 15 bytes cannot even hold the tag",
        "truncated",
        edit(ct=b64(unb64(env["ct"])[:15])),
    )
    add("ct-empty", "ct is the empty string", "truncated", edit(ct=""))
    # Key problems.
    add(
        "dek-bit-flipped",
        "wrapped DEK has one bit flipped: RSA-OAEP decoding fails",
        "unwrap_failed",
        edit(dek=flip(env["dek"], 100)),
    )
    add("kid-swapped", "kid names v2 but the DEK was wrapped under v1", "unwrap_failed", edit(kid=V2))
    add(
        "dek-from-other-envelope",
        "a DEK wrapped under v2 pasted into a v1 envelope (kid left at v1)",
        "unwrap_failed",
        edit(dek=cases["non-ascii-location"]["envelope"]["dek"]),
    )
    add(
        "unsupported-wrap", "wrap 'RSA-OAEP' (SHA-1) is not v1's wrap algorithm", "unwrap_failed", edit(wrap="RSA-OAEP")
    )
    add("unknown-kid", "kid names a version the keyring does not have", "unknown_kid", edit(kid="tracker-mek/v9"))
    add("versionless-kid", "kid without a version is never resolved to 'latest'", "unknown_kid", edit(kid=KEYRING_NAME))
    disabled = seal("disabled-kid", "secret under a disabled key", where, V3, DEK_D, wrap)
    add(
        "disabled-kid",
        "a genuine envelope under v3, which the keyring marks disabled",
        "kid_disabled",
        disabled["envelope"],
    )
    short = edit(dek=wrap(V1, DEK_SHORT), ct=b64(AESGCM(DEK_A).encrypt(fixed_iv("short-dek"), b'"x"', aad_of(where))))
    add("short-dek", "the wrapped DEK unwraps to 16 bytes, not 32", "bad_dek", short)
    # Malformed envelopes.
    add(
        "iv-padded",
        "iv with '=' characters appended (12 bytes never need padding anyway)",
        "malformed",
        edit(iv=env["iv"] + "=" * (-len(env["iv"]) % 4 or 4)),
    )
    add("ct-padded", "ct written with '=' padding", "malformed", edit(ct=env["ct"] + "=" * (-len(env["ct"]) % 4)))
    add(
        "dek-standard-alphabet",
        "dek written in the standard alphabet ('+' and '/')",
        "malformed",
        edit(dek=base64.b64encode(unb64(env["dek"])).rstrip(b"=").decode()),
    )
    add(
        "ct-whitespace", "ct with a newline in the middle", "malformed", edit(ct=env["ct"][:20] + "\n" + env["ct"][20:])
    )
    add(
        "ct-bad-character",
        "ct with a character outside the alphabet",
        "malformed",
        edit(ct=env["ct"][:20] + "!" + env["ct"][21:]),
    )
    add(
        "ct-non-canonical",
        "ct spelled with non-zero unused trailing bits (decodes to the same bytes)",
        "malformed",
        edit(ct=noncanonical(env["ct"])),
    )
    add(
        "ct-impossible-length",
        "ct whose length is 1 mod 4 (no byte string encodes to it)",
        "malformed",
        edit(ct=env["ct"] + "A" * ((1 - len(env["ct"])) % 4)),
    )
    add("iv-non-ascii", "iv containing a non-ASCII character", "malformed", edit(iv=env["iv"][:-1] + "é"))
    add("iv-not-a-string", "iv is a JSON number", "malformed", edit(iv=12))
    add("iv-wrong-length", "iv of 16 bytes", "malformed", edit(iv=b64(bytes(16))))
    add("dek-empty", "dek is the empty string", "malformed", edit(dek=""))
    add("kid-empty", "kid is the empty string", "malformed", edit(kid=""))
    add("kid-not-a-string", "kid is a JSON number", "malformed", edit(kid=1))
    add("field-missing", "no 'alg' member", "malformed", {k: v for k, v in env.items() if k != "alg"})
    add("field-extra", "an eighth member 'aad'", "malformed", edit(aad=""))
    add(
        "not-an-object-string",
        "the envelope serialized into a JSON string",
        "malformed",
        json.dumps(env, separators=(",", ":")),
    )
    add("not-an-object-array", "an array", "malformed", [env])
    add("not-an-object-null", "null", "malformed", None)
    add("version-2", "v is 2", "unsupported_version", edit(v=2))
    add("version-0", "v is 0", "unsupported_version", edit(v=0))
    add("version-string", 'v is the string "1"', "unsupported_version", edit(v="1"))
    add("version-true", "v is true (not the number 1)", "unsupported_version", edit(v=True))
    add("alg-a128gcm", "alg A128GCM", "unsupported_algorithm", edit(alg="A128GCM"))
    add("alg-lowercase", "alg compared case-sensitively", "unsupported_algorithm", edit(alg="a256gcm"))
    # The location: checked before the envelope is looked at.
    digits = cases["partition-key-digits"]
    add(
        "partition-key-number",
        'the partition key is the JSON number 42, not the string "42" the envelope was '
        "sealed for: refused, never turned into a string",
        "bad_location",
        digits["envelope"],
        {**digits["location"], "partition_key": 42},
    )
    # Authentic payloads that are not JSON as encrypt writes it (decrypt only: reencrypt and rewrap do not parse).
    for name, description, plaintext in BAD_PAYLOADS:
        sealed = seal_plaintext(name, plaintext, where, V1, DEK_A, wrap)
        out.append(
            {
                "name": name,
                "description": description,
                "location": where,
                "envelope": sealed["envelope"],
                "reason": "malformed",
                "plaintext_hex": sealed["plaintext_hex"],
            }
        )
    return out


def build(existing: dict | None) -> dict:
    keys = load_or_make_keys(existing)
    wrap = Wrapper(keys, existing.get("wrapped_deks", []) if existing else [])
    cases = {}
    for name, description, value, location, kid, dek in CASES:
        cases[name] = {
            "name": name,
            "description": description,
            "value": value,
            "location": location,
            **seal(name, value, location, kid, dek, wrap),
        }
    rewraps = []
    for name, target in (("string-ascii", V2), ("object", AZURE_KID), ("non-ascii-location", V1)):
        source = cases[name]
        dek = bytes.fromhex(source["dek_hex"])
        rewraps.append(
            {
                "name": f"{name}-to-{target.rsplit('/', 1)[-1][:8]}",
                "source_case": name,
                "target_kid": target,
                "location": source["location"],
                "envelope": {**source["envelope"], "kid": target, "dek": wrap(target, dek)},
            }
        )
    negative = negatives(cases, wrap)
    keyring = {
        "name": KEYRING_NAME,
        "keys": [
            {**jwk_from_private_key(keys[kid], kid), "status": status, "current": current, "created": created}
            for kid, (status, current, created) in KEY_STATES.items()
        ],
    }
    return {
        "format": "tracker-reencrypt envelope v1",
        "spec": "docs/ENVELOPE.md",
        "generator": "tests/vectors/generate.py",
        "notes": [
            "Binary values in envelopes are base64url without padding; *_hex values are lowercase hex.",
            "keyring is a JWKS with RSA private JWKs (RFC 7517/7518) and the local keyring's status/current/created "
            "members; write it to a file with mode 0600 to use it as a local: key provider.",
            "RSA-OAEP wrapping is randomized: wrapped_deks lists each DEK as wrapped once. Verify by unwrapping, "
            "not by re-wrapping.",
            "ct_hex is AES-256-GCM(dek, iv, plaintext, aad) = ciphertext || 16-byte tag and is deterministic: "
            "recompute it from dek_hex, iv_hex, plaintext_hex and aad_hex and compare byte for byte.",
            "plaintext_hex is the exact UTF-8 JSON that was encrypted; decoders must accept any valid JSON, so compare "
            "decrypted values as JSON values, and compare plaintext bytes only against plaintext_hex.",
            "rewrap entries: the source case's envelope with kid and dek replaced; iv and ct are byte-identical.",
            "negative entries: decrypting envelope at location with this keyring must fail with reason. Those with "
            "plaintext_hex are authentic (GCM accepts them) and fail only when the payload is parsed.",
            "encrypt_refused entries: encrypting value at location must fail with reason.",
        ],
        "aad_context": "tracker-reencrypt/envelope/v1",
        "keyring": keyring,
        "wrapped_deks": wrap.listing(),
        "field_paths": [
            {"pointer_parts": parts, "json_pointer": pointer, "field_path": path}
            for parts, pointer, path in FIELD_PATHS
        ],
        "cases": list(cases.values()),
        "rewrap": rewraps,
        "negative": negative,
        "encrypt_refused": [
            {
                "name": "envelope-as-value",
                "value": cases["string-ascii"]["envelope"],
                "location": cases["string-ascii"]["location"],
                "reason": "already_encrypted",
            },
            {
                "name": "too-deep",
                "value": nested(envelope.MAX_DEPTH + 1),
                "location": cases["depth-limit"]["location"],
                "reason": "not_json",
            },
            {
                "name": "partition-key-number",
                "value": "carol@example.com",
                "location": {**cases["partition-key-digits"]["location"], "partition_key": 42},
                "reason": "bad_location",
            },
        ],
    }


#: A "value" nested deeper than this is written on one line (the depth-limit vectors), not one level per line.
COMPACT_DEPTH = 16


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def render(document: dict) -> str:
    compact: dict[str, str] = {}

    def shelve(node):
        if isinstance(node, dict):
            return {
                key: spell(child) if key == "value" and depth(child) > COMPACT_DEPTH else shelve(child)
                for key, child in node.items()
            }
        if isinstance(node, list):
            return [shelve(child) for child in node]
        return node

    def spell(value) -> str:
        placeholder = f"@compact-{len(compact)}@"
        compact[json.dumps(placeholder)] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return placeholder

    text = json.dumps(shelve(document), indent=1, ensure_ascii=False) + "\n"
    for placeholder, value in compact.items():
        text = text.replace(placeholder, value)
    return text


def check(document: dict) -> None:
    """Every vector against the library: cases decrypt, negatives fail with their reason."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keyring.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document["keyring"], handle)
        provider = LocalKeyProvider(path)
        for case in document["cases"] + document["rewrap"]:
            where = envelope.Location(**case["location"])
            value = (
                case["value"]
                if "value" in case
                else next(c["value"] for c in document["cases"] if c["name"] == case["source_case"])
            )
            if "aad_hex" in case:
                assert envelope.associated_data(where).hex() == case["aad_hex"], case["name"]
            assert envelope.decrypt(case["envelope"], where, Keyring(provider)) == value, case["name"]
        for case in document["negative"]:
            where = envelope.Location(**case["location"])
            try:
                envelope.decrypt(case["envelope"], where, Keyring(provider))
            except EnvelopeError as exc:
                assert exc.reason == case["reason"], (case["name"], exc.reason, case["reason"])
            else:
                raise AssertionError(f"negative vector {case['name']} decrypted")
        for case in document["encrypt_refused"]:
            try:
                envelope.encrypt(case["value"], envelope.Location(**case["location"]), Keyring(provider))
            except EnvelopeError as exc:
                assert exc.reason == case["reason"], (case["name"], exc.reason, case["reason"])
            else:
                raise AssertionError(f"encrypt_refused vector {case['name']} was encrypted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file on disk differs from what would be written"
    )
    args = parser.parse_args()
    existing = json.loads(OUTPUT.read_text(encoding="utf-8")) if OUTPUT.exists() else None
    document = build(existing)
    check(document)
    text = render(document)
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == text
        print(f"{OUTPUT.name}: {'up to date' if same else 'WOULD CHANGE'}")
        return 0 if same else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(
        f"wrote {OUTPUT} ({len(document['cases'])} cases, {len(document['rewrap'])} rewraps, "
        f"{len(document['negative'])} negative)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
