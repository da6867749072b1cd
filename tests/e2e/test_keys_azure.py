"""The Azure Key Vault provider through the real azure-keyvault-keys SDK, against a loopback
HTTPS vault (tests/keyvault_server.py) holding real RSA keys."""

from __future__ import annotations

import base64
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.core.credentials import AccessToken
from azure.identity import CredentialUnavailableError

from tracker_reencrypt import envelope
from tracker_reencrypt.envelope import Location
from tracker_reencrypt.errors import (
    ConfigError,
    EnvelopeError,
    KeyDisabledError,
    KeyNotFoundError,
    KeyProviderError,
    UnwrapError,
)
from tracker_reencrypt.keys import WRAP_ALGORITHM, open_key_provider
from tracker_reencrypt.keys.azure import AzureKeyVaultProvider
from tracker_reencrypt.keys.keyring import Keyring

from keyvault_server import TENANT, KeyVaultServer

KEY_NAME = "tracker-mek"
# Retry-After: 0 falls back to the SDK's exponential backoff; keep it short in tests.
FAST_RETRIES = {"retry_backoff_factor": 0.001}


class StaticTokenCredential:
    """A TokenCredential with a fixed token; remembers what the challenge made it ask for."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.requests: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs) -> AccessToken:
        self.requests.append((scopes, tenant_id))
        return AccessToken(self.token, int(time.time()) + 3600)


class UnavailableCredential:
    """A TokenCredential with no identity behind it, like DefaultAzureCredential on a bare host."""

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        raise CredentialUnavailableError(message="no managed identity endpoint and no developer sign-in found")


@pytest.fixture
def vault():
    with KeyVaultServer(page_size=2) as server:
        yield server


@pytest.fixture
def open_provider(vault):
    """Providers on the test vault; the SDK trusts its certificate and skips the domain check."""
    opened = []

    def open_(credential=None, key_name=KEY_NAME, url=None, **options) -> AzureKeyVaultProvider:
        options = {"connection_verify": vault.cert_path, "verify_challenge_resource": False, **FAST_RETRIES, **options}
        provider = AzureKeyVaultProvider(url or vault.url, key_name, credential or StaticTokenCredential(), **options)
        opened.append(provider)
        return provider

    yield open_
    for provider in opened:
        provider.close()


@pytest.fixture
def provider(open_provider):
    provider = open_provider()
    provider.init()
    return provider


def write_fields(keyring: Keyring, count: int) -> list[tuple[dict, Location, dict]]:
    fields = []
    for i in range(count):
        where = Location(document_id=f"issue-{i}", partition_key=f"project-{i % 3}", field_path="/reporter/email")
        value = {"email": f"user{i}@example.com", "n": i}
        fields.append((envelope.encrypt(value, where, keyring), where, value))
    return fields


def assert_no_secret_in(error: Exception, *secrets: bytes) -> None:
    message = str(error)
    assert "\n" not in message
    for secret in secrets:
        for form in (secret.hex(), base64.b64encode(secret).decode(), envelope.b64encode(secret)):
            assert form not in message


# -- administration ------------------------------------------------------------------------


def test_init_rotate_list_disable_enable(vault, open_provider):
    credential = StaticTokenCredential()
    provider = open_provider(credential)
    first = provider.init()
    assert first.current and first.enabled and first.kid.startswith(f"{vault.url}/keys/{KEY_NAME}/")
    assert len(first.kid.rsplit("/", 1)[1]) == 32  # always the versioned id
    with pytest.raises(KeyProviderError, match="already exists"):
        provider.init()

    second, third = provider.rotate(), provider.rotate()
    assert provider.current_kid() == third.kid
    versions = provider.versions()
    assert [v.kid for v in versions] == [first.kid, second.kid, third.kid]
    assert [v.current for v in versions] == [False, False, True]
    assert vault.counts["list_versions"] == 2  # page size 2: the SDK followed nextLink

    provider.set_enabled(first.kid, False)
    assert [v.status for v in provider.versions()] == ["disabled", "enabled", "enabled"]
    with pytest.raises(KeyDisabledError, match="current version"):
        provider.set_enabled(third.kid, False)
    assert provider.set_enabled(first.kid, True).enabled

    # The challenge flow: one 401, then a token for the vault's resource in the vault's tenant.
    assert vault.challenges == 1
    assert credential.requests[0] == (("https://vault.azure.net/.default",), TENANT)


def test_rotate_refuses_a_key_that_does_not_exist(open_provider):
    with pytest.raises(KeyNotFoundError, match="reencrypt keys init"):
        open_provider(key_name="no-such-key").rotate()


def test_factory_builds_the_azure_provider_from_a_vault_url():
    provider = open_key_provider("https://x.vault.azure.net/keys/tracker-mek")
    try:
        assert isinstance(provider, AzureKeyVaultProvider)
        assert (provider.vault_url, provider.key_name) == ("https://x.vault.azure.net", "tracker-mek")
    finally:
        provider.close()


# -- promote (rollback to an older version) -----------------------------------------------


def newest_tags(vault) -> dict:
    """What the vault itself holds on the newest version (no provider in between)."""
    return vault.keys[KEY_NAME][-1].tags


def test_promote_rolls_new_writes_back_to_an_older_version(vault, open_provider, provider):
    first = provider.current_kid()
    second = provider.rotate().kid
    version = provider.promote(first)
    assert (version.kid, version.current, version.enabled) == (first, True, True)
    assert provider.current_kid() == first
    assert [(v.kid, v.current) for v in provider.versions()] == [(first, True), (second, False)]
    sealed, where, value = write_fields(Keyring(provider), 1)[0]
    assert sealed["kid"] == first
    assert open_provider().current_kid() == first  # recorded in the vault, for every process

    # The abandoned newer version may now be disabled; the promoted one may not.
    assert not provider.set_enabled(second, False).enabled
    with pytest.raises(KeyDisabledError, match="current version"):
        provider.set_enabled(first, False)
    # The newest version is disabled now, so the vault refuses to get it: still the promoted one.
    other = open_provider()
    assert other.current_kid() == first
    assert [(v.kid, v.current, v.enabled) for v in other.versions()] == [(first, True, True), (second, False, False)]
    assert envelope.decrypt(sealed, where, Keyring(other)) == value

    # A later rotation takes over as usual and leaves the promotion behind.
    third = provider.rotate().kid
    assert provider.current_kid() == third and open_provider().current_kid() == third
    assert "current-version" not in newest_tags(vault)
    assert write_fields(Keyring(provider), 1)[0][0]["kid"] == third


def test_promoting_the_newest_again_undoes_a_promotion(vault, open_provider, provider):
    first = provider.current_kid()
    second = provider.rotate().kid
    rotated = open_provider().current_version()
    assert rotated.current_since == rotated.created  # a rotation's version is current from its creation
    provider.promote(first)
    back = provider.promote(second)
    assert back.current and open_provider().current_kid() == second
    # The promotion record is gone, its time stays: writes under the first version after it are stale.
    assert newest_tags(vault) == {"current-since": back.current_since}
    assert open_provider().current_version().current_since == back.current_since >= rotated.created


def test_promoting_the_current_version_changes_nothing(vault, provider):
    kid = provider.current_kid()
    version = provider.promote(kid)
    assert (version.kid, version.current) == (kid, True)
    assert vault.counts["update_key"] == 0 and newest_tags(vault) == {}


def test_promote_refuses_a_disabled_or_unknown_version(vault, provider):
    first = provider.current_kid()
    second = provider.rotate().kid
    provider.set_enabled(first, False)
    with pytest.raises(KeyDisabledError, match=f"enable it first with 'reencrypt keys enable {first}'") as disabled:
        provider.promote(first)
    assert "\n" not in str(disabled.value)
    for unknown in (vault.kid(KEY_NAME, "0" * 32), f"{vault.url}/keys/other/{'0' * 32}", "not a url"):
        with pytest.raises(KeyNotFoundError, match="'reencrypt keys list'"):
            provider.promote(unknown)
    assert vault.counts["update_key"] == 1  # the disable only
    assert provider.current_kid(refresh=True) == second


def test_a_promoted_version_disabled_elsewhere_hands_back_to_the_newest(vault, open_provider, provider):
    first = provider.current_kid()
    second = provider.rotate().kid
    provider.promote(first)
    vault.set_enabled(first, False)  # an operator in the portal
    assert open_provider().current_kid() == second
    assert provider.current_kid(refresh=True) == second


def test_promote_rescues_a_key_whose_newest_version_was_disabled_elsewhere(vault, open_provider, provider):
    first = provider.current_kid()
    second = provider.rotate().kid
    vault.set_enabled(second, False)  # an operator in the portal: no version is current
    with pytest.raises(KeyDisabledError):
        provider.current_kid(refresh=True)
    assert provider.promote(first).current
    assert open_provider().current_kid() == first


# -- metadata ------------------------------------------------------------------------------

STORE_ENTRY = "store-3f9a0c12ab45"
STORE_VALUE = "12:" + "ab34" * 16 + "|sqlite:/abs/path/tracker.db"


def test_metadata_set_get_and_delete_in_the_newest_versions_tags(vault, open_provider, provider):
    assert provider.metadata() == {}
    both = {STORE_ENTRY: STORE_VALUE, "owner": "team-a"}
    assert provider.set_metadata(both) == both
    assert newest_tags(vault) == both
    assert provider.set_metadata({"owner": None, "absent": None}) == {STORE_ENTRY: STORE_VALUE}
    assert open_provider().metadata() == {STORE_ENTRY: STORE_VALUE}
    assert provider.set_metadata({STORE_ENTRY: None}) == {}
    assert newest_tags(vault) == {}


def test_metadata_survives_rotate_promote_and_a_new_provider(vault, open_provider, provider):
    first = provider.current_kid()
    provider.set_metadata({STORE_ENTRY: STORE_VALUE})
    second = provider.rotate().kid
    assert newest_tags(vault) == {STORE_ENTRY: STORE_VALUE}  # carried onto the new version
    provider.promote(first)
    assert provider.metadata() == {STORE_ENTRY: STORE_VALUE}  # the promotion record is not metadata
    assert provider.set_metadata({"owner": "team-a"}) == {STORE_ENTRY: STORE_VALUE, "owner": "team-a"}
    assert open_provider().current_kid() == first  # and writing metadata kept the promotion
    provider.set_enabled(second, False)  # the vault refuses get on it now; its tags are still read
    fresh = open_provider()
    assert fresh.metadata() == {STORE_ENTRY: STORE_VALUE, "owner": "team-a"}
    assert fresh.set_metadata({"owner": None}) == {STORE_ENTRY: STORE_VALUE}
    fresh.rotate()
    assert open_provider().metadata() == {STORE_ENTRY: STORE_VALUE}


def entries(count: int) -> dict[str, str]:
    return {f"store-{i:012x}": STORE_VALUE for i in range(count)}


@pytest.mark.parametrize(
    "changes, limit",
    [
        ({"extra-1": "x", "extra-2": "x"}, "14 metadata entries but at most 13 fit: Key Vault allows 15 tags"),
        ({"n" * 513: "x"}, "513 characters but Key Vault allows at most 512 per tag name"),
        ({"store-000000000000": "v" * 257}, "257-character value but Key Vault allows at most 256 per tag value"),
    ],
)
def test_a_change_beyond_key_vaults_tag_limits_is_refused_and_writes_nothing(vault, provider, changes, limit):
    assert provider.set_metadata(entries(13)) == entries(13)  # exactly at the limit is fine
    updates = vault.counts["update_key"]
    with pytest.raises(KeyProviderError, match=limit) as refused:
        provider.set_metadata({**changes, "store-000000000001": None})  # the deletion is not written either
    assert "\n" not in str(refused.value) and "v" * 257 not in str(refused.value)
    assert vault.counts["update_key"] == updates
    assert provider.metadata() == entries(13) == newest_tags(vault)


def test_a_rollback_always_has_room_for_its_tags(vault, provider):
    """Metadata stops two short of Key Vault's 15 tags: keys promote, the rollback, must never be
    refused for want of room for its record."""
    first = provider.current_kid()
    provider.rotate()
    provider.set_metadata(entries(13))
    assert provider.promote(first).current and provider.current_kid(refresh=True) == first
    assert len(newest_tags(vault)) == 15 and provider.metadata() == entries(13)


def test_the_promotion_record_is_not_settable_as_metadata(vault, provider):
    with pytest.raises(KeyProviderError, match="reserved"):
        provider.set_metadata({"current-version": "0" * 32})
    assert vault.counts["update_key"] == 0


# -- wrap locally, unwrap in the vault -----------------------------------------------------


def test_wrap_is_local_and_unwrap_goes_to_the_vault(vault, provider):
    kid = provider.current_kid()
    deks = [os.urandom(32) for _ in range(5)]
    wrapped = [provider.wrap(kid, dek) for dek in deks]
    assert vault.counts["wrap_key"] == 0
    assert provider.calls["wrap_local"] == 5

    assert [provider.unwrap(kid, WRAP_ALGORITHM, w) for w in wrapped] == deks
    assert vault.counts["unwrap_key"] == 5
    assert vault.counts["get_key"] == 1  # the public key, once for this kid


def test_keyring_cache_costs_one_unwrap_per_distinct_dek(vault, provider):
    fields = write_fields(Keyring(provider, dek_max_uses=10), 50)
    distinct_deks = {sealed["dek"] for sealed, _, _ in fields}
    assert len(distinct_deks) == 5

    reader = Keyring(provider)  # another process: nothing cached yet
    for _ in range(2):
        assert [envelope.decrypt(sealed, where, reader) for sealed, where, _ in fields] == [v for _, _, v in fields]
    assert vault.counts["unwrap_key"] == len(distinct_deks)
    assert reader.stats.provider_unwraps == len(distinct_deks)
    assert vault.counts["wrap_key"] == 0


def test_vault_latency_is_seen_by_the_keyring(vault, provider):
    fields = write_fields(Keyring(provider), 1)
    vault.latency_s["unwrap_key"] = 0.05
    reader = Keyring(provider)
    envelope.decrypt(fields[0][0], fields[0][1], reader)
    assert reader.stats.provider_seconds["unwrap"] >= 0.05


# -- throttling ----------------------------------------------------------------------------


def test_a_429_storm_is_ridden_out_and_counted(vault, provider):
    fields = write_fields(Keyring(provider, dek_max_uses=5), 60)
    vault.throttle(fraction=0.3, retry_after="0")
    reader = Keyring(provider)
    with ThreadPoolExecutor(max_workers=4) as pool:
        values = list(pool.map(lambda f: envelope.decrypt(f[0], f[1], reader), fields))
    assert values == [v for _, _, v in fields]
    assert vault.throttled > 0
    assert provider.throttled == vault.throttled


def test_retry_after_is_honoured(vault, provider):
    wrapped = provider.wrap(provider.current_kid(), os.urandom(32))
    vault.throttle(next_calls=1, retry_after="1")
    started = time.monotonic()
    provider.unwrap(provider.current_kid(), WRAP_ALGORITHM, wrapped)
    assert time.monotonic() - started >= 1.0
    assert provider.throttled == 1


def test_long_retry_after_is_capped_and_five_throttles_are_survived(vault, open_provider, provider):
    kid = provider.current_kid()
    dek = os.urandom(32)
    wrapped = provider.wrap(kid, dek)
    impatient = open_provider(max_retry_after_s=0.05)
    vault.throttle(next_calls=5, retry_after="30")
    started = time.monotonic()
    assert impatient.unwrap(kid, WRAP_ALGORITHM, wrapped) == dek
    assert time.monotonic() - started < 5
    assert impatient.throttled == 5


def test_throttling_beyond_the_retry_bound_is_a_provider_error(vault, provider):
    kid = provider.current_kid()
    dek = os.urandom(32)
    wrapped = provider.wrap(kid, dek)
    vault.throttle(next_calls=100, retry_after="0")
    with pytest.raises(KeyProviderError, match="still throttled unwrap_key") as raised:
        provider.unwrap(kid, WRAP_ALGORITHM, wrapped)
    assert provider.throttled == 7  # the first try and six retries
    assert_no_secret_in(raised.value, dek, wrapped)


# -- refusals ------------------------------------------------------------------------------


def test_a_disabled_version_refuses_to_unwrap(vault, provider):
    old_kid = provider.current_kid()
    dek = os.urandom(32)
    wrapped = provider.wrap(old_kid, dek)
    fields = write_fields(Keyring(provider), 3)
    provider.rotate()
    provider.set_enabled(old_kid, False)

    with pytest.raises(KeyDisabledError, match="is disabled") as raised:
        provider.unwrap(old_kid, WRAP_ALGORITHM, wrapped)
    assert old_kid in str(raised.value)
    assert_no_secret_in(raised.value, dek, wrapped)
    with pytest.raises(EnvelopeError) as refused:
        envelope.decrypt(fields[0][0], fields[0][1], Keyring(provider))
    assert refused.value.reason == "kid_disabled"
    with pytest.raises(KeyDisabledError):
        provider.wrap(old_kid, dek)

    provider.set_enabled(old_kid, True)
    assert envelope.decrypt(fields[0][0], fields[0][1], Keyring(provider)) == fields[0][2]


def test_a_version_disabled_elsewhere_stops_unwrapping_at_once(vault, provider):
    kid = provider.current_kid()
    dek = os.urandom(32)
    wrapped = provider.wrap(kid, dek)
    assert provider.unwrap(kid, WRAP_ALGORITHM, wrapped) == dek  # the client for this kid is warm
    vault.set_enabled(kid, False)  # an operator in the portal
    with pytest.raises(KeyDisabledError):
        provider.unwrap(kid, WRAP_ALGORITHM, wrapped)


def test_an_identity_without_a_role_gets_a_clear_message(vault, open_provider, provider):
    kid = provider.current_kid()
    dek = os.urandom(32)
    wrapped = provider.wrap(kid, dek)
    vault.denied_tokens.add("intruder")
    intruder = open_provider(StaticTokenCredential("intruder"))
    for attempt in (lambda: intruder.unwrap(kid, WRAP_ALGORITHM, wrapped), lambda: intruder.wrap(kid, dek)):
        with pytest.raises(KeyProviderError) as raised:
            attempt()
        assert type(raised.value) is KeyProviderError
        assert vault.url in str(raised.value) and "'Key Vault Crypto User'" in str(raised.value)
        assert_no_secret_in(raised.value, dek, wrapped)


def test_no_credential_gives_a_clear_message(open_provider):
    with pytest.raises(KeyProviderError, match="no token for .*az login"):
        open_provider(UnavailableCredential()).current_kid()


def test_an_unknown_version_is_key_not_found(vault, provider):
    dek = os.urandom(32)
    wrapped = provider.wrap(provider.current_kid(), dek)
    unknown = vault.kid(KEY_NAME, "0" * 32)
    with pytest.raises(KeyNotFoundError) as raised:
        provider.unwrap(unknown, WRAP_ALGORITHM, wrapped)
    assert unknown in str(raised.value)
    assert_no_secret_in(raised.value, dek, wrapped)

    sealed, where, _ = write_fields(Keyring(provider), 1)[0]
    with pytest.raises(EnvelopeError) as refused:
        envelope.decrypt({**sealed, "kid": unknown}, where, Keyring(provider))
    assert refused.value.reason == "unknown_kid"


@pytest.mark.parametrize(
    "kid", ["https://127.0.0.1:1/keys/tracker-mek/abc", "{vault}/keys/tracker-mek", "{vault}/keys/other", "not a url"]
)
def test_ids_that_are_not_a_version_in_this_vault_are_refused_without_a_call(vault, provider, kid):
    kid = kid.format(vault=vault.url)
    calls = dict(provider.calls)
    with pytest.raises(KeyNotFoundError):
        provider.unwrap(kid, WRAP_ALGORITHM, b"x" * 256)
    assert provider.calls == calls


def test_altered_wrapped_data_is_an_unwrap_error(vault, provider):
    kid = provider.current_kid()
    dek = os.urandom(32)
    wrapped = bytearray(provider.wrap(kid, dek))
    wrapped[10] ^= 0xFF
    with pytest.raises(UnwrapError) as raised:
        provider.unwrap(kid, WRAP_ALGORITHM, bytes(wrapped))
    assert_no_secret_in(raised.value, dek, bytes(wrapped))

    sealed, where, _ = write_fields(Keyring(provider), 1)[0]
    tampered = bytearray(envelope.b64decode(sealed["dek"], "dek"))
    tampered[0] ^= 0xFF
    with pytest.raises(EnvelopeError) as refused:
        envelope.decrypt({**sealed, "dek": envelope.b64encode(bytes(tampered))}, where, Keyring(provider))
    assert refused.value.reason == "unwrap_failed"


def test_an_unreachable_vault_is_a_provider_error_worth_retrying(open_provider):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = open_provider(url=f"https://127.0.0.1:{port}", retry_total=0)
    with pytest.raises(KeyProviderError, match="cannot reach") as raised:
        unreachable.current_kid()
    assert raised.value.transient  # an outage: workers retry with back-off instead of pausing the sweep


def test_a_refused_role_is_not_worth_retrying(vault, open_provider, provider):
    vault.denied_tokens.add("intruder")
    with pytest.raises(KeyProviderError) as raised:
        open_provider(StaticTokenCredential("intruder")).wrap(provider.current_kid(), os.urandom(32))
    assert not raised.value.transient  # a person must grant the role: the sweep pauses and says so


def test_an_empty_vault_url_is_a_config_error():
    with pytest.raises(ConfigError, match="vault_url"):
        AzureKeyVaultProvider("", KEY_NAME, StaticTokenCredential())
