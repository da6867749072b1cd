"""How product ids name keys and the tracker-service's variables (tracker_reencrypt.keys.naming)."""

from __future__ import annotations

import pytest

from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.keys.naming import (
    KeyNaming,
    UnmappableProductError,
    env_line,
    env_name,
    key_name_of_kid,
)

TEMPLATE = KeyNaming("tracker-mek-{productId}")


def test_a_product_id_names_its_key_unchanged():
    assert TEMPLATE.key_name("acme-EU-2") == "tracker-mek-acme-EU-2"
    assert TEMPLATE.per_product


def test_one_fixed_name_is_every_products_key():
    naming = KeyNaming("tracker-mek")
    assert not naming.per_product
    assert naming.key_name("acme") == naming.key_name("other") == naming.key_name(None) == "tracker-mek"
    assert naming.product_of_kid("tracker-mek/v2") is None


@pytest.mark.parametrize("product", ["acme_eu", "acme.eu", "ünï", "a b", "", "x/y"])
def test_an_id_key_vault_cannot_name_is_refused_naming_it(product):
    with pytest.raises(UnmappableProductError) as refused:
        TEMPLATE.key_name(product)
    assert repr(product) in str(refused.value) or "no product id" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_an_id_making_the_name_longer_than_key_vault_allows_is_refused():
    assert len(TEMPLATE.key_name("p" * (127 - len("tracker-mek-")))) == 127
    with pytest.raises(UnmappableProductError, match="127"):
        TEMPLATE.key_name("p" * (128 - len("tracker-mek-")))


def test_ids_differing_only_in_case_are_refused_as_one_key():
    with pytest.raises(UnmappableProductError, match="differ only in case"):
        TEMPLATE.check_products(["Acme", "beta", "acme"])
    assert TEMPLATE.check_products(["beta", "acme", "beta"]) == ["beta", "acme"]


@pytest.mark.parametrize("template", ["tracker_mek", "tracker-mek-{productId}-{productId}", "", "mek.{productId}"])
def test_a_bad_key_name_setting_is_refused(template):
    with pytest.raises(ConfigError):
        KeyNaming(template)


def test_keys_and_kids_map_back_to_their_product():
    assert TEMPLATE.product_of_key("tracker-mek-acme") == "acme"
    assert TEMPLATE.product_of_key("TRACKER-MEK-acme") == "acme"  # Key Vault names ignore case
    assert TEMPLATE.product_of_key("billing-mek-acme") is None
    assert TEMPLATE.product_of_key("tracker-mek-") is None
    assert TEMPLATE.product_of_kid("tracker-mek-acme/v3") == "acme"
    assert TEMPLATE.product_of_kid("https://v.vault.azure.net/keys/tracker-mek-acme/0123abcd") == "acme"
    assert KeyNaming("{productId}-mek").product_of_key("acme-mek") == "acme"


def test_kids_name_their_key():
    assert key_name_of_kid("tracker-mek-acme/v12") == "tracker-mek-acme"
    assert key_name_of_kid("https://v.vault.azure.net/keys/tracker-mek/0123") == "tracker-mek"


def test_the_tracker_service_variable_is_the_id_upper_cased_with_underscores():
    assert env_name("acme-eu") == "TRACKER_MEK_ID_ACME_EU"
    assert env_name("Product-007") == "TRACKER_MEK_ID_PRODUCT_007"
    assert (
        env_line("acme", "https://v/keys/tracker-mek-acme/01")
        == "TRACKER_MEK_ID_ACME=https://v/keys/tracker-mek-acme/01"
    )


def test_the_key_provider_url_names_the_vault_and_the_setting_names_the_key():
    from tracker_reencrypt.keys import open_key_provider

    vault = "https://example-vault.vault.azure.net"
    assert open_key_provider(vault).key_name == "tracker-mek"
    assert open_key_provider(vault + "/", "tracker-mek-{productId}").key_name == "tracker-mek-{productId}"
    # The older form fixes one name, and keeps meaning it.
    assert open_key_provider(vault + "/keys/billing-mek").key_name == "billing-mek"
    assert open_key_provider(vault + "/keys/billing-mek", "billing-mek").key_name == "billing-mek"
    with pytest.raises(ConfigError, match="fixes key name 'billing-mek'"):
        open_key_provider(vault + "/keys/billing-mek", "tracker-mek-{productId}")
    with pytest.raises(ConfigError, match="not understood"):
        open_key_provider("http://example-vault.vault.azure.net")
    with pytest.raises(ConfigError):
        open_key_provider(vault, "tracker_mek")
