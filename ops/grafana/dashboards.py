"""The two Grafana dashboards of a rotation, as code: ``python ops/grafana/dashboards.py``.

Writes ``ops/grafana/dashboards/*.json`` (committed; Grafana provisions them from there).
Built with Grafana's own ``grafana-foundation-sdk`` (typed builders generated from Grafana's
schemas, pinned in pyproject's test extra): panels are short, uniform, and reviewed as Python,
not as 2,000 lines of JSON. ``tests/e2e/test_ops.py`` regenerates them and fails on drift, and lints
every query against the metric names the code exports.

- Rotation overview (uid ``reencrypt-rotation``): one sweep, from the exporter's durable
  totals: status, progress, ETA, throughput, fields moved, failures, conflicts, slices,
  throttling and budgets.
- Fleet view (uid ``reencrypt-fleet``): the workers' own metrics: per-worker rates, batch
  latency and outcomes, Key Vault latency and errors, DEK cache hit ratio, queue depth.

Panel titles are what the runbook (ops/runbooks/MEK_ROTATION.md) tells an operator to watch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, gauge, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
SWEEP = 'sweep=~"$sweep"'
WORKER = 'instance=~"$instance"'
# Each store's tasks have a queue of their own, reencrypt-<store fingerprint> ('reencrypt queue').
QUEUED = 'sum(reencrypt_queue_messages{queue=~"reencrypt-.*"})'


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    return q.legend_format(legend) if legend else q


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def stat_panel(
    title: str,
    expr: str,
    *,
    unit: str = "short",
    legend: str = "",
    description: str = "",
    text_mode: common.BigValueTextMode = common.BigValueTextMode.VALUE,
    steps: tuple = ((None, "green"),),
    span: int = 4,
    decimals: int | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend))
        .unit(unit)
        .span(span)
        .height(4)
        .text_mode(text_mode)
        .graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .thresholds(thresholds(*steps))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if description:
        panel = panel.description(description)
    return panel.decimals(decimals) if decimals is not None else panel


def series_panel(
    title: str,
    *targets: tuple[str, str],
    unit: str = "short",
    description: str = "",
    span: int = 12,
    height: int = 8,
    stack: bool = False,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
        .fill_opacity(10)
        .line_width(1)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
    )
    for index, (expr, legend) in enumerate(targets):
        panel = panel.with_target(query(expr, legend, chr(ord("A") + index)))
    if description:
        panel = panel.description(description)
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def label_variable(name: str, label: str, metric: str, *, include_all: bool) -> dashboard.QueryVariable:
    variable = (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query({"query": f"label_values({metric}, {name})", "refId": "vars"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_DESC)
    )
    return variable.include_all(True).all_value(".*").multi(True) if include_all else variable


def reencrypt_dashboard(
    title: str, uid: str, description: str, *, since: str, variable: dashboard.QueryVariable
) -> dashboard.Dashboard:
    """What both dashboards share: tags, refresh, time zone, cursor sync, the data source and one label variable."""
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["reencrypt", "mek-rotation"])
        .refresh("10s")
        .time(since, "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
        .with_variable(datasource_variable())
        .with_variable(variable)
    )


def rotation_overview() -> dashboard.Dashboard:
    return (
        reencrypt_dashboard(
            "Re-encryption: rotation overview",
            "reencrypt-rotation",
            "One MEK rotation sweep from the durable sweep state (reencrypt exporter): never resets with workers.",
            since="now-6h",
            variable=label_variable("sweep", "Sweep", "reencrypt_sweep_info", include_all=False),
        )
        .with_row(dashboard.Row("Sweep"))
        .with_panel(
            stat_panel(
                "Status",
                f"reencrypt_sweep_status{{{SWEEP}}} == 1",
                legend="{{status}}",
                text_mode=common.BigValueTextMode.NAME,
                span=4,
                description="planned, running, paused, cancelling, cancelled, completed or failed",
            )
        )
        .with_panel(
            stat_panel(
                "Target key",
                f"reencrypt_sweep_info{{{SWEEP}}}",
                legend="{{target_kid}} ({{mode}})",
                text_mode=common.BigValueTextMode.NAME,
                span=8,
            )
        )
        .with_panel(
            gauge.Panel()
            .title("Progress")
            .datasource(DATASOURCE)
            .span(4)
            .height(4)
            .unit("percentunit")
            .min(0)
            .max(1)
            .with_target(query(f"reencrypt_sweep_progress_ratio{{{SWEEP}}}"))
            .thresholds(thresholds((None, "blue"), (1, "green")))
        )
        .with_panel(
            stat_panel(
                "ETA",
                f"reencrypt_sweep_eta_seconds{{{SWEEP}}}",
                unit="s",
                span=4,
                description="Documents left over the current throughput; empty unless running",
            )
        )
        .with_panel(
            stat_panel(
                "Throughput",
                f"reencrypt_sweep_documents_per_second{{{SWEEP}}}",
                unit="short",
                span=4,
                description="Documents scanned per second (exporter, between its last two reads)",
                decimals=1,
            )
        )
        .with_panel(stat_panel("Documents scanned", f"reencrypt_sweep_documents_scanned_total{{{SWEEP}}}", span=4))
        .with_panel(
            stat_panel(
                "Documents estimate",
                f"reencrypt_sweep_documents_estimate{{{SWEEP}}}",
                span=4,
                description="Documents in the container when the sweep started",
            )
        )
        .with_panel(stat_panel("Fields moved", f"reencrypt_sweep_fields_reencrypted_total{{{SWEEP}}}", span=4))
        .with_panel(
            stat_panel(
                "Failures",
                f"reencrypt_sweep_failures_total{{{SWEEP}}}",
                span=4,
                steps=((None, "green"), (1, "red")),
                description="Fields that could not be moved: 'reencrypt sweep failures ID --format csv'",
            )
        )
        .with_panel(
            stat_panel(
                "Conflicts",
                f"reencrypt_sweep_conflicts_total{{{SWEEP}}}",
                span=4,
                description="Writes lost to the live tracker, then redone",
            )
        )
        .with_panel(
            stat_panel(
                "Active workers",
                f"reencrypt_sweep_workers_active{{{SWEEP}}}",
                span=4,
                steps=((None, "red"), (1, "green")),
                description="Worker processes holding a live slice lease",
            )
        )
        .with_panel(stat_panel("Slices done", f"reencrypt_sweep_slices_done{{{SWEEP}}}", span=8))
        .with_panel(
            stat_panel(
                "Queue depth",
                QUEUED,
                span=8,
                description="Task messages waiting in Redis (KEDA scales the workers on this)",
            )
        )
        .with_panel(
            stat_panel(
                "Paused by error",
                f"reencrypt_sweep_paused_by_error{{{SWEEP}}}",
                span=8,
                steps=((None, "green"), (1, "red")),
                description="1: the fleet paused the sweep on a problem only a person can fix: "
                "'reencrypt sweep status ID' says why, "
                "'reencrypt sweep resume ID' once fixed",
            )
        )
        .with_row(dashboard.Row("Over time"))
        .with_panel(
            series_panel(
                "Throughput (documents/s)",
                (f"rate(reencrypt_sweep_documents_scanned_total{{{SWEEP}}}[{RATE}])", "scanned"),
                (f"rate(reencrypt_sweep_documents_written_total{{{SWEEP}}}[{RATE}])", "written"),
                (f'reencrypt_sweep_limit_per_second{{{SWEEP},limit="documents"}}', "limit (--rate)"),
            )
        )
        .with_panel(
            series_panel(
                "Progress",
                (f"reencrypt_sweep_documents_scanned_total{{{SWEEP}}}", "scanned"),
                (f"reencrypt_sweep_documents_estimate{{{SWEEP}}}", "estimate"),
                (f"reencrypt_sweep_fields_reencrypted_total{{{SWEEP}}}", "fields moved"),
            )
        )
        .with_panel(
            series_panel(
                "Failures and conflicts",
                (f"increase(reencrypt_sweep_failures_total{{{SWEEP}}}[{RATE}])", "failed fields"),
                (f"increase(reencrypt_sweep_conflicts_total{{{SWEEP}}}[{RATE}])", "conflicts"),
                description="Per interval, from the durable totals",
            )
        )
        .with_panel(
            series_panel(
                "Failures by reason",
                (f"sum by (reason) (increase(reencrypt_failures_total[{RATE}]))", "{{reason}}"),
                description="From the workers (reasons are a fixed set)",
                stack=True,
            )
        )
        .with_panel(
            series_panel(
                "Store throttles",
                (f"sum(rate(reencrypt_store_throttles_total[{RATE}]))", "429/s"),
                unit="short",
                description="Cosmos DB 429s, retried by the SDK; sustained: lower --ru-per-s",
            )
        )
        .with_panel(
            series_panel(
                "Request units/s",
                (f"sum(rate(reencrypt_store_request_units_total[{RATE}]))", "RU/s"),
                (f'reencrypt_sweep_limit_per_second{{{SWEEP},limit="request_units"}}', "budget (--ru-per-s)"),
            )
        )
        .with_panel(
            series_panel(
                "Rate-limit waits",
                (f"sum by (limit) (rate(reencrypt_ratelimit_wait_seconds_total[{RATE}]))", "{{limit}}"),
                unit="s",
                description="Seconds per second the fleet waited on its budgets (documents, kv_ops, request_units)",
            )
        )
        .with_panel(
            series_panel(
                "Active workers and queue",
                (f"reencrypt_sweep_workers_active{{{SWEEP}}}", "lease holders"),
                (QUEUED, "queued"),
                ("reencrypt_queue_unacked_messages", "in flight"),
            )
        )
        .with_row(dashboard.Row("Slices"))
        .with_panel(
            bargauge.Panel()
            .title("Slice progress")
            .datasource(DATASOURCE)
            .span(24)
            .height(8)
            .description("Documents scanned per slice (feed range); the last to finish set the end")
            .with_target(query(f"reencrypt_sweep_slice_documents_scanned_total{{{SWEEP}}}", "slice {{slice}}"))
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .orientation(common.VizOrientation.VERTICAL)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    )


def fleet_view() -> dashboard.Dashboard:
    return (
        reencrypt_dashboard(
            "Re-encryption: fleet view",
            "reencrypt-fleet",
            "The worker fleet's own metrics (worker/metrics.py): one series set per worker container.",
            since="now-1h",
            variable=label_variable("instance", "Worker", "reencrypt_batches_total", include_all=True),
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
                (f"sum by (instance) (rate(reencrypt_documents_scanned_total{{{WORKER}}}[{RATE}]))", "{{instance}}"),
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
                    f"sum by (instance, limit) (rate(reencrypt_ratelimit_wait_seconds_total{{{WORKER}}}[{RATE}]))",
                    "{{instance}} {{limit}}",
                ),
                unit="s",
            )
        )
        .with_row(dashboard.Row("Store and queue"))
        .with_panel(
            series_panel(
                "Request units/s per worker",
                (f"sum by (instance) (rate(reencrypt_store_request_units_total{{{WORKER}}}[{RATE}]))", "{{instance}}"),
                stack=True,
            )
        )
        .with_panel(
            series_panel(
                "Store throttles per worker",
                (f"sum by (instance) (rate(reencrypt_store_throttles_total{{{WORKER}}}[{RATE}]))", "{{instance}}"),
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


DASHBOARDS = {"reencrypt-rotation.json": rotation_overview, "reencrypt-fleet.json": fleet_view}


def render(build) -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (out / name).write_text(render(build))
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
