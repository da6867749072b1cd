"""Azure errors as ours: no azure exception leaves the Cosmos store, :func:`store_error_for`
turns each into an error of tracker_reencrypt.errors that says what to fix."""

from __future__ import annotations

from azure.core.exceptions import AzureError, ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.cosmos import exceptions

from tracker_reencrypt.errors import ConflictError, NotFoundError, StoreError, StoreUnavailableError, first_line
from tracker_reencrypt.stores.cosmos_access import ENV_KEY


def store_error_for(exc: Exception, doing: str, account: str, credential_kind: str) -> StoreError:
    """Our error for an azure exception raised while ``doing`` something on ``account``."""
    if isinstance(exc, exceptions.CosmosAccessConditionFailedError):
        return ConflictError(f"{doing} on Cosmos account {account}: it changed since it was read (ETag mismatch)")
    if isinstance(exc, exceptions.CosmosResourceExistsError):
        return ConflictError(f"{doing} on Cosmos account {account}: it already exists")
    if isinstance(exc, exceptions.CosmosResourceNotFoundError):
        return NotFoundError(f"{doing} on Cosmos account {account}: not found")
    if isinstance(exc, exceptions.CosmosHttpResponseError):
        status = exc.status_code
        if status == 401:
            fix = (
                f"set {ENV_KEY} to the account's current primary or secondary key"
                if credential_kind == "key"
                else f"check the identity's tenant, or set {ENV_KEY} to use an account key"
            )
            return StoreError(f"Cosmos account {account} rejected our credential (401) {doing}: {fix}")
        if status == 403:
            fix = (
                "check the account's firewall and network rules and that the key is not read-only"
                if credential_kind == "key"
                else "grant this identity the Cosmos DB Built-in Data Contributor role on the account "
                "(az cosmosdb sql role assignment create) and check the account's firewall"
            )
            return StoreError(
                f"Cosmos account {account} refused access (403: {first_line(exc.message)}) {doing}: {fix}"
            )
        if status == 429:
            return StoreUnavailableError(
                f"Cosmos account {account} kept throttling (429) {doing} after the SDK's retries: "
                "lower the sweep's rate or give the container more RU/s"
            )
        if status is not None and (status >= 500 or status == 408):
            return StoreUnavailableError(
                f"Cosmos account {account} answered {status} {doing}: {first_line(exc.message)}"
            )
        return StoreError(f"Cosmos account {account} answered {status} {doing}: {first_line(exc.message)}")
    if isinstance(exc, ClientAuthenticationError):
        return StoreError(
            f"no Entra ID token for Cosmos account {account} ({first_line(exc.message)}): "
            f"sign in (managed identity, az login) or set {ENV_KEY}"
        )
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return StoreUnavailableError(
            f"cannot reach Cosmos endpoint https://{account}/ {doing}: {first_line(exc.message)}"
        )
    if isinstance(exc, exceptions.CosmosClientTimeoutError):
        return StoreUnavailableError(f"Cosmos account {account} timed out {doing}")
    if isinstance(exc, AzureError):
        return StoreError(f"Cosmos request {doing} on account {account} failed: {first_line(exc.message)}")
    return StoreError(f"Cosmos request {doing} on account {account} failed: {type(exc).__name__}: {first_line(exc)}")


__all__ = ["store_error_for"]
