"""Stale writes: a document written after its product's key rotated, still under an older version.

Once ``keys rotate`` (or ``keys promote``) makes a version current, every tracker-service
instance should wrap new data keys under it. A document whose last write (Cosmos ``_ts``, the
SQLite store's ``written_at``) came after that moment, and which still holds a field under
another version of its product's key, was written by an instance that has not picked the new
key id up: a *stale writer*. Left alone it keeps putting fields back on the version the
rotation retires, so a sweep never finishes the job and ``keys disable`` stays refused.

Pure logic, no I/O: the caller reads the document and looks its product's current version up
(a :data:`CurrentLookup`, such as :meth:`CurrentKids.version_of`); this module decides. The
sweep's batches, ``verify`` (both ways) and ``reencrypt stale-writes`` all decide here.

What is not a stale write: a document whose write time is unknown (SQLite rows written before
the store kept it), a product whose current version has no known start, a field under another
key (another product's: a different problem, which verify counts as off target) and a document
on the current version, such as one the sweep itself re-encrypted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tracker_reencrypt.errors import ConfigError, KeyProviderError
from tracker_reencrypt.keys import KeyVersion
from tracker_reencrypt.keys.naming import key_name_of_kid
from tracker_reencrypt.keys.products import epoch_seconds

#: How long after a version became current a write under an older one is still forgiven, in
#: seconds. Three things blur the moment: the providers record it in whole seconds (the keyring
#: file's and Key Vault's times are truncated), Cosmos ``_ts`` is whole seconds too, and a tracker
#: request that read the key id just before the rotation may commit its write just after it.
#: A few seconds cover all three; a stale writer keeps writing long past them.
GRACE_S = 5.0

#: Stale writes a slice keeps as examples (the first it meets); its count is always exact.
SLICE_EXAMPLES = 5

#: Stale writes a report keeps as examples (verify, sweep status, the stale-writes command).
REPORT_EXAMPLES = 20

#: A product's current version, or raises (no key, an unmappable id, an outage...).
CurrentLookup = Callable[[Any], KeyVersion]


@dataclass(frozen=True)
class StaleWrite:
    """One document written after rotation under a retired version of its product's key.

    Ids, the product, a time and key ids only: never a field's value or key material, so it
    can go into sweep records, JSON reports and logs.
    """

    document_id: str
    product: str
    #: When the document was last written, seconds since the epoch (Cosmos ``_ts``).
    ts: float
    #: The retired version found (the first such field's, in document order).
    kid: str
    #: The product's current version, which the writer should have used.
    current_kid: str
    #: The document's fields under a retired version of the key.
    fields: int = 1

    @property
    def written_at(self) -> str:
        """``ts`` as ISO-8601 UTC, for people."""
        return datetime.fromtimestamp(self.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    def as_json(self) -> dict[str, Any]:
        return {**self.to_record(), "written_at": self.written_at}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StaleWrite:
        return cls(
            document_id=str(record["document_id"]),
            product=str(record["product"]),
            ts=float(record["ts"]),
            kid=str(record["kid"]),
            current_kid=str(record["current_kid"]),
            fields=int(record.get("fields", 1)),
        )


def find(
    document_id: str,
    product: Any,
    written_at: float | None,
    kids: Iterable[str],
    current: KeyVersion,
    *,
    target_kid: str | None = None,
) -> StaleWrite | None:
    """The stale write this document is, or None.

    ``kids``: the kid of each of the document's fields; ``current``: its product's current
    version (with ``current_since``). Stale when the document was written more than
    :data:`GRACE_S` after ``current`` became current and at least one field is under another
    version of the same key. An unknown write time or start is never stale: nothing can be said.

    ``target_kid``: the version the caller moves fields to (a sweep) or expects them on
    (verify), when it has one. If that is not the current version, nothing is stale: an
    operator is putting fields on another version on purpose (``sweep start --to KID``), and
    what that sweep wrote must not be blamed on a tracker.
    """
    if target_kid is not None and target_kid != current.kid:
        return None
    since = epoch_seconds(current.current_since)
    if written_at is None or since is None or written_at <= since + GRACE_S:
        return None
    key = key_name_of_kid(current.kid).lower()  # Key Vault names ignore case
    retired = [kid for kid in kids if kid != current.kid and _is_version_of(kid, key)]
    if not retired:
        return None
    return StaleWrite(document_id, str(product), written_at, retired[0], current.kid, len(retired))


def newest_first(found: Iterable[StaleWrite], limit: int = REPORT_EXAMPLES) -> list[StaleWrite]:
    """Examples as a report shows them: the newest first (is it still going on?), at most ``limit``."""
    return sorted(found, key=lambda write: (-write.ts, write.product, write.document_id))[:limit]


def _is_version_of(kid: str, key: str) -> bool:
    """Whether ``kid`` is a version of key ``key`` (lower-cased): ``<key>/v3`` in a keyring file,
    ``https://<vault>/keys/<key>/<version>`` in Key Vault. A bare key name is not one: a writer
    using it has another problem (an unversioned id that follows "latest")."""
    head, _, version = kid.rpartition("/")
    return bool(version) and head.rpartition("/")[2].lower() == key and key_name_of_kid(kid).lower() == key


def current_version(lookup: CurrentLookup, product: Any) -> KeyVersion | None:
    """``product``'s current version, or None where it has none to judge by (no key, an
    unmappable id, a disabled version: the sweep and verify record those as their own
    problems). An outage is raised: the caller's batch or scan is retried as for any outage."""
    try:
        return lookup(product)
    except (KeyProviderError, ConfigError) as error:
        if error.transient:
            raise
        return None
