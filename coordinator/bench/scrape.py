"""What the bench reads from outside its own process: the workers' Prometheus metrics, and the
memory and CPU time of processes (psutil)."""

from __future__ import annotations

import time
import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families

MB = 1024 * 1024
#: How long to wait for the workers' metrics to account for every document of a finished sweep.
METRICS_SETTLE_S = 5.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and wanted <= set(sample_labels)
    )


def scrape_settled(ports: list[int], documents: int) -> list[Samples]:
    """Every worker's metrics, once they account for every document the sweep counted.

    A worker publishes its keyring totals just after committing its last batch, which can
    be a moment after another worker marked the sweep completed.
    """
    deadline = time.monotonic() + METRICS_SETTLE_S
    while True:
        scraped = [scrape(port) for port in ports]
        seen = sum(metric(samples, "reencrypt_documents_scanned_total") for samples in scraped)
        if seen >= documents or time.monotonic() > deadline:
            return scraped
        time.sleep(0.1)


def tree_rss_mb(pid: int) -> float:
    """RSS of a worker's main process and its pool children, in MiB (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass  # it exited between the listing and the reading: it holds nothing now
    return total / MB


def cpu_seconds(process: psutil.Process, tree: bool) -> float:
    """User + system CPU seconds of a process (and its children), 0 for what is gone."""
    total = 0.0
    try:
        processes = [process, *(process.children(recursive=True) if tree else [])]
    except psutil.Error:
        return total
    for member in processes:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass  # it exited between the listing and the reading
    return total


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (idle and I/O wait left out)."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
