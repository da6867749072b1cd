"""Throughput and ETA from committed counts that move in steps (coordinator.throughput), and the
same figures through steering.progress on a real SQLite sweep state: no clock, no sleeping.

A slice's count moves only when its batch commits (every ~10 s at --rate 100), so a reader
sampling every second sees a step function. The rate between two consecutive reads (what status
--watch and the exporter used to show) is 0 between steps and several times too high across one."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator import render, steering
from coordinator.context import Context
from coordinator.throughput import (
    MIN_SPAN_S,
    WINDOW_S,
    Throughput,
    ThroughputWindow,
    duration_text,
    over_run,
    rate_text,
)
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.records import CANCELLING, PAUSED, RUNNING, Sweep, zero_counts
from tracker_reencrypt.sweep.state import BatchResult

T0 = 1_800_000_000.0  # the sweep's start


class SteppedSweep:
    """Slices that commit ``batch`` documents every ``period`` seconds each, at their own phase
    and pace (periods spread by ``spread``): the committed count at any time."""

    def __init__(self, slices: int, batch: int, period: float, spread: float = 0.0, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.batch = batch
        self.slices = [(rng.uniform(0, period), period * rng.uniform(1 - spread, 1 + spread)) for _ in range(slices)]

    def scanned(self, t: float) -> int:
        elapsed = t - T0
        return sum(self.batch * max(0, int((elapsed - phase) // period) + 1) for phase, period in self.slices)

    @property
    def docs_per_s(self) -> float:
        return sum(self.batch / period for _, period in self.slices)


def value(rate: Throughput) -> float:
    assert rate.docs_per_s is not None, rate
    return rate.docs_per_s


def reads(sweep: SteppedSweep, every: float, until: float, jitter: float = 0.0, seed: int = 3):
    """(time, committed count) at each read of a reader reading every ``every`` s (± jitter)."""
    rng = random.Random(seed)
    t = T0 + every
    while t <= T0 + until:
        at = t + rng.uniform(-jitter, jitter)
        yield at, sweep.scanned(at)
        t += every


def test_the_rate_between_two_reads_flickers_where_the_windowed_rate_holds():
    """The issue's --rate 100 case: one slice, 1,000 documents every 10 s, read every second."""
    sweep = SteppedSweep(slices=1, batch=1000, period=10.0)
    window = ThroughputWindow(T0)
    previous, two_read_rates, figures = None, [], []
    for at, scanned in reads(sweep, every=1.0, until=300):
        if previous is not None:
            two_read_rates.append((scanned - previous[1]) / (at - previous[0]))
        previous = (at, scanned)
        figures.append((at, window.observe(at, scanned)))
    assert two_read_rates.count(0) > 0.8 * len(two_read_rates)  # the old figure: 0 nine reads in ten
    assert max(two_read_rates) == pytest.approx(1000)  # and 10x the truth across a step
    once_a_minute = [rate for at, rate in figures if at > T0 + WINDOW_S]
    assert {rate.basis for rate in once_a_minute} == {"window"}
    # Reads one second apart, steps ten: at most one step more or less than six in a window.
    assert all(90 <= value(rate) <= 7000 / 60 for rate in once_a_minute), [r.docs_per_s for r in once_a_minute]
    assert all(rate.eta_s(10_000, running=True) is not None for _, rate in figures if rate.docs_per_s)


@pytest.mark.parametrize("every, jitter", [(1.0, 0.0), (5.0, 0.0), (5.0, 1.5)])
def test_many_slices_committing_in_steps_give_a_steady_rate_and_eta(every, jitter):
    """16 slices, 200 documents a batch every ~10 s each (±20%), read by a follower every second
    or by the exporter every 5 s (with jitter): within 10% of the truth, every read, once the
    reader has watched for a minute; ETA always there while it runs."""
    sweep = SteppedSweep(slices=16, batch=200, period=10.0, spread=0.2)
    estimate = sweep.scanned(T0 + 900)
    window = ThroughputWindow(T0)
    seen = []
    for at, scanned in reads(sweep, every=every, until=600, jitter=jitter):
        rate = window.observe(at, scanned)
        seen.append(rate)
        assert rate.eta_s(estimate - scanned, running=True) is not None
    windowed = [value(rate) for rate in seen if rate.basis == "window"]
    assert len(windowed) > len(seen) * 0.8
    assert min(windowed) >= 0.9 * sweep.docs_per_s and max(windowed) <= 1.1 * sweep.docs_per_s, (
        min(windowed),
        max(windowed),
        sweep.docs_per_s,
    )


def test_the_eta_counts_down_with_the_documents_left():
    sweep = SteppedSweep(slices=16, batch=200, period=10.0, spread=0.2)
    estimate = sweep.scanned(T0 + 900)
    window = ThroughputWindow(T0)
    etas = []
    for at, scanned in reads(sweep, every=5.0, until=840):
        etas.append((at, window.observe(at, scanned).eta_s(estimate - scanned, running=True)))
    for at, eta in etas:
        if at >= T0 + 120:  # the rate within 10% (above): the ETA too
            assert eta == pytest.approx(T0 + 900 - at, rel=0.1), at - T0


def test_before_a_minute_of_reads_the_rate_is_since_the_start():
    sweep = SteppedSweep(slices=1, batch=1000, period=10.0)
    young = ThroughputWindow(T0).observe(T0 + 35, sweep.scanned(T0 + 35))  # a sweep 35 s old, read once
    assert young.basis == "since start" and young.docs_per_s == pytest.approx(sweep.scanned(T0 + 35) / 35)
    old = ThroughputWindow(T0)
    for at in (T0 + 3600, T0 + 3601):  # a one-hour-old sweep: a status, then a watch's first second
        rate = old.observe(at, sweep.scanned(at))
    assert rate.basis == "since start" and rate.docs_per_s == pytest.approx(100, rel=0.01)
    assert rate_text(rate) == "100 docs/s (since start)"


def test_a_stalled_sweep_loses_its_rate_and_eta_a_paused_one_its_eta():
    window = ThroughputWindow(T0)
    for second in range(1, 121):
        scanned = min(second, 60) * 100  # moving for a minute, then nothing
        rate = window.observe(T0 + second, scanned)
    assert rate.basis == "window" and rate.docs_per_s == 0
    assert rate.eta_s(1000, running=True) is None
    moving = ThroughputWindow(T0).observe(T0 + 30, 3000)
    assert moving.eta_s(1000, running=True) == pytest.approx(10)
    assert moving.eta_s(1000, running=False) is None  # paused: no ETA, the rate stays readable
    assert moving.eta_s(-5, running=True) == 0  # more scanned than the estimate: nothing left


def test_a_read_arriving_late_changes_nothing():
    window = ThroughputWindow(T0)
    window.observe(T0 + 10, 1000)
    assert window.observe(T0 + 5, 999_999) == window.throughput()


def test_a_sweep_of_a_few_milliseconds_has_no_rate_and_took_under_a_second():
    fast = over_run(T0, T0 + 0.004, 20_000)
    assert fast.docs_per_s is None and fast.basis == "run"
    assert rate_text(fast) == "- docs/s"
    assert duration_text(0.004) == "under 1 s" and duration_text(0.0) == "under 1 s"
    assert duration_text(MIN_SPAN_S) == "1.0 s"
    finished = over_run(T0, T0 + 8.0, 20_000)
    assert finished.docs_per_s == 2500 and rate_text(finished) == "2,500 docs/s (average)"
    assert finished.eta_s(0, running=False) is None
    assert ThroughputWindow(T0).observe(T0 + 0.2, 500).docs_per_s is None  # 0.2 s since the start


# -- the same figures through steering.progress, on a real sweep state --------------------------


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch) -> Context:
    monkeypatch.setenv("REENCRYPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    SqliteStore(tmp_path / "tracker.db").close()
    return Context(load_settings(store=f"sqlite:///{tmp_path / 'tracker.db'}"))


def stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def start(ctx: Context, slices: int = 4, estimate: int = 100_000) -> Sweep:
    ranges = [{"epk_min": i, "epk_max": i + 1} for i in range(slices)]
    return ctx.state.create_sweep(
        Sweep(
            id="sw-steps",
            target_kid="tracker-mek/v2",
            mode="reencrypt",
            status=RUNNING,
            started_at=stamp(T0),
            documents_estimate=estimate,
        ),
        ranges,
    )


def commit(ctx: Context, sweep: Sweep, index: int, scanned: int, done: bool = False) -> None:
    fence = ctx.state.slices(sweep.id)[index].fence
    claim = ctx.state.claim_slice(sweep.id, index, fence, owner="host-a:1", lease_seconds=30)
    counts = {**zero_counts(), "documents_scanned": scanned}
    ctx.state.commit_slice(sweep.id, index, claim.fence, BatchResult(None if done else "next", done, counts))


def test_progress_follows_the_committed_steps_with_one_window(ctx):
    """Four slices committing 250 documents in turn, one every 2.5 s (100 docs/s), read every
    second as status --watch does: the figure stays at 100 (+-10%) and the ETA is always there."""
    sweep = start(ctx)
    window = steering.throughput_window(sweep)
    next_commit, index = T0 + 2.5, 0
    for second in range(1, 181):
        now = T0 + second
        while next_commit <= now:
            commit(ctx, sweep, index % 4, 250)
            index, next_commit = index + 1, next_commit + 2.5
        progress = steering.progress(ctx, ctx.state.get_sweep(sweep.id), window, now=now)
        assert progress.elapsed_s == pytest.approx(second)
        if second < 3:  # nothing committed yet
            assert progress.docs_per_s == 0 and progress.eta_s is None
            continue
        # Since the start, the batch in hand (250 documents) is missing: 2.5 s' worth over the elapsed time.
        assert progress.docs_per_s == pytest.approx(100, rel=0.1 if second >= 25 else 2.5 / second), second
        assert progress.eta_s == pytest.approx(
            (100_000 - progress.totals["documents_scanned"]) / value(progress.throughput)
        )
    payload = progress.as_json()
    assert payload["docs_per_s_basis"] == "window" and payload["docs_per_s"] == pytest.approx(100, rel=0.1)
    once = steering.progress(ctx, ctx.state.get_sweep(sweep.id), now=T0 + 180)  # sweep status, no --watch
    assert once.throughput.basis == "since start" and once.docs_per_s == pytest.approx(100, rel=0.05)


def test_a_sweep_finished_within_a_second_says_so(ctx):
    sweep = start(ctx, slices=1, estimate=500)
    # started_at is to the millisecond now; finished_at stays whole seconds.
    ctx.state.update_sweep(sweep.id, lambda body: body.but(started_at=stamp(datetime.now(UTC).timestamp())))
    commit(ctx, sweep, 0, 500, done=True)
    finished = ctx.state.settle(sweep.id)
    assert finished is not None and finished.status == "completed"
    progress = steering.progress(ctx, finished)
    assert progress.elapsed_s < 1.0 and progress.docs_per_s is None and progress.eta_s is None
    assert progress.as_json()["docs_per_s"] is None
    console = render.Console(record=True, width=400)
    render.summary(console, progress)
    text = console.export_text()
    assert "in under 1 s" in text and "docs/s" not in text and "0.0s" not in text


def test_time_spent_paused_is_left_out_of_the_rate_since_the_start(ctx):
    """A sweep that ran a minute at 100 docs/s, was paused for an hour, then ran another minute:
    'sweep status' read once says 100 docs/s, not 3, and the ETA follows from that."""
    sweep = start(ctx, slices=1)
    now = [T0]
    ctx.state.clock = lambda: now[0]
    now[0] = T0 + 60
    commit(ctx, sweep, 0, 6000)
    ctx.state.set_status(sweep.id, PAUSED, allowed_from=frozenset({RUNNING}))
    now[0] = T0 + 1860  # half an hour into the pause: a paused sweep's rate is the rate it ran at
    paused = steering.progress(ctx, ctx.state.get_sweep(sweep.id), now=now[0])
    assert paused.docs_per_s == pytest.approx(100) and paused.eta_s is None
    now[0] = T0 + 3660
    resumed = ctx.state.update_sweep(sweep.id, lambda body: body.but(status=RUNNING))
    assert (resumed.paused_s, resumed.paused_since) == (3600, None)
    now[0] = T0 + 3720
    commit(ctx, sweep, 0, 6000)
    once = steering.progress(ctx, ctx.state.get_sweep(sweep.id), now=now[0])
    assert once.throughput.basis == "since start" and once.docs_per_s == pytest.approx(100)
    assert once.eta_s == pytest.approx((100_000 - 12_000) / 100)
    assert once.elapsed_s == pytest.approx(3720)  # the wall-clock time since the start is still shown
    # Paused twice: the second pause adds to the first.
    ctx.state.set_status(sweep.id, PAUSED, allowed_from=frozenset({RUNNING}))
    now[0] = T0 + 3780
    assert ctx.state.get_sweep(sweep.id).time_paused(now[0]) == pytest.approx(3660)
    cancelled = ctx.state.set_status(sweep.id, CANCELLING, allowed_from=frozenset({PAUSED}))
    assert (cancelled.paused_s, cancelled.paused_since) == (3660, None)


def test_a_finished_sweeps_average_is_over_the_time_it_ran():
    assert value(over_run(T0, T0 + 3720, 12_000, paused_s=3600)) == pytest.approx(100)
    assert value(over_run(T0, T0 + 3720, 12_000)) == pytest.approx(12_000 / 3720)
