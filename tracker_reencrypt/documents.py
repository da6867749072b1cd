"""What a tracker document becomes under the target key: pure logic, no I/O.

The sweep, ``verify`` and the benchmark's in-process lower bound all call these functions.
They take a keyring (which may call a vault to unwrap, through its cache) but never read or
write a store, so they can be tested exhaustively and benchmarked alone.

A document that cannot be processed as a whole (not an object, no id, no partition key,
nested too deep) is never an exception here: it becomes one failure at the empty field path,
RFC 6901's pointer to the whole document, with a short machine-readable reason, so one bad
document is recorded and the rest of its slice goes on.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from tracker_reencrypt import envelope
from tracker_reencrypt.envelope import KeySource, Location
from tracker_reencrypt.errors import EnvelopeError

if TYPE_CHECKING:
    from tracker_reencrypt.stores import DocumentStore

Mode = Literal["reencrypt", "rewrap"]
MODES: tuple[str, ...] = ("reencrypt", "rewrap")

#: Field kinds are the tracker's document types; anything else is "other". A fixed set keeps
#: metric label sets bounded.
FIELD_KINDS = ("item", "comment", "attachment", "api_key")

PathParts = tuple[str | int, ...]

#: The deepest nesting of objects and arrays (envelopes included) a document may have, the
#: document itself being level 1: envelope.MAX_DEPTH, one limit for documents and for the field
#: values inside envelopes (docs/ENVELOPE.md, "The plaintext"). Tracker documents nest a
#: handful of levels, and Cosmos DB's per-item limits (Azure Cosmos DB service quotas) give 128
#: as the "Maximum level of nesting for embedded objects / arrays" (whether the item itself
#: counts as a level is not stated), so deeper is corrupt data: such a document is refused as a
#: whole ("too_deep") before any field is touched. The walk is iterative besides, so it is this
#: limit, never Python's recursion limit, that decides. (Text nested past ~1,000 levels cannot
#: even be parsed: the SQLite store returns such a row as unreadable, "too_deep" too.)
MAX_DEPTH = envelope.MAX_DEPTH

#: The field path of a failure that concerns the whole document (RFC 6901's empty pointer).
WHOLE_DOCUMENT = ""

#: What the document id is recorded as when the document has none usable.
UNKNOWN_ID = "?"


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
    return iter(_envelopes_within(value, parts, math.inf) or ())  # never None: no depth limit


def _envelopes_within(value: Any, parts: PathParts, limit: float) -> list[tuple[PathParts, dict]] | None:
    """Every envelope in ``value``, depth first; None once objects and arrays nest past ``limit``.

    An explicit stack rather than recursion, so a hostile nesting depth cannot crash the walk.
    Only objects and arrays are pushed, which keeps it as fast as a recursive walk on the
    sweep's hot path, depth check included.
    """
    found = []
    pending = [(parts, value)] if isinstance(value, (dict, list)) else []
    while pending:
        parts, value = pending.pop()
        if len(parts) >= limit:  # ``value`` is at level len(parts) + 1
            return None
        if isinstance(value, dict):
            if value.keys() == envelope.ENVELOPE_FIELDS:  # envelope.is_envelope, inlined for the hot path
                found.append((parts, value))
                continue
            children: Iterable[tuple[Any, Any]] = value.items()
        else:
            children = enumerate(value)
        pending.extend([(parts + (key,), child) for key, child in children if isinstance(child, (dict, list))][::-1])
    return found


def _envelopes_or_problem(body: Any, partition_key: Any) -> tuple[list[tuple[PathParts, dict]], str]:
    """The document's envelopes and "", or none and why it cannot be processed as a whole:
    "not_an_object", "no_id", "bad_id", "no_partition_key" (``partition_key`` None) or "too_deep"."""
    if not isinstance(body, dict):
        return [], "not_an_object"
    if "id" not in body:
        return [], "no_id"
    if not isinstance(body["id"], str):
        return [], "bad_id"  # ids are strings in Cosmos and in every AAD the tracker wrote
    if partition_key is None:
        return [], "no_partition_key"
    found = _envelopes_within(body, (), MAX_DEPTH)
    return ([], "too_deep") if found is None else (found, "")


def document_label(body: Any) -> str:
    """The document's id as failures and examples record it: the stored id when it is a string
    or a number, :data:`UNKNOWN_ID` when there is none (or an object or array stands in its place)."""
    value = body.get("id") if isinstance(body, dict) else None
    if isinstance(value, str):
        return value
    if type(value) in (int, float):
        with suppress(ValueError):  # an integer past 4,300 digits has no str() in Python
            return str(value)
    return UNKNOWN_ID


def partition_key_or_none(store: DocumentStore, body: Any) -> Any:
    """The store's partition key of ``body``, or None when the body has no partition key field.

    Looked up before the store is asked, because the store answers a missing key with a
    StoreError, which reads like an outage; only an outage may stop a batch or a scan, a
    document without a partition key is one recorded failure.
    """
    if isinstance(body, dict) and store.partition_key_field in body:
        return store.partition_key_of(body)
    return None


def data_keys_to_unwrap(
    body: Any,
    partition_key: Any,
    *,
    target_kid: str | None = None,
    source_kids: frozenset[str] | None = None,
) -> list[tuple[str, str, bytes]]:
    """The wrapped data keys re-keying ``body`` would unwrap (fields not on ``target_kid``, and on
    a source kid when ``source_kids`` is given); with no target, every field's (verify reads all).
    What the batch and verify hand the keyring to prefetch; a document bad as a whole has none."""
    found, problem = _envelopes_or_problem(body, partition_key)
    if problem:
        return []
    keys = []
    for _, sealed in found:
        kid = sealed.get("kid")
        if kid == target_kid or (source_kids is not None and kid not in source_kids):
            continue
        key = envelope.wrapped_data_key(sealed)
        if key is not None:
            keys.append(key)
    return keys


def location(body: dict, partition_key: Any, parts: PathParts) -> Location:
    return Location(document_id=str(body["id"]), partition_key=str(partition_key), field_path=schema_path(parts))


def _replace_at(value: Any, parts: PathParts, new: Any) -> Any:
    """A copy of ``value`` with the leaf at ``parts`` replaced; untouched branches are shared."""
    if not parts:
        return new
    head, rest = parts[0], parts[1:]
    copy: Any = list(value) if isinstance(value, list) else dict(value)
    copy[head] = _replace_at(value[head], rest, new)
    return copy


FieldAction = Literal["reencrypted", "on_target", "not_source", "failed"]


@dataclass(frozen=True)
class FieldOutcome:
    """What happened to one encrypted field, or (``pointer`` :data:`WHOLE_DOCUMENT`) why the
    document could not be processed at all. Never carries plaintext or key material."""

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
    partition_key: str | None,
    *,
    target_kid: str | None,
    keyring: KeySource,
    mode: Mode = "reencrypt",
    source_kids: frozenset[str] | None = None,
    no_target: str = "no_target_key",
) -> DocumentPlan:
    """Move every envelope in ``body`` that is on a source kid onto ``target_kid``.

    ``target_kid`` None: the document's product has no key to move to (``no_target`` says why);
    each field that would move is then a failure with that reason, and nothing is written.
    ``source_kids`` None means every kid other than the target. If any field fails to
    decrypt, the document is left as it is (``new_body`` None) and the failures say why: a
    field we cannot read is never rewritten. A document already on target needs no write.
    In ``rewrap`` mode the ciphertext is still authenticated against its location before its
    data key is re-wrapped, so a tampered field is caught in both modes. ``partition_key``
    None means the document has none; that, or any other reason the document cannot be
    processed as a whole, makes a plan with one whole-document failure and no write.
    """
    found, problem = _envelopes_or_problem(body, partition_key)
    if problem:
        return DocumentPlan(new_body=None, fields=[FieldOutcome(WHOLE_DOCUMENT, "other", "", "failed", problem)])
    kind = field_kind(body)
    new_body = body
    outcomes: list[FieldOutcome] = []
    for parts, sealed in found:
        pointer, kid = json_pointer(parts), str(sealed.get("kid"))
        if kid == target_kid:
            outcomes.append(FieldOutcome(pointer, kind, kid, "on_target"))
            continue
        if source_kids is not None and kid not in source_kids:
            outcomes.append(FieldOutcome(pointer, kind, kid, "not_source"))
            continue
        if target_kid is None:
            outcomes.append(FieldOutcome(pointer, kind, kid, "failed", no_target))
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
    """One field as ``verify`` sees it, or (``pointer`` :data:`WHOLE_DOCUMENT`, no kid) why
    the document could not be checked at all."""

    pointer: str
    kind: str
    kid: str
    dek_id: str  # a fingerprint of the wrapped data key: fields sharing a DEK share it
    reason: str = ""  # empty when the field decrypts

    @property
    def decrypts(self) -> bool:
        return not self.reason

    @property
    def whole_document(self) -> bool:
        return self.pointer == WHOLE_DOCUMENT  # a field's pointer is never empty: a document is no envelope


def check_document(body: dict, partition_key: str | None, keyring: KeySource | None) -> list[FieldCheck]:
    """Every envelope's kid and kind, and (with a keyring) whether it decrypts where it is.

    A document that cannot be checked as a whole gets one whole-document check instead.
    """
    found, problem = _envelopes_or_problem(body, partition_key)
    if problem:
        return [FieldCheck(WHOLE_DOCUMENT, "other", "", "", problem)]
    kind = field_kind(body)
    checks = []
    for parts, sealed in found:
        reason = ""
        if keyring is not None:
            try:
                envelope.decrypt(sealed, location(body, partition_key, parts), keyring)
            except EnvelopeError as exc:
                reason = exc.reason
        dek_id = hashlib.sha256(str(sealed.get("dek")).encode()).hexdigest()[:16]
        checks.append(FieldCheck(json_pointer(parts), kind, str(sealed.get("kid")), dek_id, reason))
    return checks
