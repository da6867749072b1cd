"""Feed ranges of a Cosmos container: effective-partition-key (EPK) ranges ``[min, max)``, and
the id cuts of a product range.

An EPK range is the SDK's own dict form (``FeedRangeInternalEpk.to_dict``); :func:`split_feed_range`
cuts one into sub-ranges so a sweep can have more slices than the container has physical
partitions, and :func:`covers_whole_container` tells the one range a scan may send as a
cross-partition query instead.

A product (one logical partition) cannot be split by EPK, so a large one is cut by id
(:class:`tracker_reencrypt.stores.ProductRange`): :func:`sample_ids` keeps a bounded uniform
sample of its ids from one id-only pass, and :func:`id_cuts` takes the cuts from its quantiles.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from itertools import pairwise

from tracker_reencrypt.errors import StoreError
from tracker_reencrypt.stores import FeedRange

#: The effective-partition-key space: "" to "FF" (exclusive). Hash v2 EPKs are 32 hex digits
#: whose first byte is masked to 0x3F (azure.cosmos.partition_key), so the data lie below 0x40.
EPK_MIN, EPK_MAX = "", "FF"
_EPK_DIGITS = 32
_HASH_V2_TOP = 0x40 << (8 * 15)


def _range_bounds(feed_range: FeedRange) -> tuple[str, str]:
    try:
        inner = feed_range["Range"]
        low, high = inner["min"], inner["max"]
        if not isinstance(low, str) or not isinstance(high, str) or not low < high:
            raise ValueError
        if inner.get("isMinInclusive", True) is not True or inner.get("isMaxInclusive", False) is not False:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"feed range {feed_range!r} is not a Cosmos EPK range [min, max)") from None
    return low, high


def _epk_range(low: str, high: str) -> FeedRange:
    """The SDK's own dict form of an EPK range (FeedRangeInternalEpk.to_dict)."""
    return {"Range": {"min": low, "max": high, "isMinInclusive": True, "isMaxInclusive": False}}


def covers_whole_container(feed_range: FeedRange) -> bool:
    return _range_bounds(feed_range) == (EPK_MIN, EPK_MAX)


def _epk_value(epk: str, top: int) -> int:
    if epk == EPK_MIN:
        return 0
    if epk == EPK_MAX:
        return top
    return int(epk[:_EPK_DIGITS].ljust(_EPK_DIGITS, "0"), 16)


def split_feed_range(feed_range: FeedRange, parts: int) -> list[FeedRange]:
    """Split an EPK range of a hash-v2 container into ``parts`` disjoint sub-ranges covering it.

    The cut points are spread evenly over the part of the range real EPKs occupy (below 0x40 in
    the first byte) and kept only where strictly between the bounds as strings, the order EPKs
    are compared in, so the pieces always cover the range exactly once even for odd bounds.
    """
    low, high = _range_bounds(feed_range)
    if parts <= 1:
        return [_epk_range(low, high)]
    start = _epk_value(low, _HASH_V2_TOP)
    end = _epk_value(high, _HASH_V2_TOP)
    if high == EPK_MAX and end <= start:  # a range above the data: split the rest of the space
        end = 1 << (4 * _EPK_DIGITS)
    cuts: list[str] = []
    for index in range(1, parts):
        cut = f"{start + (end - start) * index // parts:0{_EPK_DIGITS}X}"
        if low < cut < high and (not cuts or cuts[-1] < cut):
            cuts.append(cut)
    bounds = [low, *cuts, high]
    return [_epk_range(a, b) for a, b in pairwise(bounds)]


#: Ids kept to cut a product: enough for ranges within a few per cent of even, in about 1 MB
#: whatever the product's size. More ranges want more ids (20 each), up to a cap (about 20 MB).
ID_SAMPLE_SIZE = 10_000
ID_SAMPLE_PER_RANGE = 20
ID_SAMPLE_MAX = 200_000
#: Where code point order (Python's, and UTF-8 byte order) and UTF-16 code unit order
#: (JavaScript's: the test server) part: from the surrogates up.
_ORDERS_AGREE_BELOW = "\ud800"


def id_sample_size(ranges: int) -> int:
    return min(ID_SAMPLE_MAX, max(ID_SAMPLE_SIZE, ID_SAMPLE_PER_RANGE * ranges))


def sample_ids(ids: Iterable[str], size: int, rng: random.Random) -> list[str]:
    """A uniform sample of at most ``size`` of ``ids`` (reservoir sampling): all of them when
    there are no more, and never more than ``size`` held, however many go by."""
    sample: list[str] = []
    for seen, document_id in enumerate(ids):
        if seen < size:
            sample.append(document_id)
        else:
            slot = rng.randrange(seen + 1)
            if slot < size:
                sample[slot] = document_id
    return sample


def id_cuts(sample: list[str], ranges: int) -> list[str]:
    """Up to ``ranges - 1`` increasing ids cutting the ids ``sample`` stands for into runs of
    about equal count (the sample's quantiles; exact when it holds every id).

    Sorted in Python's str order, which need not be the server's: that only costs balance, as
    long as the server, too, sees the cuts in increasing order, since the ranges between them
    then cover every id exactly once. So each cut is cut short before its first character from
    U+D800 up (where code point and UTF-16 orders differ), and a cut not above the one before
    it is dropped: cuts made of characters below U+D800 compare alike in every ordinal order.
    With fewer sampled ids than ranges, there are fewer ranges.
    """
    ordered = sorted(sample)
    cuts: list[str] = []
    for index in range(1, ranges if ordered else 1):
        cut = ordered[len(ordered) * index // ranges]
        cut = next((cut[:at] for at, char in enumerate(cut) if char >= _ORDERS_AGREE_BELOW), cut)
        if cut > (cuts[-1] if cuts else ordered[0]):  # never a range known to be empty
            cuts.append(cut)
    return cuts


__all__ = [
    "EPK_MAX",
    "EPK_MIN",
    "covers_whole_container",
    "id_cuts",
    "id_sample_size",
    "sample_ids",
    "split_feed_range",
]
