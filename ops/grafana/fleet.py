"""Fleet view (uid ``reencrypt-fleet``): the workers' own metrics (worker/metrics.py).

Per-worker rates, batch latency and outcomes, Key Vault latency and errors, DEK cache hit ratio,
budgets and rate-limit waits, queue depth; the ``pod`` variable picks workers, and per-worker
panels are keyed by ``pod``: the pod's name in Kubernetes (the PodMonitor's relabeling), the
worker's host or container address elsewhere (ops/prometheus/prometheus.yml). A pod keeps its
name across its IP changes; an address is what compose can offer. Written by ``dashboards.py``.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from panels import QUEUED, RATE, label_variable, reencrypt_dashboard, series_panel, stat_panel, sweep_events

WORKER = 'pod=~"$pod"'


def fleet_view() -> dashboard.Dashboard:
    return (
        reencrypt_dashboard(
            "Re-encryption: fleet view",
            "reencrypt-fleet",
            "The worker fleet's own metrics (worker/metrics.py): one series set per worker container.",
            since="now-1h",
            variable=label_variable("pod", "Worker pod", "reencrypt_batches_total", include_all=True),
            events=sweep_events(),
        )
        .with_row(dashboard.Row("Workers"))
        .with_panel(
            stat_panel("Workers up", 'sum(up{job="reencrypt-worker"})', span=6, steps=((None, "red"), (1, "green")))
        )
        .with_panel(stat_panel("Queue depth", QUEUED, span=6))
        .with_panel(
            stat_panel(
                "Documents/s (fleet)", f"sum(rate(reencrypt_documents_scanned_total[{RATE}]))", span=6, decimals=1
            )
        )
        .with_panel(
            stat_panel(
                "DEK cache hit ratio",
                f'sum(rate(reencrypt_dek_cache_total{{result="hit"}}[{RATE}]))'
                f" / sum(rate(reencrypt_dek_cache_total[{RATE}]))",
                unit="percentunit",
                span=6,
                steps=((None, "orange"), (0.5, "green")),
            )
        )
        .with_panel(
            series_panel(
                "Documents/s per worker",
                (f"sum by (pod) (rate(reencrypt_documents_scanned_total{{{WORKER}}}[{RATE}]))", "{{pod}}"),
                stack=True,
            )
        )
        .with_panel(
            series_panel(
                "Fields moved/s by kind",
                (
                    f"sum by (kind, mode) (rate(reencrypt_fields_reencrypted_total{{{WORKER}}}[{RATE}]))",
                    "{{kind}} ({{mode}})",
                ),
                stack=True,
            )
        )
        .with_row(dashboard.Row("Batches"))
        .with_panel(
            series_panel(
                "Batch latency",
                *(
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(reencrypt_batch_duration_seconds_bucket{{{WORKER}}}[{RATE}])))",
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ),
                unit="s",
                description="Wall time of one slice batch (bounded by REENCRYPT_BATCH_SECONDS)",
            )
        )
        .with_panel(
            series_panel(
                "Batches by outcome",
                (f"sum by (outcome) (rate(reencrypt_batches_total{{{WORKER}}}[{RATE}]))", "{{outcome}}"),
                description="committed, error (vault or store outage, retried), lease_lost",
                stack=True,
            )
        )
        .with_row(dashboard.Row("Key Vault"))
        .with_panel(
            series_panel(
                "Key Vault latency",
                *(
                    (
                        f"histogram_quantile({q}, sum by (le, operation) "
                        f"(rate(reencrypt_keyvault_latency_seconds_bucket{{{WORKER}}}[{RATE}])))",
                        f"{{{{operation}}}} p{round(q * 100)}",
                    )
                    for q in (0.5, 0.99)
                ),
                unit="s",
            )
        )
        .with_panel(
            series_panel(
                "Key Vault calls by outcome",
                (
                    f"sum by (operation, outcome) (rate(reencrypt_keyvault_calls_total{{{WORKER}}}[{RATE}]))",
                    "{{operation}} {{outcome}}",
                ),
                unit="reqps",
            )
        )
        .with_panel(
            series_panel(
                "DEK cache",
                (f"sum by (result) (rate(reencrypt_dek_cache_total{{{WORKER}}}[{RATE}]))", "{{result}}"),
                description="Unwrap cache lookups: a hit saves one Key Vault call",
                stack=True,
            )
        )
        .with_panel(
            series_panel(
                "Key Vault calls per 1,000 documents",
                (
                    f'1000 * sum(rate(reencrypt_keyvault_calls_total{{operation="unwrap",{WORKER}}}[{RATE}])) '
                    f"/ sum(rate(reencrypt_documents_scanned_total{{{WORKER}}}[{RATE}]))",
                    "unwraps per 1,000 documents",
                ),
                unit="short",
                description="At most the distinct source DEKs among them, per worker process (the DEK cache)",
            )
        )
        .with_panel(
            series_panel(
                "Budget factor (adaptive back-off)",
                (f"min by (resource) (reencrypt_budget_factor{{{WORKER}}})", "{{resource}}"),
                unit="percentunit",
                description="Share of --kv-ops-per-s / --ru-per-s in use: halves on 429s, climbs back slowly",
            )
        )
        .with_panel(
            series_panel(
                "Rate-limit waits per worker",
                (
                    f"sum by (pod, limit) (rate(reencrypt_ratelimit_wait_seconds_total{{{WORKER}}}[{RATE}]))",
                    "{{pod}} {{limit}}",
                ),
                unit="s",
            )
        )
        .with_row(dashboard.Row("Store and queue"))
        .with_panel(
            series_panel(
                "Request units/s per worker",
                (f"sum by (pod) (rate(reencrypt_store_request_units_total{{{WORKER}}}[{RATE}]))", "{{pod}}"),
                stack=True,
            )
        )
        .with_panel(
            series_panel(
                "Store throttles per worker",
                (f"sum by (pod) (rate(reencrypt_store_throttles_total{{{WORKER}}}[{RATE}]))", "{{pod}}"),
            )
        )
        .with_panel(
            series_panel(
                "Queue depth over time",
                (QUEUED, "queued"),
                ("reencrypt_queue_unacked_messages", "in flight"),
                span=24,
            )
        )
    )
