"""How to reach a Cosmos store: its ``cosmos://`` URL, the environment that completes it, and the
options of the SDK client (credential, TLS, retries).

``cosmos://<account host>[:port]/<database>/<container>`` names the container;
``CosmosStore.from_url`` reads the rest from the environment (and is the only code that does),
through the functions here:

- ``REENCRYPT_COSMOS_KEY``: an account key; unset or empty means Entra ID through
  ``azure.identity.DefaultAzureCredential`` (managed identity, workload identity, ``az login``...);
- ``REENCRYPT_COSMOS_CA_BUNDLE``: a PEM file of certificates to trust instead of the system's
  (a test server's self-signed certificate). TLS is verified on every endpoint, loopback too;
- ``REENCRYPT_COSMOS_PRIORITY``: ``low`` sends the sweep's document requests with priority-based
  execution's ``Low`` priority, so the account throttles them before the application's.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from azure.cosmos import SSLConfiguration

from tracker_reencrypt.errors import ConfigError, redact_url

ENV_KEY = "REENCRYPT_COSMOS_KEY"
ENV_CA_BUNDLE = "REENCRYPT_COSMOS_CA_BUNDLE"
ENV_PRIORITY = "REENCRYPT_COSMOS_PRIORITY"

#: 429s: the SDK waits as the service's x-ms-retry-after-ms says, at most this often and long,
#: then the error reaches the sweep, which backs off as a whole (SDK defaults, made explicit).
THROTTLE_RETRIES = 9
THROTTLE_WAIT_MAX_S = 30
#: Connection failures: a few quick retries, then the caller hears about it.
CONNECTION_RETRIES = 3

Priority = Literal["Low", "High"]


# -- URL and environment ---------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, str, str]:
    """``cosmos://host[:port]/database/container`` -> (host[:port], database, container)."""
    example = "cosmos://<account>.documents.azure.com/<database>/<container>"
    if not url.startswith("cosmos://"):
        raise ConfigError(f"store URL {redact_url(url)!r} is not a Cosmos URL: use {example}")
    parts = urlsplit(url)
    names = [name for name in parts.path.split("/") if name]
    if not parts.hostname or len(names) != 2 or parts.query or parts.fragment or parts.username:
        raise ConfigError(
            f"Cosmos store URL {redact_url(url)!r} must name an account host, a database and a container: use {example}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"Cosmos store URL {redact_url(url)!r} has a bad port: use {example}") from None
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    return host, names[0], names[1]


def parse_priority(text: str | None) -> Priority | None:
    """``low``/``high`` (any case) -> the SDK's ``Low``/``High``; empty -> None (service default)."""
    if not text:
        return None
    priority = {"low": "Low", "high": "High"}.get(text.strip().lower())
    if priority is None:
        raise ConfigError(f"{ENV_PRIORITY}={text!r} is not a priority: use low or high")
    return priority  # type: ignore[return-value]


def credential_from(environ: Mapping[str, str]) -> Any:
    """The account key in ``environ``, else Entra ID (``DefaultAzureCredential``)."""
    key = environ.get(ENV_KEY, "")
    if key:
        credential: Any = key
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return credential


def ca_bundle_from(environ: Mapping[str, str]) -> str | None:
    """The PEM bundle ``environ`` names, if any; it must be a file."""
    ca_bundle = environ.get(ENV_CA_BUNDLE) or None
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ConfigError(f"{ENV_CA_BUNDLE}={ca_bundle!r} is not a file: point it at a PEM certificate bundle")
    return ca_bundle


# -- the client ------------------------------------------------------------------------------


def cosmos_client_options(
    ca_bundle: str | os.PathLike | None,
    response_hook: Callable[[Any], None],
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """CosmosClient's keyword arguments: TLS verified, our retries, every HTTP response to
    ``response_hook``; ``overrides`` as they are, over these defaults."""
    # The SDK skips TLS verification for 127.0.0.1 and localhost (the emulator) unless an
    # SSLConfiguration is given: give one always, so verification is on everywhere.
    tls = SSLConfiguration()
    tls.SSLCaCerts = str(ca_bundle) if ca_bundle else True
    options: dict[str, Any] = {
        "ssl_config": tls,
        "connection_verify": tls.SSLCaCerts,
        "retry_throttle_total": THROTTLE_RETRIES,
        "retry_throttle_backoff_max": THROTTLE_WAIT_MAX_S,
        "retry_total": CONNECTION_RETRIES,
        "retry_connect": CONNECTION_RETRIES,
        "retry_read": CONNECTION_RETRIES,
        "raw_response_hook": response_hook,
        **(overrides or {}),
    }
    return options


def check_account_key(credential: Any, account: str) -> None:
    """Refuse an account key that is not base64 (a TokenCredential passes as it is)."""
    if isinstance(credential, str):
        try:
            base64.b64decode(credential, validate=True)
        except ValueError:
            raise ConfigError(
                f"the account key for Cosmos account {account} is not base64: "
                f"set {ENV_KEY} to a key as the portal or `az cosmosdb keys list` shows it"
            ) from None


__all__ = [
    "ENV_CA_BUNDLE",
    "ENV_KEY",
    "ENV_PRIORITY",
    "Priority",
    "ca_bundle_from",
    "check_account_key",
    "cosmos_client_options",
    "credential_from",
    "parse_priority",
    "parse_url",
]
