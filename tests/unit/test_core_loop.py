"""The worker's core loop in milliseconds: real task code over a real SQLite store and keyring,
driven message by message by the in-process fleet (tests/inprocess_fleet.py), on a clock that
moves only when told. What the subprocess fleet tests show with real Celery workers, shown here
fast: claim, lease, fence, commit, continuation, pause, cancel, expiry, permanent errors and
misrouted messages."""

from __future__ import annotations

import pytest

from coordinator import steering
from coordinator.context import Context
from tracker_reencrypt.audit import AuditTrail
from tracker_reencrypt.config import Settings
from tracker_reencrypt.errors import StoreUnavailableError
from tracker_reencrypt.fleet import (
    STALL_S,
    enqueue_slice,
    requeue_lost_messages,
    rescue_expired_leases,
    send_due_retries,
)
from tracker_reencrypt.sweep.records import CANCELLED, CANCELLING, COMPLETED, PAUSED, RUNNING, Sweep

from conftest import assert_every_field_on, make_rotation
from inprocess_fleet import InProcessFleet, start_sweep

DOCUMENTS = 300
BATCH = 40


@pytest.fixture
def rotation(tmp_path):
    return make_rotation(tmp_path, DOCUMENTS)


def fleet_for(rotation, **settings) -> InProcessFleet:
    options = {"batch_documents": BATCH, "batch_seconds": 30, "page_size": 20, "lease_seconds": 60, **settings}
    return InProcessFleet(Settings(store=rotation.store_url, keys=rotation.keys_url, **options))


def start(fleet: InProcessFleet, target_kid: str, slices: int = 4) -> Sweep:
    return start_sweep(fleet, target_kid, slices, "sw-core")


def audit_actions(fleet: InProcessFleet) -> list[str]:
    return [entry["action"] for entry in AuditTrail(fleet.runtime.store.records()).entries()]


def test_a_sweep_runs_batch_by_batch_to_completion_with_one_message_per_batch(rotation):
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2)
    outcomes = fleet.join()

    assert fleet.state.get_sweep(sweep.id).status == COMPLETED
    assert set(outcomes) == {"continued", "slice done"} and outcomes.count("slice done") == 4
    assert fleet.broker.published == len(outcomes)  # every message was a batch: none wasted
    assert fleet.state.totals(sweep.id)["documents_scanned"] == DOCUMENTS
    assert audit_actions(fleet) == ["sweep completed"]
    assert_every_field_on(rotation, rotation.v2)


def test_a_duplicate_message_is_dropped_by_the_fence(rotation):
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2, slices=1)
    enqueue_slice(fleet.broker, sweep.id, 0, 0)  # the same message twice (a redelivery)
    outcomes = fleet.join()
    assert outcomes.count("dropped: stale message: the slice moved on") == 1
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED
    enqueue_slice(fleet.broker, sweep.id, 0, 0)  # one more, long after
    assert fleet.join() == ["dropped: sweep is completed"]
    assert fleet.state.totals(sweep.id)["documents_scanned"] == DOCUMENTS  # nothing counted twice


def test_pause_stops_taking_batches_and_resume_goes_on_from_the_checkpoints(rotation):
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2)
    for _ in range(3):
        fleet.step()
    fleet.state.set_status(sweep.id, PAUSED, allowed_from=frozenset({RUNNING}))
    assert set(fleet.join()) == {"dropped: sweep is paused"}
    scanned = fleet.state.totals(sweep.id)["documents_scanned"]
    assert 0 < scanned < DOCUMENTS

    fleet.state.set_status(sweep.id, RUNNING, allowed_from=frozenset({PAUSED}))
    for piece in fleet.state.slices(sweep.id):  # what 'sweep resume' sends
        if not piece.done:
            enqueue_slice(fleet.broker, sweep.id, piece.index, piece.fence)
    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED
    assert fleet.state.totals(sweep.id)["documents_scanned"] == DOCUMENTS
    assert_every_field_on(rotation, rotation.v2)


def test_a_killed_workers_slice_is_taken_over_once_its_lease_expires(rotation):
    fleet = fleet_for(rotation, lease_seconds=60)
    sweep = start(fleet, rotation.v2)
    first = fleet.broker.take()  # slice 0's message, taken by a worker that then dies mid-batch
    dead = fleet.state.claim_slice(sweep.id, first.args[1], first.args[2], "dead-worker:1", 60)
    assert dead.action == "work"

    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == RUNNING  # every other slice done; one still leased
    fleet.clock.now += 61
    fleet.join()  # the lease watch re-queues it once; a worker takes it over with a new fence
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED
    assert_every_field_on(rotation, rotation.v2)


def test_a_cancel_settles_when_the_last_batch_ends_its_slice(rotation):
    """The bug: the cancel arrived while the last batch was running; that batch finished its
    slice, took the 'slice done' path, and the sweep stayed cancelling for ever."""
    fleet = fleet_for(rotation, batch_documents=2 * DOCUMENTS)  # one batch does the whole slice
    sweep = start(fleet, rotation.v2, slices=1)
    store, scan = fleet.runtime.store, fleet.runtime.store.scan

    def scan_then_cancel(*args, **kwargs):  # the operator's cancel lands mid-batch
        page = scan(*args, **kwargs)
        if fleet.state.get_sweep(sweep.id).status == RUNNING:
            fleet.state.set_status(sweep.id, CANCELLING, allowed_from=frozenset({RUNNING}))
        return page

    store.scan = scan_then_cancel
    assert fleet.join() == ["slice done"]
    assert fleet.state.get_sweep(sweep.id).status == CANCELLED
    assert audit_actions(fleet) == ["sweep cancelled"]


def test_a_cancel_whose_worker_died_settles_when_its_lease_has_expired(rotation):
    fleet = fleet_for(rotation, lease_seconds=60)
    sweep = start(fleet, rotation.v2, slices=1)
    message = fleet.broker.take()
    fleet.state.claim_slice(sweep.id, 0, message.args[2], "dead-worker:3", 60)
    fleet.state.set_status(sweep.id, CANCELLING, allowed_from=frozenset({RUNNING}))

    enqueue_slice(fleet.broker, sweep.id, 0, message.args[2])  # the dead worker's message, redelivered
    assert fleet.join() == ["dropped: sweep is cancelling"]
    assert fleet.state.get_sweep(sweep.id).status == CANCELLING  # its lease is still live
    fleet.clock.now += 61
    enqueue_slice(fleet.broker, sweep.id, 0, message.args[2])
    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == CANCELLED


def test_a_problem_only_a_person_can_fix_pauses_the_sweep_with_its_reason(rotation):
    rotation.provider().rotate()  # v3 current, so the sweep's target v2 can be disabled under it
    fleet = fleet_for(rotation, dek_max_uses=1)  # a wrap per field: the disabled key shows at once
    sweep = start(fleet, rotation.v2)
    fleet.step()
    # Through the worker's own provider: another process's change reaches it within a second.
    fleet.runtime.keyring.provider.set_enabled(rotation.v2, False)
    outcomes = fleet.join()

    paused = fleet.state.get_sweep(sweep.id)
    assert paused.status == PAUSED and "disabled" in paused.paused_reason
    assert any(outcome.startswith("paused: ") for outcome in outcomes)
    assert outcomes[-1] == "dropped: sweep is paused"  # no retry loop behind the pause
    assert all(not piece.lease_owner for piece in fleet.state.slices(sweep.id))  # every slice given back


def test_a_message_of_another_store_is_sent_on_to_its_own_queue(rotation):
    fleet = fleet_for(rotation)
    enqueue_slice(fleet.broker, "sw-elsewhere", 0, 0, fingerprint="0123456789ab")
    fleet.broker.messages[0].queue = fleet.broker.conf.task_default_queue  # misrouted onto ours
    assert fleet.join() == ["forwarded to its own store's queue", "not ours: 0123456789ab"]


def test_a_store_error_after_the_commit_does_not_strand_the_slice(rotation):
    """The continuation is sent before the sweep record is touched: when clearing the last
    error fails (the store blinked), the slice still goes on and the sweep completes."""
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2, slices=1)
    fleet.state.update_sweep(sweep.id, lambda body: body.but(last_error="Key Vault unreachable"))
    update, failed = fleet.state.update_sweep, []

    def update_failing_once(*args, **kwargs):
        if not failed:
            failed.append(True)
            raise StoreUnavailableError("the store did not answer")
        return update(*args, **kwargs)

    fleet.state.update_sweep = update_failing_once
    fleet.join()
    assert failed and fleet.state.get_sweep(sweep.id).status == COMPLETED
    assert_every_field_on(rotation, rotation.v2)


def test_resume_completes_a_sweep_whose_last_slice_finished_while_it_was_paused(rotation):
    fleet = fleet_for(rotation, batch_documents=2 * DOCUMENTS)
    sweep = start(fleet, rotation.v2, slices=1)
    scan = fleet.runtime.store.scan

    def scan_then_pause(*args, **kwargs):  # the operator pauses while the last batch runs
        page = scan(*args, **kwargs)
        if fleet.state.get_sweep(sweep.id).status == RUNNING:
            fleet.state.set_status(sweep.id, PAUSED, allowed_from=frozenset({RUNNING}))
        return page

    fleet.runtime.store.scan = scan_then_pause
    assert fleet.join() == ["slice done"]
    assert fleet.state.get_sweep(sweep.id).status == PAUSED  # every slice done, nothing left to settle it

    ctx = Context(fleet.settings)
    ctx.__dict__.update(store=fleet.runtime.store, celery=fleet.broker)  # this fleet's store and broker
    resumed, queued = steering.resume(ctx, sweep.id)
    assert (resumed.status, queued) == (COMPLETED, 0)
    assert audit_actions(fleet)[-2:] == ["sweep resumed", "sweep completed"]


def test_a_message_that_cannot_succeed_is_dropped_not_retried_for_ever(rotation):
    fleet = fleet_for(rotation)
    enqueue_slice(fleet.broker, "sw-never-started", 0, 0)
    outcomes = fleet.join()
    assert len(outcomes) == 1 and outcomes[0].startswith("dropped: no sweep 'sw-never-started'")
    assert fleet.broker.messages == []


def test_a_rescue_whose_message_could_not_be_sent_is_sent_at_the_next_look(rotation):
    fleet = fleet_for(rotation, lease_seconds=60)
    sweep = start(fleet, rotation.v2, slices=1)
    message = fleet.broker.take()
    fleet.state.claim_slice(sweep.id, 0, message.args[2], "dead-worker:4", 60)
    fleet.clock.now += 61
    broker_down_for(fleet, sends=1)
    with pytest.raises(OSError):
        rescue_expired_leases(fleet.broker, fleet.state, sweep.id)
    assert rescue_expired_leases(fleet.broker, fleet.state, sweep.id) == [(0, message.args[2] + 1)]
    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED


def broker_down_for(fleet: InProcessFleet, sends: int) -> None:
    """The broker refuses the next ``sends`` messages, then answers again."""
    send, refused = fleet.broker.send_task, []

    def flaky(*args, **kwargs):
        if len(refused) < sends:
            refused.append(True)
            raise OSError("broker unreachable")
        return send(*args, **kwargs)

    fleet.broker.send_task = flaky


def test_rescues_after_one_that_could_not_be_sent_are_all_sent_at_the_next_look(rotation):
    fleet = fleet_for(rotation, lease_seconds=60)
    sweep = start(fleet, rotation.v2, slices=3)
    for _ in range(3):
        message = fleet.broker.take()
        fleet.state.claim_slice(sweep.id, message.args[1], message.args[2], "dead-worker:4", 60)
    fleet.clock.now += 61
    broker_down_for(fleet, sends=1)
    with pytest.raises(OSError):
        rescue_expired_leases(fleet.broker, fleet.state, sweep.id)
    assert sorted(index for index, _ in rescue_expired_leases(fleet.broker, fleet.state, sweep.id)) == [0, 1, 2]
    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED


def test_retries_due_while_the_broker_is_down_are_re_queued_once_it_answers(rotation):
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2, slices=2)
    fleet.store_down()
    assert [fleet.step(), fleet.step()] == ["error: retrying"] * 2
    fleet.store_up()
    fleet.clock.now = max(piece.retry_at for piece in fleet.state.slices(sweep.id))
    broker_down_for(fleet, sends=1)
    with pytest.raises(OSError):
        send_due_retries(fleet.broker, fleet.state, sweep.id)
    assert fleet.join() == [] and fleet.state.get_sweep(sweep.id).status == RUNNING
    fleet.clock.now += STALL_S + 1  # no message for either slice: the lost-message look sends them
    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED
    assert_every_field_on(rotation, rotation.v2)


def test_a_lost_message_is_sent_again_once_the_slice_has_stalled(rotation):
    """Redis lost a message (restarted without its data, or a send failed after a commit): the
    lease watch finds fewer messages than slices nobody holds, and re-queues the stalled one."""
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2, slices=2)
    fleet.broker.take()  # slice 0's message, lost
    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == RUNNING  # slice 1 done, slice 0 waits
    fleet.clock.now += STALL_S + 1
    resent = fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED
    assert_every_field_on(rotation, rotation.v2)
    assert not any(outcome.startswith("dropped") for outcome in resent)  # sent once: no duplicate to drop


def test_slices_waiting_in_a_long_queue_are_not_sent_twice(rotation):
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2, slices=4)
    fleet.clock.now += STALL_S + 1  # every slice idle for long, but each still has its message
    assert requeue_lost_messages(fleet.broker, fleet.state, sweep.id, len(fleet.broker.messages)) == []
