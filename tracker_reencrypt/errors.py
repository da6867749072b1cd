"""The one exception hierarchy of tracker-reencrypt.

Every error a caller can see derives from :class:`ReencryptError`. Messages are one line,
name the thing that is wrong and, where there is one, the fix. They never carry plaintext,
data keys or key material: only ids, paths and reasons.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


class ReencryptError(Exception):
    """Root of every error this project raises on purpose."""

    #: Process exit code the CLI uses for this kind of error.
    exit_code = 1
    #: Whether the same call may succeed later, unchanged (an outage, throttling past the
    #: SDK's retries, a busy lock). Workers retry only these, with back-off; anything else
    #: needs a person, so the sweep pauses and says why (like dramatiq's broker-connection
    #: errors against the rest).
    transient = False


class ConfigError(ReencryptError):
    """A setting is missing or malformed (store URL, key provider URL, broker URL...)."""

    exit_code = 2


class EnvelopeError(ReencryptError):
    """An envelope cannot be read, verified or produced.

    One type for every way an envelope can be bad (malformed, truncated, tampered, bound to
    another location, wrapped under an unknown or disabled key), like Fernet's InvalidToken.
    ``reason`` is a short machine-readable code recorded in sweep failures.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyProviderError(ReencryptError):
    """The key provider failed or refused (vault unreachable, permission denied...)."""


class KeyProviderUnavailableError(KeyProviderError):
    """The key provider did not answer or throttled past the retries: try again later."""

    transient = True


class KeyNotFoundError(KeyProviderError):
    """A key id names no key version the provider knows."""


class KeyDisabledError(KeyProviderError):
    """A key version exists but is disabled, so it cannot unwrap or wrap."""


class UnwrapError(KeyProviderError):
    """The key refused this wrapped data key: it was not wrapped by it, or was altered."""


class KeyringFileError(KeyProviderError):
    """The local JWKS keyring file is missing, unsafe or unreadable."""

    exit_code = 2


class StoreError(ReencryptError):
    """The document or state store failed (unreachable, bad credentials, bad request)."""


class StoreUnavailableError(StoreError):
    """The store did not answer, timed out or throttled past the retries: try again later."""

    transient = True


class BrokerUnavailableError(ReencryptError):
    """Redis (the broker, the fleet's rate limits) did not answer: try again later."""

    transient = True


class ConflictError(StoreError):
    """A conditional write lost: the record changed since it was read (ETag mismatch)."""


class NotFoundError(StoreError):
    """A document or record does not exist."""


class UnknownNameError(ReencryptError):
    """An operator named something that does not exist (a key id, a sweep id): fix the input."""

    exit_code = 2


class SweepError(ReencryptError):
    """A sweep operation was refused (unknown id, another sweep running, bad target...)."""


class LeaseLostError(SweepError):
    """Another worker holds the slice now: the fencing counter moved past ours."""


# -- messages ----------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """A URL fit for messages: a user:password part and a query string (where credentials
    travel) replaced by ``***``. Every error that echoes a URL passes it through here."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None and not parts.query:
        return url
    netloc = (
        parts.netloc if parts.username is None and parts.password is None else "***@" + parts.netloc.rpartition("@")[2]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", parts.fragment))


def first_line(message: object, limit: int = 200) -> str:
    """An SDK error's first non-empty line, shortened: our errors are one line, and the SDKs'
    messages run on for pages (headers, request ids, JSON bodies)."""
    line = next((part.strip() for part in str(message).splitlines() if part.strip()), "")
    if not line and isinstance(message, BaseException):
        return type(message).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
