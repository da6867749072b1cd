"""Which MEK a document belongs to, and what the tracker-service calls its current version.

The tracker keeps one MEK per product (its runbook: Key Vault key ``tracker-mek-<productId>``,
and the tracker-service reads each product's current key id from ``TRACKER_MEK_ID_<PRODUCTID>``).
One setting, ``REENCRYPT_KEY_NAME`` (``--key-name``), names the key a document belongs to:

- a plain name (default ``tracker-mek``): one key for the whole container, as before;
- a template holding ``{productId}``: the document's partition key value put in its place,
  e.g. ``tracker-mek-{productId}``.

**A product id maps to a key name unchanged.** Key Vault key names allow only ``0-9 a-z A-Z -``
and 1–127 characters, and the tracker creates its keys with the id as it is, so escaping an id
would name a key the tracker never made. An id with any other character, or one that makes
the name too long, is refused with one line naming it. Key Vault names are case-insensitive:
two product ids differing only in case would share one key, so such a pair is refused too.

**The tracker-service's variable** is ``TRACKER_MEK_ID_`` plus the product id upper-cased,
every character outside ``A-Z 0-9`` written as ``_`` (``acme-eu`` → ``TRACKER_MEK_ID_ACME_EU``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

from tracker_reencrypt.errors import ConfigError

DEFAULT_KEY_NAME = "tracker-mek"
PRODUCT_PLACEHOLDER = "{productId}"
ENV_PREFIX = "TRACKER_MEK_ID_"
#: Key Vault's rule for object names ("About keys, secrets and certificates": 1-127 characters).
MAX_KEY_NAME_CHARS = 127
_KEY_NAME_CHARS = re.compile(r"[0-9A-Za-z-]+")
_NOT_ENV_CHARS = re.compile(r"[^A-Z0-9]")


class UnmappableProductError(ConfigError):
    """A product id that cannot name a key (characters, length or a case twin)."""


def key_name_of_kid(kid: str) -> str:
    """The key a versioned kid belongs to: ``name/v3`` (local keyring) or
    ``https://<vault>/keys/<name>/<version>`` (Key Vault)."""
    if kid.startswith("https://"):
        parts = urlparse(kid).path.split("/")
        return parts[2] if len(parts) > 2 else ""
    return kid.rsplit("/v", 1)[0]


def env_name(product: str) -> str:
    """The tracker-service's variable holding ``product``'s current key id."""
    return ENV_PREFIX + _NOT_ENV_CHARS.sub("_", product.upper())


def env_line(product: str, kid: str) -> str:
    return f"{env_name(product)}={kid}"


@dataclass(frozen=True)
class KeyNaming:
    """The key name setting: one fixed name, or a template with ``{productId}``."""

    template: str = DEFAULT_KEY_NAME

    def __post_init__(self) -> None:
        if self.template.count(PRODUCT_PLACEHOLDER) > 1:
            raise ConfigError(
                f"key name {self.template!r} holds {PRODUCT_PLACEHOLDER} more than once: use it once, "
                "e.g. tracker-mek-{productId}"
            )
        fixed = self.template.replace(PRODUCT_PLACEHOLDER, "")
        if not fixed and not self.per_product:
            raise ConfigError("key name is empty: set REENCRYPT_KEY_NAME or --key-name (e.g. tracker-mek)")
        if fixed and not _KEY_NAME_CHARS.fullmatch(fixed):
            raise ConfigError(
                f"key name {self.template!r} has characters Key Vault does not allow in a key name "
                f"(only 0-9 a-z A-Z - and {PRODUCT_PLACEHOLDER}): fix REENCRYPT_KEY_NAME or --key-name"
            )
        if len(fixed) > MAX_KEY_NAME_CHARS:
            raise ConfigError(f"key name {self.template!r} is longer than {MAX_KEY_NAME_CHARS} characters")

    @property
    def per_product(self) -> bool:
        return PRODUCT_PLACEHOLDER in self.template

    @property
    def _affixes(self) -> tuple[str, str]:
        prefix, _, suffix = self.template.partition(PRODUCT_PLACEHOLDER)
        return prefix, suffix

    def key_name(self, product: str | None) -> str:
        """The key ``product``'s documents belong to (any product, or None, with one fixed name)."""
        if not self.per_product:
            return self.template
        if product is None or not isinstance(product, str) or product == "":
            raise UnmappableProductError(
                f"a document has no product id, so key name {self.template!r} names no key for it"
            )
        name = self.template.replace(PRODUCT_PLACEHOLDER, product)
        if not _KEY_NAME_CHARS.fullmatch(product):
            raise UnmappableProductError(
                f"product id {product!r} cannot name a Key Vault key (only 0-9 a-z A-Z - are allowed, "
                f"and ids are used unchanged): rename the product or give it a fixed --key-name"
            )
        if len(name) > MAX_KEY_NAME_CHARS:
            raise UnmappableProductError(
                f"product id {product!r} makes key name {name[:40]}... {len(name)} characters long; "
                f"Key Vault allows {MAX_KEY_NAME_CHARS}: shorten the template or the id"
            )
        return name

    def product_of_key(self, key_name: str) -> str | None:
        """The product a key name belongs to under this template; None when it does not match.
        Matched without regard to case, as Key Vault matches names."""
        if not self.per_product:
            return None
        prefix, suffix = self._affixes
        lowered = key_name.lower()
        if len(key_name) <= len(prefix) + len(suffix):
            return None
        if not (lowered.startswith(prefix.lower()) and lowered.endswith(suffix.lower())):
            return None
        product = key_name[len(prefix) : len(key_name) - len(suffix)]
        return product if _KEY_NAME_CHARS.fullmatch(product) else None

    def product_of_kid(self, kid: str) -> str | None:
        """The product whose key wrapped ``kid``; None with one fixed name (or a foreign kid)."""
        return self.product_of_key(key_name_of_kid(kid))

    def check_products(self, products: Iterable[str]) -> list[str]:
        """``products`` in order, each once, after refusing any that cannot name a key: an
        unmappable id, or two ids that name the same Key Vault key (they differ only in case)."""
        seen: dict[str, str] = {}
        ordered: list[str] = []
        for product in products:
            self.key_name(product)
            twin = seen.get(product.lower())
            if twin is not None and twin != product:
                raise UnmappableProductError(
                    f"product ids {twin!r} and {product!r} differ only in case, and Key Vault key names do not: "
                    f"they would share key {self.key_name(product)!r}"
                )
            if twin is None:
                seen[product.lower()] = product
                ordered.append(product)
        return ordered
