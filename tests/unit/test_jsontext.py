"""The SQLite store's JSON: whatever msgspec does, a document must read and write back as the
standard library's ``json`` would have it, or the sweep would change bytes it has no business
changing (tracker_reencrypt/jsontext.py)."""

from __future__ import annotations

import datetime
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker_reencrypt import jsontext
from tracker_reencrypt.errors import StoreError


def stdlib_dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Every value JSON text can hold, and some only Python's json writes: NaN, infinities, lone
# surrogates, integers far beyond 64 bits.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | st.text()
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20
)
no_floats = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400)
@given(json_values)
def test_written_text_reads_back_as_the_value_json_would_have_written(value):
    # Compared through json's own text, which is exact for floats and spells NaN.
    assert stdlib_dumps(json.loads(jsontext.dumps(value))) == stdlib_dumps(value)


@settings(max_examples=400)
@given(json_values)
def test_any_text_json_writes_reads_as_json_reads_it(value):
    text = stdlib_dumps(value)
    assert stdlib_dumps(jsontext.loads(text)) == stdlib_dumps(json.loads(text))


@settings(max_examples=400)
@given(no_floats)
def test_without_floats_the_text_is_byte_for_byte_json_s(value):
    assert jsontext.dumps(value) == stdlib_dumps(value)


@settings(max_examples=200)
@given(st.dictionaries(st.integers() | st.floats() | st.booleans() | st.none(), scalars, max_size=4))
def test_keys_that_are_not_strings_are_written_as_json_writes_them(value):
    assert jsontext.dumps(value) == stdlib_dumps(value)


def test_what_json_refuses_is_still_refused_not_quietly_converted():
    for value in ({"raw": b"bytes"}, {"tags": {"a", "b"}}, [bytearray(b"x")], {"when": datetime.date(2026, 11, 29)}):
        with pytest.raises(TypeError):
            stdlib_dumps(value)
        with pytest.raises(TypeError):
            jsontext.dumps(value)


def test_what_msgspec_alone_would_get_wrong_is_kept():
    assert jsontext.dumps({"ratio": math.nan, "max": math.inf}) == '{"ratio":NaN,"max":Infinity}'
    assert math.isinf(jsontext.loads('{"x": 1e400}')["x"])
    assert jsontext.loads('"\\ud800"') == "\ud800"
    big = 2**200 + 1
    assert jsontext.loads(jsontext.dumps({"n": big}))["n"] == big


@settings(max_examples=400)
@given(json_values)
def test_utf8_bytes_read_as_the_text_they_encode(value):
    """The SQLite store reads bodies as bytes; a document must read the same as from a str."""
    text = stdlib_dumps(value)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written as it is: no UTF-8 for it, nor in SQLite
        return
    assert stdlib_dumps(jsontext.loads(encoded)) == stdlib_dumps(jsontext.loads(text))


def deep(levels: int, document_id: str | None) -> dict:
    value = {"secret": "PLAINTEXT"}
    for _ in range(levels - 1):
        value = {"a": value}
    return value if document_id is None else {"id": document_id, **value}


@pytest.mark.parametrize("levels", [2_000, 100_000])
def test_a_value_nested_too_deep_to_write_is_a_store_error_naming_its_id_never_its_content(levels):
    for value, named in (
        (deep(levels, "doc-7"), "document 'doc-7'"),
        (deep(levels, None), "a document"),
        ([deep(levels, "inner")], "a document"),
    ):
        with pytest.raises(StoreError) as raised:
            jsontext.dumps(value)
        message = str(raised.value)
        assert message.startswith(named) and "too deep" in message
        assert "\n" not in message and "PLAINTEXT" not in message
    assert jsontext.loads(jsontext.dumps(deep(100, "doc-8"))) == deep(100, "doc-8")  # a deep one that fits is written


def test_text_too_deep_to_read_and_text_that_is_not_json_raise_what_the_store_tells_apart():
    """RecursionError (the store's "too_deep") and ValueError (its "invalid_json")."""
    too_deep = '{"a": ' * 2_000 + "{}" + "}" * 2_000
    with pytest.raises(RecursionError):
        jsontext.loads(too_deep)
    with pytest.raises(RecursionError):
        jsontext.loads(too_deep.encode())
    for not_json in ('{"id": "x", "title": "PLAINT', "", '{"id": "x"} trailing', b'{"id": "caf\xe9"}'):
        with pytest.raises(ValueError):
            jsontext.loads(not_json)
