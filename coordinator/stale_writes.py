"""Watching the container for stale writes (``reencrypt stale-writes``): the runbook's step after
the tracker-service's restart, "wait until no tracker instance writes under the old key id".

Each look reads, product by product, only the documents written since the product's current
version became current (plus the grace, tracker_reencrypt.stale.GRACE_S), through the store's
:meth:`DocumentStore.written_after`: the tracker's own writes since the rotation, not the
product's partition. Each is judged as the sweep judges it (stale.find). A later look reads
only what was written since the look before began, less :data:`LOOK_BACK_S`, so waiting costs
the tracker's recent writes per look, whatever the product's size; a stale write met twice in
that overlap is counted once. The cost is one query per product per look: a look at the whole
container costs in proportion to its number of products.

A gate, so it passes only on evidence. A product is quiet once ``quiet_for`` seconds of its
writes, judged and free of stale writes, lie behind the look: from its newest stale write, or
with none from the end of the grace (writes before it are never judged), to the look's start.
Reading from the version's start, not from the command's, is what lets a look made long after
the rotation pass at once, and what keeps one made right after it from passing before it has
seen anything. Writes of the restart window, by instances not yet restarted, stop holding the
gate once they are ``quiet_for`` old. A product that cannot be judged (no key, an undated
current version, a named product the store does not hold) is not proven quiet: it fails the
gate, and so does a look that judged no product at all.

Clocks: the look's time is this host's, a write's is the store's (Cosmos ``_ts``: the service's
clock) and a version's start is the key provider's (Key Vault's, or for a promotion or a
keyring file the operator host's). Azure hosts are NTP-synced, so they differ by well under a
second; the grace covers seconds. A host whose clock runs ``d`` seconds ahead of the service's
passes ``d`` seconds early, nothing more, against a ``quiet_for`` of minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
#: How long a product's writes must have been free of stale writes by default: a tracker
#: instance busy enough to matter writes more often than that.
DEFAULT_QUIET_FOR_S = 300.0
#: Products a reason names before "and N more".
NAMED_IN_REASON = 5


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProductSeen:
    """One judged product: the version its writes are judged against, and its stale writes so far."""

    current_kid: str
    #: When ``current_kid`` became current, seconds since the epoch (the key provider's clock).
    current_since: float
    stale_writes: int = 0
    newest_ts: float | None = None

    @property
    def quiet_from(self) -> float:
        """Where this product's quiet is counted from: its newest stale write, or the end of the
        grace, before which no write is judged."""
        return max(self.newest_ts or 0.0, self.current_since + stale.GRACE_S)

    def as_json(self, looked_at: float, quiet_for: float) -> dict:
        quiet_s = looked_at - self.quiet_from
        return {
            "current_kid": self.current_kid,
            "current_since": iso(self.current_since),
            "stale_writes": self.stale_writes,
            "newest_ts": self.newest_ts,
            "newest_stale_write": iso(self.newest_ts),
            "quiet_from": iso(self.quiet_from),
            "quiet_s": round(quiet_s, 3),
            "quiet": quiet_s >= quiet_for,
        }


@dataclass
class StaleReport:
    """What the looks found so far: every count exact, examples bounded (newest first)."""

    #: The products the command set out to judge.
    products_watched: int = 0
    stale_writes: int = 0
    newest_ts: float | None = None
    examples: list[stale.StaleWrite] = field(default_factory=list)
    #: Every product judged by the last look (and any judged before that has stale writes).
    products: dict[str, ProductSeen] = field(default_factory=dict)
    #: Products the last look could not judge, and why. Each fails the gate.
    not_checked: dict[str, str] = field(default_factory=dict)
    looked_at: float = 0.0

    def judging(self, product: str, version: KeyVersion, since: float) -> None:
        seen = self.products.get(product)
        if seen is None:
            self.products[product] = ProductSeen(version.kid, since)
        else:
            seen.current_kid, seen.current_since = version.kid, since

    def add(self, found: stale.StaleWrite) -> None:
        self.stale_writes += 1
        self.newest_ts = max(found.ts, self.newest_ts or found.ts)
        seen = self.products[found.product]
        seen.stale_writes += 1
        seen.newest_ts = max(found.ts, seen.newest_ts or found.ts)
        self.examples = stale.newest_first([*self.examples, found])

    @property
    def checked(self) -> dict[str, ProductSeen]:
        """The products the last look judged."""
        return {product: seen for product, seen in self.products.items() if product not in self.not_checked}

    def not_quiet(self, quiet_for: float) -> dict[str, float]:
        """Each judged product not quiet yet, with the seconds it still needs (longest first)."""
        left = {product: quiet_for - (self.looked_at - seen.quiet_from) for product, seen in self.checked.items()}
        return dict(sorted(((p, s) for p, s in left.items() if s > 0), key=lambda item: (-item[1], item[0])))

    def left_s(self, quiet_for: float) -> float:
        """Seconds until every judged product is quiet, if no stale write comes meanwhile."""
        return max(self.not_quiet(quiet_for).values(), default=0.0)

    def waitable(self, quiet_for: float) -> bool:
        """Not passed, and only for want of time: every product judged, some not quiet yet."""
        return not self.not_checked and bool(self.checked) and bool(self.not_quiet(quiet_for))

    def reason(self, quiet_for: float) -> str | None:
        """Why the gate does not pass; None when it does."""
        if self.not_checked:
            return (
                f"{len(self.not_checked)} of the {self.products_watched} products could not be checked "
                f"({_named(sorted(self.not_checked))}): a product that cannot be judged is not proven quiet"
            )
        if not self.checked:
            return "no product was checked: the store holds no product's documents, so nothing is proven quiet"
        waiting = self.not_quiet(quiet_for)
        if not waiting:
            return None
        product = next(iter(waiting))
        seen = self.products[product]
        since = "its newest stale write" if seen.newest_ts is not None else "the end of the grace"
        return (
            f"{len(waiting)} of the {len(self.checked)} products checked not quiet for {quiet_for:g} s yet: "
            f"product {product} quiet for {max(0.0, self.looked_at - seen.quiet_from):.0f} s (since {since}, "
            f"{iso(seen.quiet_from)}), {waiting[product]:.0f} s left"
        )

    def quiet(self, quiet_for: float) -> bool:
        """The gate: at least one product judged, every product judged, and each quiet."""
        return self.reason(quiet_for) is None

    def as_json(self, quiet_for: float, store: str) -> dict:
        checked = self.checked
        return {
            "quiet": self.quiet(quiet_for),
            "reason": self.reason(quiet_for),
            "stale_writes": self.stale_writes,
            "stale_write_examples": [example.as_json() for example in self.examples],
            "newest_stale_write": iso(self.newest_ts),
            "newest_stale_write_ts": self.newest_ts,
            "quiet_for_s": quiet_for,
            "quiet_left_s": round(self.left_s(quiet_for), 3),
            "looked_at": iso(self.looked_at),
            "grace_s": stale.GRACE_S,
            "products_watched": self.products_watched,
            "products_checked": len(checked),
            "products": {product: seen.as_json(self.looked_at, quiet_for) for product, seen in sorted(checked.items())},
            "products_not_checked": dict(sorted(self.not_checked.items())),
            "store": store,
        }


def _named(products: list[str]) -> str:
    more = len(products) - NAMED_IN_REASON
    return ", ".join(products[:NAMED_IN_REASON]) + (f" and {more} more" if more > 0 else "")


class StaleWatch:
    """Looks at the products' recent writes, again and again, adding what each look finds.

    ``named``: the operator named the products, so one the store holds no document of is
    reported as not checked rather than judged quiet on no evidence."""

    def __init__(
        self,
        store: DocumentStore,
        keys: ProductKeys,
        products: Sequence[str],
        clock: Callable[[], float] = time.time,
        *,
        named: bool = False,
    ) -> None:
        self.store, self.products, self.clock, self.named = store, list(products), clock, named
        self.current = CurrentKids(keys)
        self.report = StaleReport(products_watched=len(self.products))
        #: Per product, the time a look reads from (exclusive); absent until its first look.
        self._from: dict[str, float] = {}
        #: The stale writes met in the window the next look reads again, so none counts twice.
        self._recent: set[tuple[str, str, float]] = set()
        #: Named products found in the store (asked once each).
        self._present: set[str] = set()

    def look(self) -> StaleReport:
        """One look at every product; the report so far. Raises an outage (a transient error):
        the caller may look again later."""
        started = self.clock()
        for product in self.products:
            version = self._version(product)
            if version is None:
                continue
            since = epoch_seconds(version.current_since)
            assert since is not None  # _version dates it
            self.report.judging(product, version, since)
            lower = self._from.get(product, since + stale.GRACE_S)
            self._read(product, version, lower)
            self._from[product] = max(lower, started - LOOK_BACK_S)
        self.report.looked_at = started
        floor = min(self._from.values(), default=started)
        self._recent = {key for key in self._recent if key[2] > floor}
        return self.report

    def _version(self, product: str) -> KeyVersion | None:
        """The product's current version, dated; None (and why, in the report) where it cannot be judged."""
        not_checked = self.report.not_checked
        if self.named and product not in self._present:
            if not self.store.count(product):
                not_checked[product] = (
                    f"{self.store.describe()} holds no document of product {product!r}: nothing to judge "
                    "(check the id against 'reencrypt keys list --all-products')"
                )
                return None
            self._present.add(product)
        try:
            version = self.current.version_of(product)
        except (KeyProviderError, ConfigError) as error:
            if error.transient:
                raise
            not_checked[product] = f"{first_line(error)} (no current version to judge its writes by)"
            return None
        if epoch_seconds(version.current_since) is None:
            not_checked[product] = (
                f"the keyring or vault does not say when {version.kid} became current: no write can be dated against it"
            )
            return None
        not_checked.pop(product, None)
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
    """The products named (checked as key names: an id that cannot name a key is bad input), or
    every product of the store. Under per-product keys a product of the store with no key of its
    own is watched too: the look reports it not checked, and the gate does not pass on it."""
    if chosen:
        return keys.naming.check_products(chosen)
    return store.products()
