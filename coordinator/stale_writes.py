"""Watching the container for stale writes (``reencrypt stale-writes``): the runbook's step after
the tracker-service's restart, "wait until no tracker instance writes under the old key id".

Each look reads, product by product, only the documents written since the product's current
version became current (plus the grace, tracker_reencrypt.stale.GRACE_S), through the store's
:meth:`DocumentStore.written_after`: the tracker's own writes since the rotation, not the
product's partition. Each is judged as the sweep judges it (stale.find). A later look reads
only what was written since the look before began, less :data:`LOOK_BACK_S`, so waiting costs
the tracker's recent writes per look, whatever the product's size; a stale write met twice in
that overlap is counted once.

Quiet means no stale write newer than ``quiet_for`` seconds: writes made during the restart
window, by instances not yet restarted, must not hold the wait for ever once they stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from tracker_reencrypt import stale
from tracker_reencrypt.documents import document_label, find_envelopes
from tracker_reencrypt.errors import ConfigError, KeyProviderError, first_line
from tracker_reencrypt.keys import KeyVersion
from tracker_reencrypt.keys.products import CurrentKids, ProductKeys, epoch_seconds
from tracker_reencrypt.stores import DocumentStore

PAGE_SIZE = 500
#: How far before the previous look's start a later look reads again. Cosmos ``_ts`` is the
#: service's clock, in whole seconds, and a write in flight when a look began may land with an
#: earlier time: re-reading half a minute costs little and misses none of those.
LOOK_BACK_S = 30.0
#: How long after the end of a check ``--quiet-for`` asks for by default: a tracker instance
#: busy enough to matter writes more often than that.
DEFAULT_QUIET_FOR_S = 300.0


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProductSeen:
    """One product's stale writes so far."""

    current_kid: str
    stale_writes: int = 0
    newest_ts: float | None = None


@dataclass
class StaleReport:
    """What the looks found so far: every count exact, examples bounded (newest first)."""

    products_checked: int = 0
    stale_writes: int = 0
    newest_ts: float | None = None
    examples: list[stale.StaleWrite] = field(default_factory=list)
    #: Products with stale writes (the others are only counted in ``products_checked``).
    by_product: dict[str, ProductSeen] = field(default_factory=dict)
    #: Products that could not be judged, and why (no key, an undated current version).
    not_checked: dict[str, str] = field(default_factory=dict)
    looked_at: float = 0.0

    def add(self, found: stale.StaleWrite) -> None:
        self.stale_writes += 1
        self.newest_ts = max(found.ts, self.newest_ts or found.ts)
        seen = self.by_product.setdefault(found.product, ProductSeen(found.current_kid))
        seen.stale_writes += 1
        seen.newest_ts = max(found.ts, seen.newest_ts or found.ts)
        self.examples = stale.newest_first([*self.examples, found])

    def quiet(self, quiet_for: float) -> bool:
        """No stale write newer than ``quiet_for`` seconds before the last look."""
        return self.newest_ts is None or self.looked_at - self.newest_ts >= quiet_for

    def as_json(self, quiet_for: float, store: str) -> dict:
        return {
            "stale_writes": self.stale_writes,
            "stale_write_examples": [example.as_json() for example in self.examples],
            "newest_stale_write": iso(self.newest_ts),
            "newest_stale_write_ts": self.newest_ts,
            "quiet_for_s": quiet_for,
            "quiet": self.quiet(quiet_for),
            "looked_at": iso(self.looked_at),
            "grace_s": stale.GRACE_S,
            "products_checked": self.products_checked,
            "products": {product: asdict(seen) for product, seen in sorted(self.by_product.items())},
            "products_not_checked": dict(sorted(self.not_checked.items())),
            "store": store,
        }


class StaleWatch:
    """Looks at the products' recent writes, again and again, adding what each look finds."""

    def __init__(
        self,
        store: DocumentStore,
        keys: ProductKeys,
        products: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.products, self.clock = store, list(products), clock
        self.current = CurrentKids(keys)
        self.report = StaleReport()
        #: Per product, the time a look reads from (exclusive); absent until its first look.
        self._from: dict[str, float] = {}
        #: The stale writes met in the window the next look reads again, so none counts twice.
        self._recent: set[tuple[str, str, float]] = set()

    def look(self) -> StaleReport:
        """One look at every product; the report so far. Raises an outage (a transient error):
        the caller may look again later."""
        started = self.clock()
        checked = 0
        for product in self.products:
            version = self._version(product)
            if version is None:
                continue
            checked += 1
            since = epoch_seconds(version.current_since)
            assert since is not None  # _version dates it
            lower = self._from.get(product, since + stale.GRACE_S)
            self._read(product, version, lower)
            self._from[product] = max(lower, started - LOOK_BACK_S)
        self.report.products_checked = checked
        self.report.looked_at = started
        floor = min(self._from.values(), default=started)
        self._recent = {key for key in self._recent if key[2] > floor}
        return self.report

    def _version(self, product: str) -> KeyVersion | None:
        """The product's current version, dated; None (and why, in the report) where there is none."""
        try:
            version = self.current.version_of(product)
        except (KeyProviderError, ConfigError) as error:
            if error.transient:
                raise
            self.report.not_checked[product] = first_line(error)
            return None
        if epoch_seconds(version.current_since) is None:
            self.report.not_checked[product] = (
                f"the keyring or vault does not say when {version.kid} became current: no write can be dated against it"
            )
            return None
        self.report.not_checked.pop(product, None)
        return version

    def _read(self, product: str, version: KeyVersion, after: float) -> None:
        continuation: str | None = None
        while True:
            page = self.store.written_after(product, after, continuation, PAGE_SIZE)
            for document in page.documents:
                if document.unreadable:
                    continue  # its body is a stand-in: verify and the sweep record it
                kids = [str(sealed.get("kid")) for _, sealed in find_envelopes(document.body)]
                found = stale.find(document_label(document.body), product, document.written_at, kids, version)
                if found is None:
                    continue
                key = (found.product, found.document_id, found.ts)
                if key not in self._recent:
                    self._recent.add(key)
                    self.report.add(found)
            continuation = page.continuation
            if continuation is None:
                return


def products_to_watch(store: DocumentStore, keys: ProductKeys, chosen: Sequence[str]) -> list[str]:
    """The products named (checked as key names), or every product of the store that has a key
    (under one key for the container: every product)."""
    if chosen:
        return keys.naming.check_products(chosen)
    products = store.products()
    if not keys.per_product:
        return products
    with_keys = {product.lower() for product in keys.products_with_keys()}  # Key Vault names ignore case
    return [product for product in products if product.lower() in with_keys]
