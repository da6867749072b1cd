"""The sweep's durable records as types both sides share: :class:`Sweep`, :class:`Slice`,
:class:`Failure`.

A *verify sweep* (mode :data:`VERIFY`) is a sweep that only checks: its slices count what
``verify`` reports (:class:`CheckCounts`) and nothing is ever written to a document.

The coordinator writes them and the workers read them (through ``SweepState``), so their
schema lives here once, as frozen dataclasses like dramatiq's ``Message``: a misspelt field is
an AttributeError at once, not a silent ``None`` from a dict. ``from_record`` reads the JSON
stored in the record store (tolerating fields added later, with their defaults) and
``to_record`` writes it back; the JSON the CLI prints is ``to_record()`` too.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from tracker_reencrypt.pacing.limits import SWEEP_LIMITS
from tracker_reencrypt.stale import StaleWrite, newest_first

Status = Literal["planned", "running", "paused", "cancelling", "cancelled", "completed", "failed"]
PLANNED, RUNNING, PAUSED, CANCELLING, CANCELLED, COMPLETED, FAILED = get_args(Status)
#: A sweep in one of these never changes again.
FINISHED: frozenset[str] = frozenset({CANCELLED, COMPLETED, FAILED})

#: A sweep's ``target_kid`` meaning "each document's product's current key version".
TARGET_CURRENT = "current"

#: The mode of a verify sweep: it reads and checks every field against its ``target_kid``
#: (the kid expected) and writes nothing. Not one of documents.MODES, so ``sweep start`` refuses
#: it and the re-keying batch is never built for it.
VERIFY = "verify"

#: What a slice counts, summed into the sweep's totals.
COUNTERS = (
    "documents_scanned",
    "documents_written",
    "documents_failed",
    "fields_reencrypted",
    "fields_on_target",
    "fields_not_source",
    "conflicts",
    "failures",
    # Documents written after their product's key rotated under a retired version of it (see
    # tracker_reencrypt.stale): a tracker instance still uses the old key id.
    "stale_writes",
)
Counts = dict[str, int]


def zero_counts() -> Counts:
    return dict.fromkeys(COUNTERS, 0)


def add_counts(base: Mapping[str, int], more: Mapping[str, int]) -> Counts:
    return {name: base.get(name, 0) + more.get(name, 0) for name in COUNTERS}


def utc_now(*, milliseconds: bool = False) -> str:
    """Now, as the records store it: whole seconds, or with ``milliseconds`` (a sweep's start,
    which its elapsed time and rate are measured from: a sweep can take less than a second)."""
    now = datetime.now(UTC)
    if milliseconds:
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> float:
    """Seconds since the epoch of a utc_now() timestamp (either resolution)."""
    layout = "%Y-%m-%dT%H:%M:%S.%fZ" if "." in text else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.strptime(text, layout).replace(tzinfo=UTC).timestamp()


def new_sweep_id() -> str:
    return f"sw-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def slice_id(sweep_id: str, index: int) -> str:
    return f"{sweep_id}/{index:04d}"


def _known_fields(cls: type, record: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: value for name, value in record.items() if name in names}


#: How many products a slice keeps in its verify counts' by-product maps (the most lagging
#: ones; those without a key, first by id). A product lives in one slice (an EPK range holds a
#: partition key whole; a product's id ranges hold that product alone) and its documents are read
#: one after another, so the container's 20 most lagging are exact unless a slice meets more than
#: this many lagging products; the totals are always exact.
PRODUCTS_KEPT = 100


def _top(counts: Mapping[str, int], keep: int) -> dict[str, int]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict(ranked[:keep])


@dataclass(frozen=True)
class CheckCounts:
    """What a verify sweep counts beyond COUNTERS (whose ``documents_scanned`` is its documents):
    the same figures one-process ``verify`` reports. Every map is bounded: by the kids and field
    kinds met, or (by product) by PRODUCTS_KEPT. Added to a slice by the same fenced commit as
    its checkpoint, so a redone batch counts once."""

    fields: int = 0
    off_target: int = 0
    undecryptable: int = 0
    fields_by_kid: Mapping[str, int] = field(default_factory=dict)
    fields_by_kind: Mapping[str, int] = field(default_factory=dict)
    kinds_by_kid: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    #: Fields not on the kid expected for their product, by product (the most lagging kept).
    off_target_by_product: Mapping[str, int] = field(default_factory=dict)
    #: Why a product has no kid to expect (no key, an unmappable id), by product.
    products_without_key: Mapping[str, str] = field(default_factory=dict)
    #: Of ``off_target``, the fields under a retired version in stale writes (the documents are
    #: COUNTERS' ``stale_writes``): what verify names as the reason it fails.
    stale_write_fields: int = 0

    def plus(self, more: CheckCounts) -> CheckCounts:
        kinds = {kid: dict(by_kind) for kid, by_kind in self.kinds_by_kid.items()}
        for kid, by_kind in more.kinds_by_kid.items():
            kinds[kid] = _summed(kinds.get(kid, {}), by_kind)
        without = {**more.products_without_key, **self.products_without_key}
        return CheckCounts(
            fields=self.fields + more.fields,
            off_target=self.off_target + more.off_target,
            undecryptable=self.undecryptable + more.undecryptable,
            fields_by_kid=_summed(self.fields_by_kid, more.fields_by_kid),
            fields_by_kind=_summed(self.fields_by_kind, more.fields_by_kind),
            kinds_by_kid=kinds,
            off_target_by_product=_top(_summed(self.off_target_by_product, more.off_target_by_product), PRODUCTS_KEPT),
            products_without_key=dict(sorted(without.items())[:PRODUCTS_KEPT]),
            stale_write_fields=self.stale_write_fields + more.stale_write_fields,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CheckCounts:
        return cls(**_known_fields(cls, record))

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["kinds_by_kid"] = {kid: dict(by_kind) for kid, by_kind in self.kinds_by_kid.items()}
        return record


def _summed(base: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    summed = dict(base)
    for name, count in more.items():
        summed[name] = summed.get(name, 0) + count
    return summed


def sum_checked(slices: list[Slice]) -> CheckCounts:
    """A verify sweep's counts over its slices."""
    total = CheckCounts()
    for piece in slices:
        total = total.plus(piece.checked)
    return total


@dataclass(frozen=True)
class Sweep:
    """One sweep: where it moves fields to, how, under which limits, and how far it is."""

    id: str
    #: A versioned kid, or TARGET_CURRENT: each document's product's current version.
    target_kid: str
    mode: str
    status: Status
    #: Only fields on these kids move; None: every kid but the target.
    source_kids: tuple[str, ...] | None = None
    #: The products (partition key values) the sweep reads, each through its own partition;
    #: None: the whole container.
    products: tuple[str, ...] | None = None
    #: The key name setting the sweep was started with (a per-product template or one name):
    #: every worker resolves "current" through it, whatever its own environment says.
    key_name: str = ""
    #: The fleet-wide limits set (pacing.limits keys: rate, kv_ops_per_s, ru_per_s); absent: unlimited.
    limits: Mapping[str, float] = field(default_factory=dict)
    started_by: str = ""
    started_at: str = ""
    created_at: str = ""
    updated_at: str = ""
    finished_at: str | None = None
    documents_estimate: int = 0
    store: str = ""
    slice_count: int = 0
    #: Sizes from one page at the start: what the time estimate under limits needs.
    sample: Mapping[str, float] | None = None
    #: The durable totals, written once when the sweep finishes.
    totals: Counts | None = None
    #: An error a worker is retrying (cleared by the next committed batch).
    last_error: str | None = None
    #: Why the fleet paused the sweep: a problem only a person can fix (cleared by resume).
    paused_reason: str | None = None
    #: Seconds spent paused before the latest resume, and since when it is paused now (seconds
    #: since the epoch; None while not paused): kept by SweepState.update_sweep on every change
    #: of status, so a rate since the start leaves paused time out.
    paused_s: float = 0.0
    paused_since: float | None = None
    #: A verify sweep's result being audited: "<claim token> <utc_now()>", set once by the
    #: collector that records its "verify" entry (see coordinator/verify.py, record_fleet_verify).
    verify_claim: str | None = None

    def time_paused(self, now: float) -> float:
        """Seconds the sweep has spent paused up to ``now``."""
        return self.paused_s + (max(0.0, now - self.paused_since) if self.paused_since is not None else 0.0)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def to_current(self) -> bool:
        return self.target_kid == TARGET_CURRENT

    @property
    def checks_only(self) -> bool:
        """A verify sweep: its workers read and check, and never write a document."""
        return self.mode == VERIFY

    def covers(self, product: str | None) -> bool:
        """Whether the sweep reads documents under ``product``'s key: any sweep does when the key
        is shared by every product (None), a sweep scoped to products only those products'."""
        return self.products is None or product is None or product in self.products

    def limit(self, key: str) -> float | None:
        return self.limits.get(key) or None

    def but(self, **changes: Any) -> Sweep:
        """A copy with ``changes`` (dataclasses.replace, named for reading at call sites)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Sweep:
        known = _known_fields(cls, record)
        sources = record.get("source_kids")
        known["source_kids"] = tuple(sources) if sources else None
        products = record.get("products")
        known["products"] = tuple(products) if products is not None else None
        # The limits travel flat in the record (the CLI's JSON shape and older sweeps).
        known["limits"] = {limit.key: float(record[limit.key]) for limit in SWEEP_LIMITS if record.get(limit.key)}
        return cls(**known)

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "limits"}
        record["source_kids"] = list(self.source_kids) if self.source_kids else None
        record["products"] = list(self.products) if self.products is not None else None
        record.update({limit.key: self.limits.get(limit.key) for limit in SWEEP_LIMITS})
        return record


@dataclass(frozen=True)
class Slice:
    """One feed range of a sweep with its checkpoint, counts, lease and fence (see state.py)."""

    sweep_id: str
    index: int
    feed_range: Mapping[str, Any]
    continuation: str | None = None
    done: bool = False
    fence: int = 0
    lease_owner: str | None = None
    lease_expires: float = 0.0
    counts: Counts = field(default_factory=zero_counts)
    updated_at: float = 0.0
    #: Failed batches in a row: the back-off of the next try grows with it.
    error_retries: int = 0
    #: After a failed batch, when the slice is tried again (seconds since the epoch; 0: not
    #: waiting), and the Celery task id that try goes under (SweepState.back_off_slice). Kept
    #: here, not in a countdown message a worker holds: a worker lost while the slice waits
    #: loses nothing, and any worker's lease watch sends the try when it is due.
    retry_at: float = 0.0
    retry_task_id: str | None = None
    #: The fence whose expired lease was already re-queued once (SweepState.rescue_expired).
    rescued_fence: int | None = None
    #: What a verify sweep's committed batches counted (empty for any other sweep).
    checked: CheckCounts = field(default_factory=CheckCounts)
    #: The first stale writes the slice met (at most stale.SLICE_EXAMPLES; ``counts`` has them all),
    #: kept by the same fenced commit as the counts, so a redone batch adds none twice.
    stale_write_examples: tuple[StaleWrite, ...] = ()

    def lease_is_live(self, now: float) -> bool:
        """Held by a worker whose lease has not expired."""
        return bool(self.lease_owner) and self.lease_expires > now

    def but(self, **changes: Any) -> Slice:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Slice:
        known = _known_fields(cls, record)
        known["checked"] = CheckCounts.from_record(record.get("checked") or {})
        known["stale_write_examples"] = tuple(
            StaleWrite.from_record(example) for example in record.get("stale_write_examples") or ()
        )
        return cls(**known)

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if self.checked == CheckCounts():
            del record["checked"]  # any sweep but a verify sweep: its slice records stay as they were
        else:
            record["checked"] = self.checked.to_record()
        if self.stale_write_examples:
            record["stale_write_examples"] = [example.to_record() for example in self.stale_write_examples]
        else:
            del record["stale_write_examples"]  # as above: no stale write, the record as it was
        return record


def stale_write_examples(slices: list[Slice]) -> list[StaleWrite]:
    """A sweep's stale-write examples over its slices, as reports show them (newest first, bounded)."""
    return newest_first(example for piece in slices for example in piece.stale_write_examples)


def sum_counts(slices: list[Slice]) -> Counts:
    """A sweep's totals: every counter summed over its slices."""
    totals = zero_counts()
    for piece in slices:
        totals = add_counts(totals, piece.counts)
    return totals


@dataclass(frozen=True)
class Failure:
    """A field (or, with field path "", a whole document) a sweep could not move, and why."""

    sweep_id: str
    slice: int
    document_id: str
    partition_key: str
    field_path: str
    reason: str
    at: str = ""
    #: The store's key of the document's row, for documents with no usable id (recorded as "?").
    row: str | None = None
    #: The key version the field is on ("": a whole document, or a failure recorded before kids were).
    kid: str = ""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Failure:
        return cls(**_known_fields(cls, record))

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if not self.row:
            del record["row"]
        return record
