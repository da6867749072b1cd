"""Slice ownership, the active-sweep lock, failures and the audit chain, on a real SQLite
record store: the rules that keep two workers from ever advancing one slice."""

import pytest

from coordinator import render
from tracker_reencrypt.audit import AuditTrail
from tracker_reencrypt.errors import LeaseLostError, SweepError, UnknownNameError
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep import state as state_module
from tracker_reencrypt.sweep.records import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    FAILED,
    PAUSED,
    RUNNING,
    Failure,
    Slice,
    Sweep,
    zero_counts,
)
from tracker_reencrypt.sweep.state import BatchResult, SweepState


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def state(tmp_path, clock):
    return SweepState(SqliteStore(tmp_path / "s.db").records(), clock=clock)


def start(state, sweep_id="sw-1", slices=2):
    ranges = [{"epk_min": i, "epk_max": i + 1} for i in range(slices)]
    return state.create_sweep(
        Sweep(id=sweep_id, target_kid="k/v2", mode="reencrypt", status=RUNNING, started_at="2026-11-29T00:00:00Z"),
        ranges,
    )


def counts(**values):
    return {**zero_counts(), **values}


def test_a_claimed_slice_is_worked_once_and_continues_at_the_new_fence(state):
    start(state)
    claim = state.claim_slice("sw-1", 0, expected_fence=0, owner="a", lease_seconds=30)
    assert claim.action == "work" and claim.fence == 1
    state.commit_slice("sw-1", 0, claim.fence, BatchResult("cont-1", False, counts(documents_scanned=5)))

    assert (
        state.claim_slice("sw-1", 0, expected_fence=0, owner="b", lease_seconds=30).action == "drop"
    )  # stale duplicate
    again = state.claim_slice("sw-1", 0, expected_fence=1, owner="b", lease_seconds=30)
    assert again.action == "work" and again.slice.continuation == "cont-1"


def test_a_message_for_a_live_lease_waits_and_a_dead_lease_is_taken_over(state, clock):
    start(state)
    first = state.claim_slice("sw-1", 0, 0, "a", lease_seconds=0.3)
    waiting = state.claim_slice("sw-1", 0, 0, "b", lease_seconds=0.3)
    assert waiting.action == "retry" and 0 < waiting.retry_after <= 0.3
    clock.now += 0.35
    taken = state.claim_slice("sw-1", 0, 0, "b", lease_seconds=30)
    assert taken.action == "work" and taken.fence == first.fence + 1
    # The slow first owner comes back: its commit is refused and nothing it counted lands.
    with pytest.raises(LeaseLostError):
        state.commit_slice("sw-1", 0, first.fence, BatchResult("x", False, counts(documents_scanned=99)))
    assert state.totals("sw-1")["documents_scanned"] == 0


def test_counts_add_up_across_batches_and_the_sweep_completes_when_every_slice_is_done(state):
    start(state)
    for index in range(2):
        claim = state.claim_slice("sw-1", index, 0, "a", 30)
        state.commit_slice(
            "sw-1", index, claim.fence, BatchResult(None, True, counts(documents_scanned=3, fields_reencrypted=4))
        )
    finished = state.settle("sw-1")
    assert finished.status == COMPLETED
    assert state.totals("sw-1")["fields_reencrypted"] == 8
    assert state.settle("sw-1") is None  # only one caller sees the transition
    assert state.claim_slice("sw-1", 0, 1, "b", 30).action == "drop"


def test_failures_make_the_sweep_failed_and_are_recorded_once(state):
    start(state, slices=1)
    for _ in range(2):  # a redone batch records the same failure again
        state.record_failure("sw-1", 0, "doc-1", "p-1", "/title", "authentication_failed")
    claim = state.claim_slice("sw-1", 0, 0, "a", 30)
    state.commit_slice("sw-1", 0, claim.fence, BatchResult(None, True, counts(failures=1)))
    assert state.settle("sw-1").status == FAILED
    assert [(f.document_id, f.field_path, f.reason) for f in state.failures("sw-1")] == [
        ("doc-1", "/title", "authentication_failed")
    ]


def test_one_active_sweep_per_container_until_it_finishes(state):
    start(state, "sw-1")
    with pytest.raises(SweepError, match="sw-1 is still active"):
        start(state, "sw-2")
    state.set_status("sw-1", CANCELLING, allowed_from=frozenset({RUNNING}))
    assert state.settle("sw-1").status == CANCELLED
    assert state.get_sweep("sw-1").status == CANCELLED
    assert start(state, "sw-2").status == RUNNING


def test_a_lock_whose_sweep_was_never_written_blocks_only_for_the_grace_period(state, clock):
    # A start that took the lock and is still writing its sweep record: nobody else may start.
    state.records.create(
        state_module.LOCK, state_module.ACTIVE_LOCK_ID, {"sweep_id": "sw-writing", "taken_at": clock()}
    )
    assert state.active_sweep_id() == "sw-writing"
    with pytest.raises(SweepError, match="sw-writing is still active"):
        start(state, "sw-2")
    # The same lock, LOCK_GRACE_S later: that start crashed; the container is free again.
    clock.now += state_module.LOCK_GRACE_S
    assert state.active_sweep_id() is None
    assert start(state, "sw-2").status == RUNNING
    assert state.active_sweep_id() == "sw-2"


def test_cancel_waits_for_live_leases_and_settles_once_they_expire(state, clock):
    start(state)
    state.claim_slice("sw-1", 0, 0, "a", 30)
    state.set_status("sw-1", CANCELLING, allowed_from=frozenset({RUNNING}))
    assert state.settle("sw-1") is None
    assert state.get_sweep("sw-1").status == CANCELLING
    clock.now += 31  # the worker holding it died: nothing will ever commit
    assert state.settle("sw-1").status == CANCELLED


def test_a_cancel_settles_on_the_slice_done_path_too(state):
    """The bug: the last batch finished its slice while the sweep was cancelling, took the
    'slice done' path, and the sweep stayed cancelling for ever."""
    start(state, slices=1)
    claim = state.claim_slice("sw-1", 0, 0, "a", 30)
    state.set_status("sw-1", CANCELLING, allowed_from=frozenset({RUNNING}))
    state.commit_slice("sw-1", 0, claim.fence, BatchResult(None, True, counts(documents_scanned=3)))
    assert state.settle("sw-1").status == CANCELLED  # cancelling wins over done


def test_an_expired_lease_is_rescued_once_and_the_rescue_takes_the_slice_over(state, clock):
    start(state)
    dead = state.claim_slice("sw-1", 0, 0, "dead-worker", 30)
    assert state.rescue_expired("sw-1") == []  # live lease: nothing to rescue
    clock.now += 31
    assert state.rescue_expired("sw-1") == [(0, dead.fence)]
    assert state.rescue_expired("sw-1") == []  # a second watcher sends nothing more
    taken = state.claim_slice("sw-1", 0, dead.fence, "b", 30)
    assert taken.action == "work" and taken.fence == dead.fence + 1
    with pytest.raises(LeaseLostError):
        state.commit_slice("sw-1", 0, dead.fence, BatchResult("x", False, counts()))


def test_a_failed_batch_backs_off_longer_each_time_in_a_row_and_a_commit_resets_it(state, clock):
    start(state, slices=1)
    for failures, back_off in ((1, 10), (2, 20), (3, 40)):
        claim = state.claim_slice("sw-1", 0, state.slices("sw-1")[0].fence, "a", 30)
        assert claim.action == "work"
        waiting = state.back_off_slice("sw-1", 0, claim.fence, f"task-{failures}")
        assert (waiting.error_retries, waiting.retry_at, waiting.lease_owner) == (failures, clock.now + back_off, None)
        early = state.claim_slice("sw-1", 0, waiting.fence, "b", 30)
        assert early.action == "drop" and early.why.startswith("backing off")
        clock.now += back_off - 1
        assert state.due_retries("sw-1") == []
        clock.now += 1
        (due,) = state.due_retries("sw-1")
        assert (due.fence, due.retry_task_id, due.error_retries) == (waiting.fence, f"task-{failures}", failures)
        assert state.due_retries("sw-1") == []  # marked: one message, however many watches look
    claim = state.claim_slice("sw-1", 0, state.slices("sw-1")[0].fence, "a", 30)
    assert (claim.slice.retry_at, claim.slice.retry_task_id) == (0.0, None)
    assert state.commit_slice("sw-1", 0, claim.fence, BatchResult("c", False, counts())).error_retries == 0


def test_the_back_off_caps_at_five_minutes():
    assert [state_module.error_backoff(n) for n in (1, 5, 6, 30)] == [10, 160, 300, 300]


def test_a_batch_that_fails_after_its_lease_was_rescued_is_still_retried(state, clock):
    """The slow worker's lease expired and a rescue went out for its fence; then its batch
    failed. The rescue meets the back-off and is dropped, so the retry must still be sent."""
    start(state, slices=1)
    slow = state.claim_slice("sw-1", 0, 0, "slow", 30)
    clock.now += 31
    assert state.rescue_expired("sw-1") == [(0, slow.fence)]
    state.back_off_slice("sw-1", 0, slow.fence, "task-slow")
    assert state.claim_slice("sw-1", 0, slow.fence, "b", 30).action == "drop"  # the rescue, early
    clock.now += 10
    assert [piece.index for piece in state.due_retries("sw-1")] == [0]


def test_a_slice_waiting_out_a_back_off_is_not_taken_for_one_whose_message_was_lost(state, clock):
    start(state, slices=1)
    claim = state.claim_slice("sw-1", 0, 0, "a", 30)
    state.back_off_slice("sw-1", 0, claim.fence, "task-1")
    for _ in range(4):  # back-offs of 10, 20, 40, 80 s: longer than the stall limit
        clock.now = state.slices("sw-1")[0].retry_at
        claim = state.claim_slice("sw-1", 0, state.slices("sw-1")[0].fence, "a", 30)
        state.back_off_slice("sw-1", 0, claim.fence, "task-1")
    clock.now += 61
    assert state.rescue_stalled("sw-1", 60, 1) == []  # no message by design: the retry comes when due
    state.clear_back_offs("sw-1")  # 'sweep resume'
    assert state.slices("sw-1")[0].retry_at == 0
    assert state.claim_slice("sw-1", 0, claim.fence, "a", 30).action == "work"


def test_a_problem_only_a_person_can_fix_pauses_the_sweep_with_its_reason(state):
    start(state)
    paused = state.pause_for("sw-1", "target key k/v2 is disabled")
    assert paused.status == PAUSED and paused.paused_reason == "target key k/v2 is disabled"
    assert state.pause_for("sw-1", "again").paused_reason == "target key k/v2 is disabled"  # only from running


def test_status_changes_are_refused_from_the_wrong_state(state):
    start(state)
    state.set_status("sw-1", PAUSED, allowed_from=frozenset({RUNNING}))
    with pytest.raises(SweepError, match="sw-1 is paused"):
        state.set_status("sw-1", PAUSED, allowed_from=frozenset({RUNNING}))
    with pytest.raises(UnknownNameError, match="no sweep 'nope'"):
        state.get_sweep("nope")


def test_audit_chain_detects_an_altered_and_a_removed_entry(tmp_path):
    store = SqliteStore(tmp_path / "a.db")
    trail = AuditTrail(store.records())
    for action in ("key rotated", "sweep started", "verify", "key disabled"):
        trail.append(action, "ops@host", kid="k/v2")
    assert trail.check() == []

    db = store._db
    db.execute(
        "UPDATE records SET body = json_set(body, '$.details.kid', 'k/v9') WHERE kind = 'audit' AND id = ?",
        (f"{2:012d}",),
    )
    assert trail.check() == ["entry 2 was altered (hash mismatch)"]
    db.execute("DELETE FROM records WHERE kind = 'audit' AND id = ?", (f"{2:012d}",))
    assert any("entry 2 is missing" in problem for problem in trail.check())


def test_records_round_trip_and_a_misspelt_field_is_an_error_not_a_silent_none(state):
    sweep = start(state)
    again = state.get_sweep("sw-1")
    assert again == sweep.but(updated_at=again.updated_at)
    assert Sweep.from_record(again.to_record()) == again
    assert isinstance(state.slices("sw-1")[0], Slice)
    with pytest.raises(AttributeError):
        again.taget_kid  # noqa: B018 - the point: a typo fails loudly
    state.record_failure("sw-1", 0, "doc-1", "p-1", "/title", "authentication_failed")
    assert state.failures("sw-1") == [Failure.from_record(state.failures("sw-1")[0].to_record())]


def test_limits_travel_flat_in_the_record_as_the_cli_prints_them():
    sweep = Sweep.from_record(
        {
            "id": "s",
            "target_kid": "k",
            "mode": "reencrypt",
            "status": RUNNING,
            "rate": 50.0,
            "kv_ops_per_s": None,
            "ru_per_s": 0,
        }
    )
    assert dict(sweep.limits) == {"rate": 50.0} and sweep.limit("ru_per_s") is None
    assert {key: sweep.to_record()[key] for key in ("rate", "kv_ops_per_s", "ru_per_s")} == {
        "rate": 50.0,
        "kv_ops_per_s": None,
        "ru_per_s": None,
    }


def test_a_cancel_while_the_start_writes_its_slices_is_not_overwritten(state):
    create = state.records.create

    def create_and_cancel_at_the_second_slice(kind, record_id, body):
        etag = create(kind, record_id, body)
        if kind == state_module.SLICE and body["index"] == 1:  # the operator's cancel lands now
            state.set_status("sw-1", CANCELLING, allowed_from=frozenset({"planned"}))
            state.settle("sw-1")
        return etag

    state.records.create = create_and_cancel_at_the_second_slice
    with pytest.raises(SweepError, match="sw-1 was cancelled before it started"):
        start(state, slices=3)
    assert state.get_sweep("sw-1").status == CANCELLED  # not set running over the cancel
    assert state.active_sweep_id() is None


def test_a_retry_sent_by_a_watcher_whose_clock_is_ahead_is_worked_not_dropped(state, clock):
    start(state, slices=1)
    claim = state.claim_slice("sw-1", 0, 0, "a", 30)
    waiting = state.back_off_slice("sw-1", 0, claim.fence, "task-1")
    clock.now = waiting.retry_at  # the watcher's clock says due...
    (due,) = state.due_retries("sw-1")
    clock.now -= 2  # ...the worker that receives the retry is two seconds behind
    assert state.claim_slice("sw-1", 0, due.fence, "b", 30).action == "work"


def test_a_retry_message_the_broker_lost_is_re_queued_like_any_lost_message(state, clock):
    start(state, slices=1)
    claim = state.claim_slice("sw-1", 0, 0, "a", 30)
    waiting = state.back_off_slice("sw-1", 0, claim.fence, "task-1")
    clock.now = waiting.retry_at
    (due,) = state.due_retries("sw-1")  # sent, and lost with a Redis restart
    clock.now += 61
    assert state.rescue_stalled("sw-1", 60, 1) == [(0, due.fence)]


def test_the_status_table_says_when_a_slice_in_back_off_is_retried(state, clock):
    start(state, slices=1)
    claim = state.claim_slice("sw-1", 0, 0, "a", 30)
    assert render.slice_state(state.slices("sw-1")[0], clock.now) == "working"
    waiting = state.back_off_slice("sw-1", 0, claim.fence, "task-1")
    assert render.slice_state(waiting, clock.now) == "retry in 10s (1 failed)"
    assert render.slice_state(waiting, waiting.retry_at) == "queued"  # due: its message is on its way
