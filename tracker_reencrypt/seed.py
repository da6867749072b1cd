"""Sample tracker data: a realistic container encrypted under the current MEK version.

Document shapes (partition key ``productId``):

- ``item``: ``title``, ``description`` (with PII), ``reporterEmail`` encrypted; custom fields
  in an array, some of whose values are encrypted (envelopes nested inside arrays);
- ``comment``: ``body`` encrypted;
- ``attachment``: ``signedUrl`` encrypted;
- ``api_key``: ``keySeed`` encrypted;
- ``product``: no encrypted field at all (the sweep must leave such documents alone).

Content is deterministic for a given ``seed``; nonces and data keys are random, as in life.
Products are ``product-000``, ``product-001``...; with per-product keys each product's fields
are encrypted under its own key's current version.
``dek_share`` sets how many consecutive documents share one data key (1 = a DEK per
document, the worst case for the vault).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from tracker_reencrypt import envelope
from tracker_reencrypt.documents import location
from tracker_reencrypt.errors import ConflictError
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores import DocumentStore

DEFAULT_PRODUCTS = 32
DEFAULT_DEK_SHARE = 64
INSERT_BATCH = 500

_WORDS = (
    "login crash export timeout sync widget billing invoice upload search filter dashboard "
    "report permission token cache retry latency mobile android ios webhook schedule"
).split()
_NAMES = "ada grace linus barbara ken margaret alan edsger donald frances".split()


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _person(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(_NAMES)
    return name.capitalize(), f"{name}.{rng.randint(1, 999)}@example.com"


def _shapes(rng: random.Random, index: int, product: str) -> dict:
    """One plaintext document; encrypted fields are listed under ``_encrypt`` (removed later)."""
    roll = rng.random()
    base = {"id": f"doc-{index:07d}", "productId": product}
    if roll < 0.05:
        return {**base, "type": "product", "name": f"Product {product}", "_encrypt": []}
    if roll < 0.45:
        name, email = _person(rng)
        custom: list[dict[str, Any]] = [{"name": "severity", "value": rng.choice(["low", "high"])}]
        custom.append(
            {"name": "customer_contact", "value": {"phone": f"+1-555-{rng.randint(1000, 9999)}", "name": name}}
        )
        return {
            **base,
            "type": "item",
            "status": rng.choice(["open", "closed", "triage"]),
            "title": _sentence(rng, 5),
            "description": f"{_sentence(rng, 20)} Reported by {name} ({email}), "
            f"phone +1-555-{rng.randint(1000, 9999)}.",
            "reporterEmail": email,
            "priority": rng.randint(1, 4),
            "customFields": custom,
            "_encrypt": [("title",), ("description",), ("reporterEmail",), ("customFields", 1, "value")],
        }
    item = f"doc-{max(0, index - rng.randint(1, 20)):07d}"
    if roll < 0.8:
        return {
            **base,
            "type": "comment",
            "itemId": item,
            "author": _person(rng)[0],
            "body": _sentence(rng, 30),
            "_encrypt": [("body",)],
        }
    if roll < 0.95:
        url = f"https://files.example.com/{rng.getrandbits(64):016x}?sig={rng.getrandbits(128):032x}"
        return {
            **base,
            "type": "attachment",
            "itemId": item,
            "fileName": f"log-{index}.txt",
            "signedUrl": url,
            "_encrypt": [("signedUrl",)],
        }
    return {
        **base,
        "type": "api_key",
        "agent": f"agent-{rng.randint(1, 50)}",
        "keySeed": f"{rng.getrandbits(256):064x}",
        "_encrypt": [("keySeed",)],
    }


def _set(body: dict, parts: tuple, value) -> None:
    target = body
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value


def seeding_keyring(provider) -> Keyring:
    """A keyring whose data-key reuse is bounded by ``dek_share`` documents, not by uses or age."""
    return Keyring(provider, dek_max_uses=2**31, dek_max_age_s=float("inf"))


def product_ids(products: int) -> list[str]:
    """The partition key values of a seeded container of ``products`` products."""
    return [f"product-{number:03d}" for number in range(products)]


def generate(
    count: int,
    keyring: Keyring,
    *,
    seed: int = 1,
    products: int = DEFAULT_PRODUCTS,
    dek_share: int = DEFAULT_DEK_SHARE,
    kid_of: Callable[[str], str] | None = None,
) -> Iterator[dict]:
    """Yield ``count`` encrypted tracker documents, each product's under ``kid_of(product)``
    (default: the keyring's current version for every product: one key for the container)."""
    rng = random.Random(seed)
    names = product_ids(products)
    if kid_of is None:
        shared = keyring.current_kid()
        kid_of = lambda _product: shared  # noqa: E731 - one key for every product
    for index in range(count):
        if index % max(1, dek_share) == 0:
            keyring.forget()  # the next field takes a fresh data key
        body = _shapes(rng, index, names[rng.randrange(products)])
        kid = kid_of(body["productId"])
        for parts in body.pop("_encrypt"):
            plain = body
            for part in parts:
                plain = plain[part]
            _set(body, parts, envelope.encrypt(plain, location(body, body["productId"], parts), keyring, kid))
        yield body


def seed_store(
    store: DocumentStore,
    keyring: Keyring,
    count: int,
    *,
    seed: int = 1,
    products: int = DEFAULT_PRODUCTS,
    dek_share: int = DEFAULT_DEK_SHARE,
    progress: Callable[[int], None] | None = None,
    kid_of: Callable[[str], str] | None = None,
) -> int:
    """Write ``count`` generated documents into ``store``; returns how many are there now.

    Resumable: document ids depend only on their position, so after an interruption the same
    call keeps what was written and adds only the missing documents."""
    batch: list[dict] = []
    done = 0
    for body in generate(count, keyring, seed=seed, products=products, dek_share=dek_share, kid_of=kid_of):
        batch.append(body)
        if len(batch) == INSERT_BATCH:
            done += _insert_missing(store, batch)
            batch = []
            if progress:
                progress(done)
    if batch:
        done += _insert_missing(store, batch)
    if progress:
        progress(done)
    return done


def _insert_missing(store: DocumentStore, batch: list[dict]) -> int:
    """Insert a batch at once, or, when some of it exists (a resumed seed), one by one
    skipping those. Returns the batch's size: every one of its documents is there."""
    try:
        store.create_many(batch)
    except ConflictError:
        for body in batch:
            try:
                store.create(body)
            except ConflictError:
                pass  # written by the interrupted run
    return len(batch)
