"""One vault holding one key per product, through the real azure-keyvault-keys SDK against the
loopback HTTPS vault (tests/keyvault_server.py): a provider per key name, siblings sharing one
set of connections and one call tally, and wrap/unwrap across the vault's keys."""

from __future__ import annotations

import os

import pytest

from tracker_reencrypt import envelope
from tracker_reencrypt.envelope import Location
from tracker_reencrypt.errors import ConfigError, KeyDisabledError, KeyNotFoundError
from tracker_reencrypt.keys import LOCAL_WRAP_CALL, UNWRAP_CALL, WRAP_ALGORITHM
from tracker_reencrypt.keys.azure import AzureKeyVaultProvider
from tracker_reencrypt.keys.keyring import Keyring

import loopback_vault
from keyvault_server import KeyVaultServer
from loopback_vault import open_provider

ACME, GLOBEX, INITECH = "tracker-mek-acme", "tracker-mek-globex", "tracker-mek-initech"
TEMPLATE = "tracker-mek-{productId}"


@pytest.fixture
def vault():
    with KeyVaultServer(page_size=2) as server:
        yield server


@pytest.fixture
def acme(vault):
    """The provider of acme's key, with a first version; its siblings share its clients."""
    provider = open_provider(vault.url, ACME, vault.cert_path)
    provider.init()
    yield provider
    provider.close()


@pytest.fixture
def globex(acme) -> AzureKeyVaultProvider:
    sibling = acme.for_key(GLOBEX)
    sibling.init()
    return sibling


def test_key_names_lists_every_key_in_the_vault_sorted(vault, acme, globex):
    initech = acme.for_key(INITECH)
    initech.init()
    acme.for_key("a-first").init()
    vault.set_enabled(initech.current_kid(), False)  # a key whose only version is disabled is still a key
    assert vault.keys.keys() == {ACME, GLOBEX, INITECH, "a-first"}  # created in this order, not sorted
    listed = vault.counts["list_keys"]
    assert globex.key_names() == ["a-first", ACME, GLOBEX, INITECH]
    assert vault.counts["list_keys"] - listed == 2  # page size 2: the SDK followed nextLink
    assert acme.calls["list_keys"] == 1  # one listing, however many pages


def test_a_sibling_administers_its_own_key(vault, acme, globex):
    acme_v1 = acme.current_kid()
    globex_v1 = globex.current_kid()
    globex_v2 = globex.rotate().kid
    assert globex_v2.startswith(f"{vault.url}/keys/{GLOBEX}/")
    assert [(v.kid, v.current) for v in globex.versions()] == [(globex_v1, False), (globex_v2, True)]
    assert [(v.kid, v.current) for v in acme.versions()] == [(acme_v1, True)]
    globex.set_metadata({"owner": "team-g"})
    assert acme.metadata() == {} and globex.metadata() == {"owner": "team-g"}
    assert globex.promote(globex_v1).current
    assert acme.current_kid(refresh=True) == acme_v1
    assert open_provider(vault.url, GLOBEX, vault.cert_path).current_kid() == globex_v1  # recorded in the vault
    assert len(vault.keys[ACME]) == 1 and len(vault.keys[GLOBEX]) == 2


def test_siblings_count_their_calls_in_one_tally(vault, acme, globex):
    initech = globex.for_key(INITECH)  # a sibling's sibling: still the same tally
    initech.init()
    assert acme.calls["create_key"] == 3  # acme's, globex's and initech's first versions
    kid = initech.current_kid()
    wrapped = [initech.wrap(kid, os.urandom(32)) for _ in range(3)]
    for item in wrapped:
        globex.unwrap(kid, WRAP_ALGORITHM, item)
    for provider in (acme, globex, initech):
        assert provider.calls[LOCAL_WRAP_CALL] == 3
        assert provider.calls[UNWRAP_CALL] == vault.counts["unwrap_key"] == 3
    assert acme.calls == globex.calls == initech.calls

    vault.throttle(next_calls=2, retry_after="0")
    globex.unwrap(kid, WRAP_ALGORITHM, wrapped[0])
    assert acme.throttled == globex.throttled == initech.throttled == vault.throttled == 2


def test_siblings_share_the_per_kid_clients_and_a_disable_reaches_them_all(vault, acme, globex):
    kid = globex.current_kid()
    globex.rotate()
    acme.wrap(kid, os.urandom(32))
    fetched = vault.counts["get_key"]
    globex.wrap(kid, os.urandom(32))
    acme.for_key(INITECH).wrap(kid, os.urandom(32))
    assert vault.counts["get_key"] == fetched  # the public key was fetched once, for every sibling
    globex.set_enabled(kid, False)
    with pytest.raises(KeyDisabledError):
        acme.wrap(kid, os.urandom(32))  # not wrapped with the cached public key of a disabled version


def test_one_keys_provider_unwraps_what_another_keys_version_wrapped(vault, acme, globex):
    kid = globex.current_kid()
    dek = os.urandom(32)
    assert acme.unwrap(kid, WRAP_ALGORITHM, globex.wrap(kid, dek)) == dek
    # The sweep's provider, opened for the template, reads every product's fields.
    sweep = open_provider(vault.url, TEMPLATE, vault.cert_path)
    try:
        where = Location(document_id="issue-1", partition_key="globex", field_path="/reporter/email")
        sealed = envelope.encrypt({"email": "g@example.com"}, where, Keyring(globex))
        assert sealed["kid"] == kid
        assert envelope.decrypt(sealed, where, Keyring(sweep)) == {"email": "g@example.com"}
        assert sweep.unwrap(acme.current_kid(), WRAP_ALGORITHM, sweep.wrap(acme.current_kid(), dek)) == dek
        # ...and administers nothing: the template names no one key.
        served = sum(vault.counts.values())
        for attempt in (sweep.init, sweep.versions, sweep.rotate, sweep.metadata, lambda: sweep.promote(kid)):
            with pytest.raises(ConfigError, match="template for every product's key"):
                attempt()
        assert sum(vault.counts.values()) == served
    finally:
        sweep.close()


def test_an_unknown_version_of_another_key_is_key_not_found(vault, acme, globex):
    unknown = vault.kid(GLOBEX, "0" * 32)
    with pytest.raises(KeyNotFoundError, match=unknown):
        acme.unwrap(unknown, WRAP_ALGORITHM, b"x" * 256)
    with pytest.raises(KeyNotFoundError):
        acme.unwrap(vault.kid("no-such-key", "0" * 32), WRAP_ALGORITHM, b"x" * 256)


def test_a_kid_of_another_vault_is_refused_without_a_call(vault, acme, globex):
    kid = globex.current_kid()
    foreign = kid.replace(vault.url, "https://other.vault.azure.net")
    calls = acme.calls
    for attempt in (
        lambda: acme.unwrap(foreign, WRAP_ALGORITHM, b"x" * 256),
        lambda: acme.wrap(foreign, os.urandom(32)),
        lambda: globex.set_enabled(foreign, True),
        lambda: globex.promote(foreign),
    ):
        with pytest.raises(KeyNotFoundError, match="other.vault.azure.net"):
            attempt()
    assert acme.calls == calls


def test_administering_another_keys_version_is_refused(vault, acme, globex):
    kid = globex.current_kid()
    globex.rotate()
    updates = vault.counts["update_key"]
    for attempt in (lambda: acme.set_enabled(kid, False), lambda: acme.promote(kid)):
        with pytest.raises(KeyNotFoundError, match=f"is not a version of .*key {ACME}: .*'reencrypt keys list'"):
            attempt()
    assert vault.counts["update_key"] == updates
    assert [v.enabled for v in globex.versions()] == [True, True]


def test_the_loopback_factory_takes_a_vault_url_and_a_key_name(vault, acme, monkeypatch):
    monkeypatch.setenv("TEST_VAULT_CA", vault.cert_path)
    opened = [
        loopback_vault.open_key_provider(vault.url, ACME),
        loopback_vault.open_key_provider(f"{vault.url}/keys/{ACME}"),
        loopback_vault.open_key_provider(f"{vault.url}/"),
    ]
    try:
        assert [(p.vault_url, p.key_name) for p in opened] == [
            (vault.url, ACME),
            (vault.url, ACME),
            (vault.url, "tracker-mek"),
        ]
        assert opened[0].current_kid() == opened[1].current_kid() == acme.current_kid()
        with pytest.raises(ConfigError, match="fixes key name"):
            loopback_vault.open_key_provider(f"{vault.url}/keys/{ACME}", GLOBEX)
    finally:
        for provider in opened:
            provider.close()
