"""The read path's figures before and after a rotation: ``preflight --baseline`` / ``--compare``.

A rotation must not make the tracker slower to read. :func:`take_baseline` samples documents
spread over the container's feed ranges (the first pages of each, never the whole container)
and times, for each, a point read (and its request units), then each encrypted field's
decryption. The first use of a data key pays for an unwrap at the key provider, a network call
against Key Vault, where every later field sharing that key only pays for AES-GCM: the two are
timed apart, "unwrap" once per distinct data key, "decrypt" per field with its key cached, so a
few cold unwraps cannot hide in (or pass for) the per-field cost. :func:`compare` sets two
baselines of one container side by side and fails past a stated tolerance.

Decrypted values are discarded as soon as they exist: a baseline holds timings, counts and
failure reasons, never plaintext, ids or key material.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from coordinator.preflight.result import FAIL, PASS
from tracker_reencrypt import envelope
from tracker_reencrypt.atomicfile import replace_file
from tracker_reencrypt.config import Settings
from tracker_reencrypt.documents import (
    FIELD_KINDS,
    check_document,
    field_kind,
    find_envelopes,
    location,
    partition_key_or_none,
)
from tracker_reencrypt.errors import (
    ConfigError,
    EnvelopeError,
    KeyDisabledError,
    KeyNotFoundError,
    NotFoundError,
    UnwrapError,
)
from tracker_reencrypt.keys import WRAP_ALGORITHM
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import DocumentStore, StoredDocument, store_location
from tracker_reencrypt.sweep.records import utc_now

FORMAT = 1
DEFAULT_DOCUMENTS = 1000
#: Feed ranges asked for: the sample spreads over at least this many parts of the container
#: where the backend can cut them (Cosmos: physical partitions, split further when it allows).
SAMPLE_RANGES = 16
SCAN_PAGE = 100

#: The settings' default (REENCRYPT_COMPARE_TOLERANCE, in percent), as a fraction.
DEFAULT_TOLERANCE = Settings.model_fields["compare_tolerance"].default / 100
DEFAULT_FLOOR_MS = 2.0
DEFAULT_FLOOR_REQUEST_UNITS = 0.5
#: Below this many measurements on either side a percentile is mostly the few slowest calls
#: (the p99 of 10 unwraps is the slowest one): it is shown, never gated.
DEFAULT_MIN_SAMPLES = 20
#: A p99 from fewer measurements is the slowest call or few, which one pause of the machine (a
#: garbage collection, a neighbour's burst) decides: it is shown, gated only from this many.
P99_MIN_SAMPLES = 1000
#: Timed unwraps of fresh data keys per baseline (vault_unwrap_ms): enough to be judged.
ROUND_TRIPS = DEFAULT_MIN_SAMPLES
#: Figures a comparison must be able to judge, or it fails: a gate that judged nothing passed
#: on nothing (a sample too small, a read path that read no document).
MUST_JUDGE = ("read p95", "vault unwrap p95")
#: Not gated, shown beside the gated figures for context.
SHOWN = "shown"

#: Kinds in the order they are shown.
KINDS = (*FIELD_KINDS, "other")


def _command(path: Path | str = "FILE") -> str:
    return f"reencrypt preflight --baseline {path}"


@dataclass(frozen=True)
class Percentiles:
    """p50/p95/p99 of ``count`` measurements; None where there were none.

    Python's ``statistics.quantiles(method="inclusive")``: the sample is taken as the whole
    population and the cut points are interpolated between its order statistics, so p99 of a
    sample never exceeds its maximum (the "exclusive" default extrapolates past it).
    """

    count: int
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            return cls(0, None, None, None)
        if len(values) == 1:  # quantiles() needs two points before Python 3.13
            return cls(1, *(_rounded(values[0]),) * 3)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(len(values), _rounded(cuts[49]), _rounded(cuts[94]), _rounded(cuts[98]))

    def as_json(self) -> dict[str, Any]:
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99, "count": self.count}

    @classmethod
    def from_json(cls, data: Any) -> Percentiles:
        return cls(_count(data["count"]), *(_figure(data[name]) for name in ("p50", "p95", "p99")))


@dataclass(frozen=True)
class RequestUnits:
    """Request units per point read. ``source``: "measured" (Cosmos DB's own charge, from each
    response's x-ms-request-charge) or "estimated" (SQLite's stand-in, from the document's size)."""

    source: str
    per_read: Percentiles
    mean: float | None

    def as_json(self) -> dict[str, Any]:
        return {**self.per_read.as_json(), "mean": self.mean, "source": self.source}

    @classmethod
    def from_json(cls, data: Any) -> RequestUnits:
        if data["source"] not in ("measured", "estimated"):
            raise ValueError(f"request unit source {data['source']!r}")
        return cls(data["source"], Percentiles.from_json(data), _figure(data["mean"]))


@dataclass(frozen=True)
class Baseline:
    """The read path's figures for one container at one time (latencies in milliseconds)."""

    taken_at: str
    #: :func:`tracker_reencrypt.stores.store_location` of the container: its canonical place.
    store: str
    documents: int
    #: How many feed ranges the sampled documents came from.
    feed_ranges: int
    read_ms: Percentiles
    request_units_per_read: RequestUnits
    #: Per field kind, with the field's data key already unwrapped.
    decrypt_ms: Mapping[str, Percentiles]
    #: One measurement per distinct data key: its first, uncached unwrap.
    unwrap_ms: Percentiles
    #: Unwraps in the key service of fresh data keys, under the versions the sample's fields
    #: use (ROUND_TRIPS of them): after a sweep a container holds few distinct data keys, so
    #: ``unwrap_ms`` is rarely judged; this always is.
    vault_unwrap_ms: Percentiles
    #: Reason -> documents or fields that could not be read or decrypted.
    failures: Mapping[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "taken_at": self.taken_at,
            "store": self.store,
            "documents": self.documents,
            "feed_ranges": self.feed_ranges,
            "read_ms": self.read_ms.as_json(),
            "request_units_per_read": self.request_units_per_read.as_json(),
            "decrypt_ms": {kind: figures.as_json() for kind, figures in self.decrypt_ms.items()},
            "unwrap_ms": self.unwrap_ms.as_json(),
            "vault_unwrap_ms": self.vault_unwrap_ms.as_json(),
            "failures": dict(self.failures),
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str = "baseline") -> Baseline:
        """The baseline ``data`` holds; ConfigError naming ``source`` when it is not one of ours."""
        if not isinstance(data, dict) or "format" not in data:
            raise ConfigError(f"{source} is not a preflight baseline: take one with {_command()}")
        if data["format"] != FORMAT:
            raise ConfigError(
                f"{source} is a baseline of format {data['format']!r}, this version reads format {FORMAT}: "
                f"take a new one with {_command()}"
            )
        try:
            return cls(
                taken_at=_text(data["taken_at"]),
                store=_text(data["store"]),
                documents=_count(data["documents"]),
                feed_ranges=_count(data["feed_ranges"]),
                read_ms=Percentiles.from_json(data["read_ms"]),
                request_units_per_read=RequestUnits.from_json(data["request_units_per_read"]),
                decrypt_ms={_text(kind): Percentiles.from_json(f) for kind, f in data["decrypt_ms"].items()},
                unwrap_ms=Percentiles.from_json(data["unwrap_ms"]),
                vault_unwrap_ms=Percentiles.from_json(data["vault_unwrap_ms"]),
                failures={_text(reason): _count(n) for reason, n in data["failures"].items()},
            )
        except KeyError as missing:
            problem = f"no {missing}"
        except (TypeError, ValueError, AttributeError) as error:
            problem = str(error) or type(error).__name__
        raise ConfigError(f"{source} is not a well-formed baseline ({problem}): take a new one with {_command()}")


def _rounded(seconds_as_ms: float) -> float:
    return round(seconds_as_ms, 4)


def _figure(value: Any) -> float | None:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise TypeError(f"figure {value!r} is not a number")


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise TypeError(f"count {value!r} is not a whole number")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"{value!r} is not a string")


# -- taking a baseline ---------------------------------------------------------------------------


def sample_documents(store: DocumentStore, documents: int) -> tuple[list[StoredDocument], int]:
    """About ``documents`` documents from the first pages of each feed range, and how many ranges
    gave some. Each range is asked for an equal share of what is still wanted, so what an empty
    or small range cannot give is taken from the ranges after it."""
    ranges = store.feed_ranges(min_count=max(1, min(SAMPLE_RANGES, documents)))
    sampled: list[StoredDocument] = []
    contributing = 0
    for index, feed_range in enumerate(ranges):
        quota = -(-(documents - len(sampled)) // (len(ranges) - index))
        taken: list[StoredDocument] = []
        continuation: str | None = None
        while len(taken) < quota:
            page = store.scan(feed_range, continuation, min(SCAN_PAGE, quota - len(taken)))
            taken += page.documents[: quota - len(taken)]
            continuation = page.continuation
            if continuation is None:
                break
        sampled += taken
        contributing += bool(taken)
    return sampled, contributing


def request_units_source(store_url: str) -> str:
    """Whether a store's request units are the backend's charge or our estimate, by its scheme:
    Cosmos DB reports each request's charge, SQLite has none and estimates one."""
    return "measured" if store_location(store_url).startswith("cosmos:") else "estimated"


def take_baseline(
    store: DocumentStore,
    keyring: Keyring,
    *,
    store_url: str,
    documents: int = DEFAULT_DOCUMENTS,
    clock: Callable[[], float] = time.perf_counter,
    now: Callable[[], str] = utc_now,
) -> Baseline:
    """Sample ``documents`` documents of ``store`` (the container ``store_url`` names) and time
    their reads and decryption. ``keyring``'s data-key cache is emptied first, so that every
    distinct data key of the sample is unwrapped cold and timed once.

    A document or field that cannot be read or decrypted is counted under its reason, never
    raised. What no document is to blame for propagates: an outage of the store or the key
    provider (StoreError, KeyProviderError), since figures taken through one mean nothing.
    """
    if documents < 1:
        raise ConfigError(f"a baseline samples at least 1 document, not {documents}")
    where = store_location(store_url)
    sampled, ranges = sample_documents(store, documents)
    keyring.forget()
    timing = _Timing(store, keyring, clock)
    for scanned in sampled:
        timing.measure(scanned)
    return Baseline(
        taken_at=now(),
        store=where,
        documents=len(sampled),
        feed_ranges=ranges,
        read_ms=Percentiles.of(timing.read_ms),
        request_units_per_read=RequestUnits(
            source=request_units_source(store_url),
            per_read=Percentiles.of(timing.request_units),
            mean=_rounded(statistics.fmean(timing.request_units)) if timing.request_units else None,
        ),
        decrypt_ms={kind: Percentiles.of(timing.decrypt_ms[kind]) for kind in KINDS if kind in timing.decrypt_ms},
        unwrap_ms=Percentiles.of(timing.unwrap_ms),
        vault_unwrap_ms=Percentiles.of(timing.round_trips()),
        failures=dict(sorted(timing.failures.items())),
    )


class _Timing:
    """The measurements of one baseline, document by document."""

    def __init__(self, store: DocumentStore, keyring: Keyring, clock: Callable[[], float]) -> None:
        self.store, self.keyring, self.clock = store, keyring, clock
        self.read_ms: list[float] = []
        self.request_units: list[float] = []
        self.decrypt_ms: defaultdict[str, list[float]] = defaultdict(list)
        self.unwrap_ms: list[float] = []
        self.failures: Counter[str] = Counter()
        self._unwrapped: set[tuple[str, bytes]] = set()
        #: The key versions the sample's fields are under, in the order first seen.
        self._kids: dict[str, None] = {}

    def measure(self, scanned: StoredDocument) -> None:
        if scanned.unreadable:
            self.failures[scanned.unreadable] += 1
            return
        partition_key = partition_key_or_none(self.store, scanned.body)
        whole = check_document(scanned.body, partition_key, None)  # no keyring: only its shape is checked
        if whole and whole[0].whole_document:
            self.failures[whole[0].reason] += 1  # no id or partition key to read it by, or too deep
            return
        charged = self.store.cost.request_units
        started = self.clock()
        try:
            document = self.store.read(scanned.body["id"], partition_key)
        except NotFoundError:
            self.failures["not_found"] += 1  # deleted since the scan
            return
        self.read_ms.append((self.clock() - started) * 1000)
        self.request_units.append(self.store.cost.request_units - charged)
        if document.unreadable:
            self.failures[document.unreadable] += 1
            return
        kind = field_kind(document.body)
        for parts, sealed in find_envelopes(document.body):
            if isinstance(sealed.get("kid"), str):
                self._kids.setdefault(sealed["kid"])
            self._unwrap_once(sealed)
            started = self.clock()
            try:
                envelope.decrypt(sealed, location(document.body, partition_key, parts), self.keyring)  # discarded
            except EnvelopeError as error:
                self.failures[error.reason] += 1
                continue
            self.decrypt_ms[kind].append((self.clock() - started) * 1000)

    def round_trips(self) -> list[float]:
        """ROUND_TRIPS unwraps of random data keys wrapped under the sample's key versions in
        turn, each timed (the wrap is not: it is local for a vault key). A version the provider
        refuses is left out: the key checks and the decrypt failures report it."""
        timed: list[float] = []
        kids = [kid for kid in list(self._kids)[:ROUND_TRIPS] if self._usable(kid)]
        for turn in range(ROUND_TRIPS if kids else 0):
            kid = kids[turn % len(kids)]
            wrapped = self.keyring.provider.wrap(kid, secrets.token_bytes(32))
            started = self.clock()
            self.keyring.provider.unwrap(kid, WRAP_ALGORITHM, wrapped)
            timed.append((self.clock() - started) * 1000)
        return timed

    def _usable(self, kid: str) -> bool:
        try:
            self.keyring.provider.wrap(kid, secrets.token_bytes(32))
        except (KeyNotFoundError, KeyDisabledError, UnwrapError):
            return False
        return True

    def _unwrap_once(self, sealed: dict) -> None:
        """Time the first unwrap of the field's data key, so that the decrypt after it is timed
        with the key cached. A refusal is left to the decrypt, which reports it with its reason."""
        key = envelope.wrapped_data_key(sealed)
        if key is None or (key[0], key[2]) in self._unwrapped:
            return
        self._unwrapped.add((key[0], key[2]))
        calls = self.keyring.stats.provider_unwraps
        started = self.clock()
        try:
            self.keyring.unwrap(*key)
        except (KeyNotFoundError, KeyDisabledError, UnwrapError):
            return
        if self.keyring.stats.provider_unwraps > calls:  # a key the keyring does not cache is no cold unwrap
            self.unwrap_ms.append((self.clock() - started) * 1000)


# -- files ---------------------------------------------------------------------------------------


def save_baseline(path: Path | str, baseline: Baseline) -> None:
    """Write ``baseline`` over ``path`` atomically (a temporary file in the same directory,
    synced, renamed): an interrupted run leaves the previous baseline whole."""
    path = Path(path)
    try:
        replace_file(path, json.dumps(baseline.as_json(), indent=1) + "\n")
    except OSError as error:
        raise ConfigError(
            f"baseline file {path} cannot be written ({error.strerror}): choose a writable path"
        ) from None


def load_baseline(path: Path | str) -> Baseline:
    """The baseline saved at ``path``; ConfigError saying what to do when there is none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"baseline file {path} does not exist: take one before the rotation with {_command(path)}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigError(
            f"baseline file {path} cannot be read ({reason}): check the path and its permissions"
        ) from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(
            f"baseline file {path} is not JSON (line {getattr(error, 'lineno', '?')}): "
            f"take a new one with {_command(path)}"
        ) from None
    return Baseline.from_json(data, source=f"baseline file {path}")


# -- comparing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One figure before and after. ``change``: (after - before) / before, None when either is
    missing or before is 0. ``verdict``: "pass" or "fail" for a gated figure, "shown" otherwise."""

    figure: str
    unit: str
    before: float | None
    after: float | None
    change: float | None
    verdict: str
    #: Why a figure is shown rather than gated, or why it failed; "" otherwise.
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "unit": self.unit,
            "before": self.before,
            "after": self.after,
            "change": self.change,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass(frozen=True)
class Comparison:
    """Two baselines of one container side by side, and the rule they were judged by."""

    store: str
    before_taken_at: str
    after_taken_at: str
    tolerance: float
    floor_ms: float
    floor_request_units: float
    min_samples: int
    request_units_source: str
    rows: tuple[Row, ...]

    @property
    def failed(self) -> bool:
        return any(row.verdict == FAIL for row in self.rows)

    @property
    def rule(self) -> str:
        """The tolerance, stated as the output should print it."""
        return (
            f"fails past +{self.tolerance:.0%} (and > {self.floor_ms:g} ms, > {self.floor_request_units:g} RU): "
            f"p95 (from {self.min_samples} measurements) and p99 (from {P99_MIN_SAMPLES}) gate, and RU/read mean; "
            "p50 is shown, and so is a figure from fewer measurements; any rise in failures per document fails"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "before_taken_at": self.before_taken_at,
            "after_taken_at": self.after_taken_at,
            "tolerance": self.tolerance,
            "floor_ms": self.floor_ms,
            "floor_request_units": self.floor_request_units,
            "min_samples": self.min_samples,
            "request_units_source": self.request_units_source,
            "rule": self.rule,
            "failed": self.failed,
            "rows": [row.as_json() for row in self.rows],
        }


def compare(
    before: Baseline,
    after: Baseline,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    floor_ms: float = DEFAULT_FLOOR_MS,
    floor_request_units: float = DEFAULT_FLOOR_REQUEST_UNITS,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Comparison:
    """``after`` against ``before``. A gated figure fails when it grew past ``tolerance`` (0.5:
    +50%) *and* by more than its floor (``floor_ms``, ``floor_request_units``), so that noise of a
    fraction of a millisecond never fails a rotation. ConfigError for baselines of two containers:
    a gate must not pass on figures of the wrong one."""
    if before.store != after.store:
        raise ConfigError(
            f"the baselines are of two stores ({before.store} before, {after.store} after): "
            "compare against a baseline of the same store"
        )
    if tolerance < 0 or floor_ms < 0 or floor_request_units < 0:
        raise ConfigError("tolerance and floors cannot be negative")
    judge = _Judge(tolerance, min_samples)
    rows = [
        *judge.percentiles("read", before.read_ms, after.read_ms, floor_ms),
        *judge.request_units(before.request_units_per_read, after.request_units_per_read, floor_request_units),
    ]
    for kind in _ordered(before.decrypt_ms, after.decrypt_ms, KINDS):
        rows += judge.percentiles(f"decrypt {kind}", before.decrypt_ms.get(kind), after.decrypt_ms.get(kind), floor_ms)
    rows += judge.percentiles("unwrap", before.unwrap_ms, after.unwrap_ms, floor_ms)
    rows += judge.percentiles("vault unwrap", before.vault_unwrap_ms, after.vault_unwrap_ms, floor_ms)
    for reason in _ordered(before.failures, after.failures, ()):
        rows.append(_failures(reason, before, after))
    rows = [_judged_or_failed(row) if row.figure in MUST_JUDGE else row for row in rows]
    return Comparison(
        store=before.store,
        before_taken_at=before.taken_at,
        after_taken_at=after.taken_at,
        tolerance=tolerance,
        floor_ms=floor_ms,
        floor_request_units=floor_request_units,
        min_samples=min_samples,
        request_units_source=after.request_units_per_read.source,
        rows=tuple(rows),
    )


def _ordered(first: Mapping[str, Any], second: Mapping[str, Any], order: Iterable[str]) -> list[str]:
    """The keys of both, those of ``order`` first in its order, then the rest sorted."""
    order = list(order)
    known = set(first) | set(second)
    return [key for key in order if key in known] + sorted(known - set(order))


def _change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return round((after - before) / before, 4)


@dataclass(frozen=True)
class _Judge:
    tolerance: float
    min_samples: int

    def row(
        self,
        figure: str,
        unit: str,
        values: tuple[float | None, float | None],
        counts: tuple[int, int],
        floor: float,
        gated: bool,
    ) -> Row:
        before, after = values
        change = _change(before, after)
        if before is None or after is None:
            return Row(
                figure, unit, before, after, change, SHOWN, f"not measured {'before' if before is None else 'after'}"
            )
        if not gated:
            return Row(figure, unit, before, after, change, SHOWN)
        needed = P99_MIN_SAMPLES if figure.endswith(" p99") else self.min_samples
        if min(counts) < needed:
            return Row(figure, unit, before, after, change, SHOWN, f"fewer than {needed} measurements")
        if after > before * (1 + self.tolerance) and after - before > floor:
            return Row(figure, unit, before, after, change, FAIL, f"past +{self.tolerance:.0%} and {floor:g} {unit}")
        return Row(figure, unit, before, after, change, PASS)

    def percentiles(self, name: str, before: Percentiles | None, after: Percentiles | None, floor: float) -> list[Row]:
        counts = (before.count if before else 0, after.count if after else 0)
        return [
            self.row(
                f"{name} {which}",
                "ms",
                (getattr(before, which, None), getattr(after, which, None)),
                counts,
                floor,
                gated=which != "p50",
            )
            for which in ("p50", "p95", "p99")
        ]

    def request_units(self, before: RequestUnits, after: RequestUnits, floor: float) -> list[Row]:
        counts = (before.per_read.count, after.per_read.count)
        return [
            self.row("RU/read p50", "RU", (before.per_read.p50, after.per_read.p50), counts, floor, gated=False),
            self.row("RU/read p95", "RU", (before.per_read.p95, after.per_read.p95), counts, floor, gated=True),
            self.row("RU/read mean", "RU", (before.mean, after.mean), counts, floor, gated=True),
        ]


def _judged_or_failed(row: Row) -> Row:
    if row.verdict != SHOWN:
        return row
    why = row.note or "not judged"
    return replace(row, verdict=FAIL, note=f"cannot be judged ({why}): sample more documents (--sample)")


def _failures(reason: str, before: Baseline, after: Baseline) -> Row:
    """Failures under one reason: a rise in their share of the sampled documents fails (a field
    that decrypted before the rotation and no longer does is the worst a rotation can do)."""
    was, now = before.failures.get(reason, 0), after.failures.get(reason, 0)
    rose = now / max(1, after.documents) > was / max(1, before.documents)
    note = f"{was} in {before.documents} documents before, {now} in {after.documents} after"
    return Row(f"failures {reason}", "count", was, now, _change(was, now), FAIL if rose else PASS, note)
