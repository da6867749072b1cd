"""The exporter as Kubernetes and Grafana meet it: ``/metrics`` and ``/healthz`` (nothing on other
paths), a port already taken (one line, exit 2), its throughput read after read on a fake clock,
and the sweep events the dashboards draw as annotations, from a real SQLite sweep state and audit
trail. The server is the exporter's own, on loopback; one test runs the real command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator import steering
from coordinator.context import Context
from coordinator.exporter import EVENTS, Exporter, families, listen
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.errors import ConfigError
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep import state as state_module
from tracker_reencrypt.sweep.records import RUNNING, Sweep, parse_utc, utc_now, zero_counts
from tracker_reencrypt.sweep.state import BatchResult

from conftest import loopback_get

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("REENCRYPT_HOME", str(tmp_path / "home"))  # no broker runs here: redis_up 0
    monkeypatch.delenv("REDIS_URL", raising=False)
    SqliteStore(tmp_path / "tracker.db").close()
    return f"sqlite:///{tmp_path / 'tracker.db'}"


@pytest.fixture
def ctx(store_url: str) -> Context:
    return Context(load_settings(store=store_url))


def start(ctx: Context, *, started_at: str | None = None, slices: int = 4) -> Sweep:
    sweep = ctx.state.create_sweep(
        Sweep(
            id="sw-http",
            target_kid="tracker-mek/v2",
            mode="reencrypt",
            status=RUNNING,
            started_at=started_at or utc_now(milliseconds=True),
            documents_estimate=100_000,
        ),
        [{"epk_min": i, "epk_max": i + 1} for i in range(slices)],
    )
    ctx.audit.append("sweep started", sweep_id=sweep.id)
    return sweep


def commit(ctx: Context, sweep_id: str, index: int, scanned: int) -> None:
    fence = ctx.state.slices(sweep_id)[index].fence
    claim = ctx.state.claim_slice(sweep_id, index, fence, owner="host-a:1", lease_seconds=30)
    ctx.state.commit_slice(
        sweep_id, index, claim.fence, BatchResult("next", False, {**zero_counts(), "documents_scanned": scanned})
    )


def samples(snapshot) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in families(snapshot):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


# -- HTTP --------------------------------------------------------------------------------------


def test_metrics_on_metrics_health_on_healthz_and_nothing_elsewhere(ctx, monkeypatch):
    clock = Clock(datetime.now(UTC).timestamp())
    exporter = Exporter(ctx, interval=5.0, clock=clock)
    server = listen("127.0.0.1", 0, exporter)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, text = loopback_get(port, "/healthz")
        assert code == 503 and "not been read yet" in text
        exporter.refresh()
        assert loopback_get(port, "/healthz") == (200, "ok: sweep state read 0 s ago\n")
        code, text = loopback_get(port, "/metrics")
        assert code == 200 and "reencrypt_exporter_store_up 1.0" in text
        for path in ("/", "/metrics/extra", "/healthz/x", "/favicon.ico"):
            code, text = loopback_get(port, path)
            assert code == 404 and "reencrypt_" not in text, path

        clock.now += 29  # a refresh that hangs: healthy for 3 intervals, 30 s at least
        assert loopback_get(port, "/healthz")[0] == 200
        clock.now += 2
        code, text = loopback_get(port, "/healthz")
        assert code == 503 and "last read 31 s ago" in text

        def unreadable() -> list[Sweep]:
            raise OSError("the store is unreachable")

        monkeypatch.setattr(exporter.ctx.state, "sweeps", unreadable)  # the next read fails: last good values, 503
        exporter.refresh()
        code, text = loopback_get(port, "/healthz")
        assert code == 503 and "last read of the sweep state failed" in text
        assert "reencrypt_exporter_store_up 0.0" in loopback_get(port, "/metrics")[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_taken_is_one_line_not_a_traceback(ctx):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"^127\.0\.0\.1:{port} is already in use .*--port$"):
            listen("127.0.0.1", port, Exporter(ctx))
        with pytest.raises(ConfigError, match="--bind no-such-host.invalid: not an address of this host"):
            listen("no-such-host.invalid", 0, Exporter(ctx))
    finally:
        holder.close()


def test_the_exporter_command_refuses_a_taken_port_with_exit_2(store_url, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(REENCRYPT_STORE=store_url, REENCRYPT_HOME=str(tmp_path / "home"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "exporter", "--port", str(port), "--bind", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} is already in use (another exporter, or another program): stop it or choose "
        f"another --port"
    ]


# -- throughput, read after read ---------------------------------------------------------------


def test_the_exported_rate_and_eta_hold_between_commits(ctx):
    """One commit of 500 documents every 5 s (100 docs/s), the exporter reading every 5 s on a fake
    clock: throughput 100 (+-10%) once it has read for a minute, the ETA always there."""
    t0 = 1_800_000_000.0
    start(ctx, started_at=datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    clock = Clock(t0)
    exporter = Exporter(ctx, interval=5.0, clock=clock)
    rates, etas = [], []
    for step in range(1, 61):
        clock.now = t0 + 5 * step - 2.5
        commit(ctx, "sw-http", step % 4, 500)  # commits half-way between reads
        clock.now = t0 + 5 * step
        found = samples(exporter.refresh())
        rates.append(found["reencrypt_sweep_documents_per_second"][0].value)
        etas.append(found.get("reencrypt_sweep_eta_seconds", [None])[0])
    assert all(rate == pytest.approx(100, rel=0.1) for rate in rates[12:]), rates
    assert all(rate > 0 for rate in rates) and None not in etas
    assert etas[-1].value == pytest.approx((100_000 - 60 * 500) / rates[-1])


# -- events for annotations --------------------------------------------------------------------


def test_sweep_events_come_from_the_audit_trail_and_the_fleet_pause(ctx, monkeypatch):
    sweep = start(ctx)
    exporter = Exporter(ctx)
    reads: list[int] = []
    refreshing: list[int] = []
    entries = ctx.audit.entries

    def counted() -> list[dict]:  # appending reads the trail too: count the exporter's reads only
        if refreshing:
            reads.append(1)
        return entries()

    monkeypatch.setattr(ctx.audit, "entries", counted)

    def events() -> dict[str, float]:
        refreshing.append(1)
        try:
            found = samples(exporter.refresh())
        finally:
            refreshing.clear()
        return {s.labels["event"]: s.value for s in found.get("reencrypt_sweep_event_timestamp_seconds", [])}

    first = events()
    assert set(first) == {"started"} and first["started"] == parse_utc(ctx.state.get_sweep(sweep.id).started_at)
    events()
    assert len(reads) == 1, "the audit trail is read again only when the sweep record changed"

    steering.pause(ctx, sweep.id)
    steering.throttle(ctx, sweep.id, steering.LimitFlags(rate=50))
    ctx.state.update_sweep(sweep.id, lambda body: body.but(status=RUNNING))  # sweep resume, without a broker
    ctx.audit.append("sweep resumed", sweep_id=sweep.id)
    ctx.state.pause_for(sweep.id, "target key tracker-mek/v2 is disabled")  # the fleet's pause: not audited
    ctx.audit.append("sweep paused", sweep_id="sw-another")  # another sweep's: not this one's
    seen = events()
    assert set(seen) == {"started", "paused", "throttled", "resumed", "paused_by_error"}
    assert len(reads) == 2
    assert all(seen["started"] - 1 <= at <= datetime.now(UTC).timestamp() for at in seen.values())
    assert seen["paused_by_error"] == ctx.state.get_sweep(sweep.id).paused_since

    # Throttled two minutes into the fleet's pause: the pause is still drawn where it happened.
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 120, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with monkeypatch.context() as patched:
        patched.setattr(state_module, "utc_now", lambda **_: later)
        steering.throttle(ctx, sweep.id, steering.LimitFlags(rate=20))
    assert ctx.state.get_sweep(sweep.id).updated_at == later
    seen = events()
    assert seen["paused_by_error"] == ctx.state.get_sweep(sweep.id).paused_since

    steering.cancel(ctx, sweep.id)  # cancel requested, and settled at once: no lease in hand
    final = events()
    assert set(final) == {*seen, "cancelling", "cancelled"}
    assert final["paused_by_error"] == seen["paused_by_error"], "a fleet pause stays drawn once over"
    assert set(final) <= set(EVENTS)
