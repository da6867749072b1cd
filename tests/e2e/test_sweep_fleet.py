"""The sweep as an operator runs it: real Redis, real `celery worker` processes, the real CLI.

Each test drives a whole sweep over a seeded container (v1 -> v2) and checks what an operator
would notice: every field on the target and still decrypting to its original value, exact
totals in `sweep status --json`, and the right outcome after crashes, a flushed broker, a
concurrent tracker, tampering, pauses, cancels, duplicates and throttling.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import psutil
import pytest
import redis

from tracker_reencrypt import envelope
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.documents import find_envelopes, json_pointer, location
from tracker_reencrypt.errors import ConflictError
from tracker_reencrypt.fleet import enqueue_slice, make_celery
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.sweep.records import FINISHED
from tracker_reencrypt.sweep.state import SweepState

from conftest import FAST_RECOVERY, Fleet, make_rotation, run_cli, wait_for

pytestmark = pytest.mark.slow

SCAN_PAGE = 500


# -- helpers ---------------------------------------------------------------------------------


def all_documents(store):
    """Every document of the container, in scan order."""
    for feed_range in store.feed_ranges(1):
        continuation = None
        while True:
            page = store.scan(feed_range, continuation, SCAN_PAGE)
            yield from page.documents
            continuation = page.continuation
            if continuation is None:
                break


def read_fields(rotation, skip_documents=()) -> dict[tuple[str, str], tuple[dict, object]]:
    """{(document id, field pointer): (envelope, decrypted value)} for every encrypted field."""
    store, keyring = rotation.store(), Keyring(rotation.provider())
    fields = {}
    for document in all_documents(store):
        if document.id in skip_documents:
            continue
        partition_key = store.partition_key_of(document.body)
        for parts, sealed in find_envelopes(document.body):
            value = envelope.decrypt(sealed, location(document.body, partition_key, parts), keyring)
            fields[(document.id, json_pointer(parts))] = (sealed, value)
    store.close()
    return fields


def documents_with_fields(fields) -> int:
    return len({document_id for document_id, _ in fields})


def assert_on_target(rotation, originals, *, kid: str, except_documents=(), extra_fields=()) -> dict:
    """Every original field is one envelope on ``kid`` decrypting to its original value.

    Fields of ``except_documents`` are left out; ``extra_fields`` names fields that may have
    appeared since (written by the tracker). Returns the fields as they are now.
    """
    now = read_fields(rotation, skip_documents=except_documents)
    expected = {key for key in originals if key[0] not in except_documents}
    present = {key for key in now if key[0] not in except_documents and key[1] not in extra_fields}
    assert present == expected, (
        f"fields lost {sorted(expected - present)[:5]}, appeared {sorted(present - expected)[:5]}"
    )
    for key in expected:
        sealed, value = now[key]
        assert sealed["kid"] == kid, (key, sealed["kid"])
        assert value == originals[key][1], key
        # A field wrapped twice decrypts to an envelope (or a value holding one).
        assert not list(find_envelopes(value)), f"{key} holds an envelope inside its envelope"
    return now


def start_sweep(rotation, *options: str) -> str:
    result = run_cli("sweep", "start", "--to", rotation.v2, "--json", *options, env=rotation.env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def cli_json(rotation, *args: str):
    result = run_cli(*args, env=rotation.env())
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return json.loads(result.stdout)


def status(rotation, sweep_id: str) -> dict:
    return cli_json(rotation, "sweep", "status", sweep_id, "--json")


class Durable:
    """The sweep's durable state read directly: cheap enough to poll every fraction of a second."""

    def __init__(self, rotation, sweep_id: str) -> None:
        self.store = rotation.store()
        self.state = SweepState(self.store.records())
        self.sweep_id = sweep_id

    def status(self) -> str:
        return self.state.get_sweep(self.sweep_id).status

    def scanned(self) -> int:
        return self.state.totals(self.sweep_id)["documents_scanned"]

    def live_leases(self) -> list[str]:
        now = time.time()
        return [s.lease_owner for s in self.state.slices(self.sweep_id) if s.lease_is_live(now)]

    def describe(self) -> str:
        slices = [
            (s.index, s.done, s.fence, s.lease_owner, s.counts["documents_scanned"])
            for s in self.state.slices(self.sweep_id)
        ]
        return f"sweep {self.status()}, slices (index, done, fence, lease, scanned): {slices}"


def wait_finished(rotation, fleet, durable: Durable, timeout: float) -> dict:
    """Wait for the sweep to end; returns `sweep status --json`."""
    try:
        wait_for(lambda: durable.status() in FINISHED, timeout, 0.3, message=f"sweep {durable.sweep_id} to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{durable.describe()}\n{fleet.logs()[-4000:]}") from None
    return status(rotation, durable.sweep_id)


def assert_exact_totals(totals: dict, rotation, originals) -> None:
    assert totals["documents_scanned"] == rotation.documents
    assert totals["fields_reencrypted"] == len(originals)
    assert totals["documents_written"] == documents_with_fields(originals)
    assert totals["failures"] == 0 and totals["documents_failed"] == 0


def pool_owners(process) -> set[str]:
    """Lease owner names of a worker's pool processes (as worker.runtime spells them)."""
    return {f"{socket.gethostname()}:{child.pid}" for child in psutil.Process(process.pid).children(recursive=True)}


def slice_order(rotation, slices: int) -> list[list]:
    """The documents of each slice in the order the sweep scans them."""
    store = rotation.store()
    ordered = []
    for feed_range in store.feed_ranges(slices):
        documents, continuation = [], None
        while True:
            page = store.scan(feed_range, continuation, SCAN_PAGE)
            documents.extend(page.documents)
            continuation = page.continuation
            if continuation is None:
                break
        ordered.append(documents)
    store.close()
    return ordered


# -- 1. the plain sweep ----------------------------------------------------------------------


def test_sweep_moves_every_field_to_target_with_original_values_and_exact_counts(rotation, fleet):
    originals = read_fields(rotation)
    assert {sealed["kid"] for sealed, _ in originals.values()} == {rotation.v1}
    fleet.start(count=2)

    result = run_cli(
        "sweep", "start", "--to", rotation.v2, "--slices", "8", "--wait", "--json", env=rotation.env(), timeout=120
    )
    assert result.returncode == 0, result.stderr + fleet.logs()[-3000:]

    assert_on_target(rotation, originals, kid=rotation.v2)
    final = status(rotation, json.loads(result.stdout)["sweep"]["id"])
    assert final["sweep"]["status"] == "completed"
    assert_exact_totals(final["totals"], rotation, originals)
    assert final["totals"]["conflicts"] == 0
    assert all(s["done"] for s in final["slices"]) and final["active_leases"] == 0


# -- 2. the live tracker writes during the sweep ---------------------------------------------


class TrackerWriter(threading.Thread):
    """The live tracker: read-modify-write of documents, new values encrypted under the current kid.

    Each update sets ``status``, appends its number to ``activity`` and writes a new encrypted
    ``writerNote``; it is conditional on the ETag and redone on ConflictError, as the app does.
    """

    def __init__(self, rotation, targets: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.rotation, self.targets = rotation, targets
        self.kid = rotation.v2
        self.history: dict[str, list[int]] = {document_id: [] for document_id, _ in targets}
        self.sweeping = threading.Event()  # set once the sweep has started
        self.on_unswept = 0  # successful writes, during the sweep, to a document it had not moved yet
        self.conflicts = 0
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        store, keyring = self.rotation.store(), Keyring(self.rotation.provider())
        number = 0
        try:
            while not self.halt.is_set():
                for document_id, partition_key in self.targets:
                    number += 1
                    self._update(store, keyring, document_id, partition_key, number)
                    time.sleep(0.002)
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            store.close()

    def _update(self, store, keyring, document_id: str, partition_key: str, number: int) -> None:
        while True:
            current = store.read(document_id, partition_key)
            body = json.loads(json.dumps(current.body))
            body["status"] = f"writer-{number}"
            body["activity"] = body.get("activity", []) + [number]
            body["writerNote"] = envelope.encrypt(
                f"note {number}", location(body, partition_key, ("writerNote",)), keyring, self.kid
            )
            try:
                store.replace(body, current.etag)
            except ConflictError:
                self.conflicts += 1
                continue
            self.history[document_id].append(number)
            if self.sweeping.is_set() and any(sealed["kid"] != self.kid for _, sealed in find_envelopes(current.body)):
                self.on_unswept += 1
            return


def test_tracker_writes_during_the_sweep_survive_and_nothing_stays_on_the_old_key(rotation, fleet):
    originals = read_fields(rotation)
    # Items the sweep reaches only after its rate limit is in force (past its first pages),
    # so it reads them, waits for tokens, and only then writes: the tracker writes between.
    targets = []
    for documents in slice_order(rotation, 4):
        items = [d for d in documents[50:] if d.body.get("type") == "item"]
        targets += [(d.id, d.body["productId"]) for d in items[:: max(1, len(items) // 3)][:3]]
    assert len(targets) >= 8
    writer = TrackerWriter(rotation, targets)
    writer.start()
    fleet.start(count=2)
    try:
        wait_for(lambda: all(writer.history.values()), 10, message="the tracker writing before the sweep")
        sweep_id = start_sweep(rotation, "--slices", "4", "--rate", "100")
        writer.sweeping.set()
        durable = Durable(rotation, sweep_id)
        final = wait_finished(rotation, fleet, durable, 90)
    finally:
        writer.halt.set()
        writer.join(10)
    assert writer.error is None, repr(writer.error)

    assert final["sweep"]["status"] == "completed", final["sweep"]
    totals = final["totals"]
    assert_exact_totals(totals, rotation, originals)
    # The tracker kept writing documents the sweep had read and not yet written: those
    # conditional writes lost, were counted, and were redone on the tracker's version.
    assert writer.on_unswept > 0, "the tracker wrote nothing the sweep had still to move"
    assert totals["conflicts"] > 0, (totals, writer.on_unswept)

    verify = run_cli("verify", "--expect", rotation.v2, "--json", env=rotation.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr

    now = assert_on_target(rotation, originals, kid=rotation.v2, extra_fields={"/writerNote"})
    store = rotation.store()
    for document_id, partition_key in targets:
        body = store.read(document_id, partition_key).body
        history = writer.history[document_id]
        assert body["activity"] == history, f"{document_id}: tracker updates lost"
        assert body["status"] == f"writer-{history[-1]}"
        note, value = now[(document_id, "/writerNote")]
        assert note["kid"] == rotation.v2 and value == f"note {history[-1]}"


# -- 3. a worker dies mid-batch --------------------------------------------------------------


def test_worker_killed_mid_batch_loses_nothing_and_wraps_nothing_twice(rotation, fleet):
    originals = read_fields(rotation)
    doomed, survivor = fleet.start(count=2)
    sweep_id = start_sweep(rotation, "--slices", "6", "--rate", "60")
    durable = Durable(rotation, sweep_id)

    wait_for(
        lambda: (
            durable.scanned() > 0 and set(durable.live_leases()) & pool_owners(doomed) and durable.status() == "running"
        ),
        20,
        0.05,
        message="the doomed worker holding a slice lease mid-sweep",
    )
    fleet.kill(doomed)
    assert durable.status() == "running"
    fleet.start(count=1)  # the operator replaces it

    final = wait_finished(rotation, fleet, durable, 120)
    assert final["sweep"]["status"] == "completed", final["sweep"]
    assert survivor.poll() is None
    totals = final["totals"]
    # Checkpoints and counts commit together, so the dead batch's documents are counted once,
    # by the batch that redid it; fields it had already written show up as already on target.
    assert totals["documents_scanned"] == rotation.documents
    assert totals["fields_reencrypted"] + totals["fields_on_target"] == len(originals)
    assert totals["documents_written"] <= documents_with_fields(originals)
    assert totals["failures"] == 0
    assert_on_target(rotation, originals, kid=rotation.v2)


# -- 4. a tampered field ---------------------------------------------------------------------


def flip_byte(text: str, index: int) -> str:
    raw = bytearray(envelope.b64decode(text, "ct"))
    raw[index] ^= 0x01
    return envelope.b64encode(bytes(raw))


def test_tampered_field_is_recorded_and_left_untouched_while_the_rest_moves(rotation, fleet):
    store = rotation.store()
    victim = next(d for d in all_documents(store) if d.body.get("type") == "item")
    body = json.loads(json.dumps(victim.body))
    body["description"]["ct"] = flip_byte(body["description"]["ct"], 3)
    tampered = store.replace(body, victim.etag)
    originals = read_fields(rotation, skip_documents={victim.id})
    fleet.start(count=2)

    result = run_cli(
        "sweep", "start", "--to", rotation.v2, "--slices", "4", "--wait", "--json", env=rotation.env(), timeout=120
    )
    assert result.returncode != 0, result.stdout
    sweep_id = json.loads(result.stdout)["sweep"]["id"]

    final = status(rotation, sweep_id)
    assert final["sweep"]["status"] == "failed"
    assert final["totals"]["failures"] == 1 and final["totals"]["documents_failed"] == 1
    assert final["totals"]["documents_scanned"] == rotation.documents
    failures = json.loads(run_cli("sweep", "failures", sweep_id, "--format", "json", env=rotation.env()).stdout)
    assert [(f["document_id"], f["partition_key"], f["field_path"], f["kid"], f["reason"]) for f in failures] == [
        (victim.id, victim.body["productId"], "/description", rotation.v1, "authentication_failed")
    ]  # the kid the field is on: the version whose key must decrypt it once repaired

    after = rotation.store().read(victim.id, victim.body["productId"])
    assert after.etag == tampered.etag, "the tampered document was rewritten"
    assert json.dumps(after.body, sort_keys=True) == json.dumps(tampered.body, sort_keys=True)
    assert_on_target(rotation, originals, kid=rotation.v2, except_documents={victim.id})


# -- 5. rewrap mode --------------------------------------------------------------------------


def test_rewrap_mode_moves_only_the_data_key(rotation, fleet):
    originals = read_fields(rotation)
    fleet.start(count=2)
    result = run_cli(
        "sweep",
        "start",
        "--to",
        rotation.v2,
        "--mode",
        "rewrap",
        "--slices",
        "4",
        "--wait",
        "--json",
        env=rotation.env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + fleet.logs()[-3000:]
    assert json.loads(result.stdout)["sweep"]["mode"] == "rewrap"

    now = assert_on_target(rotation, originals, kid=rotation.v2)
    for key, (before, _) in originals.items():
        after = now[key][0]
        unchanged = ("iv", "ct", "alg", "wrap")
        assert [after[name] for name in unchanged] == [before[name] for name in unchanged], key
        assert after["dek"] != before["dek"], key
    assert_exact_totals(json.loads(result.stdout)["totals"], rotation, originals)


# -- 6. Redis loses everything mid-sweep -----------------------------------------------------


def test_flushed_redis_stalls_the_sweep_and_resume_finishes_it_from_checkpoints(rotation, fleet):
    originals = read_fields(rotation)
    fleet.start(count=2)
    sweep_id = start_sweep(rotation, "--slices", "6", "--rate", "60")
    durable = Durable(rotation, sweep_id)
    wait_for(lambda: durable.scanned() >= 100, 30, message="the sweep well under way")

    redis.Redis.from_url(rotation.redis_url).flushdb()

    # Batches in flight still commit, but every queued and continuation message is gone:
    # the sweep stops moving, short of the end, with no slice leased.
    samples: list[tuple[int, bool]] = []

    def stalled() -> bool:  # six seconds with no lease and no progress
        samples.append((durable.scanned(), bool(durable.live_leases())))
        recent = samples[-12:]
        return (
            len(recent) == 12
            and not any(leased for _, leased in recent)
            and len({scanned for scanned, _ in recent}) == 1
        )

    wait_for(stalled, 30, 0.5, message="the sweep to stall")
    stalled_at = durable.scanned()
    assert durable.status() == "running" and stalled_at < rotation.documents

    resumed = cli_json(rotation, "sweep", "resume", sweep_id, "--json")
    assert resumed["status"] == "running" and resumed["slices_queued"] > 0
    cli_json(rotation, "sweep", "throttle", sweep_id, "--unlimited", "--json")

    final = wait_finished(rotation, fleet, durable, 60)
    assert final["sweep"]["status"] == "completed", final["sweep"]
    assert_exact_totals(final["totals"], rotation, originals)
    assert_on_target(rotation, originals, kid=rotation.v2)


# -- 7. pause, resume, cancel ----------------------------------------------------------------


def _slow_sweep_under_way(rotation, fleet) -> tuple[str, Durable]:
    """Two workers on a sweep held to 60 documents/s, once its first batch is committed."""
    fleet.start(count=2)
    sweep_id = start_sweep(rotation, "--slices", "4", "--rate", "60")
    durable = Durable(rotation, sweep_id)
    wait_for(lambda: durable.scanned() > 0, 20, message="first batch committed")
    return sweep_id, durable


def test_pause_stops_progress_and_resume_finishes(rotation, fleet):
    originals = read_fields(rotation)
    sweep_id, durable = _slow_sweep_under_way(rotation, fleet)

    paused = cli_json(rotation, "sweep", "pause", sweep_id, "--json")
    assert paused["status"] == "paused"
    at_pause = durable.scanned()
    # Each worker finishes the batch in hand, then nothing moves.
    wait_for(lambda: not durable.live_leases(), 15, message="batches in hand to finish")
    held = durable.scanned()
    time.sleep(4)
    on_hold = status(rotation, sweep_id)
    assert on_hold["sweep"]["status"] == "paused"
    assert on_hold["totals"]["documents_scanned"] == held < rotation.documents
    assert on_hold["active_leases"] == 0
    assert held - at_pause <= 2 * int(FAST_RECOVERY["REENCRYPT_BATCH_DOCUMENTS"])  # one batch in hand per worker

    resumed = cli_json(rotation, "sweep", "resume", sweep_id, "--json")
    assert resumed["status"] == "running" and resumed["slices_queued"] > 0
    cli_json(rotation, "sweep", "throttle", sweep_id, "--unlimited", "--json")
    final = wait_finished(rotation, fleet, durable, 60)
    assert final["sweep"]["status"] == "completed"
    assert_exact_totals(final["totals"], rotation, originals)
    assert_on_target(rotation, originals, kid=rotation.v2)


def test_cancel_leaves_a_readable_container_and_a_new_sweep_can_start(rotation, fleet):
    originals = read_fields(rotation)
    sweep_id, durable = _slow_sweep_under_way(rotation, fleet)

    cancelled = cli_json(rotation, "sweep", "cancel", sweep_id, "--json")
    assert cancelled["status"] in ("cancelling", "cancelled")
    final = wait_finished(rotation, fleet, durable, 30)
    assert final["sweep"]["status"] == "cancelled"
    assert final["active_leases"] == 0

    # Half moved: both keys in use, every field still readable where it is.
    now = read_fields(rotation)
    assert now.keys() == originals.keys()
    assert all(value == originals[key][1] for key, (_, value) in now.items())
    kids = {sealed["kid"] for sealed, _ in now.values()}
    assert kids == {rotation.v1, rotation.v2}
    verify = run_cli("verify", "--expect", rotation.v2, "--json", env=rotation.env())
    assert verify.returncode == 1 and json.loads(verify.stdout)["undecryptable"] == 0

    again = run_cli(
        "sweep", "start", "--to", rotation.v2, "--slices", "4", "--wait", "--json", env=rotation.env(), timeout=120
    )
    assert again.returncode == 0, again.stderr + fleet.logs()[-3000:]
    second = json.loads(again.stdout)
    assert second["sweep"]["id"] != sweep_id and second["sweep"]["status"] == "completed"
    assert second["totals"]["documents_scanned"] == rotation.documents
    assert second["totals"]["fields_reencrypted"] + final["totals"]["fields_reencrypted"] == len(originals)
    assert_on_target(rotation, originals, kid=rotation.v2)


# -- 8. fencing ------------------------------------------------------------------------------


def test_duplicate_slice_messages_are_not_processed_twice(rotation, fleet):
    originals = read_fields(rotation)
    celery = make_celery(load_settings(redis_url=rotation.redis_url, store=rotation.store_url), rotation.redis_url)
    fleet.start(count=2)
    sweep_id = start_sweep(rotation, "--slices", "4", "--rate", "150")
    durable = Durable(rotation, sweep_id)
    # The start's messages again (fence 0), then, while it runs, a copy of every slice's
    # current message: as after a redelivery, or a resume racing a worker.
    for index in range(4):
        enqueue_slice(celery, sweep_id, index, 0)
    duplicates, deadline = 4, time.monotonic() + 60
    while durable.status() == "running" and time.monotonic() < deadline:
        for _, body, _ in durable.store.records().list("slice", prefix=f"{sweep_id}/"):  # the stored JSON
            if not body["done"]:
                enqueue_slice(celery, sweep_id, body["index"], body["fence"])
                duplicates += 1
        time.sleep(0.5)
    final = wait_finished(rotation, fleet, durable, 60)

    assert duplicates > 8
    assert final["sweep"]["status"] == "completed"
    assert_exact_totals(final["totals"], rotation, originals)
    assert_on_target(rotation, originals, kid=rotation.v2)
    assert "stale message: the slice moved on" in fleet.logs()


# -- 9. throttle -----------------------------------------------------------------------------


def test_throttle_changes_the_rate_of_a_running_sweep(tmp_path, redis_url):
    # Big enough that the sweep is still running when the fast rate has been measured.
    rotation = make_rotation(tmp_path / "big", 4000, redis_url)
    fleet = Fleet(rotation, tmp_path / "big-logs")
    fleet.log_dir.mkdir()
    try:
        fleet.start(count=2)
        sweep_id = start_sweep(rotation, "--slices", "4", "--rate", "20")
        durable = Durable(rotation, sweep_id)
        wait_for(lambda: durable.scanned() > 0, 20, message="first batch committed")

        def rate_over(seconds: float) -> float:
            first = status(rotation, sweep_id)
            time.sleep(seconds)
            last = status(rotation, sweep_id)
            assert last["sweep"]["status"] == "running", "the sweep ended before the rate was measured"
            scanned = last["totals"]["documents_scanned"] - first["totals"]["documents_scanned"]
            return scanned / (last["elapsed_s"] - first["elapsed_s"])

        slow = rate_over(5)
        throttled = cli_json(rotation, "sweep", "throttle", sweep_id, "--rate", "200", "--json")
        assert throttled["rate"] == 200
        time.sleep(3.5)  # batches in hand finish at the old rate
        fast = rate_over(3)
        assert slow <= 20 * 2, slow
        assert fast >= 4 * slow, (slow, fast)

        cli_json(rotation, "sweep", "throttle", sweep_id, "--unlimited", "--json")
        final = wait_finished(rotation, fleet, durable, 60)
        assert final["sweep"]["status"] == "completed"
        assert final["totals"]["documents_scanned"] == rotation.documents
    finally:
        fleet.stop()


def test_a_rate_tighter_than_a_page_per_lease_still_completes_without_losing_leases(tmp_path, redis_url):
    """At 5 documents/s a 25-document page is paced for 5 s, longer than the 4 s lease: pages
    sized to the limit end inside the batch's bound, so the slice is never taken from its worker."""
    slow = make_rotation(tmp_path, 60, redis_url)
    fleet = Fleet(slow, tmp_path / "logs")
    fleet.log_dir.mkdir()
    fleet.start(count=2)  # FAST_RECOVERY: 4 s lease, 2 s batches, 25-document pages
    try:
        result = run_cli(
            "sweep", "start", "--to", slow.v2, "--slices", "2", "--rate", "5", "--wait", "--json",
            env=slow.env(), timeout=150,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr + fleet.logs()[-3000:]
        assert json.loads(result.stdout)["totals"]["documents_scanned"] == 60
        assert "lease lost" not in fleet.logs() and "was taken over" not in fleet.logs()
    finally:
        fleet.stop()
