"""REENCRYPT_LOG_FORMAT=json as Container Insights reads it: a real worker's whole log, Celery's
own lines included, is one JSON object per line; the CLI's and the exporter's log lines too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, free_port, loopback_get, run_cli, wait_for


def test_a_json_worker_writes_only_json_lines_celery_s_own_included(fleet, rotation):
    port = free_port()
    (worker,) = fleet.start(REENCRYPT_LOG_FORMAT="json", REENCRYPT_HEALTH_PORT=str(port))
    wait_for(lambda: loopback_get(port, "/readyz")[0] == 200, 30, message="the worker ready")
    done = run_cli("sweep", "start", "--to", "current", "--wait", env=rotation.env())
    assert done.returncode == 0, done.stderr
    os.killpg(worker.pid, signal.SIGTERM)  # the warm shutdown's notice is written too
    worker.wait(20)

    lines = fleet.logs().splitlines()
    entries = []
    for line in lines:
        assert line.startswith("{"), f"not a JSON line: {line!r}"
        entries.append(json.loads(line))
    assert all({"time", "level", "logger", "process", "message"} <= set(entry) for entry in entries)
    messages = {(entry["logger"], entry["message"]) for entry in entries}
    assert any(logger == "celery.apps.worker" and text.endswith(" ready.") for logger, text in messages)
    assert any(logger == "celery.worker.consumer.connection" and "Connected to" in text for logger, text in messages)
    assert ("celery.apps.worker", "worker: Warm shutdown (MainProcess)") in messages
    batches = [e for e in entries if e["logger"] == "reencrypt.worker" and e["message"].startswith("slice ")]
    assert batches and all(isinstance(e["slice"], int) and e["sweep"] and e["task_id"] for e in batches)
    assert batches[0]["message"].startswith(f"slice {batches[0]['sweep']}/{batches[0]['slice']}: ")
    received = [e for e in entries if e["logger"] == "celery.worker.strategy"]
    assert received and all(e["task_name"] == "reencrypt.process_slice" for e in received)
    assert not any("Traceback" in line for line in lines)


def test_an_invalid_log_format_stops_the_worker_in_one_line(rotation):
    from coordinator.launch import WorkerOptions, worker_argv

    started = subprocess.run(
        worker_argv(rotation.queue(), WorkerOptions()),
        cwd=ROOT,
        env=rotation.env(REENCRYPT_LOG_FORMAT="yaml"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert "error: worker not started: REENCRYPT_LOG_FORMAT='yaml' is not a log format" in started.stderr


def test_the_cli_and_the_exporter_log_json_lines_and_refuse_an_unknown_format(rotation):
    refused = run_cli("queue", env=rotation.env(REENCRYPT_LOG_FORMAT="yaml"))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: REENCRYPT_LOG_FORMAT='yaml' is not a log format: use text (the default) or json"
    )

    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "exporter", "--port", str(port), "--interval", "0.5"],
        cwd=ROOT,
        env=rotation.env(REENCRYPT_LOG_FORMAT="json", REDIS_URL="redis://127.0.0.1:1/0"),  # a broker that is down
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: loopback_get(port, "/metrics")[0] == 200, 30, message="the exporter serving")
        time.sleep(1)  # a few refreshes, each failing to read the queue length
    finally:
        exporter.send_signal(signal.SIGTERM)
        _, stderr = exporter.communicate(timeout=20)
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (warning,) = [r for r in records if r["logger"] == "reencrypt.exporter"]
    assert warning["level"] == "WARNING" and warning["message"].startswith("reading the redis failed (ConnectionError")
