"""What a failed Key Vault call becomes: retried within bounds, then translated into our errors.

The SDK's RetryPolicy retries 429s, sleeping what Retry-After asks; we bound it (retry count
and a cap on each wait) rather than add tenacity on top, so one policy owns retries. What
still fails is translated by :func:`translate` into the project's hierarchy, one line naming
the vault, the key id and the fix, never a data key or key material.
"""

from __future__ import annotations

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.policies import RetryPolicy

from tracker_reencrypt.errors import (
    KeyDisabledError,
    KeyNotFoundError,
    KeyProviderError,
    KeyProviderUnavailableError,
    UnwrapError,
    first_line,
)

# Bounded retries. retry_status must be raised with retry_total: its default (3) would give up
# on a short 429 storm. The backoff applies only when the service sends no Retry-After.
RETRY_DEFAULTS = {"retry_total": 6, "retry_status": 6, "retry_backoff_factor": 0.8, "retry_backoff_max": 20}
MAX_RETRY_AFTER_S = 20.0
# Roles whose data actions each kind of call needs (Azure RBAC built-in roles).
_CRYPTO_ROLE = "Key Vault Crypto User"
_ADMIN_ROLE = "Key Vault Crypto Officer"
_ADMIN_OPERATIONS = frozenset({"create_key", "update_key", "list_versions"})


class BoundedRetryPolicy(RetryPolicy):
    """The SDK's retry policy with each server-requested wait capped.

    The stock policy sleeps whatever Retry-After says; a worker must not stall for longer
    than ``max_retry_after_s`` on one call, so longer requests are shortened (the retry then
    meets another 429 and waits again, within the retry count).
    """

    def __init__(self, max_retry_after_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_retry_after_s = max_retry_after_s

    def get_retry_after(self, response):
        retry_after = super().get_retry_after(response)
        return None if retry_after is None else min(retry_after, self.max_retry_after_s)


def translate(error: Exception, operation: str, kid: str | None, vault_url: str, key_name: str) -> KeyProviderError:
    """One typed, one-line error naming the vault, the key and the fix."""
    target = kid or f"{vault_url}/keys/{key_name}"
    status = getattr(error, "status_code", None)
    code, message = _service_error(error)
    if status == 403 and is_disabled(error):
        return KeyDisabledError(
            f"key {target} is disabled in {vault_url}: {operation} refused until it is enabled again"
        )
    if status == 401:
        return KeyProviderError(
            f"{vault_url} rejected the identity's token for {operation} ({code}): "
            "check the tenant and that the identity exists"
        )
    if status == 403:
        role = _ADMIN_ROLE if operation in _ADMIN_OPERATIONS else _CRYPTO_ROLE
        return KeyProviderError(
            f"{vault_url} refused {operation} on {target} ({status} {code}): grant the identity '{role}' on the vault"
        )
    if isinstance(error, ClientAuthenticationError):
        return KeyProviderError(
            f"no token for {vault_url}: {first_line(error)}; sign in (az login) or configure a managed identity"
        )
    if status == 404:
        return KeyNotFoundError(
            f"key {target} is not in {vault_url} ({code}): check the key id, or run 'reencrypt keys init'"
        )
    if status == 400 and operation == "unwrap_key":
        return UnwrapError(
            f"key {target} cannot unwrap this data key ({code}): tampered, truncated or wrapped by another key"
        )
    if status == 429:
        return KeyProviderUnavailableError(
            f"{vault_url} still throttled {operation} (429) after bounded retries: lower the fleet's Key Vault budget"
        )
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        return KeyProviderUnavailableError(f"cannot reach {vault_url} for {operation}: {first_line(error)}")
    if isinstance(status, int) and (status >= 500 or status == 408):
        return KeyProviderUnavailableError(f"{vault_url} failed {operation} on {target}: {status} {code}: {message}")
    if isinstance(error, HttpResponseError):
        return KeyProviderError(f"{vault_url} failed {operation} on {target}: {status} {code}: {message}")
    return KeyProviderError(f"{operation} on {target} failed: {first_line(error)}")


def _service_error(error: Exception) -> tuple[str, str]:
    """Key Vault's error code, with the inner one when given (Forbidden/KeyDisabled), and message."""
    body = getattr(error, "error", None)
    if body is None:
        return "", ""
    inner = body.innererror.get("code") if isinstance(body.innererror, dict) else None
    code = f"{body.code}/{inner}" if inner else (body.code or "")
    lines = (body.message or "").strip().splitlines()
    return code, lines[0] if lines else ""


def is_disabled(error: Exception) -> bool:
    """Key Vault refuses a disabled version with 403 Forbidden, inner code KeyDisabled."""
    code, message = _service_error(error)
    return "KeyDisabled" in code or "disabled key" in message.lower()
