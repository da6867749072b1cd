"""The builders both dashboards share, over Grafana's ``grafana-foundation-sdk``.

A panel is one call (title, query, unit): :func:`stat_panel` for a single number,
:func:`series_panel` for lines over time; :func:`reencrypt_dashboard` holds the settings common
to both dashboards (tags, refresh, time zone, cursor sync, the ``Prometheus`` data source
variable, one label variable, the links to each other and to the runbook, and the sweep events
as annotations). The dashboards themselves: ``rotation.py`` and ``fleet.py``; ``dashboards.py``
writes them.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
#: The window of the throughput and ETA stats: the CLI's and the exporter's one minute
#: (coordinator/throughput.py), four scrapes at the 15 s interval ops/ configures.
WINDOW = "1m"
#: The runbook, as the alerts' runbook_url names it (ops/prometheus/alerts.yml, same base).
RUNBOOK_URL = "https://github.com/tracker/tracker-reencrypt/blob/main/ops/runbooks/MEK_ROTATION.md"
#: Both dashboards carry this tag: each links to the others by it.
TAG = "reencrypt"
# Each store's tasks have a queue of their own, reencrypt-<store fingerprint> ('reencrypt queue').
QUEUED = 'sum(reencrypt_queue_messages{queue=~"reencrypt-.*"})'


def query(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if instant:
        q = q.instant()
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
    now: bool = False,
) -> stat.Panel:
    """A single number. ``now``: the value at the end of the time range (an instant query), not
    the last one seen in it: a state that ended (a status, an ETA) must not linger."""
    panel = (
        stat.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend, instant=now))
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


class PrometheusAnnotation(models.AnnotationQuery):
    """An annotation query on the Prometheus data source. The SDK's AnnotationQuery (Grafana 11.6)
    stops at ``expr``: the Prometheus data source's own fields (title, text, tags, step, series
    value as timestamp) are added here, under the names Grafana's annotation editor writes."""

    def __init__(self, name: str, expr: str, *, title: str, text: str, tags: str, color: str, step: str) -> None:
        super().__init__(name=name, datasource=DATASOURCE, enable=True, hide=False, icon_color=color, expr=expr)
        self.fields = {
            "titleFormat": title,
            "textFormat": text,
            "tagKeys": tags,
            "step": step,
            "useValueForTime": True,
        }

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), **self.fields}


class Built(Builder[models.AnnotationQuery]):
    """A ready-made model where the SDK takes a builder."""

    def __init__(self, model: models.AnnotationQuery) -> None:
        self.model = model

    def build(self) -> models.AnnotationQuery:
        return self.model


def sweep_events(selector: str = "") -> Built:
    """The sweep events the exporter records (reencrypt_sweep_event_timestamp_seconds: started,
    paused, paused_by_error, resumed, throttled, cancelling, cancelled, completed, failed) as
    annotations, each at the time it happened: the series' value, in milliseconds, is the
    timestamp ("Series value as timestamp"), so an event is drawn once, where it happened, for
    as long as the exporter exports its sweep."""
    matcher = f"{{{selector}}}" if selector else ""
    return Built(
        PrometheusAnnotation(
            "Sweep events",
            f"reencrypt_sweep_event_timestamp_seconds{matcher} * 1000",
            title="sweep {{event}}",
            text="{{sweep}}",
            tags="event,sweep",
            color="purple",
            step="1m",
        )
    )


def links() -> list[Builder[models.DashboardLink]]:
    """The other rotation dashboards (by their shared tag, keeping the time range) and the runbook."""
    return [
        dashboard.DashboardLink("Re-encryption dashboards")
        .type(DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(False)
        .keep_time(True)
        .include_vars(False)
        .target_blank(False),
        dashboard.DashboardLink("Runbook")
        .type(DashboardLinkType.LINK)
        .url(RUNBOOK_URL)
        .icon("doc")
        .tooltip("MEK rotation runbook: what to watch at each step, what to do when an alert fires")
        .target_blank(True),
    ]


def reencrypt_dashboard(
    title: str, uid: str, description: str, *, since: str, variable: dashboard.QueryVariable, events: Built
) -> dashboard.Dashboard:
    """What both dashboards share: tags, refresh, time zone, cursor sync, the data source, one label
    variable, the links, and the sweep events as annotations."""
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG, "mek-rotation"])
        .refresh("10s")
        .time(since, "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .editable()
        .links(links())
        .annotation(events)
        .with_variable(datasource_variable())
        .with_variable(variable)
    )
