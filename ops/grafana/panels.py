"""The builders both dashboards share, over Grafana's ``grafana-foundation-sdk``.

A panel is one call (title, query, unit): :func:`stat_panel` for a single number,
:func:`series_panel` for lines over time; :func:`reencrypt_dashboard` holds the settings common
to both dashboards (tags, refresh, time zone, cursor sync, the ``Prometheus`` data source
variable and one label variable). The dashboards themselves: ``rotation.py`` and ``fleet.py``;
``dashboards.py`` writes them.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
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
