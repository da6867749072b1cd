"""Unwraps against a remote vault, overlapped (issue 16): the real Azure SDK provider and the
keyring, against the loopback Key Vault of tests/keyvault_server.py with latency added.

What an operator relies on: one data key costs one vault call however many fields (and threads)
need it at once; a page's keys are in flight together but never more than the pool allows; the
process's own ceiling holds when no fleet budget governs; a storm of 429s still ends with every
key unwrapped right.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tracker_reencrypt.keys.keyring import Keyring, ProcessRate
from tracker_reencrypt.pacing.backends.memory import MemoryPacing
from tracker_reencrypt.pacing.pacer import Pacer
from tracker_reencrypt.stores import RequestCost

from keyvault_server import KeyVaultServer
from loopback_vault import open_provider

KEY_NAME = "tracker-mek"


@pytest.fixture
def vault():
    with KeyVaultServer() as server:
        yield server


@pytest.fixture
def provider(vault):
    provider = open_provider(vault.url, KEY_NAME, vault.cert_path)
    provider.init()
    yield provider
    provider.close()


def sealed_keys(provider, count: int) -> list[tuple[str, bytes, bytes]]:
    """``count`` data keys wrapped under the current version: (kid, wrapped, the key itself)."""
    kid = provider.current_kid()
    keys = [os.urandom(32) for _ in range(count)]
    return [(kid, provider.wrap(kid, dek), dek) for dek in keys]


def test_many_callers_of_one_uncached_data_key_cost_one_vault_call(vault, provider):
    ((kid, wrapped, dek),) = sealed_keys(provider, 1)
    vault.latency_s["unwrap_key"] = 0.2  # long enough for every caller to arrive while it is in flight
    keyring = Keyring(provider)
    start = threading.Barrier(16)

    def unwrap() -> bytes:
        start.wait()
        return keyring.unwrap(kid, "RSA-OAEP-256", wrapped)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: unwrap(), range(16)))
    assert answers == [dek] * 16
    assert vault.counts["unwrap_key"] == 1
    assert keyring.stats.provider_unwraps == 1


def test_a_pages_keys_are_unwrapped_together_within_the_pool(vault, provider):
    keys = sealed_keys(provider, 40)
    vault.latency_s["unwrap_key"] = 0.02
    keyring = Keyring(provider, unwrap_concurrency=6)
    # Every key twice, as fields sharing data keys list them: still one call each.
    keyring.prefetch([(kid, "RSA-OAEP-256", wrapped) for kid, wrapped, _ in keys * 2]).wait()
    assert vault.counts["unwrap_key"] == 40
    assert 1 < vault.max_in_flight["unwrap_key"] <= 6
    # Now cached: the fields themselves cost no call.
    assert [keyring.unwrap(kid, "RSA-OAEP-256", wrapped) for kid, wrapped, _ in keys] == [dek for *_, dek in keys]
    assert vault.counts["unwrap_key"] == 40
    keyring.close()


def test_a_local_keyring_is_not_prefetched(tmp_path):
    from tracker_reencrypt.keys.local import LocalKeyProvider

    local = LocalKeyProvider(tmp_path / "keyring.json")
    local.init()
    keyring = Keyring(local, unwrap_concurrency=8)
    kid = local.current_kid()
    assert keyring.prefetch([(kid, "RSA-OAEP-256", local.wrap(kid, os.urandom(32)))]).futures == []


def test_the_process_ceiling_holds_with_every_thread_asking(vault, provider):
    rate = 40.0
    keys = sealed_keys(provider, 100)
    keyring = Keyring(provider, before_provider_call=ProcessRate(rate), unwrap_concurrency=8)
    keyring.prefetch([(kid, "RSA-OAEP-256", wrapped) for kid, wrapped, _ in keys]).wait()
    assert_at_most(rate, sorted(vault.started_at["unwrap_key"]), 100)
    keyring.close()


def assert_at_most(rate: float, started: list[float], calls: int) -> None:
    """Every call made, and over any window at most ``rate`` * window + one second's burst
    (a token bucket's allowance) + 1 for the window's edges."""
    assert len(started) == calls
    for first in range(len(started)):
        for last in range(first, len(started)):
            window = started[last] - started[first]
            assert last - first + 1 <= rate * window + rate + 1, (first, last, window)


def test_a_storm_of_429s_still_unwraps_every_key_right(vault, provider):
    keys = sealed_keys(provider, 30)
    vault.throttle(fraction=0.3, retry_after="0")
    keyring = Keyring(provider, unwrap_concurrency=8)
    keyring.prefetch([(kid, "RSA-OAEP-256", wrapped) for kid, wrapped, _ in keys]).wait()
    vault.throttle(0.0)
    assert [keyring.unwrap(kid, "RSA-OAEP-256", wrapped) for kid, wrapped, _ in keys] == [dek for *_, dek in keys]
    assert provider.throttled > 0  # the storm happened, and was retried rather than failed
    keyring.close()


def test_the_fleet_budget_holds_with_every_thread_asking(vault, provider):
    """The sweep's Key Vault budget, through the batch's pacer, as the worker's hook calls it."""
    budget = 40.0
    keys = sealed_keys(provider, 100)
    pacer = Pacer(MemoryPacing(), "sw-budget", {"kv_ops_per_s": budget}, RequestCost(), provider)
    keyring = Keyring(provider, before_provider_call=pacer.before_key_call, unwrap_concurrency=8)
    keyring.prefetch([(kid, "RSA-OAEP-256", wrapped) for kid, wrapped, _ in keys]).wait()
    assert_at_most(budget, sorted(vault.started_at["unwrap_key"]), 100)
    keyring.close()


def test_prefetches_not_started_are_dropped_after_an_error(vault, provider):
    """What a batch or verify does on an error or Ctrl-C: the page's queued unwraps never reach
    the vault (nor hold up the process's exit), the ones under way end."""
    keys = sealed_keys(provider, 40)
    vault.latency_s["unwrap_key"] = 0.2
    keyring = Keyring(provider, unwrap_concurrency=2)
    started = keyring.prefetch([(kid, "RSA-OAEP-256", wrapped) for kid, wrapped, _ in keys])
    keyring.cancel_prefetches()
    started.wait()
    keyring.close()
    assert vault.counts["unwrap_key"] <= 4  # the two under way, and at most one more each
    kid, wrapped, dek = keys[-1]
    assert Keyring(provider).unwrap(kid, "RSA-OAEP-256", wrapped) == dek  # nothing wedged
