"""The project's own commands with preflight's management-plane client pointed at the loopback
ARM server (tests/arm_server.py), and the Key Vault client at the loopback vault as
tests/loopback_vault.py does: import this first, then the command's modules.

A real account needs nothing of this: DefaultAzureCredential finds the identity and ARM's
certificate chains to a public CA. With ``$TEST_ARM_URL`` set (the server's ``url``) and
``$TEST_ARM_CA`` (its ``cert_path``), :func:`coordinator.preflight.backup.open_management_client`
builds the real SDK client with a static token, that URL as its endpoint and that certificate
as the trust anchor; everything else (the check, the SDK's calls, retries and parsing) is the
real code.

``python -m loopback_arm ARGS`` runs the CLI (``reencrypt ARGS``) this way.
"""

from __future__ import annotations

import os

from azure.mgmt.cosmosdb import CosmosDBManagementClient

# isort: off
# loopback_vault first: it must patch the key provider factory before any module of the project
# binds it, and the CLI below needs both patches.
from loopback_vault import StaticTokenCredential
import coordinator.preflight.backup as backup

# isort: on

ENV_URL = "TEST_ARM_URL"
ENV_CA = "TEST_ARM_CA"


def management_client(subscription_id: str, arm_url: str, ca_path: str) -> CosmosDBManagementClient:
    """The check's client for the loopback server, with the check's own bounded retries."""
    return CosmosDBManagementClient(
        StaticTokenCredential(),
        subscription_id,
        base_url=arm_url,
        connection_verify=ca_path,
        **{**backup.MANAGEMENT_CLIENT_OPTIONS, "retry_backoff_factor": 0.01},
    )


def open_management_client(subscription_id: str) -> CosmosDBManagementClient:
    return management_client(subscription_id, os.environ[ENV_URL], os.environ[ENV_CA])


if os.environ.get(ENV_URL):
    backup.open_management_client = open_management_client

if __name__ == "__main__":
    from coordinator.cli import main

    main()
