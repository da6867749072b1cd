"""Documents as JSON text, for the SQLite store: msgspec where it gives the standard library's
result, the standard library where it would not.

Reading and writing the JSON is a fifth of the store's cost per document; msgspec's C
encoder is several times faster than ``json.dumps`` and its decoder about half again as
fast as ``json.loads``. It keeps integers of any size exact. Where it differs from ``json``
this module defers to ``json``, so a document reads and writes back exactly as before:

- text ``json`` accepts and msgspec refuses (``NaN``, ``Infinity``, numbers out of float
  range, lone surrogate escapes) is read by ``json``;
- only plain JSON data goes to msgspec (dicts with string keys, lists, strings, numbers,
  booleans, None): msgspec would quietly write bytes, sets, dates, UUIDs or non-string keys
  its own way where ``json`` converts them differently or refuses them;
- msgspec writes ``NaN`` and infinities as ``null``, which would lose them, so any output
  containing ``null`` is written again by ``json`` (the tracker's documents rarely hold it);
- msgspec writes the float ``1e+16`` as ``1e16``: the same number, both valid JSON.

Both parsers recurse, so neither reads nor writes JSON nested about as deep as Python's
recursion limit (~1,000 levels; less from deep in a call stack). Reading raises RecursionError,
which the store turns into one unreadable document; writing raises our StoreError.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from tracker_reencrypt.errors import StoreError

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def loads(text: str | bytes) -> Any:
    """The value of JSON text (a str, or UTF-8 bytes). Raises ValueError for text that is not
    JSON (or bytes that are not UTF-8), RecursionError for JSON nested too deep to parse."""
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError:  # ValidationError ("number out of range") is a DecodeError
        return json.loads(text)


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII characters as themselves (as ``json.dumps`` with
    ``separators=(",", ":"), ensure_ascii=False``). StoreError for a value nested too deep to
    write, rather than the parsers' RecursionError: the message names the document's id, never
    its content."""
    try:
        return _dumps(value)
    except RecursionError:
        document_id = value.get("id") if isinstance(value, dict) else None
        what = f"document {document_id!r}" if isinstance(document_id, str) else "a document"
        raise StoreError(
            f"{what} nests objects and arrays too deep to be written as JSON (tracker documents nest "
            f"a handful of levels, Cosmos DB allows 128): fix the document where it was made"
        ) from None


def _dumps(value: Any) -> str:
    encoded = b"null"  # anything else: json's own result, or its own error
    if _plain(value):
        try:
            encoded = _encoder.encode(value)
        except UnicodeEncodeError:  # a lone surrogate, which json writes as it is
            pass
    if b"null" in encoded:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return encoded.decode("utf-8")


def _plain(value: Any) -> bool:
    """Only JSON's own data model: what json.loads can return (tuples aside, written alike)."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            if not all(type(key) is str for key in item):
                return False
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
        elif kind is not str and kind is not int and kind is not float and kind is not bool and item is not None:
            return False
    return True
