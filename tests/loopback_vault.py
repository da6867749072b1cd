"""The project's own commands with their Key Vault client pointed at the loopback test vault
(tests/keyvault_server.py): import this first, then the command's modules.

A real vault needs nothing of this: Azure's DefaultAzureCredential finds the pod's identity,
the vault's certificate chains to a public CA and its challenge names vault.azure.net. The
loopback vault has none of these, so the provider a ``https://127.0.0.1:<port>`` URL names (or
``https://127.0.0.1:<port>/keys/<name>``, which fixes the key name) is built the way the
in-process tests build it (tests/e2e/test_budgets.py): a static token, the vault's own
certificate ($TEST_VAULT_CA) and no challenge-domain check. Everything else (the commands, the
worker, the provider's SDK calls and their retries) is the real code.

``python -m loopback_vault ARGS`` runs the CLI (``reencrypt ARGS``) this way; tests/vault_worker.py
is the worker app (``celery -A vault_worker worker``).
"""

from __future__ import annotations

import os
import time

from azure.core.credentials import AccessToken

import tracker_reencrypt.keys as keys
from tracker_reencrypt.keys.azure import AzureKeyVaultProvider

LOOPBACK = "https://127.0.0.1:"
_open_key_provider = keys.open_key_provider


class StaticTokenCredential:
    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)


def open_provider(vault_url: str, key_name: str, ca_path: str) -> AzureKeyVaultProvider:
    # Short SDK back-off between its own retries, as tests/e2e/test_budgets.py uses: the sweep's
    # handling of an outage is what is under test, not the SDK's patience.
    return AzureKeyVaultProvider(
        vault_url,
        key_name,
        StaticTokenCredential(),
        connection_verify=ca_path,
        verify_challenge_resource=False,
        retry_backoff_factor=0.001,
    )


def open_key_provider(url: str, key_name: str = ""):
    """The project's factory; for a loopback vault, its provider rebuilt as above (the factory
    keeps the say on what the URL and the key name setting mean)."""
    provider = _open_key_provider(url, key_name)
    if not url.startswith(LOOPBACK):
        return provider
    assert isinstance(provider, AzureKeyVaultProvider)
    provider.close()  # it holds the real credential chain, which finds no identity here
    return open_provider(provider.vault_url, provider.key_name, os.environ["TEST_VAULT_CA"])


# Before any module of the project binds the factory with 'from tracker_reencrypt.keys import'.
keys.open_key_provider = open_key_provider

if __name__ == "__main__":
    from coordinator.cli import main

    main()
