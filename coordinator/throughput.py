"""A sweep's throughput and ETA, from its committed counts: one definition for ``sweep status``,
``--watch``, ``--wait``, the exporter and the dashboards.

Counts move only when a batch commits (a slice commits every few seconds, REENCRYPT_BATCH_SECONDS
at most), so the rate between two consecutive reads is a step function's slope: 0 between commits,
several times too high across one. The throughput here is what Prometheus computes from the same
durable counter with ``rate(reencrypt_sweep_documents_scanned_total[1m])``: the documents committed
over the last :data:`WINDOW_S` seconds, divided by the time they took. Over a window many batches
long, a step moves the figure by one batch in sixty seconds' worth, never to 0 while the sweep
progresses.

A reader that has not watched the sweep for a whole window yet (``sweep status`` once, an exporter
just started) has no count from a window ago: its figure is the average since the sweep started
(whose count was 0), which for a sweep younger than the window *is* the window's figure. Once the
sweep finished, the figure is its average over the whole run. Both leave out the time the sweep
spent paused: a sweep paused for an hour did not run slower.

A span under :data:`MIN_SPAN_S` gives no figure at all (None, shown as "-"): a sweep that took a few
milliseconds did not run at millions of documents per second.

Pure: every time is an argument (seconds since the epoch), so it is tested with stepped counts and
no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

#: The window of the rate: what ``rate(...[1m])`` covers in the dashboards. Many batches long
#: (a slice commits at least every REENCRYPT_BATCH_SECONDS), short enough to show a throttle.
WINDOW_S = 60.0
#: Below this span a rate says nothing (whole-second timestamps, a sweep over in milliseconds).
MIN_SPAN_S = 1.0

#: Over what the figure was measured: the last WINDOW_S, since the sweep started (no older count
#: read yet, or a sweep younger than the window), or its whole run (finished).
Basis = Literal["window", "since start", "run"]


@dataclass(frozen=True)
class Throughput:
    """Documents per second over ``span_s`` seconds (None when the span is under MIN_SPAN_S)."""

    docs_per_s: float | None
    span_s: float
    basis: Basis

    def eta_s(self, remaining: int, *, running: bool) -> float | None:
        """Seconds left for ``remaining`` documents at this rate: only for a running sweep that
        moves (a paused one has no ETA; nor has one whose last window committed nothing)."""
        if not running or not self.docs_per_s:
            return None
        return max(0, remaining) / self.docs_per_s


@dataclass(frozen=True)
class Sample:
    """A read of the sweep's committed documents (``scanned``) at ``at``."""

    at: float
    scanned: int


class ThroughputWindow:
    """The committed counts one reader saw of one sweep, kept for one window.

    ``observe`` each read; ``throughput`` answers as of the latest. Keeps the newest sample at
    least a window old (the window's base) and every later one: at one read a second, ~60."""

    def __init__(self, started_at: float, window_s: float = WINDOW_S) -> None:
        self.started_at = started_at
        self.window_s = window_s
        self.paused_s = 0.0
        self._samples: deque[Sample] = deque()

    def observe(self, at: float, scanned: int, paused_s: float = 0.0) -> Throughput:
        """A read at ``at``; ``paused_s``: the time the sweep has spent paused by then, which a
        rate since the start leaves out (the window's rate, like Prometheus', keeps it in)."""
        if self._samples and at < self._samples[-1].at:
            return self.throughput()  # an older read arriving late adds nothing
        self.paused_s = paused_s
        self._samples.append(Sample(at, scanned))
        while len(self._samples) > 1 and self._samples[1].at <= at - self.window_s:
            self._samples.popleft()
        return self.throughput()

    def throughput(self) -> Throughput:
        if not self._samples:
            return Throughput(None, 0.0, "since start")
        last, oldest = self._samples[-1], self._samples[0]
        if oldest.at <= last.at - self.window_s:
            return _rate(oldest, last, "window")
        return _rate(Sample(self.started_at + self.paused_s, 0), last, "since start")


def over_run(started_at: float, ended_at: float, scanned: int, paused_s: float = 0.0) -> Throughput:
    """A finished sweep's average over the time it ran (its run, less ``paused_s`` paused)."""
    return _rate(Sample(started_at + paused_s, 0), Sample(ended_at, scanned), "run")


def _rate(base: Sample, last: Sample, basis: Basis) -> Throughput:
    span = last.at - base.at
    if span < MIN_SPAN_S:
        return Throughput(None, max(0.0, span), basis)
    return Throughput(max(0, last.scanned - base.scanned) / span, span, basis)


def duration_text(seconds: float) -> str:
    """How long a sweep took, for a person: 'under 1 s' below MIN_SPAN_S (never '0.0s')."""
    return "under 1 s" if seconds < MIN_SPAN_S else f"{seconds:.1f} s"


def rate_text(throughput: Throughput) -> str:
    """'1,234 docs/s' and over what, or '- docs/s' when there is no figure."""
    if throughput.docs_per_s is None:
        return "- docs/s"
    over = {"window": "last minute", "since start": "since start", "run": "average"}
    return f"{throughput.docs_per_s:,.0f} docs/s ({over[throughput.basis]})"
