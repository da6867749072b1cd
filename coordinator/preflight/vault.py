"""Can this host use every key the sweep will touch? The runbook's "Confirm Azure Key Vault
access from tracker-service host", made a round trip.

For each key: read its current version (the *Reader* side of the role), wrap a random data key
under it and unwrap it again (the *Crypto User* side: unwrap is always a vault call), and
compare. Each call is timed, so the report also says what a vault call costs from here. The
data key is random, used for nothing else and never printed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.preflight.result import FAIL, PASS, CheckResult
from tracker_reencrypt.errors import ReencryptError, first_line
from tracker_reencrypt.keys import LOCAL_WRAP_CALL, WRAP_ALGORITHM, KeyProvider
from tracker_reencrypt.keys.products import ProductKeys

CHECK = "key vault"
UNREACHABLE_FIX = "check REENCRYPT_KEYS names the vault and that this host reaches it, then run preflight again"
#: Keys listed one per line; past this many, the passing ones are summed up in one line.
KEYS_SHOWN = 10


@dataclass(frozen=True)
class KeyToCheck:
    """A key the sweep will touch, and the product it serves (None: every product's one key)."""

    product: str | None
    provider: KeyProvider | None
    #: Why there is no provider (an unmappable product id), else "".
    problem: str = ""


def keys_to_check(keys: ProductKeys, products: list[str]) -> list[KeyToCheck]:
    """The one key, or (per-product keys) each of ``products``' keys."""
    if not keys.per_product:
        return [KeyToCheck(None, keys.root)]
    found = []
    for product in products:
        try:
            found.append(KeyToCheck(product, keys.provider_for(product)))
        except ReencryptError as error:
            found.append(KeyToCheck(product, None, first_line(error)))
    return found


def check_keys(
    keys: ProductKeys, products: list[str], clock: Callable[[], float] = time.perf_counter
) -> list[CheckResult]:
    """One result per key: its current version, and a wrap+unwrap round trip with latencies."""
    return [_check_one(key, clock) for key in keys_to_check(keys, products)]


def _check_one(key: KeyToCheck, clock: Callable[[], float]) -> CheckResult:
    subject = key.provider.key_name if key.provider else f"product {key.product}"
    if key.provider is None:
        return CheckResult(CHECK, subject, FAIL, key.problem, "rename the product or set REENCRYPT_KEY_NAME to match")
    provider = key.provider
    figures: dict[str, object] = {"product": key.product}
    step = "reading the current version"
    try:
        started = clock()
        kid = provider.current_version(refresh=True).kid
        figures["get_ms"] = _ms(clock() - started)
        step = f"wrapping a test data key under {kid}"
        dek = secrets.token_bytes(32)
        local_wraps = provider.calls.get(LOCAL_WRAP_CALL, 0)
        started = clock()
        wrapped = provider.wrap(kid, dek)
        figures["wrap_ms"] = _ms(clock() - started)
        figures["wrap_in_process"] = provider.calls.get(LOCAL_WRAP_CALL, 0) > local_wraps
        step = f"unwrapping it with {kid}"
        started = clock()
        unwrapped = provider.unwrap(kid, WRAP_ALGORITHM, wrapped)
        figures["unwrap_ms"] = _ms(clock() - started)
    except ReencryptError as error:
        message = first_line(error, limit=1000)  # ours are one line; keep the fix whole
        if error.transient:  # an outage's message ends in the SDK's words, not in a fix
            return CheckResult(CHECK, subject, FAIL, f"failed {step}: {message}", UNREACHABLE_FIX, figures)
        what, fix = _split_fix(message)
        return CheckResult(CHECK, subject, FAIL, f"failed {step}: {what}", fix, figures)
    figures["kid"] = kid
    if not secrets.compare_digest(unwrapped, dek):
        return CheckResult(
            CHECK,
            subject,
            FAIL,
            f"{kid} unwrapped a test data key to other bytes than were wrapped",
            "the key service is misbehaving: do not rotate; raise it with the vault's owners",
            figures,
        )
    if not provider.remote:
        wrap_where = "local keyring"
    else:
        wrap_where = "in process, with the cached public key" if figures["wrap_in_process"] else "in the vault"
    detail = (
        f"current {kid}; get {figures['get_ms']} ms, wrap {figures['wrap_ms']} ms ({wrap_where}), "
        f"unwrap {figures['unwrap_ms']} ms"
    )
    return CheckResult(CHECK, subject, PASS, detail, "", figures)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _split_fix(message: str) -> tuple[str, str]:
    """Our errors read "what is wrong: what to do"; a message without the second half gets a
    generic fix."""
    what, _, fix = message.rpartition(": ")
    if what and fix:
        return what, fix
    return message, "check REENCRYPT_KEYS and the identity's roles on the vault (Key Vault Crypto User)"
