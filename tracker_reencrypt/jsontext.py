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
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def loads(text: str) -> Any:
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError:  # ValidationError ("number out of range") is a DecodeError
        return json.loads(text)


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII characters as themselves (as ``json.dumps`` with
    ``separators=(",", ":"), ensure_ascii=False``)."""
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
