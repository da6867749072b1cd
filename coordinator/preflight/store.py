"""Can this host read the tracker container and write the sweep's state, and what is the
container like? Opening the store already refuses a missing container or database and a
partition key other than the setting's (one line each, naming the fix); this check reports
those refusals as failures and, on success, the facts a rotation plans with."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from coordinator.preflight.result import FAIL, INFO, NOT_APPLICABLE, PASS, CheckResult
from tracker_reencrypt.errors import NotFoundError, ReencryptError, first_line
from tracker_reencrypt.stores import DocumentStore

CHECK = "store"
#: The record preflight writes to prove write access to the sweep's state (kept, overwritten
#: by the next preflight: it says when this host last proved it could write there).
PROBE_KIND, PROBE_ID = "preflight", "write-probe"


def check_store(open_store: Callable[[], DocumentStore], partition_key_field: str, actor: str) -> list[CheckResult]:
    try:
        store = open_store()
    except ReencryptError as error:
        return [_failed("container", error, "check REENCRYPT_STORE and the identity's data-plane role")]
    subject = store.describe()
    results = [_read(store, subject), _write_state(store, subject, actor)]
    facts = store.facts()
    wanted = f"/{partition_key_field}"
    if facts.partition_key_path == wanted:
        results.append(CheckResult(CHECK, subject, PASS, f"partition key path {wanted}"))
    else:  # opening refuses this on Cosmos; kept for a backend that does not
        results.append(
            CheckResult(
                CHECK,
                subject,
                FAIL,
                f"partition key path {facts.partition_key_path}, not {wanted}",
                "set REENCRYPT_PARTITION_KEY_FIELD to the container's partition key",
            )
        )
    if facts.backend == "sqlite":
        results.append(
            CheckResult(CHECK, subject, NOT_APPLICABLE, "throughput and request priority: a SQLite file has neither")
        )
        return results
    throughput = facts.throughput or facts.throughput_note
    results.append(CheckResult(CHECK, subject, INFO, f"throughput {throughput}"))
    results.append(_priority(subject, facts.priority))
    return results


def _read(store: DocumentStore, subject: str) -> CheckResult:
    try:
        page = store.scan(store.feed_ranges(1)[0], None, 1)
        documents = store.count()
    except ReencryptError as error:
        return _failed(subject, error, "grant the identity read access to the container")
    if not documents:
        return CheckResult(
            CHECK, subject, FAIL, "read access, but the container holds no documents", "check REENCRYPT_STORE"
        )
    read = "read a document" if page.documents else "read access"
    return CheckResult(CHECK, subject, PASS, f"{read}; {documents} documents", figures={"documents": documents})


def _write_state(store: DocumentStore, subject: str, actor: str) -> CheckResult:
    records = store.records()
    body = {"written_at": datetime.now(UTC).isoformat(timespec="seconds"), "actor": actor}
    try:
        try:
            _, etag = records.get(PROBE_KIND, PROBE_ID)
            records.replace(PROBE_KIND, PROBE_ID, body, etag)
        except NotFoundError:
            records.create(PROBE_KIND, PROBE_ID, body)
    except ReencryptError as error:
        return _failed(subject, error, "grant the identity write access to the sweep's state container")
    return CheckResult(CHECK, subject, PASS, "wrote the sweep's state (a preflight record)")


def _priority(subject: str, priority: str | None) -> CheckResult:
    if priority is None:
        return CheckResult(
            CHECK,
            subject,
            INFO,
            "request priority not set: the sweep's requests compete with the tracker's (set "
            "REENCRYPT_COSMOS_PRIORITY=low where the account enables priority-based execution)",
        )
    return CheckResult(
        CHECK, subject, INFO, f"sweep requests carry priority {priority}", figures={"priority": priority}
    )


def _failed(subject: str, error: ReencryptError, fix: str) -> CheckResult:
    return CheckResult(CHECK, subject, FAIL, first_line(error), fix)
