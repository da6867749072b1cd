"""What a tracker document becomes under the target key: pure logic, no I/O.

The sweep, ``verify`` and the benchmark's in-process lower bound all call these functions.
They take a keyring (which may call a vault to unwrap, through its cache) but never read or
write a store, so they can be tested exhaustively and benchmarked alone.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from tracker_reencrypt import envelope
from tracker_reencrypt.envelope import Keyring, Location
from tracker_reencrypt.errors import EnvelopeError

Mode = Literal["reencrypt", "rewrap"]
MODES: tuple[str, ...] = ("reencrypt", "rewrap")

#: Field kinds are the tracker's document types; anything else is "other". A fixed set keeps
#: metric label sets bounded.
FIELD_KINDS = ("item", "comment", "attachment", "api_key")

PathParts = tuple[str | int, ...]


def field_kind(body: dict) -> str:
    kind = body.get("type")
    return kind if kind in FIELD_KINDS else "other"


def _escape(part: str | int) -> str:
    return str(part).replace("~", "~0").replace("/", "~1")


def json_pointer(parts: PathParts) -> str:
    """The concrete RFC 6901 pointer, array indices included: what an operator looks up."""
    return "".join("/" + _escape(part) for part in parts)


def schema_path(parts: PathParts) -> str:
    """The pointer the envelope is bound to: array indices written as ``*``.

    Binding to the schema position rather than the index lets the tracker reorder or insert
    array elements without re-encrypting them (docs/ENVELOPE.md, "Field path").
    """
    return "".join("/*" if isinstance(part, int) else "/" + _escape(part) for part in parts)


def find_envelopes(value: Any, parts: PathParts = ()) -> Iterator[tuple[PathParts, dict]]:
    """Every envelope in a document, depth first, arrays included. Envelopes are leaves."""
    if envelope.is_envelope(value):
        yield parts, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield from find_envelopes(child, parts + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from find_envelopes(child, parts + (index,))


def location(body: dict, partition_key: str, parts: PathParts) -> Location:
    return Location(document_id=str(body["id"]), partition_key=str(partition_key), field_path=schema_path(parts))


def _replace_at(value: Any, parts: PathParts, new: Any) -> Any:
    """A copy of ``value`` with the leaf at ``parts`` replaced; untouched branches are shared."""
    if not parts:
        return new
    head, rest = parts[0], parts[1:]
    if isinstance(value, list):
        copy = list(value)
    else:
        copy = dict(value)
    copy[head] = _replace_at(value[head], rest, new)
    return copy


FieldAction = Literal["reencrypted", "on_target", "not_source", "failed"]


@dataclass(frozen=True)
class FieldOutcome:
    """What happened to one encrypted field. Never carries plaintext or key material."""

    pointer: str
    kind: str
    source_kid: str
    action: FieldAction
    reason: str = ""


@dataclass
class DocumentPlan:
    """The document's new body (None when nothing is to be written) and per-field outcomes."""

    new_body: dict | None
    fields: list[FieldOutcome] = field(default_factory=list)

    @cached_property
    def _actions(self) -> Counter:
        return Counter(f.action for f in self.fields)  # fields are complete once a plan is made

    @property
    def failures(self) -> list[FieldOutcome]:
        return [f for f in self.fields if f.action == "failed"] if self._actions["failed"] else []

    def count(self, action: FieldAction) -> int:
        return self._actions[action]


def rekey_document(
    body: dict,
    partition_key: str,
    *,
    target_kid: str,
    keyring: Keyring,
    mode: Mode = "reencrypt",
    source_kids: frozenset[str] | None = None,
) -> DocumentPlan:
    """Move every envelope in ``body`` that is on a source kid onto ``target_kid``.

    ``source_kids`` None means every kid other than the target. If any field fails to
    decrypt, the document is left as it is (``new_body`` None) and the failures say why: a
    field we cannot read is never rewritten. A document already on target needs no write.
    In ``rewrap`` mode the ciphertext is still authenticated against its location before its
    data key is re-wrapped, so a tampered field is caught in both modes.
    """
    kind = field_kind(body)
    new_body = body
    outcomes: list[FieldOutcome] = []
    for parts, sealed in list(find_envelopes(body)):
        pointer, kid = json_pointer(parts), str(sealed.get("kid"))
        if kid == target_kid:
            outcomes.append(FieldOutcome(pointer, kind, kid, "on_target"))
            continue
        if source_kids is not None and kid not in source_kids:
            outcomes.append(FieldOutcome(pointer, kind, kid, "not_source"))
            continue
        where = location(body, partition_key, parts)
        try:
            if mode == "rewrap":
                replacement = envelope.rewrap(sealed, where, keyring, target_kid)
            else:
                replacement = envelope.reencrypt(sealed, where, keyring, target_kid)
        except EnvelopeError as exc:
            outcomes.append(FieldOutcome(pointer, kind, kid, "failed", exc.reason))
            continue
        new_body = _replace_at(new_body, parts, replacement)
        outcomes.append(FieldOutcome(pointer, kind, kid, "reencrypted"))
    plan = DocumentPlan(new_body=None, fields=outcomes)
    if not plan.failures and plan.count("reencrypted"):
        plan.new_body = new_body
    return plan


@dataclass(frozen=True)
class FieldCheck:
    """One field as ``verify`` sees it."""

    pointer: str
    kind: str
    kid: str
    dek_id: str  # a fingerprint of the wrapped data key: fields sharing a DEK share it
    reason: str = ""  # empty when the field decrypts

    @property
    def decrypts(self) -> bool:
        return not self.reason


def check_document(body: dict, partition_key: str, keyring: Keyring | None) -> list[FieldCheck]:
    """Every envelope's kid and kind, and (with a keyring) whether it decrypts where it is."""
    kind = field_kind(body)
    checks = []
    for parts, sealed in find_envelopes(body):
        reason = ""
        if keyring is not None:
            try:
                envelope.decrypt(sealed, location(body, partition_key, parts), keyring)
            except EnvelopeError as exc:
                reason = exc.reason
        dek_id = hashlib.sha256(str(sealed.get("dek")).encode()).hexdigest()[:16]
        checks.append(FieldCheck(json_pointer(parts), kind, str(sealed.get("kid")), dek_id, reason))
    return checks
