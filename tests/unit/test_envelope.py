"""Envelope format v1 (docs/ENVELOPE.md): known-answer vectors, properties, every refusal.

The keyring is the vectors' own (tests/vectors/envelope-v1.json) written to a 0600 file and
served by the real LocalKeyProvider: no RSA key is generated here, so the module stays fast.
It holds tracker-mek/v1 and v2 (enabled, v2 current), v3 (disabled) and a Key Vault-style kid.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tracker_reencrypt import documents, envelope
from tracker_reencrypt.envelope import MAX_DEPTH, DataKey, Location
from tracker_reencrypt.errors import EnvelopeError, KeyDisabledError, KeyNotFoundError, KeyProviderError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "envelope-v1.json").read_text(encoding="utf-8"))
CASES = {case["name"]: case for case in VECTORS["cases"]}
V1, V2, V3 = "tracker-mek/v1", "tracker-mek/v2", "tracker-mek/v3"
SECRET = "SECRET-plaintext-Ünïcødé-4711"
WHERE = Location("item-0001", "product-42", "/reporter/email")

REASONS = {
    "malformed",
    "truncated",
    "unsupported_version",
    "unsupported_algorithm",
    "authentication_failed",
    "unknown_kid",
    "kid_disabled",
    "unwrap_failed",
    "bad_dek",
    "already_encrypted",
    "not_json",
    "bad_location",
}

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write_keyring(path: Path, document: dict) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    return path


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> LocalKeyProvider:
    return LocalKeyProvider(write_keyring(tmp_path_factory.mktemp("keys") / "keyring.json", VECTORS["keyring"]))


@pytest.fixture(scope="module")
def keyring(provider) -> Keyring:
    """Shared across the module (and hypothesis examples): its caches never change a verdict."""
    return Keyring(provider)


@pytest.fixture(scope="module")
def sealed(keyring) -> dict:
    """A live envelope of SECRET at WHERE under v1, made by envelope.encrypt."""
    return envelope.encrypt(SECRET, WHERE, keyring, kid=V1)


def location_of(case: dict) -> Location:
    return Location(**case["location"])


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def flip(text: str, index: int, bit: int = 1) -> str:
    raw = bytearray(unb64(text))
    raw[index] ^= bit
    return b64(bytes(raw))


def reason_of(call) -> str:
    with pytest.raises(EnvelopeError) as caught:
        call()
    assert caught.value.reason in REASONS
    return caught.value.reason


def everything_said(exc: BaseException) -> str:
    """The message, repr and the whole formatted chain (context included) of an exception."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen = exc.__context__ or exc.__cause__
    while seen is not None:
        parts += [str(seen), repr(seen)]
        seen = seen.__context__ or seen.__cause__
    return "\n".join(parts)


# -- known-answer vectors ------------------------------------------------------------------


def test_vectors_cover_every_json_kind():
    kinds = {type(case["value"]).__name__ for case in VECTORS["cases"]}
    assert kinds == {"str", "int", "float", "bool", "NoneType", "dict", "list"}
    assert "" in [case["value"] for case in VECTORS["cases"]]
    assert {n["reason"] for n in VECTORS["negative"]} == REASONS - {"already_encrypted", "not_json"}
    assert {n["reason"] for n in VECTORS["encrypt_refused"]} == {"already_encrypted", "not_json", "bad_location"}


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vector_is_reproduced_byte_for_byte(case):
    aad = envelope.associated_data(location_of(case))
    assert aad.hex() == case["aad_hex"]
    plaintext = json.dumps(case["value"], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert plaintext.hex() == case["plaintext_hex"]
    dek, iv = bytes.fromhex(case["dek_hex"]), bytes.fromhex(case["iv_hex"])
    ct = AESGCM(dek).encrypt(iv, plaintext, aad)
    assert ct.hex() == case["ct_hex"]
    assert case["envelope"]["ct"] == b64(ct) and case["envelope"]["iv"] == b64(iv)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_encrypt_with_the_fixed_dek_and_nonce_gives_the_vector_envelope(case, monkeypatch):
    """envelope.encrypt itself (encoding, AAD, sealing, field encodings) with a fixed DEK+nonce."""
    fixed = DataKey(case["kid"], "RSA-OAEP-256", bytes.fromhex(case["dek_hex"]), unb64(case["envelope"]["dek"]))
    fixed_keyring = SimpleNamespace(data_key_for_encryption=lambda kid=None: fixed)
    monkeypatch.setattr(envelope, "os", SimpleNamespace(urandom=lambda n: bytes.fromhex(case["iv_hex"])))
    assert envelope.encrypt(case["value"], location_of(case), fixed_keyring) == case["envelope"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vector_decrypts_with_its_keyring(case, provider, keyring):
    assert envelope.decrypt(case["envelope"], location_of(case), keyring) == case["value"]
    wrapped = unb64(case["envelope"]["dek"])
    assert provider.unwrap(case["kid"], "RSA-OAEP-256", wrapped).hex() == case["dek_hex"]


@pytest.mark.parametrize("case", VECTORS["rewrap"], ids=lambda c: c["name"])
def test_rewrap_vector_keeps_iv_and_ct_and_decrypts(case, keyring):
    source = CASES[case["source_case"]]["envelope"]
    rewrapped = case["envelope"]
    assert {k for k in rewrapped if rewrapped[k] != source[k]} == {"kid", "dek"}
    assert rewrapped["kid"] == case["target_kid"]
    assert envelope.decrypt(rewrapped, location_of(case), keyring) == CASES[case["source_case"]]["value"]


@pytest.mark.parametrize("case", VECTORS["negative"], ids=lambda c: c["name"])
def test_negative_vector_fails_with_its_reason(case, provider):
    # A fresh keyring per vector: the verdict must not depend on what earlier tests cached.
    assert reason_of(lambda: envelope.decrypt(case["envelope"], location_of(case), Keyring(provider))) == case["reason"]


@pytest.mark.parametrize("case", VECTORS["negative"], ids=lambda c: c["name"])
def test_negative_vector_fails_the_same_with_a_warm_cache(case, keyring):
    for good in VECTORS["cases"]:
        envelope.decrypt(good["envelope"], location_of(good), keyring)
    assert reason_of(lambda: envelope.decrypt(case["envelope"], location_of(case), keyring)) == case["reason"]


@pytest.mark.parametrize("case", VECTORS["encrypt_refused"], ids=lambda c: c["name"])
def test_encrypt_refused_vector(case, keyring):
    assert reason_of(lambda: envelope.encrypt(case["value"], location_of(case), keyring)) == case["reason"]


@pytest.mark.parametrize("example", VECTORS["field_paths"], ids=lambda e: e["json_pointer"] or "root")
def test_field_path_rule_matches_documents_module(example):
    parts = tuple(example["pointer_parts"])
    assert documents.schema_path(parts) == example["field_path"]
    assert documents.json_pointer(parts) == example["json_pointer"]


def test_aad_worked_example_from_the_spec():
    aad = envelope.associated_data(Location("item-0001", "product-42", "/reporter/email"))
    assert aad == (
        b"tracker-reencrypt/envelope/v1"
        + b"\x00\x00\x00\x09"
        + b"item-0001"
        + b"\x00\x00\x00\x0a"
        + b"product-42"
        + b"\x00\x00\x00\x0f"
        + b"/reporter/email"
    )
    # Lengths count UTF-8 bytes, not characters.
    assert envelope.associated_data(Location("é", "", "")).endswith(b"\x00\x00\x00\x02\xc3\xa9" + bytes(8))


# -- properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
locations = st.builds(Location, st.text(max_size=20), st.text(max_size=20), st.text(max_size=30))


@FAST
@given(value=json_values, where=locations)
def test_any_json_value_round_trips(keyring, value, where):
    assume(not envelope.is_envelope(value))
    sealed_value = envelope.encrypt(value, where, keyring)
    assert envelope.is_envelope(sealed_value)
    assert json.loads(json.dumps(sealed_value)) == sealed_value  # the envelope itself is plain JSON
    assert envelope.decrypt(sealed_value, where, keyring) == value


@FAST
@given(value=json_values, where=locations, other=locations)
def test_any_other_location_is_refused(keyring, value, where, other):
    assume(not envelope.is_envelope(value) and other != where)
    sealed_value = envelope.encrypt(value, where, keyring)
    assert reason_of(lambda: envelope.decrypt(sealed_value, other, keyring)) == "authentication_failed"


# -- every tamper case ---------------------------------------------------------------------


def _edit(**changes):
    return lambda env: {**env, **changes}


def _drop(name):
    return lambda env: {k: v for k, v in env.items() if k != name}


TAMPER = {
    "ct-bit": (lambda env: {**env, "ct": flip(env["ct"], 0)}, WHERE, "authentication_failed"),
    "tag-bit": (
        lambda env: {**env, "ct": flip(env["ct"], len(unb64(env["ct"])) - 1, 0x80)},
        WHERE,
        "authentication_failed",
    ),
    "iv-bit": (lambda env: {**env, "iv": flip(env["iv"], 11)}, WHERE, "authentication_failed"),
    "dek-bit": (lambda env: {**env, "dek": flip(env["dek"], 0)}, WHERE, "unwrap_failed"),
    "dek-last-bit": (lambda env: {**env, "dek": flip(env["dek"], 255, 0x80)}, WHERE, "unwrap_failed"),
    "ct-truncated-by-one": (lambda env: {**env, "ct": b64(unb64(env["ct"])[:-1])}, WHERE, "authentication_failed"),
    "ct-truncated-to-tag": (lambda env: {**env, "ct": b64(unb64(env["ct"])[-16:])}, WHERE, "authentication_failed"),
    "ct-truncated-below-tag": (lambda env: {**env, "ct": b64(unb64(env["ct"])[:15])}, WHERE, "truncated"),
    "ct-appended-byte": (lambda env: {**env, "ct": b64(unb64(env["ct"]) + b"\0")}, WHERE, "authentication_failed"),
    "other-document-id": (
        lambda env: env,
        Location("item-0002", WHERE.partition_key, WHERE.field_path),
        "authentication_failed",
    ),
    "other-partition-key": (
        lambda env: env,
        Location(WHERE.document_id, "product-43", WHERE.field_path),
        "authentication_failed",
    ),
    "other-field-path": (
        lambda env: env,
        Location(WHERE.document_id, WHERE.partition_key, "/reporter/name"),
        "authentication_failed",
    ),
    "unknown-kid": (_edit(kid="tracker-mek/v99"), WHERE, "unknown_kid"),
    "versionless-kid": (_edit(kid="tracker-mek"), WHERE, "unknown_kid"),
    "kid-of-other-version": (_edit(kid=V2), WHERE, "unwrap_failed"),
    "wrap-sha1": (_edit(wrap="RSA-OAEP"), WHERE, "unwrap_failed"),
    "iv-padded": (lambda env: {**env, "iv": env["iv"] + "=="}, WHERE, "malformed"),
    "ct-plus": (lambda env: {**env, "ct": "+" + env["ct"][1:]}, WHERE, "malformed"),
    "ct-slash": (lambda env: {**env, "ct": env["ct"][:-1] + "/"}, WHERE, "malformed"),
    "ct-impossible-length": (
        lambda env: {**env, "ct": env["ct"] + "A" * ((1 - len(env["ct"])) % 4)},
        WHERE,
        "malformed",
    ),
    "dek-space": (lambda env: {**env, "dek": env["dek"][:8] + " " + env["dek"][8:]}, WHERE, "malformed"),
    "iv-junk": (_edit(iv="not base64!"), WHERE, "malformed"),
    "iv-bytes": (_edit(iv=[1, 2, 3]), WHERE, "malformed"),
    "iv-short": (lambda env: {**env, "iv": b64(unb64(env["iv"])[:8])}, WHERE, "malformed"),
    "dek-empty": (_edit(dek=""), WHERE, "malformed"),
    "kid-null": (_edit(kid=None), WHERE, "malformed"),
    "wrap-empty": (_edit(wrap=""), WHERE, "malformed"),
    "missing-ct": (_drop("ct"), WHERE, "malformed"),
    "missing-v": (_drop("v"), WHERE, "malformed"),
    "extra-field": (_edit(tag="AAAA"), WHERE, "malformed"),
    "v2": (_edit(v=2), WHERE, "unsupported_version"),
    "v-string": (_edit(v="1"), WHERE, "unsupported_version"),
    "v-true": (_edit(v=True), WHERE, "unsupported_version"),
    "v-null": (_edit(v=None), WHERE, "unsupported_version"),
    "alg-other": (_edit(alg="A128GCM"), WHERE, "unsupported_algorithm"),
    "alg-list": (_edit(alg=["A256GCM"]), WHERE, "unsupported_algorithm"),
    "string": (lambda env: json.dumps(env), WHERE, "malformed"),
    "list": (lambda env: [env], WHERE, "malformed"),
    "none": (lambda env: None, WHERE, "malformed"),
    "bytes": (lambda env: json.dumps(env).encode(), WHERE, "malformed"),
}


@pytest.mark.parametrize("name", TAMPER)
def test_tampered_envelope_is_refused_with_its_reason(name, sealed, provider):
    mutate, where, expected = TAMPER[name]
    tampered = mutate(copy.deepcopy(sealed))
    assert reason_of(lambda: envelope.decrypt(tampered, where, Keyring(provider))) == expected


def test_disabled_kid_is_refused(provider):
    disabled = next(n for n in VECTORS["negative"] if n["name"] == "disabled-kid")
    assert provider.versions()[2].kid == V3 and not provider.versions()[2].enabled
    sealed_v3, where = disabled["envelope"], location_of(disabled)
    assert reason_of(lambda: envelope.decrypt(sealed_v3, where, Keyring(provider))) == "kid_disabled"
    assert reason_of(lambda: envelope.rewrap(sealed_v3, where, Keyring(provider), V2)) == "kid_disabled"


def test_short_dek_is_refused_before_aes_sees_it(provider):
    short = next(n for n in VECTORS["negative"] if n["name"] == "short-dek")
    assert len(provider.unwrap(V1, "RSA-OAEP-256", unb64(short["envelope"]["dek"]))) == 16
    assert reason_of(lambda: envelope.decrypt(short["envelope"], location_of(short), Keyring(provider))) == "bad_dek"


@st.composite
def mutated_envelopes(draw, original: dict):
    """1-3 random edits of an envelope: fields replaced, dropped, added, spelled or bit-flipped."""
    value = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(value, dict):
            break
        names = sorted(value) or ["v"]
        name = draw(st.sampled_from(names))
        op = draw(st.sampled_from(["replace", "drop", "add", "spell", "bits", "whole", "text"]))
        if op == "replace":
            value[name] = draw(json_values)
        elif op == "drop":
            value.pop(name, None)
        elif op == "add":
            value[draw(st.text(max_size=6))] = draw(json_values)
        elif op == "spell" and isinstance(value.get(name), str):
            text = value[name]
            at = draw(st.integers(0, len(text)))
            char = draw(st.sampled_from("AZaz09-_+/= \n!é") | st.characters())
            edit = draw(st.sampled_from(["insert", "replace", "delete", "cut"]))
            value[name] = {
                "insert": text[:at] + char + text[at:],
                "replace": text[:at] + char + text[at + 1 :],
                "delete": text[:at] + text[at + 1 :],
                "cut": text[:at],
            }[edit]
        elif op == "bits" and name in ("iv", "ct", "dek") and isinstance(value.get(name), str):
            try:
                raw = bytearray(unb64(value[name]))
            except ValueError:
                continue
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
                value[name] = b64(bytes(raw))
        elif op == "whole":
            value = draw(json_values)
        elif op == "text":
            text = json.dumps(value)
            at = draw(st.integers(0, len(text) - 1))
            try:
                value = json.loads(text[:at] + draw(st.characters()) + text[at + 1 :])
            except ValueError:
                pass
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutation_raises_nothing_but_envelope_error(keyring, sealed, data):
    mutated = data.draw(mutated_envelopes(sealed))
    try:
        value = envelope.decrypt(mutated, WHERE, keyring)
    except EnvelopeError as exc:
        assert exc.reason in REASONS
        assert SECRET not in everything_said(exc)
    else:
        assert value == SECRET  # only edits that change nothing that counts (e.g. "v": 1.0)
    try:
        envelope.rewrap(mutated, WHERE, keyring, V2)
    except EnvelopeError as exc:
        assert exc.reason in REASONS
        assert SECRET not in everything_said(exc)


# -- rewrap, reencrypt ---------------------------------------------------------------------


def test_rewrap_changes_only_kid_and_dek_and_still_decrypts(sealed, keyring, provider):
    rewrapped = envelope.rewrap(sealed, WHERE, keyring, V2)
    assert {k for k in sealed if rewrapped[k] != sealed[k]} == {"kid", "dek"}
    assert rewrapped["kid"] == V2 and rewrapped["wrap"] == "RSA-OAEP-256"
    assert rewrapped["iv"] == sealed["iv"] and rewrapped["ct"] == sealed["ct"]
    assert envelope.decrypt(rewrapped, WHERE, Keyring(provider)) == SECRET  # cold: really unwrapped under v2
    # And back again, through the Key Vault-style kid: the AAD contract never involved the kid.
    there = envelope.rewrap(rewrapped, WHERE, keyring, VECTORS["cases"][-1]["kid"])
    back = envelope.rewrap(there, WHERE, Keyring(provider), V1)
    assert envelope.decrypt(back, WHERE, Keyring(provider)) == SECRET
    assert (back["iv"], back["ct"]) == (sealed["iv"], sealed["ct"])


@pytest.mark.parametrize("name", TAMPER)
def test_rewrap_refuses_what_decrypt_refuses(name, sealed, provider):
    """A tampered field is never laundered under the new key, nor one moved to another place."""
    mutate, where, expected = TAMPER[name]
    tampered = mutate(copy.deepcopy(sealed))
    assert reason_of(lambda: envelope.rewrap(tampered, where, Keyring(provider), V2)) == expected


def test_rewrap_or_reencrypt_to_an_unusable_target_is_a_key_provider_error(sealed, keyring):
    """The target kid is the sweep's choice, not the envelope's fault: not an EnvelopeError."""
    for operation in (
        lambda kid: envelope.rewrap(sealed, WHERE, keyring, kid),
        lambda kid: envelope.reencrypt(sealed, WHERE, keyring, kid),
    ):
        with pytest.raises(KeyNotFoundError):
            operation("tracker-mek/v99")
        with pytest.raises(KeyDisabledError):
            operation(V3)
    with pytest.raises(KeyProviderError):
        envelope.encrypt("x", WHERE, keyring, kid=V3)


def test_reencrypt_replaces_dek_iv_and_ct(sealed, keyring, provider):
    moved = envelope.reencrypt(sealed, WHERE, keyring, V2)
    assert moved["kid"] == V2
    assert moved["iv"] != sealed["iv"] and moved["ct"] != sealed["ct"] and moved["dek"] != sealed["dek"]
    old_dek = provider.unwrap(V1, "RSA-OAEP-256", unb64(sealed["dek"]))
    new_dek = provider.unwrap(V2, "RSA-OAEP-256", unb64(moved["dek"]))
    assert old_dek != new_dek
    assert envelope.decrypt(moved, WHERE, Keyring(provider)) == SECRET
    elsewhere = Location("x", "y", "/z")
    assert reason_of(lambda: envelope.reencrypt(sealed, elsewhere, keyring, V2)) == "authentication_failed"


# -- encrypt refusals ----------------------------------------------------------------------


def test_encrypt_refuses_an_envelope(sealed, keyring):
    assert reason_of(lambda: envelope.encrypt(sealed, WHERE, keyring)) == "already_encrypted"
    # Detection is by shape alone: any object with exactly the seven members counts.
    lookalike = dict.fromkeys(["v", "kid", "wrap", "dek", "alg", "iv", "ct"], None)
    assert envelope.is_envelope(lookalike)
    assert reason_of(lambda: envelope.encrypt(lookalike, WHERE, keyring)) == "already_encrypted"
    assert not envelope.is_envelope({**sealed, "note": 1})
    assert not envelope.is_envelope({k: v for k, v in sealed.items() if k != "ct"})
    assert not envelope.is_envelope([sealed])


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), {1j}, b"bytes", object(), "lone \ud800 surrogate", {("tuple",): 1}],
    ids=["nan", "inf", "set", "bytes", "object", "surrogate", "tuple-key"],
)
def test_encrypt_refuses_what_is_not_json(value, keyring):
    assert reason_of(lambda: envelope.encrypt(value, WHERE, keyring)) == "not_json"


def test_encrypt_refuses_absurdly_deep_values(keyring):
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert reason_of(lambda: envelope.encrypt(deep, WHERE, keyring)) == "not_json"


def nested(levels: int, leaf="x", as_object: bool = False):
    value = leaf
    for _ in range(levels):
        value = {"a": value} if as_object else [value]
    return value


@pytest.mark.parametrize("as_object", [False, True], ids=["arrays", "objects"])
def test_one_nesting_limit_for_what_encrypt_takes_and_decrypt_returns(as_object, keyring):
    """MAX_DEPTH levels of objects/arrays are fine both ways; one more is refused both ways, saying so."""
    assert MAX_DEPTH == documents.MAX_DEPTH == 128  # one stated limit, Cosmos DB's, for documents and fields
    at_limit, past_limit = nested(MAX_DEPTH, as_object=as_object), nested(MAX_DEPTH + 1, as_object=as_object)
    assert envelope.decrypt(envelope.encrypt(at_limit, WHERE, keyring), WHERE, keyring) == at_limit
    with pytest.raises(EnvelopeError) as caught:
        envelope.encrypt(past_limit, WHERE, keyring)
    assert caught.value.reason == "not_json" and "deeper than 128 levels" in str(caught.value)
    text = json.dumps(past_limit, separators=(",", ":")).encode()
    with pytest.raises(EnvelopeError) as caught:
        envelope.decrypt(seal_payload(text, keyring), WHERE, keyring)
    assert caught.value.reason == "malformed" and "deeper than 128 levels" in str(caught.value)


def test_brackets_inside_strings_do_not_count_as_nesting(keyring):
    value = {"text": "[{" * 500, "list": ["]}" * 500]}
    assert envelope.decrypt(envelope.encrypt(value, WHERE, keyring), WHERE, keyring) == value


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, {"1": "a", 1: "b"}, {None: 1}, {True: 1}, [{"ok": {2.5: "x"}}]],
    ids=["int", "int-and-string", "none", "bool", "float-deep-down"],
)
def test_encrypt_refuses_member_names_that_are_not_strings(value, keyring):
    """json.dumps would write 1 as "1" (and {1: .., "1": ..} as a duplicate): decrypt could not give it back."""
    with pytest.raises(EnvelopeError) as caught:
        envelope.encrypt(value, WHERE, keyring)
    assert caught.value.reason == "not_json" and "member name that is not a string" in str(caught.value)


def seal_payload(plaintext: bytes, keyring: Keyring, where: Location = WHERE) -> dict:
    """An authentic v1 envelope of arbitrary plaintext bytes, as another implementation might write."""
    key = keyring.data_key_for_encryption(V1)
    iv = os.urandom(12)
    ct = AESGCM(key.plaintext).encrypt(iv, plaintext, envelope.associated_data(where))
    return {
        "v": 1,
        "kid": V1,
        "wrap": key.wrap_algorithm,
        "dek": b64(key.wrapped),
        "alg": "A256GCM",
        "iv": b64(iv),
        "ct": b64(ct),
    }


@pytest.mark.parametrize(
    "plaintext",
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b'{"estimate":NaN}',
        b"[1,2,Infinity]",
        b"1e999",
        b"-1e999",
        b"1" * 400 + b".5",
        b'"\\udc80"',
        b'{"\\ud800":1}',
        b'["ok","\\ud83d"]',
        b'"\\ud83d\\ud83d"',
    ],
)
def test_decrypt_refuses_payloads_that_are_not_json_values(plaintext, keyring):
    """NaN/Infinity tokens are not JSON (Python's json.loads takes them by default); a number no double holds
    and a lone surrogate have no JSON value either. Refused like any invalid JSON: malformed."""
    assert reason_of(lambda: envelope.decrypt(seal_payload(plaintext, keyring), WHERE, keyring)) == "malformed"


@pytest.mark.parametrize(
    ("plaintext", "value"),
    [
        (b' \n{ "a" : [ 1 , 2 ] }\t', {"a": [1, 2]}),  # any spacing
        (b'"\\ud83d\\ude80 \\u00e9"', "\U0001f680 é"),  # an escaped surrogate pair is one character
        (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, then text: not a surrogate
        (b'{"a":1,"a":2}', {"a": 2}),  # a repeated member name: the last wins, as in JSON.parse
        (b"1E2", 100.0),
        (b"-0", 0),
        (b"1.7976931348623157e308", 1.7976931348623157e308),
        (b"18446744073709551616", 2**64),
    ],
)
def test_decrypt_accepts_any_json_value_whatever_its_spelling(plaintext, value, keyring):
    assert envelope.decrypt(seal_payload(plaintext, keyring), WHERE, keyring) == value


def test_reencrypt_and_rewrap_move_a_payload_decrypt_refuses(keyring):
    """They authenticate but never parse the payload: a sweep moves such a field, verify reports it."""
    sealed_nan = seal_payload(b"NaN", keyring)
    for moved in (envelope.reencrypt(sealed_nan, WHERE, keyring, V2), envelope.rewrap(sealed_nan, WHERE, keyring, V2)):
        assert moved["kid"] == V2
        assert reason_of(lambda moved=moved: envelope.decrypt(moved, WHERE, keyring)) == "malformed"


# -- the location: checked first -----------------------------------------------------------

BAD_LOCATIONS = {
    "surrogate-id": Location("\udc80", "p", "/f"),
    "surrogate-pk": Location("d", "p\ud800", "/f"),
    "surrogate-path": Location("d", "p", "/\udfff"),
    "number-pk": Location("d", 42, "/f"),
    "number-id": Location(7, "p", "/f"),
    "none-path": Location("d", "p", None),
}
OPERATIONS = {
    "decrypt": lambda env, where, keyring: envelope.decrypt(env, where, keyring),
    "reencrypt": lambda env, where, keyring: envelope.reencrypt(env, where, keyring, V2),
    "rewrap": lambda env, where, keyring: envelope.rewrap(env, where, keyring, V2),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("where", BAD_LOCATIONS.values(), ids=BAD_LOCATIONS)
def test_a_bad_location_is_refused_before_the_envelope_or_any_key_is_looked_at(operation, where, sealed, provider):
    call, cold = OPERATIONS[operation], Keyring(provider)
    broken = [sealed, None, {**sealed, "v": 2}, {**sealed, "dek": flip(sealed["dek"], 0)}, {**sealed, "kid": V3}]
    for candidate in broken:
        assert reason_of(lambda candidate=candidate: call(candidate, where, cold)) == "bad_location"
    assert (cold.stats.unwrap_cache_hits, cold.stats.unwrap_cache_misses, cold.stats.provider_wraps) == (0, 0, 0)


@pytest.mark.parametrize("where", BAD_LOCATIONS.values(), ids=BAD_LOCATIONS)
def test_encrypt_checks_the_location_first_too(where, sealed, keyring):
    for value in ("x", sealed, float("nan")):
        assert reason_of(lambda value=value: envelope.encrypt(value, where, keyring)) == "bad_location"
    assert reason_of(lambda: envelope.encrypt("x", where, keyring, kid=V3)) == "bad_location"  # before the key


@pytest.mark.parametrize("partition_key", [42, 42.0, True, None, b"42", ["42"]], ids=repr)
def test_a_partition_key_that_is_not_a_string_is_refused_never_stringified(partition_key, keyring):
    """Vector partition-key-digits is sealed for the string "42": the number 42 must not open it."""
    digits = CASES["partition-key-digits"]
    where = Location(digits["location"]["document_id"], partition_key, digits["location"]["field_path"])
    for operation in OPERATIONS.values():
        with pytest.raises(EnvelopeError) as caught:
            operation(digits["envelope"], where, keyring)
        assert caught.value.reason == "bad_location"
        assert f"partition key must be a string, not {type(partition_key).__name__}" in str(caught.value)
    assert reason_of(lambda: envelope.encrypt("x", where, keyring)) == "bad_location"
    # The string does: the sweep's document layer is what turns a stored non-string into one, with str().
    assert envelope.decrypt(digits["envelope"], location_of(digits), keyring) == digits["value"]
    assert documents.location({"id": "item-0001"}, 42, ("reporter", "email")) == location_of(digits)


# -- the unwrap cache in the check order ---------------------------------------------------


def test_the_unwrap_cache_answers_after_the_envelope_checks_and_before_the_kid_checks(sealed, tmp_path):
    """A cached DEK skips the provider (kid known, kid enabled, OAEP), nothing else: the wrap algorithm,
    the location, GCM and the payload are checked on every call, so with key states unchanged the verdict
    is the cold one; a kid disabled since is honoured once the entry goes (TTL or forget())."""
    provider = LocalKeyProvider(write_keyring(tmp_path / "keyring.json", VECTORS["keyring"]))
    keyring = Keyring(provider)
    assert envelope.decrypt(sealed, WHERE, keyring) == SECRET  # now cached under (v1, dek)
    provider.set_enabled(V1, False)
    assert reason_of(lambda: envelope.decrypt(sealed, WHERE, Keyring(provider))) == "kid_disabled"  # cold
    assert reason_of(lambda: envelope.decrypt({**sealed, "wrap": "RSA-OAEP"}, WHERE, keyring)) == "unwrap_failed"
    assert reason_of(lambda: envelope.decrypt({**sealed, "alg": "A128GCM"}, WHERE, keyring)) == "unsupported_algorithm"
    elsewhere = Location("item-0002", WHERE.partition_key, WHERE.field_path)
    assert reason_of(lambda: envelope.decrypt(sealed, elsewhere, keyring)) == "authentication_failed"
    hits = keyring.stats.unwrap_cache_hits
    assert envelope.decrypt(sealed, WHERE, keyring) == SECRET  # warm: the disabled kid is not asked about
    assert keyring.stats.unwrap_cache_hits == hits + 1 and keyring.stats.provider_unwraps == 1
    keyring.forget()
    assert reason_of(lambda: envelope.decrypt(sealed, WHERE, keyring)) == "kid_disabled"


# -- secrecy of errors ---------------------------------------------------------------------


def test_errors_never_carry_plaintext_or_dek(sealed, provider):
    dek = provider.unwrap(V1, "RSA-OAEP-256", unb64(sealed["dek"]))
    forbidden = [SECRET, dek.hex(), b64(dek), repr(dek), json.dumps(SECRET, ensure_ascii=False)]
    for name, (mutate, where, _) in TAMPER.items():
        tampered = mutate(copy.deepcopy(sealed))
        with pytest.raises(EnvelopeError) as caught:
            envelope.decrypt(tampered, where, Keyring(provider))
        said = everything_said(caught.value)
        for secret in forbidden:
            assert secret not in said, name
    with pytest.raises(EnvelopeError) as caught:
        envelope.encrypt(sealed, WHERE, Keyring(provider))
    assert SECRET not in everything_said(caught.value)
    with pytest.raises(EnvelopeError) as caught:
        envelope.encrypt({"ssn": SECRET, "bad": float("nan")}, WHERE, Keyring(provider))
    assert SECRET not in everything_said(caught.value)


def test_vector_errors_never_carry_the_dek(provider):
    deks = {case["dek_hex"] for case in VECTORS["cases"]}
    for case in VECTORS["negative"]:
        with pytest.raises(EnvelopeError) as caught:
            envelope.decrypt(case["envelope"], location_of(case), Keyring(provider))
        said = everything_said(caught.value)
        for dek_hex in deks:
            assert dek_hex not in said and b64(bytes.fromhex(dek_hex)) not in said


def test_data_key_repr_hides_the_key():
    key = DataKey(V1, "RSA-OAEP-256", bytes(range(32)), b"wrapped")
    assert bytes(range(32)).hex() not in repr(key) and "\\x1f" not in repr(key) and "plaintext" not in repr(key)


def _canonical_by_reencoding(text: str) -> bytes | None:
    """The reference rule: the bytes, when re-encoding them gives ``text`` back exactly."""
    if "=" in text or not text.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    return raw if envelope.b64encode(raw) == text else None


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=40).map(envelope.b64encode),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=12),
        st.text(alphabet="AQgw_-+/=. \n\x00é", max_size=8),
    )
)
def test_base64url_decoding_accepts_exactly_the_canonical_spellings(text):
    expected = _canonical_by_reencoding(text)
    if expected is None:
        with pytest.raises(EnvelopeError) as caught:
            envelope.b64decode(text, "ct")
        assert caught.value.reason == "malformed"
    else:
        assert envelope.b64decode(text, "ct") == expected
