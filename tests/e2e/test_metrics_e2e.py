"""End to end: a real Prometheus scrapes a prefork worker (2 pool children) and the exporter
during a real sweep, and the totals it stores match what the sweep did.

Needs /usr/bin/prometheus (Debian package ``prometheus``): skipped with the reason when it is
missing on a developer's machine, a failure under CI=true (scripts/test.sh installs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import multiprocess
from prometheus_client.registry import CollectorRegistry

from conftest import ROOT, free_port, require_tool, run_cli, wait_for

pytestmark = pytest.mark.slow


def http_get(url: str, timeout: float = 3.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def answers(url: str) -> bool:
    try:
        http_get(url, 1.0)
        return True
    except (urllib.error.URLError, OSError):
        return False


class Prometheus:
    """A real Prometheus server on loopback with its TSDB in a temporary directory."""

    def __init__(self, binary: str, home: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            for job, target in targets.items()
        )
        config = home / "prometheus.yml"
        # The project's alert rules load too: a rule Prometheus rejects fails this test.
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {ROOT / 'ops' / 'prometheus' / 'alerts.yml'}\n"
            f"scrape_configs:\n{jobs}"
        )
        self.log = home / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={home / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited {self.process.returncode}:\n{self.log.read_text()}")
        return answers(f"{self.url}/-/ready")

    def query(self, expr: str) -> list[tuple[dict, float]]:
        body = json.loads(http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert body["status"] == "success", body
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return result[0][1] if len(result) == 1 else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def scanned_per_process(multiproc_dir: Path, scratch: Path) -> dict[int, float]:
    """reencrypt_documents_scanned_total of each process that wrote samples, read from its own
    file with the library's own reader (one process's files alone in a directory)."""
    per_pid = {}
    for db in multiproc_dir.glob("counter_*.db"):
        pid = int(db.stem.split("_")[1])
        alone = scratch / str(pid)
        alone.mkdir(parents=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))
        per_pid[pid] = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "reencrypt_documents_scanned_total"
        )
    return per_pid


def test_prometheus_scrapes_prefork_workers_and_exporter_during_a_sweep(rotation, fleet, tmp_path):
    prometheus_binary = require_tool("prometheus")
    started = time.monotonic()
    worker_port, exporter_port = free_port(), free_port()
    fleet.start(count=1, concurrency=2, REENCRYPT_METRICS_PORT=str(worker_port))
    env = rotation.env()
    exporter_log = open(tmp_path / "exporter.log", "wb")
    exporter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "exporter",
            "--port",
            str(exporter_port),
            "--bind",
            "127.0.0.1",
            "--interval",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=exporter_log,
        stderr=subprocess.STDOUT,
    )
    exporter_log.close()
    (tmp_path / "prom").mkdir()
    prom = Prometheus(
        prometheus_binary,
        tmp_path / "prom",
        {"reencrypt-worker": f"127.0.0.1:{worker_port}", "reencrypt-exporter": f"127.0.0.1:{exporter_port}"},
    )
    try:
        wait_for(prom.ready, 30, message="prometheus ready")
        wait_for(lambda: answers(f"http://127.0.0.1:{worker_port}/metrics"), 30, message="worker metrics port")
        wait_for(lambda: answers(f"http://127.0.0.1:{exporter_port}/metrics"), 30, message="exporter metrics port")
        # Metrics on /metrics only; /healthz says the sweep state is read (Kubernetes' probe).
        assert http_get(f"http://127.0.0.1:{exporter_port}/healthz").startswith(b"ok: sweep state read")
        with pytest.raises(urllib.error.HTTPError) as elsewhere:
            http_get(f"http://127.0.0.1:{exporter_port}/")
        assert elsewhere.value.code == 404
        wait_for(lambda: prom.value("sum(up)") == 2, 20, message="both targets up in prometheus")

        sweep = run_cli("sweep", "start", "--to", rotation.v2, "--wait", "--json", env=env, timeout=60)
        assert sweep.returncode == 0, sweep.stderr + fleet.logs()
        result = json.loads(sweep.stdout)
        totals, sweep_id = result["totals"], result["sweep"]["id"]
        assert totals["documents_scanned"] == rotation.documents
        assert totals["fields_reencrypted"] > 0

        # The worker's counters, summed over both pool children, reach the sweep's totals.
        wait_for(
            lambda: prom.value("sum(reencrypt_documents_scanned_total)") == rotation.documents,
            20,
            message=f"sum(reencrypt_documents_scanned_total) == {rotation.documents}",
        )
        assert prom.value("sum(reencrypt_fields_reencrypted_total)") == totals["fields_reencrypted"]
        assert prom.value("sum(reencrypt_documents_written_total)") == totals["documents_written"]
        assert {labels["result"] for labels, _ in prom.query("reencrypt_dek_cache_total")} == {"hit", "miss"}
        assert prom.value("sum(reencrypt_batch_duration_seconds_count)") > 0
        assert prom.value('sum(reencrypt_batches_total{outcome="committed"})') > 0
        assert prom.query("reencrypt_keyvault_latency_seconds_bucket"), "key provider latency histogram missing"

        # Both pool children did work, and each one's samples are in the sum (no undercount).
        per_pid = scanned_per_process(fleet.log_dir / "metrics-0", tmp_path / "per-pid")
        working = {pid: value for pid, value in per_pid.items() if value > 0}
        assert len(working) >= 2, f"expected both pool children to scan documents: {per_pid}"
        assert sum(working.values()) == rotation.documents

        # The exporter's durable totals match too, and the sweep shows as completed.
        sel = f'{{sweep="{sweep_id}"}}'
        wait_for(
            lambda: prom.value(f'reencrypt_sweep_status{{sweep="{sweep_id}",status="completed"}}') == 1,
            20,
            message="exporter: sweep completed",
        )
        assert prom.value(f"reencrypt_sweep_documents_scanned_total{sel}") == rotation.documents
        assert prom.value(f"reencrypt_sweep_fields_reencrypted_total{sel}") == totals["fields_reencrypted"]
        assert prom.value(f"reencrypt_sweep_failures_total{sel}") == 0
        assert prom.value(f"sum(reencrypt_sweep_slice_documents_scanned_total{sel})") == rotation.documents
        assert prom.value(f"reencrypt_sweep_slices_done{sel}") == result["sweep"]["slice_count"]
        assert prom.value(f"reencrypt_sweep_progress_ratio{sel}") == 1
        assert prom.value(f"min(reencrypt_sweep_slice_progress_ratio{sel})") == 1
        # Its events, for the dashboards' annotations: started, then completed, at their own times.
        started_at = prom.value(f'reencrypt_sweep_event_timestamp_seconds{{sweep="{sweep_id}",event="started"}}')
        completed_at = prom.value(f'reencrypt_sweep_event_timestamp_seconds{{sweep="{sweep_id}",event="completed"}}')
        assert started_at is not None and completed_at is not None and started_at <= completed_at + 1
        assert prom.value(f"reencrypt_sweep_documents_estimate{sel}") == rotation.documents
        assert prom.value(f'reencrypt_sweep_info{{sweep="{sweep_id}",target_kid="{rotation.v2}"}}') == 1
        # The store's own queue, empty once the sweep completed; no error left on the sweep.
        assert prom.query("reencrypt_queue_messages") == [
            (
                {
                    "__name__": "reencrypt_queue_messages",
                    "job": "reencrypt-exporter",
                    "instance": f"127.0.0.1:{exporter_port}",
                    "queue": rotation.queue(),
                },
                0.0,
            )
        ]
        assert prom.value("reencrypt_queue_unacked_messages") == 0
        assert prom.value(f"reencrypt_sweep_paused_by_error{sel}") == 0
        assert prom.value(f"reencrypt_sweep_last_error{sel}") == 0
        assert prom.value("reencrypt_exporter_store_up") == 1 and prom.value("reencrypt_exporter_redis_up") == 1

        # The alert rules loaded and none fires after a clean sweep.
        rules = json.loads(http_get(f"{prom.url}/api/v1/rules"))["data"]["groups"]
        assert sum(len(group["rules"]) for group in rules) >= 5
        firing = [
            a for a in json.loads(http_get(f"{prom.url}/api/v1/alerts"))["data"]["alerts"] if a["state"] == "firing"
        ]
        assert not firing, firing
        assert time.monotonic() - started < 90
    finally:
        prom.stop()
        exporter.terminate()
        exporter.wait(10)
    assert exporter.returncode == 0, (tmp_path / "exporter.log").read_text()
