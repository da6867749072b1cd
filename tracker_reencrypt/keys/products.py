"""Every product's MEK over one keyring file or vault, as the key name setting names them.

With one fixed key name this is that one key for every product, exactly as before per-product
keys existed; with a template (``tracker-mek-{productId}``) each product has its own key, reached
through a sibling of the root provider (same connections, same call counters).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from tracker_reencrypt.errors import ConfigError, KeyProviderError, UnknownNameError
from tracker_reencrypt.keys import KeyProvider, KeyVersion
from tracker_reencrypt.keys.naming import KeyNaming, key_name_of_kid


class ProductKeys:
    """Thread-safe: a worker's batches share one."""

    def __init__(self, root: KeyProvider) -> None:
        #: Opened for the key name setting; with a template it only wraps and unwraps.
        self.root = root
        self.naming = KeyNaming(root.key_name)
        self._siblings: dict[str, KeyProvider] = {}
        self._lock = threading.Lock()

    @property
    def per_product(self) -> bool:
        return self.naming.per_product

    def provider_for(self, product: str | None) -> KeyProvider:
        """The provider of ``product``'s key (UnmappableProductError for an id that names none)."""
        name = self.naming.key_name(product)
        if name == self.root.key_name:
            return self.root
        with self._lock:
            sibling = self._siblings.get(name)
            if sibling is None:
                sibling = self._siblings[name] = self.root.for_key(name)
            return sibling

    def provider_of_kid(self, kid: str) -> KeyProvider:
        """The provider of the key ``kid`` is a version of; UnknownNameError for a kid of a key
        the setting does not name (another key in the same vault is not ours to touch)."""
        if self.per_product:
            product = self.naming.product_of_kid(kid)
            if product is not None:
                return self.provider_for(product)
        elif key_name_of_kid(kid) == self.root.key_name:
            return self.root
        raise UnknownNameError(f"key {kid!r} is not a version of {self.describe()}: see 'reencrypt keys list'")

    def product_of_kid(self, kid: str) -> str | None:
        return self.naming.product_of_kid(kid)

    def products_with_keys(self) -> list[str]:
        """The products whose key exists, from the key names in the keyring or vault."""
        found = (self.naming.product_of_key(name) for name in self.root.key_names())
        return sorted({product for product in found if product is not None})

    def describe(self) -> str:
        """The one key's description, or the keyring or vault holding every product's key."""
        return self.root.describe()


#: How long a worker trusts a product's current version. A whole-container sweep meets every
#: product, and each lookup is a Key Vault call: minutes, not the provider's own minute, keep
#: that to one call per product per worker. Rotating a product a sweep covers is refused while
#: it runs (keys rotate), and verify --current catches what a forced rotation left behind.
CURRENT_KID_TTL_S = 300.0


class CurrentKids:
    """Each product's current version, looked up at most once per ``ttl_s`` (refusals included:
    a product with no key is not asked about again for every one of its documents). Thread-safe."""

    def __init__(self, keys: ProductKeys, ttl_s: float = CURRENT_KID_TTL_S, clock=time.monotonic) -> None:
        self.keys, self.ttl_s, self._clock = keys, ttl_s, clock
        self._known: dict[str | None, tuple[float, KeyVersion | KeyProviderError | ConfigError]] = {}
        self._lock = threading.Lock()

    def of(self, product: str | None) -> str:
        """``product``'s current kid. Raises what the lookup raised: UnmappableProductError,
        KeyNotFoundError, KeyDisabledError; an outage (transient) is never remembered."""
        return self.version_of(product).kid

    def version_of(self, product: str | None) -> KeyVersion:
        now = self._clock()
        with self._lock:
            known = self._known.get(product)
        if known is None or now - known[0] >= self.ttl_s:
            try:
                # Asked of the keyring or vault itself: a rotation made a moment before the
                # sweep started must not be answered from the provider's own short cache.
                answer: KeyVersion | KeyProviderError | ConfigError = self.keys.provider_for(product).current_version(
                    refresh=True
                )
            except (KeyProviderError, ConfigError) as error:
                if error.transient:
                    raise
                answer = error
            known = (now, answer)
            with self._lock:
                self._known[product] = known
        if isinstance(known[1], Exception):
            raise known[1].with_traceback(None)  # a fresh traceback each time, not a growing one
        return known[1]


def epoch_seconds(text: str) -> float | None:
    """An ISO-8601 UTC time as the providers write it (``2026-11-28T02:00:00Z``) in seconds
    since the epoch; None for an empty or unreadable one."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
