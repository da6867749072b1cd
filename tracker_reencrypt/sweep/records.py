"""The sweep's durable records as types both sides share: :class:`Sweep`, :class:`Slice`,
:class:`Failure`.

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

Status = Literal["planned", "running", "paused", "cancelling", "cancelled", "completed", "failed"]
PLANNED, RUNNING, PAUSED, CANCELLING, CANCELLED, COMPLETED, FAILED = get_args(Status)
#: A sweep in one of these never changes again.
FINISHED: frozenset[str] = frozenset({CANCELLED, COMPLETED, FAILED})

#: A sweep's ``target_kid`` meaning "each document's product's current key version".
TARGET_CURRENT = "current"

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
)
Counts = dict[str, int]


def zero_counts() -> Counts:
    return dict.fromkeys(COUNTERS, 0)


def add_counts(base: Mapping[str, int], more: Mapping[str, int]) -> Counts:
    return {name: base.get(name, 0) + more.get(name, 0) for name in COUNTERS}


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> float:
    """Seconds since the epoch of a utc_now() timestamp."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def new_sweep_id() -> str:
    return f"sw-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def slice_id(sweep_id: str, index: int) -> str:
    return f"{sweep_id}/{index:04d}"


def _known_fields(cls: type, record: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: value for name, value in record.items() if name in names}


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

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def to_current(self) -> bool:
        return self.target_kid == TARGET_CURRENT

    def covers(self, product: str | None) -> bool:
        """Whether the sweep reads ``product``'s documents (None: a key shared by every product)."""
        return self.products is None or (product is not None and product in self.products)

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
    #: The fence whose expired lease was already re-queued once (SweepState.rescue_expired).
    rescued_fence: int | None = None

    def lease_is_live(self, now: float) -> bool:
        """Held by a worker whose lease has not expired."""
        return bool(self.lease_owner) and self.lease_expires > now

    def but(self, **changes: Any) -> Slice:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Slice:
        return cls(**_known_fields(cls, record))

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Failure:
        return cls(**_known_fields(cls, record))

    def to_record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if not self.row:
            del record["row"]
        return record
