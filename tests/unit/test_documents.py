"""The pure logic: what a document becomes under the target key. No store, no queue."""

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker_reencrypt import envelope
from tracker_reencrypt.documents import (
    MAX_DEPTH,
    check_document,
    document_label,
    find_envelopes,
    json_pointer,
    location,
    rekey_document,
    schema_path,
)
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider

PK = "product-001"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    provider = LocalKeyProvider(tmp_path_factory.mktemp("keys") / "keyring.json")
    v1 = provider.init().kid
    v2 = provider.rotate().kid
    v3 = provider.rotate().kid
    return provider, v1, v2, v3


def seal(body, parts, value, keyring, kid):
    return envelope.encrypt(value, location(body, PK, parts), keyring, kid)


def plaintexts(body, keyring):
    return {
        json_pointer(parts): envelope.decrypt(sealed, location(body, PK, parts), keyring)
        for parts, sealed in find_envelopes(body)
    }


def item(keyring, kid, document_id="doc-1"):
    body = {
        "id": document_id,
        "productId": PK,
        "type": "item",
        "status": "open",
        "customFields": [{"name": "a", "value": None}, {"name": "b", "value": None}],
    }
    body["title"] = seal(body, ("title",), "Crash on login", keyring, kid)
    body["customFields"][1]["value"] = seal(body, ("customFields", 1, "value"), {"phone": "+1-555"}, keyring, kid)
    return body


def test_paths_name_array_positions_concretely_and_bind_to_the_schema():
    parts = ("customFields", 3, "va/l~ue")
    assert json_pointer(parts) == "/customFields/3/va~1l~0ue"
    assert schema_path(parts) == "/customFields/*/va~1l~0ue"


def test_every_field_moves_to_the_target_and_keeps_its_value(keys):
    provider, v1, v2, _ = keys
    keyring = Keyring(provider)
    body = item(keyring, v1)
    before = copy.deepcopy(body)
    plan = rekey_document(body, PK, target_kid=v2, keyring=keyring)
    assert body == before  # the input is never mutated
    assert plan.count("reencrypted") == 2 and not plan.failures
    assert {sealed["kid"] for _, sealed in find_envelopes(plan.new_body)} == {v2}
    assert plaintexts(plan.new_body, keyring) == plaintexts(before, keyring)
    assert {k: v for k, v in plan.new_body.items() if k not in ("title", "customFields")} == {
        k: v for k, v in before.items() if k not in ("title", "customFields")
    }


def test_rewrap_keeps_ciphertexts_and_moves_only_the_data_key(keys):
    provider, v1, v2, _ = keys
    keyring = Keyring(provider)
    body = item(keyring, v1)
    plan = rekey_document(body, PK, target_kid=v2, keyring=keyring, mode="rewrap")
    for (_, old), (_, new) in zip(find_envelopes(body), find_envelopes(plan.new_body), strict=True):
        assert (old["iv"], old["ct"]) == (new["iv"], new["ct"])
        assert new["kid"] == v2 and new["dek"] != old["dek"]


def test_a_document_already_on_target_needs_no_write(keys):
    provider, _, v2, _ = keys
    keyring = Keyring(provider)
    plan = rekey_document(item(keyring, v2), PK, target_kid=v2, keyring=keyring)
    assert plan.new_body is None and plan.count("on_target") == 2


def test_source_kids_limit_what_moves(keys):
    provider, v1, v2, v3 = keys
    keyring = Keyring(provider)
    body = item(keyring, v1)
    body["title"] = seal(body, ("title",), "other", keyring, v3)
    plan = rekey_document(body, PK, target_kid=v2, keyring=keyring, source_kids=frozenset({v1}))
    assert [(f.pointer, f.action) for f in plan.fields] == [
        ("/customFields/1/value", "reencrypted"),
        ("/title", "not_source"),
    ]
    assert plan.new_body["title"] == body["title"]


@pytest.mark.parametrize("mode", ["reencrypt", "rewrap"])
def test_a_field_that_does_not_decrypt_blocks_the_whole_document_and_says_where(keys, mode):
    provider, v1, v2, _ = keys
    keyring = Keyring(provider)
    body = item(keyring, v1)
    ct = envelope.b64decode(body["customFields"][1]["value"]["ct"], "ct")
    body["customFields"][1]["value"]["ct"] = envelope.b64encode(bytes([ct[0] ^ 1]) + ct[1:])
    plan = rekey_document(body, PK, target_kid=v2, keyring=keyring, mode=mode)
    assert plan.new_body is None
    assert [(f.pointer, f.reason) for f in plan.failures] == [("/customFields/1/value", "authentication_failed")]


def test_an_envelope_moved_to_another_document_is_caught(keys):
    provider, v1, v2, _ = keys
    keyring = Keyring(provider)
    body = item(keyring, v1)
    stolen = item(keyring, v1, "doc-2")
    stolen["title"] = body["title"]
    plan = rekey_document(stolen, PK, target_kid=v2, keyring=keyring)
    assert [f.reason for f in plan.failures] == ["authentication_failed"]


def test_check_document_reports_kid_kind_and_decryption(keys):
    provider, v1, _, _ = keys
    keyring = Keyring(provider)
    checks = check_document(item(keyring, v1), PK, keyring)
    assert [(c.pointer, c.kind, c.kid, c.decrypts) for c in checks] == [
        ("/customFields/1/value", "item", v1, True),
        ("/title", "item", v1, True),
    ]
    assert checks[0].dek_id == checks[1].dek_id  # one data key shared by both fields


def nested(levels, document_id="deep"):
    """A document whose objects nest ``levels`` deep, the document itself being level 1."""
    body = {"id": document_id, "productId": PK, "type": "item"}
    inner = body
    for _ in range(levels - 1):
        inner["a"] = {}
        inner = inner["a"]
    return body


def bad_documents(keyring, kid):
    """(body, partition key as the store finds it, reason): each with a real envelope where it can hold one."""
    good = item(keyring, kid)
    without_partition_key = {k: v for k, v in good.items() if k != "productId"}
    return [
        ([good], PK, "not_an_object"),
        ("doc-1", PK, "not_an_object"),
        ({k: v for k, v in good.items() if k != "id"}, PK, "no_id"),
        ({**good, "id": 42}, PK, "bad_id"),
        ({**good, "id": ["doc-1"]}, PK, "bad_id"),
        (without_partition_key, None, "no_partition_key"),
        (nested(2_000), PK, "too_deep"),
        (nested(100_000), PK, "too_deep"),  # far past Python's recursion limit: the stated limit decides
    ]


@pytest.mark.parametrize("mode", ["reencrypt", "rewrap"])
def test_a_document_that_cannot_be_processed_as_a_whole_is_one_failure_not_an_exception(keys, mode):
    provider, v1, v2, _ = keys
    keyring = Keyring(provider)
    for body, partition_key, reason in bad_documents(keyring, v1):
        plan = rekey_document(body, partition_key, target_kid=v2, keyring=keyring, mode=mode)
        assert plan.new_body is None, reason  # nothing of it is rewritten
        assert [(f.pointer, f.source_kid, f.reason) for f in plan.failures] == [("", "", reason)]
        assert plan.count("reencrypted") == 0


def test_verify_sees_a_document_that_cannot_be_checked_as_one_whole_document_problem(keys):
    provider, v1, _, _ = keys
    keyring = Keyring(provider)
    for body, partition_key, reason in bad_documents(keyring, v1):
        for with_keyring in (keyring, None):
            checks = check_document(body, partition_key, with_keyring)
            assert [(c.pointer, c.kid, c.reason, c.whole_document, c.decrypts) for c in checks] == [
                ("", "", reason, True, False)
            ]


def test_the_nesting_limit_is_exact_and_an_envelope_at_the_limit_still_moves(keys):
    provider, v1, v2, _ = keys
    keyring = Keyring(provider)
    at_limit, past_limit = nested(MAX_DEPTH - 1), nested(MAX_DEPTH)
    at_limit_path, past_limit_path = ("a",) * (MAX_DEPTH - 1), ("a",) * MAX_DEPTH  # an envelope is an object: one level
    leaf = at_limit
    for part in at_limit_path[:-1]:
        leaf = leaf[part]
    leaf["a"] = seal(at_limit, at_limit_path, "deep but allowed", keyring, v1)
    leaf = past_limit
    for part in past_limit_path[:-1]:
        leaf = leaf[part]
    leaf["a"] = seal(past_limit, past_limit_path, "one level too deep", keyring, v1)

    plan = rekey_document(at_limit, PK, target_kid=v2, keyring=keyring)
    assert plan.count("reencrypted") == 1 and not plan.failures
    assert [c.decrypts for c in check_document(plan.new_body, PK, keyring)] == [True]
    plan = rekey_document(past_limit, PK, target_kid=v2, keyring=keyring)
    assert plan.new_body is None and [f.reason for f in plan.failures] == ["too_deep"]


def test_find_envelopes_walks_any_depth_without_recursing():
    sealed = dict.fromkeys(envelope.ENVELOPE_FIELDS, "x")
    value = sealed
    for index in range(100_000):
        value = [value] if index % 2 else {"a": value}
    assert [len(parts) for parts, _ in find_envelopes(value)] == [100_000]


def test_failures_name_a_document_by_its_stored_id_or_a_question_mark():
    bodies = [
        {"id": "doc-7"},
        {"id": 42},
        {"id": 1.5},
        {"id": True},
        {"id": None},
        {"id": {"a": 1}},
        {"id": 10**5000},
        {},
        [],
    ]
    assert [document_label(body) for body in bodies] == ["doc-7", "42", "1.5", "?", "?", "?", "?", "?", "?"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tree=st.dictionaries(
        st.text(min_size=1, max_size=5).filter(lambda k: k not in ("id", "productId")),
        json_values,
        min_size=1,
        max_size=4,
    ),
    secret_keys=st.sets(st.integers(0, 3), max_size=4),
    data=st.data(),
)
def test_any_document_keeps_every_value_and_ends_on_target(keys, tree, secret_keys, data):
    """Envelopes placed anywhere in an arbitrary document all move; nothing else changes."""
    provider, v1, v2, _ = keys
    keyring = Keyring(provider)
    body = {"id": "d", "productId": PK, **tree}
    names = sorted(tree)
    for index in sorted(secret_keys):
        name = names[index % len(names)]
        if not envelope.is_envelope(body[name]):
            body[name] = seal(body, (name,), data.draw(json_values), keyring, v1)
    if isinstance(body[names[0]], list):  # an envelope nested inside an array as well
        body[names[0]] = body[names[0]] + [None]
        body[names[0]][-1] = seal(body, (names[0], len(body[names[0]]) - 1), "in array", keyring, v1)
    before = plaintexts(body, keyring)
    plan = rekey_document(body, PK, target_kid=v2, keyring=keyring)
    after = plan.new_body if plan.new_body is not None else body
    assert not plan.failures
    assert plaintexts(after, keyring) == before
    assert all(sealed["kid"] == v2 for _, sealed in find_envelopes(after))

    def strip(value):
        if envelope.is_envelope(value):
            return "<envelope>"
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    assert json.dumps(strip(after), sort_keys=True) == json.dumps(strip(body), sort_keys=True)
