"""The one exception hierarchy of tracker-reencrypt.

Every error a caller can see derives from :class:`ReencryptError`. Messages are one line,
name the thing that is wrong and, where there is one, the fix. They never carry plaintext,
data keys or key material: only ids, paths and reasons.

Each kind of error carries the exit code the ``reencrypt`` CLI ends with. One table for every
command (the README's command reference shows it too):

===  ========================================================================================
 0   done; a check passed
 1   a check failed, or the system's state refused the operation: ``verify`` or ``preflight``
     failed, a sweep followed with ``--wait`` ended with failures (or paused, cancelled),
     ``stale-writes`` not quiet, ``audit --check`` found the chain broken, ``keys disable``
     refused while fields use the version, another sweep is active, a sweep cannot be resumed
     in its state. Retrying as is cannot help: the state must change first.
 2   bad input or configuration: a usage error (an unknown command or option, a missing or
     invalid value: ``--mode foo``, ``--slices 0``), options that do not go together, an id
     that names nothing (a key version, a sweep), a key named as a target that is disabled, a
     missing or malformed setting, a keyring file that is missing, unsafe or corrupt. Fix the
     command or the setting.
 3   a service did not answer (the store, Key Vault, Redis): an outage or throttling past the
     retries. The same command may succeed later unchanged; if it persists, check the URL.
130  interrupted (Ctrl-C): a command following a sweep stops following, the sweep goes on.
===  ========================================================================================

A bug (any other exception) shows its traceback and exits 1.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

#: The CLI's exit codes (see the table above).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class ReencryptError(Exception):
    """Root of every error this project raises on purpose."""

    #: Process exit code the CLI uses for this kind of error.
    exit_code = EXIT_FAILED
    #: Whether the same call may succeed later, unchanged (an outage, throttling past the
    #: SDK's retries, a busy lock). Workers retry only these, with back-off; anything else
    #: needs a person, so the sweep pauses and says why (like dramatiq's broker-connection
    #: errors against the rest).
    transient = False


class InputError(ReencryptError):
    """The operator's input cannot be used as given (a value out of range, options that do not
    go together, a key that cannot be a target): fix the command; retrying it as is cannot help."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(InputError):
    """A setting is missing or malformed (store URL, key provider URL, broker URL...)."""


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

    exit_code = EXIT_UNAVAILABLE
    transient = True


class KeyNotFoundError(KeyProviderError):
    """A key id names no key version the provider knows."""


class KeyDisabledError(KeyProviderError):
    """A key version exists but is disabled, so it cannot unwrap or wrap."""


class UnwrapError(KeyProviderError):
    """The key refused this wrapped data key: it was not wrapped by it, or was altered."""


class KeyringFileError(KeyProviderError):
    """The local JWKS keyring file is missing, unsafe or unreadable: configuration to fix."""

    exit_code = EXIT_BAD_INPUT


class StoreError(ReencryptError):
    """The document or state store failed (unreachable, bad credentials, bad request)."""


class StoreUnavailableError(StoreError):
    """The store did not answer, timed out or throttled past the retries: try again later."""

    exit_code = EXIT_UNAVAILABLE
    transient = True


class BrokerUnavailableError(ReencryptError):
    """Redis (the broker, the fleet's rate limits) did not answer: try again later."""

    exit_code = EXIT_UNAVAILABLE
    transient = True


class EmbeddedRedisError(ReencryptError):
    """The embedded Redis of a home cannot be stopped as asked: not one we started, or in use."""


class ConflictError(StoreError):
    """A conditional write lost: the record changed since it was read (ETag mismatch)."""


class NotFoundError(StoreError):
    """A document or record does not exist."""


class UnknownNameError(InputError):
    """An operator named something that does not exist (a key id, a sweep id): fix the input."""


class SweepError(ReencryptError):
    """A sweep operation was refused by the state of the sweeps (another sweep active, a sweep
    that cannot be resumed in its state...). Bad input to a sweep is an :class:`InputError`."""


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
