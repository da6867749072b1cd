"""The worker's probes decide from what they know (worker/health.py): the event loop's beats for
/livez, the last check of the broker and the store for /readyz. Clocks are arguments here: no
waiting. tests/e2e/test_worker_probes.py asks a real worker."""

from __future__ import annotations

from tracker_reencrypt.errors import StoreError
from tracker_reencrypt.stores.sqlite import SqliteStore
from worker.health import (
    BATCH_OVERRUN_S,
    CHECK_DEADLINE_S,
    LOOP_STALL_S,
    Dependencies,
    HealthServer,
    Heartbeat,
    stall_limit,
)

from conftest import loopback_get

NO_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


def test_liveness_waits_for_the_first_beat_then_fails_when_the_loop_stops_turning():
    heartbeat = Heartbeat(stalled_after=30, queue="reencrypt-abc")
    assert heartbeat.liveness(0)[0] == 503  # the startup probe waits for the first turn
    heartbeat.beat(100, consuming=True)
    assert heartbeat.liveness(129) == (200, "alive: event loop turned 29.0s ago, consuming reencrypt-abc")
    code, text = heartbeat.liveness(131)
    assert code == 503 and text.startswith("wedged: the event loop has not turned for 31s")


def test_liveness_fails_when_the_loop_turns_but_consumes_nothing():
    heartbeat = Heartbeat(queue="reencrypt-abc")
    heartbeat.beat(10, consuming=False)
    code, text = heartbeat.liveness(10.5)
    assert code == 503 and text.startswith("not consuming reencrypt-abc")


def test_a_consumer_reconnecting_to_the_broker_is_alive_however_long():
    heartbeat = Heartbeat()
    heartbeat.beat(10, consuming=True)
    heartbeat.pause(11)
    assert heartbeat.paused and heartbeat.liveness(11 + 3600)[0] == 200
    heartbeat.beat(4000, consuming=True)
    assert not heartbeat.paused


def test_the_solo_pool_gets_a_batch_more_before_it_counts_as_wedged():
    assert stall_limit("prefork", 10) == LOOP_STALL_S
    assert stall_limit("solo", 10) == LOOP_STALL_S + 10 + BATCH_OVERRUN_S


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readiness_follows_the_last_check_of_the_store(tmp_path, redis_url):
    """A real store and broker: ready; the store gone: its one-line reason; back: ready again
    (opened anew after the failure)."""
    SqliteStore(tmp_path / "tracker.db").close()
    moved = tmp_path / "elsewhere.db"
    clock = Clock()
    opened = []

    def open_store():
        path = tmp_path / "tracker.db"
        if not path.exists():
            raise StoreError(f"store {path} does not exist")
        opened.append(path)
        return SqliteStore(path, create=False)

    dependencies = Dependencies(redis_url, open_store, interval=15, clock=clock)
    assert dependencies.readiness(clock.now) == (503, "starting: broker and store not checked yet")
    dependencies.check_once()
    assert dependencies.readiness(clock.now) == (200, "ready: broker and store answered 0s ago")
    dependencies.check_once()
    assert len(opened) == 1, "the store stays open between checks"

    (tmp_path / "tracker.db").rename(moved)
    dependencies._close_store()  # as a dropped connection would be: the next check opens it anew
    dependencies.check_once()
    code, text = dependencies.readiness(clock.now)
    assert code == 503 and text.startswith("store unreachable: store ") and "does not exist" in text

    moved.rename(tmp_path / "tracker.db")
    dependencies.check_once()
    assert dependencies.readiness(clock.now)[0] == 200
    clock.now += 2 * 15 + CHECK_DEADLINE_S + 1  # the checking thread stopped checking
    assert dependencies.readiness(clock.now)[0] == 503


def test_readiness_fails_on_a_broker_that_does_not_answer_and_on_a_check_that_hangs():
    clock = Clock()
    dependencies = Dependencies(NO_BROKER, None, clock=clock)
    dependencies.check_once()
    code, text = dependencies.readiness(clock.now)
    assert code == 503 and text.startswith("broker unreachable: Redis at redis://127.0.0.1:1/0 does not answer")
    dependencies.running = ("store", clock.now)  # a store call that never returns
    clock.now += CHECK_DEADLINE_S + 1
    code, text = dependencies.readiness(clock.now)
    assert code == 503 and text.startswith("store unreachable: its check has not ended for 11s")


def test_ready_needs_celery_ready_a_connected_consumer_and_passing_checks(redis_url):
    clock = Clock()
    heartbeat = Heartbeat(queue="q")
    dependencies = Dependencies(redis_url, None, clock=clock)
    server = HealthServer(0, heartbeat, dependencies, bind="127.0.0.1", clock=clock)
    try:
        assert loopback_get(server.port, "/livez")[0] == 503 and loopback_get(server.port, "/readyz")[0] == 503
        heartbeat.beat(clock.now, consuming=True)
        dependencies.check_once()
        assert loopback_get(server.port, "/livez")[0] == 200
        assert loopback_get(server.port, "/readyz") == (503, "starting: Celery is not ready yet\n")
        server.ready.set()
        assert loopback_get(server.port, "/readyz")[0] == 200
        heartbeat.pause(clock.now)  # the broker connection lost: alive, not ready
        assert loopback_get(server.port, "/livez")[0] == 200 and loopback_get(server.port, "/readyz")[0] == 503
        assert loopback_get(server.port, "/metrics")[0] == 404
    finally:
        server.close()
