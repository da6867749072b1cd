"""The keyring's data-key caches: unwrap cache (LRU + TTL) and bounded DEK reuse.

The provider is the real LocalKeyProvider over the vectors' keyring (no key generation),
subclassed only to count the calls that reach it. Time is a fake clock where TTLs matter.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from tracker_reencrypt import envelope
from tracker_reencrypt.envelope import Location
from tracker_reencrypt.errors import EnvelopeError, KeyNotFoundError
from tracker_reencrypt.keys import keyring as keyring_module
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "envelope-v1.json").read_text(encoding="utf-8"))
V1, V2, V3 = "tracker-mek/v1", "tracker-mek/v2", "tracker-mek/v3"


class CountingProvider(LocalKeyProvider):
    """The real local provider, counting wrap and unwrap calls per kid."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.counted: Counter = Counter()

    def wrap(self, kid, dek):
        self.counted["wrap", kid] += 1
        return super().wrap(kid, dek)

    def unwrap(self, kid, wrap_algorithm, wrapped):
        self.counted["unwrap", kid] += 1
        return super().unwrap(kid, wrap_algorithm, wrapped)

    def count(self, operation: str) -> int:
        return sum(n for (op, _), n in self.counted.items() if op == operation)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keyring_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keyring.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(VECTORS["keyring"], handle)
    return path


@pytest.fixture
def provider(keyring_file) -> CountingProvider:
    return CountingProvider(keyring_file)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(keyring_module, "time", SimpleNamespace(monotonic=clock, perf_counter=time.perf_counter))
    return clock


def where(i: int) -> Location:
    return Location(f"item-{i:04d}", "product-42", "/reporter/email")


def seal_many(keyring: Keyring, count: int, kid: str | None = V1) -> list[dict]:
    return [envelope.encrypt(f"user{i}@example.com", where(i), keyring, kid=kid) for i in range(count)]


def dek_of(sealed: dict) -> str:
    return sealed["dek"]


# -- unwrap cache ------------------------------------------------------------------------------


def test_one_provider_unwrap_per_distinct_dek(provider):
    sealed = seal_many(Keyring(provider, dek_max_uses=10), 50)
    assert len({dek_of(s) for s in sealed}) == 5
    reader = Keyring(provider)
    for _ in range(3):
        for i, s in enumerate(sealed):
            assert envelope.decrypt(s, where(i), reader) == f"user{i}@example.com"
    assert provider.count("unwrap") == 5
    assert reader.stats.provider_unwraps == 5 and reader.stats.unwrap_cache_misses == 5
    assert reader.stats.unwrap_cache_hits == 150 - 5
    assert reader.stats.provider_wraps == 0
    assert reader.stats.provider_seconds["unwrap"] > 0


def test_fields_just_written_read_back_without_an_unwrap(provider):
    writer = Keyring(provider, dek_max_uses=10)
    sealed = seal_many(writer, 30)
    for i, s in enumerate(sealed):
        envelope.decrypt(s, where(i), writer)
    assert provider.count("unwrap") == 0 and provider.count("wrap") == 3
    assert writer.stats.unwrap_cache_hits == 30


def test_lru_bound_evicts_the_least_recently_used(provider):
    sealed = seal_many(Keyring(provider, dek_max_uses=1), 3)  # three distinct DEKs
    reader = Keyring(provider, unwrap_cache_entries=2)
    envelope.decrypt(sealed[0], where(0), reader)
    envelope.decrypt(sealed[1], where(1), reader)
    envelope.decrypt(sealed[0], where(0), reader)  # 0 is now the most recently used
    envelope.decrypt(sealed[2], where(2), reader)  # evicts 1
    assert reader.stats.provider_unwraps == 3
    envelope.decrypt(sealed[0], where(0), reader)
    envelope.decrypt(sealed[2], where(2), reader)
    assert reader.stats.provider_unwraps == 3
    envelope.decrypt(sealed[1], where(1), reader)  # evicted: unwrapped again
    assert reader.stats.provider_unwraps == 4


def test_lru_bound_also_holds_for_keys_the_keyring_wrapped_itself(provider):
    writer = Keyring(provider, unwrap_cache_entries=2, dek_max_uses=1)
    sealed = seal_many(writer, 3)
    envelope.decrypt(sealed[2], where(2), writer)
    envelope.decrypt(sealed[1], where(1), writer)
    assert writer.stats.provider_unwraps == 0
    envelope.decrypt(sealed[0], where(0), writer)  # the oldest wrap fell out of the cache
    assert writer.stats.provider_unwraps == 1


def test_ttl_expiry_unwraps_again(provider, clock):
    sealed = seal_many(Keyring(provider), 1)[0]
    reader = Keyring(provider, unwrap_ttl_s=60)
    envelope.decrypt(sealed, where(0), reader)
    clock.now += 59
    envelope.decrypt(sealed, where(0), reader)
    assert reader.stats.provider_unwraps == 1
    clock.now += 2  # 61 s after the unwrap
    envelope.decrypt(sealed, where(0), reader)
    assert reader.stats.provider_unwraps == 2
    clock.now += 30
    envelope.decrypt(sealed, where(0), reader)
    assert reader.stats.provider_unwraps == 2 and provider.count("unwrap") == 2


def test_forget_drops_every_cached_key(provider):
    writer = Keyring(provider)
    sealed = seal_many(writer, 2)
    writer.forget()
    envelope.decrypt(sealed[0], where(0), writer)
    assert writer.stats.provider_unwraps == 1
    assert dek_of(envelope.encrypt("x", where(9), writer, kid=V1)) != dek_of(sealed[0])


def test_cached_dek_does_not_mask_a_wrong_wrap_algorithm(provider):
    reader = Keyring(provider)
    sealed = seal_many(reader, 1)[0]  # its DEK is cached under (v1, wrapped)
    with pytest.raises(EnvelopeError) as caught:
        envelope.decrypt({**sealed, "wrap": "RSA-OAEP"}, where(0), reader)
    assert caught.value.reason == "unwrap_failed"  # same verdict as with a cold cache


def test_provider_hook_sees_every_call_that_reaches_the_provider(provider):
    seen = []
    writer = Keyring(provider, dek_max_uses=2, before_provider_call=seen.append)
    sealed = seal_many(writer, 4)
    reader = Keyring(provider, before_provider_call=seen.append)
    for i, s in enumerate(sealed):
        envelope.decrypt(s, where(i), reader)
    assert seen == ["wrap", "wrap", "unwrap", "unwrap"]


# -- DEK reuse bounds --------------------------------------------------------------------------


def test_dek_reuse_is_bounded_by_uses(provider):
    keyring = Keyring(provider, dek_max_uses=3)
    sealed = seal_many(keyring, 7)
    deks = [dek_of(s) for s in sealed]
    assert deks[0] == deks[1] == deks[2] != deks[3]
    assert deks[3] == deks[4] == deks[5] != deks[6]
    assert len(set(deks)) == 3 and keyring.stats.provider_wraps == 3 == provider.count("wrap")
    # The DEK repeats; the nonce never does.
    assert len({s["iv"] for s in sealed}) == 7


def test_dek_reuse_is_bounded_by_age(provider, clock):
    keyring = Keyring(provider, dek_max_uses=1000, dek_max_age_s=300)
    first = envelope.encrypt("a", where(0), keyring, kid=V1)
    clock.now += 299
    second = envelope.encrypt("b", where(1), keyring, kid=V1)
    clock.now += 2
    third = envelope.encrypt("c", where(2), keyring, kid=V1)
    assert dek_of(first) == dek_of(second) != dek_of(third)
    assert provider.count("wrap") == 2


def test_each_kid_has_its_own_materials(provider):
    keyring = Keyring(provider)
    a1, b1 = envelope.encrypt("a", where(0), keyring, kid=V1), envelope.encrypt("b", where(1), keyring, kid=V2)
    a2 = envelope.encrypt("c", where(2), keyring, kid=V1)
    current = envelope.encrypt("d", where(3), keyring)  # no kid: the provider's current version (v2)
    assert dek_of(a1) == dek_of(a2) and current["kid"] == V2 and dek_of(current) == dek_of(b1)
    assert provider.unwrap(V1, "RSA-OAEP-256", base64.urlsafe_b64decode(a1["dek"] + "==")) != provider.unwrap(
        V2, "RSA-OAEP-256", base64.urlsafe_b64decode(b1["dek"] + "==")
    )


def test_reencrypt_under_a_new_kid_uses_a_fresh_dek(provider):
    keyring = Keyring(provider, dek_max_uses=100)
    sealed = seal_many(keyring, 5, kid=V1)
    moved = [envelope.reencrypt(s, where(i), keyring, V2) for i, s in enumerate(sealed)]
    assert {m["kid"] for m in moved} == {V2}
    unwrap = lambda s: provider.unwrap(s["kid"], "RSA-OAEP-256", base64.urlsafe_b64decode(s["dek"] + "=="))  # noqa: E731
    source_dek, target_dek = unwrap(sealed[0]), unwrap(moved[0])
    assert source_dek != target_dek
    assert len({dek_of(m) for m in moved}) == 1  # the fresh DEK is itself shared, within bounds
    assert all(m["iv"] != s["iv"] and m["ct"] != s["ct"] for m, s in zip(moved, sealed, strict=True))
    reader = Keyring(provider)
    assert [envelope.decrypt(m, where(i), reader) for i, m in enumerate(moved)] == [
        f"user{i}@example.com" for i in range(5)
    ]


def test_rewrap_wraps_each_source_dek_once_per_target(provider):
    sealed = seal_many(Keyring(provider, dek_max_uses=5), 10)
    keyring = Keyring(provider)
    moved = [envelope.rewrap(s, where(i), keyring, V2) for i, s in enumerate(sealed)]
    assert len({dek_of(m) for m in moved}) == 2
    assert keyring.stats.provider_unwraps == 2 and keyring.stats.provider_wraps == 2


def test_unknown_target_kid_is_a_provider_error_not_cached(provider):
    keyring = Keyring(provider)
    with pytest.raises(KeyNotFoundError):
        keyring.data_key_for_encryption("tracker-mek/v42")
    with pytest.raises(KeyNotFoundError):
        keyring.data_key_for_encryption("tracker-mek/v42")
    assert provider.counted["wrap", "tracker-mek/v42"] == 2
