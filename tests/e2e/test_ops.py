"""The operations files hold together: Prometheus config and alert rules (promtool), dashboards
that query only metrics the code exports, a compose file that scales, Kubernetes manifests
without secrets, a runbook whose every command and panel exists; and the exporter's pure parts.

promtool comes with the Debian package ``prometheus``: missing on a developer's machine the
tests needing it skip and say so; under CI=true they fail (scripts/test.sh installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from conftest import ROOT, require_tool

OPS = ROOT / "ops"
PROMETHEUS_DIR = OPS / "prometheus"
DASHBOARD_DIR = OPS / "grafana" / "dashboards"
K8S_DIR = OPS / "k8s"
RUNBOOK = OPS / "runbooks" / "MEK_ROTATION.md"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# -- what the code exports ----------------------------------------------------------------------


def sample_names(name: str, kind: str) -> set[str]:
    """The series names a metric family of ``kind`` appears under in Prometheus."""
    if kind == "counter":
        return {f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind in ("gauge", "unknown"):
        return {name}
    raise AssertionError(f"metric type {kind} of {name} is not handled by this lint")


def exported_metric_names() -> set[str]:
    """Every series name a worker or the exporter serves, read from the objects themselves."""
    import worker.metrics
    from coordinator.exporter import Snapshot, families

    names = {"up"}  # Prometheus' own, per target
    for value in vars(worker.metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names |= sample_names(family.name, family.type)
    for family in families(Snapshot()):
        names |= sample_names(family.name, family.type)
    return names


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}


def metrics_in(expr: str) -> set[str]:
    """Metric names an expression selects (strings, matchers, ranges, grouping labels and
    function names removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def test_metrics_in_reads_selectors_not_labels_or_functions():
    expr = (
        "histogram_quantile(0.99, sum by (le, operation) (rate(reencrypt_keyvault_latency_seconds_bucket"
        '{instance=~"$instance"}[$__rate_interval]))) > 2.5 and on (sweep) up == 1e-9'
    )
    assert metrics_in(expr) == {"reencrypt_keyvault_latency_seconds_bucket", "up"}


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and query variable."""
    queries = []
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                queries.append((f"{name}: {panel['title']}", target["expr"]))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            if "expr" in annotation:
                queries.append((f"{name}: annotation {annotation['name']}", annotation["expr"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
                metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
                assert metric, f"{name}: variable {variable['name']}: expected label_values(metric, label), got {query}"
                queries.append((f"{name}: variable {variable['name']}", metric.group(1)))
    return queries


def alert_rules() -> list[dict]:
    return [
        rule
        for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]


# -- Prometheus ---------------------------------------------------------------------------------


def test_prometheus_config_is_valid():
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


#: Where the repository's files are read on the web: every runbook_url (and the dashboards' Runbook
#: link) starts with it, so moving the repository is one replacement (ops/prometheus/alerts.yml).
REPOSITORY_WEB = "https://github.com/tracker/tracker-reencrypt/blob/main/"


def runbook_anchors() -> set[str]:
    return {heading_anchor(line) for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}


def test_alerts_use_only_exported_metrics_and_link_the_runbook():
    """Offline: every alert's runbook_url (the annotation Alertmanager and Grafana link) is the
    runbook on the repository's web view, at a section that exists."""
    exported = exported_metric_names()
    anchors = runbook_anchors()
    for rule in alert_rules():
        used = metrics_in(rule["expr"])
        assert used, f"{rule['alert']}: no metric found in {rule['expr']}"
        assert used <= exported, f"{rule['alert']} uses metrics nobody exports: {sorted(used - exported)}"
        annotations = rule["annotations"]
        assert "runbook" not in annotations, f"{rule['alert']}: runbook_url, the name Alertmanager and Grafana know"
        url = annotations["runbook_url"]
        assert url.startswith(REPOSITORY_WEB), url
        page, _, anchor = url.removeprefix(REPOSITORY_WEB).partition("#")
        assert (ROOT / page).resolve() == RUNBOOK.resolve() and anchor in anchors, url
    tested = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    for case in tested:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts", []):
                assert alert["exp_annotations"]["runbook_url"].startswith(REPOSITORY_WEB), check["alertname"]


def test_the_worker_job_labels_each_target_with_a_pod():
    """The Fleet view keys workers by pod: in Kubernetes the PodMonitor's relabeling; under
    compose and on hosts, prometheus.yml's rule gives a target without one its host (RE2 and
    Python agree on this regex: no look-around, anchored as Prometheus anchors it)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "reencrypt-worker")
    (rule,) = [r for r in job["relabel_configs"] if r["target_label"] == "pod"]
    assert rule["source_labels"] == ["pod", "__address__"]

    def pod(labels: dict[str, str]) -> str | None:
        joined = ";".join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule["regex"], joined)
        if not match:
            return labels.get("pod")
        return match.expand(rule["replacement"].replace("$1", r"\1"))

    assert pod({"__address__": "172.18.0.7:9808"}) == "172.18.0.7"  # a compose replica
    assert pod({"__address__": "worker-host-1.internal:9808"}) == "worker-host-1.internal"
    assert pod({"__address__": "[fd00::7]:9808"}) == "[fd00::7]"
    assert pod({"__address__": "10.0.0.1:9808", "pod": "named-by-hand"}) == "named-by-hand"
    monitor = next(doc for doc in by_kind("PodMonitor") if doc["metadata"]["name"] == "reencrypt-worker")
    relabelings = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "pod"} in relabelings


def test_file_sd_example_is_a_target_list():
    targets = yaml.safe_load((PROMETHEUS_DIR / "targets" / "workers.yml.example").read_text())
    assert targets and all(group["targets"] and all(":" in t for t in group["targets"]) for group in targets)


# -- Grafana ------------------------------------------------------------------------------------


def test_dashboards_query_only_exported_metrics():
    exported = exported_metric_names()
    queries = dashboard_queries()
    assert len(queries) > 30
    for where, expr in queries:
        used = metrics_in(expr)
        assert used, f"{where}: no metric in {expr!r}"
        assert used <= exported, f"{where}: {sorted(used - exported)} not exported by worker/metrics.py or the exporter"


def test_dashboard_queries_parse(tmp_path):
    """Each panel query as a recording rule through promtool (Grafana's variables filled in)."""
    rules = []
    for index, (_where, expr) in enumerate(dashboard_queries()):
        filled = expr.replace("$__rate_interval", "5m").replace("$sweep", "x").replace("$pod", "x")
        rules.append({"record": f"dashboard:query:{index}", "expr": filled})
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_match_their_generator(tmp_path, monkeypatch):
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("grafana-foundation-sdk is missing: it is in pyproject's test extra")
        pytest.skip("grafana-foundation-sdk not installed (pip install -e '.[test]'): cannot regenerate the dashboards")
    # dashboards.py imports its siblings (panels, rotation, fleet) by name, as when run as a script.
    monkeypatch.syspath_prepend(str(OPS / "grafana"))
    spec = importlib.util.spec_from_file_location("ops_dashboards", OPS / "grafana" / "dashboards.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.main(tmp_path)
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        assert (tmp_path / path.name).read_text() == path.read_text(), (
            f"{path.name} differs from ops/grafana/dashboards.py (and panels, rotation, fleet): run it, commit the JSON"
        )
    assert {p.name for p in tmp_path.glob("*.json")} == {p.name for p in DASHBOARD_DIR.glob("*.json")}


def dashboard_target(title: str) -> str:
    (panel,) = [p for p in panels(dashboards()["reencrypt-rotation.json"]) if p["title"] == title]
    assert panel["targets"][0].get("instant"), f"{title}: now, not the last value in the range"
    return panel["targets"][0]["expr"].replace("$sweep", "sw-1")


def stepped(increments: list[int], start: int = 0) -> str:
    """promtool's values of a counter growing by ``increments``, one per scrape."""
    values, total = [], start
    for step in increments:
        total += step
        values.append(str(total))
    return " ".join([str(start), *values])


def test_dashboard_throughput_and_eta_hold_while_counts_step(tmp_path):
    """The Rotation overview's Throughput and ETA stats through promtool, on counters that move in
    steps as the exporter's do (scraped every 15 s): about 100 docs/s and an ETA at every instant
    while the sweep runs, never 0 or empty between commits; no ETA once paused or stalled."""
    throughput, eta = dashboard_target("Throughput"), dashboard_target("ETA")
    exporter = 'job="reencrypt-exporter",sweep="sw-1"'
    # 1,000 documents every 10 s seen every 15 s (the issue's --rate 100): +1000, +2000, ...;
    # paused at minute 12 (status), stalled from minute 20 (counter flat).
    uneven = [1000, 2000] * 24
    series = [
        {"series": f"reencrypt_sweep_documents_scanned_total{{{exporter}}}", "values": stepped(uneven + [0] * 40)},
        {"series": f"reencrypt_sweep_documents_estimate{{{exporter}}}", "values": "200000x87"},
        {"series": f'reencrypt_sweep_status{{{exporter},status="running"}}', "values": "1x47 0x12 1x27"},
    ]
    tests = []
    for second in range(60, 720, 15):  # running, moving
        for expr in (f"count(({throughput}) > 80 < 120)", f"count({eta})"):
            tests.append({"expr": expr, "eval_time": f"{second}s", "exp_samples": [{"labels": "{}", "value": 1}]})
    scanned_at_10m = sum(uneven[:40])  # the ETA: documents left over ~100 docs/s, here at 10 minutes
    tests.append(
        {
            "expr": f"count(({eta}) > {(200_000 - scanned_at_10m) / 120} < {(200_000 - scanned_at_10m) / 80})",
            "eval_time": "600s",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
    )
    tests.append({"expr": eta, "eval_time": "750s", "exp_samples": []})  # paused: no ETA
    tests.append({"expr": eta, "eval_time": "1290s", "exp_samples": []})  # running, stalled for over a minute
    tests.append({"expr": f"({throughput}) > 0", "eval_time": "1290s", "exp_samples": []})
    (tmp_path / "none.yml").write_text("groups: []\n")
    case = {"interval": "15s", "input_series": series, "promql_expr_test": tests}
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump({"rule_files": ["none.yml"], "evaluation_interval": "15s", "tests": [case]})
    )
    result = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_link_each_other_and_the_runbook_and_draw_sweep_events():
    boards = dashboards()
    for name, board in boards.items():
        others = [other for other_name, other in boards.items() if other_name != name]
        (by_tag,) = [link for link in board["links"] if link["type"] == "dashboards"]
        assert by_tag["keepTime"] and all(set(by_tag["tags"]) <= set(other["tags"]) for other in others), name
        (runbook,) = [link for link in board["links"] if link["title"] == "Runbook"]
        assert runbook["url"] == REPOSITORY_WEB + "ops/runbooks/MEK_ROTATION.md", name
        (events,) = board["annotations"]["list"]
        assert events["expr"].startswith("reencrypt_sweep_event_timestamp_seconds") and events["expr"].endswith(
            "* 1000"
        ), "the series value is the event's time, in ms"
        assert events["useValueForTime"] and events["datasource"]["uid"] == "${datasource}"
        assert "{{event}}" in events["titleFormat"] and set(events["tagKeys"].split(",")) == {"event", "sweep"}
    rotation = boards["reencrypt-rotation.json"]["annotations"]["list"][0]["expr"]
    assert 'sweep=~"$sweep"' in rotation, "the rotation overview draws its sweep's events"


def test_the_fleet_view_is_keyed_by_pod_and_slice_progress_is_a_ratio():
    fleet = dashboards()["reencrypt-fleet.json"]
    assert [v["name"] for v in fleet["templating"]["list"]] == ["datasource", "pod"]
    for panel in panels(fleet):
        for target in panel.get("targets", []):
            assert "instance" not in target["expr"] + target.get("legendFormat", ""), panel["title"]
    keyed = [p["title"] for p in panels(fleet) if any("by (pod" in t["expr"] for t in p.get("targets", []))]
    assert len(keyed) >= 4, keyed
    (slices,) = [p for p in panels(dashboards()["reencrypt-rotation.json"]) if p["title"] == "Slice progress"]
    assert slices["targets"][0]["expr"].startswith("reencrypt_sweep_slice_progress_ratio")
    defaults = slices["fieldConfig"]["defaults"]
    assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percentunit", 0, 1)


def test_dashboards_are_provisioned_with_their_datasource_variable():
    for name, dashboard in dashboards().items():
        assert dashboard["uid"].startswith("reencrypt-"), name
        assert "datasource" in {v["name"] for v in dashboard["templating"]["list"]}, name
        for panel in panels(dashboard):
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}", f"{name}: {panel['title']}"
    provider = yaml.safe_load((OPS / "grafana" / "provisioning" / "dashboards" / "reencrypt.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/reencrypt"
    datasource = yaml.safe_load((OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"


# -- docker compose -----------------------------------------------------------------------------

CONFIG_VARIABLES = ("REENCRYPT_STORE", "REENCRYPT_KEYS", "REDIS_URL")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_the_services():
    services = compose()["services"]
    assert {"redis", "worker", "exporter", "prometheus", "grafana", "flower"} <= set(services)


def test_compose_worker_scales():
    worker = compose()["services"]["worker"]
    assert "container_name" not in worker, "a container_name breaks 'docker compose up --scale worker=N'"
    for port in worker.get("ports", []):
        published = str(port).rsplit(":", 1)[0] if ":" in str(port) else ""
        assert not published or "-" in published, f"fixed host port {port} breaks --scale"
    assert "9808" in [str(p) for p in worker["expose"]]
    assert worker["command"][worker["command"].index("--metrics-port") + 1] == "9808"
    assert worker.get("stop_grace_period"), "warm shutdown needs time to finish the batch in hand"


def option(args: list[str], name: str) -> str:
    return str(args[args.index(name) + 1])


def probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_compose_worker_healthcheck_follows_the_worker_readiness(redis_url):
    """The healthcheck command, run as Docker runs it (the image has Python, not curl), against a
    real health server on the port the worker's command opens: unhealthy while starting."""
    from worker.health import Dependencies, HealthServer, Heartbeat

    worker = compose()["services"]["worker"]
    port = int(option(worker["command"], "--health-port"))
    check = worker["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"], "python:3.11-slim has no curl: the check runs Python's urllib"
    assert f"127.0.0.1:{port}/readyz" in check[3], check
    assert "curl" not in (ROOT / "Dockerfile").read_text()
    heartbeat, dependencies = Heartbeat(queue="q"), Dependencies(redis_url, None)
    health = HealthServer(0, heartbeat, dependencies, bind="127.0.0.1")
    try:
        script = check[3].replace(f":{port}/", f":{health.port}/")
        starting = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
        assert starting.returncode != 0 and "503" in starting.stderr, "healthy before Celery is ready"
        heartbeat.beat(time.monotonic(), consuming=True)  # as the worker's event loop does
        dependencies.check_once()
        health.ready.set()
        ready = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
        assert ready.returncode == 0, ready.stderr
    finally:
        health.close()


def test_compose_is_configured_by_environment_only():
    services = compose()["services"]
    for name in ("worker", "exporter", "cli"):
        service = services[name]
        for variable in CONFIG_VARIABLES:
            assert str(service["environment"][variable]).startswith("${"), (
                f"{name}: {variable} must come from the environment"
            )
        command = " ".join(service.get("command", []))
        assert not re.search(r"--(store|keys|redis-url)\b", command), f"{name}: configuration by flag in {command}"


def test_compose_mounts_exist_and_prometheus_finds_every_worker():
    services = compose()["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["reencrypt-worker"]["dns_sd_configs"][0]["names"] == ["worker"]
    assert jobs["reencrypt-worker"]["file_sd_configs"]
    assert jobs["reencrypt-exporter"]["static_configs"][0]["targets"] == ["exporter:9809"]


def test_compose_runs_flower_on_the_broker_of_workers_sending_task_events():
    services = compose()["services"]
    flower = services["flower"]
    image, _, tag = flower["image"].partition(":")
    assert image == "mher/flower" and re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin Flower's image: {flower['image']}"
    assert f'"flower=={tag}"' in (ROOT / "pyproject.toml").read_text(), "the tests must run the image's Flower"
    assert flower["environment"]["CELERY_BROKER_URL"] == services["worker"]["environment"]["REDIS_URL"]
    assert not any("broker" in arg for arg in flower["command"]), "a broker URL may hold a key: not in argv"
    assert flower["ports"] == ["127.0.0.1:5555:5555"], "Flower controls workers: loopback only"
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("worker", "cli"):  # workers send task events, and the CLI's sends "task-sent"
        assert services[name]["environment"]["REENCRYPT_TASK_EVENTS"] == "${REENCRYPT_TASK_EVENTS:-1}"


def test_compose_and_k8s_start_workers_with_flags_reencrypt_worker_has():
    import typer.main

    from coordinator.cli import app

    worker = typer.main.get_command(app).commands["worker"]
    flags = {opt for param in worker.params for opt in [*param.opts, *getattr(param, "secondary_opts", [])]}
    k8s = next(doc for doc in yaml.safe_load_all((K8S_DIR / "worker.yaml").read_text()) if doc["kind"] == "Deployment")
    for where, args in (
        ("docker-compose.yml", compose()["services"]["worker"]["command"]),
        ("ops/k8s/worker.yaml", k8s["spec"]["template"]["spec"]["containers"][0]["args"]),
    ):
        assert args[0] == "worker", where
        unknown = [arg for arg in args[1:] if arg.startswith("-") and arg.split("=")[0] not in flags]
        assert not unknown, f"{where}: 'reencrypt worker' has no {unknown}"


def test_dockerfile_builds_the_package_on_python_311_slim():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install ." in text
    assert re.search(r'^ENTRYPOINT \["reencrypt"\]', text, re.M)


# -- Kubernetes (the manifests' own checks: tests/e2e/test_k8s.py) --------------------------------


def manifests() -> list[dict]:
    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def by_kind(kind: str) -> list[dict]:
    return [doc for doc in manifests() if doc["kind"] == kind]


# -- runbook ------------------------------------------------------------------------------------


def heading_anchor(line: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = line.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


#: Where a command starts within a line of shell: line start, after ; & | ( (so "$(reencrypt keys current)"
#: too), or after a shell keyword ("while reencrypt sweep status ..."). Its words end at a redirection,
#: a pipe, a list operator or the closing parenthesis.
RUNBOOK_COMMAND = re.compile(r"(?:^|[;&|(]|\b(?:while|until|if|then|do|!))\s*(reencrypt\s[^;&|()<>]*)")


def runbook_commands() -> list[list[str]]:
    """The argv of every reencrypt command in the runbook: in its code blocks of either kind (steps
    and examples) and inline in its text."""
    from runbook_blocks import runbook_blocks

    text = RUNBOOK.read_text()
    snippets = [block.code for block in runbook_blocks(text)]
    snippets += [" ".join(inline.split()) for inline in re.findall(r"`(reencrypt [^`]+)`", text)]
    commands = []
    for snippet in snippets:
        for line in snippet.replace("\\\n", " ").splitlines():
            line = re.split(r"(?:^|\s)#", line)[0]  # a comment
            for match in RUNBOOK_COMMAND.finditer(line):
                argv = shlex.split(match.group(1))[1:]
                if argv:  # "reencrypt <command> --help" leaves none
                    commands.append(argv)
    return commands


def test_runbook_command_extraction_reads_substitutions_loops_and_pipes():
    from runbook_blocks import runbook_blocks

    sample = (
        "## 1. Step\n\n   ```sh\n   OLD=$(reencrypt keys current)   # note\n"
        "   while reencrypt sweep status --all --json | grep -E '\"(a|b)\"' >/dev/null; do\n"
        "     reencrypt sweep cancel\n   done\n   ```\n\n"
        "## 2. Other\n\n```console\nreencrypt audit --check\n```\n"
    )
    blocks = runbook_blocks(sample)
    assert [(b.number, b.kind) for b in blocks] == [(1, "sh"), (2, "console")]
    assert blocks[0].code.startswith("OLD=$(reencrypt keys current)")  # dedented out of its list item
    found = []
    for block in blocks:
        for line in block.code.splitlines():
            found += [shlex.split(m.group(1))[1:] for m in RUNBOOK_COMMAND.finditer(re.split(r"(?:^|\s)#", line)[0])]
    assert found == [
        ["keys", "current"],
        ["sweep", "status", "--all", "--json"],
        ["sweep", "cancel"],
        ["audit", "--check"],
    ]


def test_runbook_blocks_are_steps_or_examples():
    """Every block says what it is (the e2e test runs the steps and nothing else): ```sh steps only in
    the numbered procedure sections (1-6), each of which has some, and none with a <placeholder>."""
    from runbook_blocks import EXAMPLE, ROLLBACK_SECTIONS, ROTATION_SECTIONS, STEP, runbook_blocks

    blocks = runbook_blocks()
    procedure = set(ROTATION_SECTIONS + ROLLBACK_SECTIONS)
    for block in blocks:
        where = f"MEK_ROTATION.md line {block.line}"
        assert block.kind in (STEP, EXAMPLE), f"{where}: a ```{block.kind} block: use ```sh (step) or ```console"
        if block.kind == STEP:
            assert block.number in procedure, f"{where}: a ```sh step outside sections 1-6: make it ```console"
            assert not re.search(r"<[\w .-]+>", block.code), f"{where}: a step with a placeholder: {block.code}"
    assert {block.number for block in blocks if block.kind == STEP} == procedure


def test_runbook_commands_and_flags_exist():
    import typer.main

    from coordinator.cli import app

    root = typer.main.get_command(app)
    commands = runbook_commands()
    assert len(commands) > 25
    seen = set()
    for argv in commands:
        command, path, rest = root, [], list(argv)
        while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
            word = rest.pop(0)
            assert word in command.commands, f"runbook: 'reencrypt {' '.join(argv)}': no command {word!r}"
            command, path = command.commands[word], path + [word]
        assert not hasattr(command, "commands"), f"runbook: 'reencrypt {' '.join(argv)}' names a group, not a command"
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for token in rest:
            if token.startswith("--"):
                assert token.split("=")[0] in options, (
                    f"runbook: 'reencrypt {' '.join(argv)}': {token} is not an option"
                )
        seen.add(" ".join(path))
    required = {
        "keys rotate",
        "keys current",
        "keys promote",
        "keys disable",
        "keys enable",
        "sweep start",
        "sweep status",
        "verify",
        "audit",
        "sweep pause",
        "sweep resume",
        "sweep cancel",
        "sweep throttle",
        "sweep failures",
    }
    assert required <= seen, f"runbook lacks {sorted(required - seen)}"


def test_runbook_names_only_existing_panels():
    titles = {}
    for dashboard in dashboards().values():
        titles[dashboard["title"].split(": ")[-1].capitalize()] = {p["title"] for p in panels(dashboard)}
    watched = 0
    for line in RUNBOOK.read_text().splitlines():
        match = re.match(r"> Watch \(([^)]+)\): (.*)", line)
        if match:
            board = match.group(1).capitalize()
            assert board in titles, f"runbook names dashboard {match.group(1)!r}"
            for panel in re.findall(r"\*\*([^*]+)\*\*", match.group(2)):
                assert panel in titles[board], f"runbook: no panel {panel!r} on {match.group(1)}"
                watched += 1
    assert watched >= 20


# -- the exporter's pure parts ------------------------------------------------------------------


def _sweep(sweep_id: str, status: str, created: str, **extra):
    from tracker_reencrypt.sweep.records import Sweep

    return Sweep.from_record(
        {
            "id": sweep_id,
            "status": status,
            "created_at": created,
            "started_at": created,
            "target_kid": "tracker-mek/v2",
            "mode": "reencrypt",
            "documents_estimate": 100,
            **extra,
        }
    )


def test_exporter_exports_the_active_and_the_latest_finished_sweep():
    from coordinator.exporter import exported_sweeps

    old = _sweep("sw-1", "completed", "2026-01-01T00:00:00Z")
    failed = _sweep("sw-2", "failed", "2026-01-02T00:00:00Z")
    running = _sweep("sw-3", "running", "2026-01-03T00:00:00Z")
    assert [s.id for s in exported_sweeps([old, failed, running], "sw-3")] == ["sw-3", "sw-2"]
    assert [s.id for s in exported_sweeps([old, failed], None)] == ["sw-2"]
    assert exported_sweeps([], None) == []


def test_exporter_families_are_bounded_and_named_by_convention():
    from coordinator import steering
    from coordinator.exporter import STATUSES, Snapshot, SweepCollector, SweepView, families, total_metric_name
    from coordinator.throughput import Throughput
    from tracker_reencrypt.sweep.records import COUNTERS, Slice, zero_counts

    now = time.time()
    slices = [
        Slice(
            sweep_id="sw-9",
            index=i,
            feed_range={},
            done=i == 0,
            lease_owner="host-a:7" if i else None,
            lease_expires=now + 30,
            counts={**zero_counts(), "documents_scanned": 10 * (i + 1)},
        )
        for i in range(3)
    ]
    sweep = _sweep("sw-9", "running", "2026-01-03T00:00:00Z", rate=50.0, ru_per_s=None)
    rate = Throughput(5.0, 60.0, "window")
    progress = steering.Progress(sweep, slices, {"documents_scanned": 60, "failures": 2}, 12.0, rate, 8.0, 2)
    view = SweepView.of(progress, now)
    assert (view.leases, view.workers) == (2, 1)  # two slices leased by one process
    snapshot = Snapshot([view], queue_messages=4, unacked_messages=1, store_up=True, redis_up=True, refreshed_at=now)

    # A whole-container sweep: no product label anywhere (tests/unit/test_exporter_products.py: scoped ones).
    allowed_labels = {"sweep", "slice", "status", "target_kid", "mode", "products", "limit", "queue"}
    by_name = {}
    for family in families(snapshot):
        for sample in family.samples:
            assert set(sample.labels) <= allowed_labels, (family.name, sample.labels)
            by_name.setdefault(sample.name, []).append(sample)
    assert {total_metric_name(name) for name in COUNTERS} <= set(by_name)
    assert "reencrypt_stale_writes_total" in by_name
    assert by_name["reencrypt_sweep_documents_scanned_total"][0].value == 60
    assert by_name["reencrypt_sweep_failures_total"][0].value == 2
    assert len(by_name["reencrypt_sweep_status"]) == len(STATUSES)
    assert [s.labels["status"] for s in by_name["reencrypt_sweep_status"] if s.value == 1] == ["running"]
    assert len(by_name["reencrypt_sweep_slice_documents_scanned_total"]) == 3
    assert by_name["reencrypt_sweep_eta_seconds"][0].value == 8.0
    assert by_name["reencrypt_sweep_progress_ratio"][0].value == pytest.approx(0.6)
    assert [(s.labels["limit"], s.value) for s in by_name["reencrypt_sweep_limit_per_second"]] == [("documents", 50.0)]
    assert by_name["reencrypt_queue_messages"][0].value == 4
    assert [s.value for s in by_name["reencrypt_sweep_paused_by_error"]] == [0]
    assert [s.value for s in by_name["reencrypt_sweep_last_error"]] == [0]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SweepCollector(type("Source", (), {"snapshot": snapshot})()))
    text = generate_latest(registry).decode()
    assert "# TYPE reencrypt_sweep_documents_scanned_total counter" in text
    assert 'reencrypt_sweep_info{mode="reencrypt",products="all",sweep="sw-9",target_kid="tracker-mek/v2"} 1.0' in text
    assert "reencrypt_sweep_products{" not in text and "reencrypt_sweep_product_done{" not in text


def test_exporter_flags_a_sweep_paused_by_error_apart_from_one_retrying():
    from coordinator import steering
    from coordinator.exporter import Snapshot, SweepView, families
    from coordinator.throughput import Throughput

    def flags(**fields) -> dict[str, float]:
        sweep = _sweep("sw-9", fields.pop("status"), "2026-01-03T00:00:00Z", **fields)
        rate = Throughput(0.0, 1.0, "since start")
        view = SweepView.of(steering.Progress(sweep, [], {}, 1.0, rate, None, 0), time.time())
        return {
            s.name: s.value
            for family in families(Snapshot([view]))
            for s in family.samples
            if s.name in ("reencrypt_sweep_paused_by_error", "reencrypt_sweep_last_error")
        }

    reason = "target key tracker-mek/v2 is disabled"
    assert flags(status="paused", paused_reason=reason, last_error=reason) == {
        "reencrypt_sweep_paused_by_error": 1,
        "reencrypt_sweep_last_error": 1,
    }
    assert flags(status="running", last_error="Key Vault unreachable") == {
        "reencrypt_sweep_paused_by_error": 0,
        "reencrypt_sweep_last_error": 1,
    }
    assert flags(status="paused") == {"reencrypt_sweep_paused_by_error": 0, "reencrypt_sweep_last_error": 0}


def test_exporter_serves_no_sweep_series_before_any_sweep():
    from coordinator.exporter import Snapshot, families

    samples = [s for family in families(Snapshot()) for s in family.samples]
    assert {s.name for s in samples} == {
        "reencrypt_exporter_store_up",
        "reencrypt_exporter_redis_up",
        "reencrypt_exporter_last_refresh_timestamp_seconds",
        "reencrypt_exporter_refresh_duration_seconds",
    }
