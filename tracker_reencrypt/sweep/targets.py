"""The kid each document of a sweep moves to: one fixed version, or its product's current one.

A document whose product has no usable key gets no target and a reason instead; each of its
fields that would move is then recorded as a failure with that reason (documents.rekey_document),
and the sweep goes on with the other products.
"""

from __future__ import annotations

from tracker_reencrypt.errors import KeyDisabledError, KeyNotFoundError
from tracker_reencrypt.keys.naming import UnmappableProductError
from tracker_reencrypt.keys.products import CurrentKids, ProductKeys
from tracker_reencrypt.sweep.records import Sweep

#: Why a document has no target (failure reasons, see docs/OPERATIONS.md).
UNMAPPABLE_PRODUCT = "unmappable_product"
NO_PRODUCT_KEY = "no_product_key"
TARGET_DISABLED = "target_disabled"
OTHER_PRODUCT = "other_product"


class DocumentTargets:
    """Thread-safe; one per sweep in a worker process (its current kids are cached)."""

    def __init__(self, sweep: Sweep, keys: ProductKeys, current: CurrentKids | None = None) -> None:
        self.sweep, self.keys = sweep, keys
        self.current = current or CurrentKids(keys)
        # A fixed target under per-product keys belongs to one product: a document of another
        # must never move onto it (the sweep is scoped to that product; this is the backstop).
        self._fixed_product = None if sweep.to_current else keys.product_of_kid(sweep.target_kid)

    def kid_for(self, product: str | None) -> tuple[str | None, str]:
        """(target kid, "") or (None, the failure reason)."""
        if not self.sweep.to_current:
            if self.keys.per_product and product != self._fixed_product:
                return None, OTHER_PRODUCT
            return self.sweep.target_kid, ""
        try:
            return self.current.of(product), ""
        except UnmappableProductError:
            return None, UNMAPPABLE_PRODUCT
        except KeyNotFoundError:
            return None, NO_PRODUCT_KEY
        except KeyDisabledError:
            return None, TARGET_DISABLED
