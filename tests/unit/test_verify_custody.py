"""A verify sweep in the disable gate's reading of the audit trail: never a writer, and its
proof dated from when it started reading, not from when its result was collected.

Pure functions over hand-made trails (tracker_reencrypt.custody); no store, no broker.
"""

from __future__ import annotations

from tracker_reencrypt import custody
from tracker_reencrypt.sweep.records import TARGET_CURRENT, VERIFY

V1, V2 = "tracker-mek-acme/v1", "tracker-mek-acme/v2"


def entry(seq: int, action: str, at: str = "2026-11-29T02:00:00Z", **details) -> dict:
    return {"seq": seq, "at": at, "action": action, "details": details}


def verified(seq: int, at: str, **extra) -> dict:
    counted = {"fields_by_kid": {V2: 10}, "undecryptable": 0, "documents": 5, "products": None}
    return entry(seq, "verify", at, **counted, **extra)


def test_a_running_verify_sweep_is_no_sweep_that_writes():
    started = entry(1, custody.VERIFY_STARTED, sweep_id="sw-v", expect=TARGET_CURRENT, products=None)
    assert custody.write_window([started], V1, "acme").open_sweeps == ()
    # Even audited as a sweep, a check-only one is not a writer.
    as_sweep = entry(1, custody.SWEEP_STARTED, sweep_id="sw-v", target_kid=TARGET_CURRENT, products=None, mode=VERIFY)
    assert custody.write_window([as_sweep], V1, "acme").open_sweeps == ()
    writer = entry(1, custody.SWEEP_STARTED, sweep_id="sw-w", target_kid=TARGET_CURRENT, products=None)
    assert custody.write_window([writer], V1, "acme").open_sweeps == ("sw-w",)


def test_a_fleet_verify_proves_from_its_start():
    rotated = "2026-11-29T02:00:00Z"
    trail = [
        entry(1, custody.VERIFY_STARTED, "2026-11-29T01:00:00Z", sweep_id="sw-early"),
        entry(2, "key promoted", rotated, kid=V2),
        verified(3, "2026-11-29T03:00:00Z", sweep_id="sw-early"),  # collected after, but read before
    ]
    assert custody.proving_verify(trail, V1, rotated, after_seq=2, product="acme") is None
    trail += [
        entry(4, custody.VERIFY_STARTED, "2026-11-29T04:00:00Z", sweep_id="sw-late"),
        verified(5, "2026-11-29T05:00:00Z", sweep_id="sw-late"),
    ]
    assert custody.proving_verify(trail, V1, rotated, after_seq=2, product="acme") == trail[-1]


def test_a_fleet_verify_without_its_start_in_the_trail_proves_nothing():
    trail = [verified(3, "2026-11-29T03:00:00Z", sweep_id="sw-lost")]
    assert custody.proving_verify(trail, V1, "2026-11-29T02:00:00Z", product="acme") is None


def test_an_older_one_process_verify_still_counts_behind_a_fleet_verify_that_does_not():
    trail = [
        entry(1, custody.VERIFY_STARTED, "2026-11-29T01:00:00Z", sweep_id="sw-early"),
        entry(2, "key promoted", "2026-11-29T02:00:00Z", kid=V2),
        verified(3, "2026-11-29T02:30:00Z"),
        verified(4, "2026-11-29T03:00:00Z", sweep_id="sw-early"),
    ]
    assert custody.proving_verify(trail, V1, "2026-11-29T02:00:00Z", after_seq=2, product="acme") == trail[2]
