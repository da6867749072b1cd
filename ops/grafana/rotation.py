"""Rotation overview (uid ``reencrypt-rotation``): one sweep, from the exporter's durable totals.

Status, progress, ETA, throughput, fields moved, failures, conflicts, stale writes, products,
slices, throttling and budgets; the ``sweep`` variable picks the sweep, whose events (started,
paused, throttled, cancelled, completed...) are annotations. Throughput and ETA are the CLI's:
documents committed over the last minute (``rate(...[1m])`` of the durable counter). Written by
``dashboards.py``.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, dashboard, gauge
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.models import common
from panels import (
    DATASOURCE,
    QUEUED,
    RATE,
    WINDOW,
    label_variable,
    query,
    reencrypt_dashboard,
    series_panel,
    stat_panel,
    sweep_events,
    thresholds,
)

SWEEP = 'sweep=~"$sweep"'
#: Documents committed per second over the last minute: the CLI's and the exporter's throughput.
THROUGHPUT = f"rate(reencrypt_sweep_documents_scanned_total{{{SWEEP}}}[{WINDOW}])"
#: Documents left over that throughput, while the sweep runs and moves (no ETA when paused or stalled).
ETA = (
    f"clamp_min(reencrypt_sweep_documents_estimate{{{SWEEP}}} - reencrypt_sweep_documents_scanned_total{{{SWEEP}}}, 0)"
    f" / ({THROUGHPUT} > 0)"
    f' and on (sweep) (reencrypt_sweep_status{{{SWEEP},status="running"}} == 1)'
)


def rotation_overview() -> dashboard.Dashboard:
    return (
        reencrypt_dashboard(
            "Re-encryption: rotation overview",
            "reencrypt-rotation",
            "One MEK rotation sweep from the durable sweep state (reencrypt exporter): never resets with workers.",
            since="now-6h",
            variable=label_variable("sweep", "Sweep", "reencrypt_sweep_info", include_all=False),
            events=sweep_events(SWEEP),
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
                now=True,
            )
        )
        .with_panel(
            stat_panel(
                "Target key",
                f"reencrypt_sweep_info{{{SWEEP}}}",
                legend="{{target_kid}} ({{mode}}, products: {{products}})",
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
                ETA,
                unit="s",
                span=4,
                description="Documents left over the throughput of the last minute (as 'reencrypt sweep status' "
                "shows it); empty unless the sweep runs and committed a batch in that minute",
                now=True,
            )
        )
        .with_panel(
            stat_panel(
                "Throughput",
                THROUGHPUT,
                unit="short",
                span=4,
                description="Documents committed per second over the last minute, from the durable count: "
                "what 'reencrypt sweep status --watch' and the exporter's reencrypt_sweep_documents_per_second show",
                decimals=1,
                now=True,
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
        .with_panel(stat_panel("Slices done", f"reencrypt_sweep_slices_done{{{SWEEP}}}", span=6))
        .with_panel(
            stat_panel(
                "Queue depth",
                QUEUED,
                span=6,
                description="Task messages waiting in Redis (KEDA scales the workers on this)",
            )
        )
        .with_panel(
            stat_panel(
                "Paused by error",
                f"reencrypt_sweep_paused_by_error{{{SWEEP}}}",
                span=6,
                steps=((None, "green"), (1, "red")),
                description="1: the fleet paused the sweep on a problem only a person can fix: "
                "'reencrypt sweep status ID' says why, "
                "'reencrypt sweep resume ID' once fixed",
            )
        )
        .with_panel(
            stat_panel(
                "Stale writes",
                f"reencrypt_stale_writes_total{{{SWEEP}}}",
                span=6,
                steps=((None, "green"), (1, "red")),
                description="Documents the tracker wrote after rotation under a retired key version: a tracker "
                "instance still uses the old key id. 'reencrypt sweep status ID' names examples; restart it, "
                "then 'reencrypt stale-writes --wait'",
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
        .with_row(dashboard.Row("Products"))
        .with_panel(
            bar_gauge(
                "Products by state",
                f"reencrypt_sweep_products{{{SWEEP}}}",
                "{{state}}",
                span=8,
                minimum=0,
                description="A sweep scoped with --product: its products done, in progress, pending "
                "(empty for a whole-container sweep); 'reencrypt sweep status ID' lists the unfinished ones",
            )
        )
        .with_panel(
            bar_gauge(
                "Product progress",
                f"reencrypt_sweep_product_documents_scanned_total{{{SWEEP}}}",
                "{{product}}",
                span=16,
                minimum=0,
                description="Documents scanned per product, for a sweep over at most 20 products "
                "(the exporter's MAX_PRODUCT_SERIES; more would be a series per product)",
            )
        )
        .with_row(dashboard.Row("Slices"))
        .with_panel(
            bar_gauge(
                "Slice progress",
                f"reencrypt_sweep_slice_progress_ratio{{{SWEEP}}}",
                "slice {{slice}}",
                span=24,
                description="Each slice (feed range): 100% once scanned to its end, else its documents over the "
                "estimate shared evenly by the slices (at most 99%); the last to finish sets the end",
                orientation=common.VizOrientation.VERTICAL,
                minimum=0,
                maximum=1,
                unit="percentunit",
            )
        )
    )


def bar_gauge(
    title: str,
    expr: str,
    legend: str,
    *,
    span: int,
    description: str,
    orientation: common.VizOrientation = common.VizOrientation.HORIZONTAL,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str | None = None,
) -> bargauge.Panel:
    """One bar per series of ``expr``, at its last value; bars span ``minimum`` to ``maximum`` when
    given (unset, Grafana takes the range from the data)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .span(span)
        .height(8)
        .description(description)
        .with_target(query(expr, legend))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(orientation)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel.unit(unit) if unit is not None else panel
