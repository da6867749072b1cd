"""The Kubernetes manifests hold together, offline: rendered as ``kubectl apply -k ops/k8s`` would
render them, the settings are a generated ConfigMap whose hashed name every pod references (a
change rolls the pods), KEDA watches the store's queue, the probes ask what the worker and the
exporter serve, the operator Job template and the recipes of docs/OPERATIONS.md ("Kubernetes")
run commands the CLI has, and no secret is in any of it.

Rendering: with kustomize itself when installed (``kustomize``, or ``kubectl kustomize``), and
always with this file's own reading of the kustomization (resources, configMapGenerator with
kustomize's name hash, name references, replacements, images), checked equal to kustomize's
output where kustomize runs: a developer without either still checks the manifests.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, loopback_get

K8S_DIR = ROOT / "ops" / "k8s"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|REDIS_URL|CONNECTION", re.I)


# -- rendering -----------------------------------------------------------------------------------

FIELD_SEGMENT = re.compile(r"\[[^\]]*\]|[^.\[]+")
SELECTOR_FIELDS = {"kind", "name", "namespace"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "replacements", "images"}


def selected(doc: dict, selector: dict) -> bool:
    assert set(selector) <= SELECTOR_FIELDS, f"selector fields this test does not implement: {selector}"
    meta = doc.get("metadata", {})
    return all((doc["kind"] if key == "kind" else meta.get(key)) == value for key, value in selector.items())


def field_step(node, segment: str, path: str):
    """One step of a kustomize field path: a map key, a list index, or a list item [field=value]."""
    if segment.startswith("["):
        key, _, value = segment[1:-1].partition("=")
        matches = [item for item in node if isinstance(item, dict) and str(item.get(key)) == value]
        assert len(matches) == 1, f"{path}: {segment} matches {len(matches)} items"
        return matches[0]
    if isinstance(node, list):
        return node[int(segment)]
    assert isinstance(node, dict) and segment in node, f"unable to find field {path}"
    return node[segment]


def apply_replacements(documents: list[dict], replacements: list[dict]) -> list[dict]:
    """kustomize's ``replacements:`` (source fieldPath copied to each target fieldPath; the
    default source field is metadata.name; a missing target field is an error)."""
    for replacement in replacements:
        assert set(replacement) <= {"source", "targets"}, f"not implemented here: {replacement}"
        source = dict(replacement["source"])
        field = source.pop("fieldPath", "metadata.name")
        assert "options" not in source, f"source options are not implemented here: {source}"
        sources = [doc for doc in documents if selected(doc, source)]
        assert len(sources) == 1, f"replacement source {source} matches {len(sources)} resources"
        value = sources[0]
        for segment in FIELD_SEGMENT.findall(field):
            value = field_step(value, segment, field)
        for target in replacement["targets"]:
            assert set(target) <= {"select", "fieldPaths"}, f"not implemented here: {target}"
            for doc in (d for d in documents if selected(d, target["select"])):
                for path in target["fieldPaths"]:
                    *parents, last = FIELD_SEGMENT.findall(path)
                    node = doc
                    for segment in parents:
                        node = field_step(node, segment, path)
                    field_step(node, last, path)  # the field must exist: no `create` option here
                    node[int(last) if isinstance(node, list) else last] = value
    return documents


def env_file(path: Path) -> dict[str, str]:
    """A kustomize env file: KEY=value lines (the value as written, no quotes removed), blank
    lines and # comments skipped."""
    data = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, equals, value = line.partition("=")
        assert equals and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{number}: not KEY=value"
        assert key not in data, f"{path.name}:{number}: {key} given twice"
        data[key] = value
    return data


def name_hash(data: dict[str, str]) -> str:
    """kustomize's suffix of a generated ConfigMap: SHA-256 of Go's JSON of kind, name and data
    (sorted keys, <, > and & escaped), its first 10 hex digits with 0 1 3 a e made g h k m t so it
    is no word or number. kustomize v5 hashes an empty name: its hasher looks the name up as one
    field "metadata/name", which no ConfigMap has (kubectl kustomize's output confirms it)."""
    text = json.dumps({"kind": "ConfigMap", "name": "", "data": data}, sort_keys=True, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def generated_config_maps(directory: Path, generators: list[dict]) -> list[dict]:
    maps = []
    for generator in generators:
        assert set(generator) <= {"name", "namespace", "envs", "literals", "options"}, f"not implemented: {generator}"
        assert set(generator.get("options", {})) <= {"labels"}, f"not implemented: {generator['options']}"
        data: dict[str, str] = {}
        for name in generator.get("envs", []):
            data.update(env_file(directory / name))
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        metadata = {"name": generator["name"], "namespace": generator.get("namespace")}
        if generator.get("options", {}).get("labels"):
            metadata["labels"] = dict(generator["options"]["labels"])
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return maps


def pod_specs(doc: dict) -> list[dict]:
    """The pod specs of a workload (Deployment, Job, CronJob); none for other kinds."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [spec["template"]["spec"]]
    return []


def config_map_references(pod: dict) -> list[dict]:
    """Every object naming a ConfigMap in a pod spec (its ``name`` is the reference)."""
    found = []
    for container in pod.get("initContainers", []) + pod["containers"]:
        found += [source["configMapRef"] for source in container.get("envFrom", []) if "configMapRef" in source]
        found += [
            e["valueFrom"]["configMapKeyRef"]
            for e in container.get("env", [])
            if "configMapKeyRef" in e.get("valueFrom", {})
        ]
    found += [volume["configMap"] for volume in pod.get("volumes", []) if "configMap" in volume]
    return found


def render_with_python(directory: Path) -> list[dict]:
    """The kustomization read here: resources, generated ConfigMaps, replacements (selecting by
    the names as written, as kustomize does), the hash suffix and the references rewritten to
    it (a reference to a ConfigMap nobody generates is an error), images."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= KUSTOMIZATION_FIELDS, (
        f"not implemented here: {set(kustomization) - KUSTOMIZATION_FIELDS}"
    )
    documents = [
        doc for name in kustomization["resources"] for doc in yaml.safe_load_all((directory / name).read_text()) if doc
    ]
    generated = generated_config_maps(directory, kustomization.get("configMapGenerator", []))
    documents = apply_replacements(documents + generated, kustomization.get("replacements", []))
    renamed = {}
    for config_map in generated:
        old = config_map["metadata"]["name"]
        config_map["metadata"]["name"] = renamed[old] = f"{old}-{name_hash(config_map['data'])}"
    for doc in documents:
        for pod in pod_specs(doc):
            for reference in config_map_references(pod):
                assert reference["name"] in renamed, f"{doc['metadata']['name']}: no ConfigMap {reference['name']}"
                reference["name"] = renamed[reference["name"]]
            for container in pod.get("initContainers", []) + pod["containers"]:
                for image in kustomization.get("images", []):
                    name, _, tag = container["image"].partition(":")
                    if name == image["name"]:
                        container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return documents


def render_with_kustomize(directory: Path) -> list[dict]:
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed: the Python rendering checks the manifests")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


RENDERERS = pytest.mark.parametrize("render", [render_with_python, render_with_kustomize], ids=["python", "kustomize"])


def keyed(documents: list[dict]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


def the(documents: list[dict], kind: str, name: str) -> dict:
    return keyed(documents)[(kind, name)]


def container_of(documents: list[dict], kind: str, name: str) -> dict:
    return pod_specs(the(documents, kind, name))[0]["containers"][0]


def container_environment(documents: list[dict], container: dict) -> dict[str, str]:
    """The plain variables a container starts with: its ConfigMaps' data, then its own env values."""
    maps = {d["metadata"]["name"]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    env = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def copy_with_settings(tmp_path: Path, **settings: str) -> Path:
    """ops/k8s copied, with ``settings`` changed in its config.env."""
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, k8s)
    lines = (k8s / "config.env").read_text().splitlines()
    for key, value in settings.items():
        found = [i for i, line in enumerate(lines) if line.startswith(f"{key}=")]
        assert found, f"config.env has no {key}"
        lines[found[0]] = f"{key}={value}"
    (k8s / "config.env").write_text("\n".join(lines) + "\n")
    return k8s


def test_the_python_rendering_is_kustomize_s():
    ours, theirs = keyed(render_with_python(K8S_DIR)), keyed(render_with_kustomize(K8S_DIR))
    assert ours.keys() == theirs.keys()
    for key, doc in ours.items():
        assert doc == theirs[key], f"{key}: rendered differently than kustomize does"


# -- settings ------------------------------------------------------------------------------------


def test_k8s_has_the_required_kinds_and_every_file_is_applied():
    documents = render_with_python(K8S_DIR)
    kinds = [doc["kind"] for doc in documents]
    for kind in ("Deployment", "PodDisruptionBudget", "ScaledObject", "Service", "ServiceAccount", "CronJob"):
        assert kind in kinds, kind
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "Deployment"} == {
        "reencrypt-worker",
        "reencrypt-exporter",
    }
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    generated = {name for g in kustomization["configMapGenerator"] for name in g.get("envs", [])}
    files = {p.name for p in K8S_DIR.iterdir()} - {"kustomization.yaml"}
    assert files == set(kustomization["resources"]) | generated, "a file in ops/k8s that kubectl apply -k ignores"


def test_the_settings_are_a_generated_config_map_every_pod_references():
    from tracker_reencrypt import logs
    from tracker_reencrypt.config import Settings

    assert not any(
        d["kind"] == "ConfigMap" for p in K8S_DIR.glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d
    ), "a static ConfigMap would not roll the pods: settings go in config.env"
    documents = render_with_python(K8S_DIR)
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert re.fullmatch(r"reencrypt-config-[a-z0-9]{10}", config_map["metadata"]["name"])
    assert config_map["metadata"]["namespace"] == "reencrypt"
    workloads = [d for d in documents if pod_specs(d)]
    assert {d["metadata"]["name"] for d in workloads} == {
        "reencrypt-worker",
        "reencrypt-exporter",
        "reencrypt-operator",
    }
    for workload in workloads:
        references = config_map_references(pod_specs(workload)[0])
        assert [r["name"] for r in references] == [config_map["metadata"]["name"]], workload["metadata"]["name"]

    # Every variable is a setting, or one read where used (tracker_reencrypt/config.py's docstring).
    data = config_map["data"]
    fields = {f"REENCRYPT_{name.upper()}" for name in Settings.model_fields}
    assert set(data) - fields <= {logs.VARIABLE}, f"not settings: {sorted(set(data) - fields - {logs.VARIABLE})}"
    settings = Settings(**{key.removeprefix("REENCRYPT_").lower(): v for key, v in data.items() if key in fields})
    assert settings.batch_seconds == 10 and settings.lease_seconds >= 2 * settings.batch_seconds
    assert logs.log_format(data) == "json", "Container Insights reads JSON lines"


@RENDERERS
def test_a_changed_setting_rolls_the_worker_and_the_exporter(render, tmp_path):
    before = render(K8S_DIR)
    after = render(copy_with_settings(tmp_path, REENCRYPT_BATCH_DOCUMENTS="1000"))
    for name in ("reencrypt-worker", "reencrypt-exporter"):
        old, new = (pod_specs(the(docs, "Deployment", name))[0] for docs in (before, after))
        assert old != new, f"{name}: same pod template after a settings change: no rollout"
        (reference,) = config_map_references(new)
        assert container_environment(after, new["containers"][0])["REENCRYPT_BATCH_DOCUMENTS"] == "1000"
        assert reference["name"] != config_map_references(old)[0]["name"]


@RENDERERS
def test_k8s_keda_scales_workers_on_the_store_queue(render, tmp_path):
    """The operator writes the store and its queue ('reencrypt queue') once, in config.env: KEDA
    watches that list, and a worker whose store has another queue refuses to start."""
    from tracker_reencrypt.config import Settings
    from tracker_reencrypt.errors import ConfigError
    from tracker_reencrypt.fleet import QUEUE_PREFIX, store_queue

    text = (K8S_DIR / "config.env").read_text()
    assert env_file(K8S_DIR / "config.env")["REENCRYPT_QUEUE"].startswith(QUEUE_PREFIX)
    assert "reencrypt queue" in text, "say how to get the queue name"

    store = "cosmos://tracker-prod.documents.azure.com/tracker/documents"
    queue = store_queue(Settings(store=store))
    documents = render(copy_with_settings(tmp_path, REENCRYPT_STORE=store, REENCRYPT_QUEUE=queue))

    scaled = [d for d in documents if d["kind"] == "ScaledObject"]
    assert len(scaled) == 1 and scaled[0]["spec"]["scaleTargetRef"]["name"] == "reencrypt-worker"
    trigger = scaled[0]["spec"]["triggers"][0]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == queue

    env = container_environment(documents, container_of(documents, "Deployment", "reencrypt-worker"))
    assert env["REENCRYPT_QUEUE"] == queue
    assert store_queue(Settings(store=env["REENCRYPT_STORE"], queue=env["REENCRYPT_QUEUE"])) == queue
    with pytest.raises(ConfigError, match="REENCRYPT_QUEUE"):
        store_queue(Settings(store=store.replace("/documents", "/other"), queue=env["REENCRYPT_QUEUE"]))


def test_k8s_uses_workload_identity_and_holds_no_secrets():
    documents = render_with_python(K8S_DIR)
    accounts = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ServiceAccount"}
    for workload in (d for d in documents if pod_specs(d)):
        template = (
            workload["spec"]["template"]
            if workload["kind"] != "CronJob"
            else workload["spec"]["jobTemplate"]["spec"]["template"]
        )
        assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true", workload["metadata"]["name"]
        account = accounts[template["spec"]["serviceAccountName"]]
        assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    assert not [d for d in documents if d["kind"] == "Secret"], "secrets are created outside the manifests"
    for config_map in (d for d in documents if d["kind"] == "ConfigMap"):
        for name, value in config_map["data"].items():
            assert not SECRET_NAME.search(name) or name in ("REENCRYPT_KEYS", "REENCRYPT_KEY_NAME"), name
            assert "AccountKey=" not in value and not re.search(r"rediss?://:[^<]", value), name


# -- the worker: shutdown and probes --------------------------------------------------------------


def option(args: list[str], name: str) -> str:
    return str(args[args.index(name) + 1])


def patience(probe: dict) -> float:
    """Seconds of failures before the kubelet acts."""
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_k8s_worker_shuts_down_warm():
    from tracker_reencrypt.config import Settings
    from worker.health import BATCH_OVERRUN_S

    documents = render_with_python(K8S_DIR)
    worker = the(documents, "Deployment", "reencrypt-worker")
    pod = worker["spec"]["template"]["spec"]
    # One batch (REENCRYPT_BATCH_SECONDS) plus the Cosmos SDK's 429 retry budget (<= 30 s).
    assert pod["terminationGracePeriodSeconds"] > Settings().batch_seconds + BATCH_OVERRUN_S
    container = pod["containers"][0]
    assert "lifecycle" not in container, "SIGTERM already starts Celery's warm shutdown: no preStop"
    assert container["args"][0] == "worker" and "--metrics-port" in container["args"]
    assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    (pdb,) = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]


def test_k8s_worker_probes_ask_the_health_port_what_it_serves(redis_url):
    from tracker_reencrypt.config import Settings
    from worker.health import CHECK_DEADLINE_S, CHECK_INTERVAL_S, Dependencies, HealthServer, Heartbeat, stall_limit

    documents = render_with_python(K8S_DIR)
    container = container_of(documents, "Deployment", "reencrypt-worker")
    port = int(option(container["args"], "--health-port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get_ = container[kind]["httpGet"]
        assert ports.get(get_["port"], get_["port"]) == port, (
            f"{kind} asks port {get_['port']}, the worker serves {port}"
        )
        paths[kind] = get_["path"]
    assert paths == {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}

    env = container_environment(documents, container)
    settings = Settings(batch_seconds=env["REENCRYPT_BATCH_SECONDS"])
    pool = option(container["args"], "--pool") if "--pool" in container["args"] else "prefork"
    # The start-up check (store, vault, broker, with their SDKs' retries) and Celery's start get
    # a minute at least; a wedged worker is restarted within two minutes of its last beat, and
    # not before its loop has been silent for the stall limit (the probe itself waits no longer).
    assert patience(container["startupProbe"]) >= 60
    assert stall_limit(pool, settings.batch_seconds) + patience(container["livenessProbe"]) <= 120
    assert patience(container["livenessProbe"]) >= 2 * container["livenessProbe"]["periodSeconds"]
    # /readyz answers from the last check (every CHECK_INTERVAL_S): a probe never waits on a service.
    assert container["readinessProbe"]["timeoutSeconds"] >= 1
    assert patience(container["readinessProbe"]) <= CHECK_INTERVAL_S + CHECK_DEADLINE_S

    # The paths the probes ask are the ones the worker serves (a real server, not started yet).
    health = HealthServer(0, Heartbeat(queue="q"), Dependencies(redis_url, None), bind="127.0.0.1")
    try:
        for kind, path in paths.items():
            code, text = loopback_get(health.port, path)
            assert code == 503 and text.startswith("starting"), (kind, code, text)
    finally:
        health.close()


def test_k8s_exporter_probes_ask_its_healthz_on_its_port():
    from prometheus_client import CollectorRegistry

    from coordinator.exporter import _handler

    documents = render_with_python(K8S_DIR)
    container = container_of(documents, "Deployment", "reencrypt-exporter")
    port = int(option(container["args"], "--port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        get_ = container[kind]["httpGet"]
        assert ports[get_["port"]] == port, kind
    assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/metrics"  # up once the first read ended
    assert patience(container["livenessProbe"]) >= 600, "a store outage restarts it at most every 10 minutes"
    service = the(documents, "Service", "reencrypt-exporter")
    assert service["spec"]["ports"][0]["targetPort"] in ports

    # The exporter's own HTTP handler serves those paths (its health callable stands in).
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(CollectorRegistry(), lambda: (503, "not read yet")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert loopback_get(server.server_address[1], "/healthz")[0] == 503
        assert loopback_get(server.server_address[1], "/metrics")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


# -- the operator CLI in the cluster --------------------------------------------------------------


def assert_cli_command(argv: list[str], where: str) -> None:
    """``reencrypt <argv>`` names a command of the CLI, and each --option is one it has."""
    import typer.main

    from coordinator.cli import app

    command, rest = typer.main.get_command(app), list(argv)
    while rest and hasattr(command, "commands") and not rest[0].startswith("-"):
        word = rest.pop(0)
        assert word in command.commands, f"{where}: 'reencrypt {' '.join(argv)}': no command {word!r}"
        command = command.commands[word]
    assert not hasattr(command, "commands"), f"{where}: 'reencrypt {' '.join(argv)}' names a group, not a command"
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    unknown = [t for t in rest if t.startswith("--") and t.split("=")[0] not in options]
    assert not unknown, f"{where}: 'reencrypt {' '.join(argv)}': no option {unknown}"


def test_the_operator_job_template_runs_the_cli_with_the_fleet_s_identity_and_settings():
    documents = render_with_python(K8S_DIR)
    cron = the(documents, "CronJob", "reencrypt-operator")
    assert cron["spec"]["suspend"] is True and cron["spec"]["schedule"].split()[2:4] == ["31", "2"], "never by itself"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0, "an operator's command is not run twice behind their back"
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "reencrypt"
    container = pod["containers"][0]
    worker = container_of(documents, "Deployment", "reencrypt-worker")
    assert container["image"] == worker["image"] and container["envFrom"] == worker["envFrom"]
    assert [e for e in container["env"] if e["name"] == "REDIS_URL"] == [
        e for e in worker["env"] if e["name"] == "REDIS_URL"
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/home/reencrypt"}
    assert_cli_command(container["args"], "operator-job.yaml")
    assert option(container["args"], "--expect-workers") == "0", "KEDA may have scaled the fleet to zero"


def kubernetes_blocks() -> list[str]:
    """The code blocks of OPERATIONS.md's "Kubernetes" section, continuation lines joined."""
    text = OPERATIONS.read_text()
    section = text[text.index("\n## Kubernetes\n") :]
    following = section.find("\n## ", 1)
    section = section if following < 0 else section[:following]
    return [block.replace("\\\n", " ") for block in re.findall(r"```console\n(.*?)```", section, re.S)]


def shell_commands(block: str) -> list[str]:
    """A block's commands: its lines, a line whose quotes are still open joined with the next."""
    commands, current = [], ""
    for line in block.splitlines():
        current = f"{current}\n{line}" if current else line
        try:
            shlex.split(current)
        except ValueError:  # "No closing quotation": the command goes on
            continue
        commands.append(current)
        current = ""
    assert not current, f"unclosed quote in {current!r}"
    return commands


def recipe(marker: str) -> list[str]:
    """The words of the one command of the section holding ``marker``."""
    (found,) = [command for block in kubernetes_blocks() for command in shell_commands(block) if marker in command]
    return shlex.split(found)


def pipeline(words: list[str]) -> list[list[str]]:
    stages: list[list[str]] = [[]]
    for word in words:
        if word == "|":
            stages.append([])
        else:
            stages[-1].append(word)
    return stages


def test_the_job_recipes_make_jobs_of_the_template_and_run_real_commands(tmp_path):
    """`kubectl create job --from=cronjob/...` copies the CronJob's jobTemplate (as kubectl does it,
    here offline), and the recipe's JSON patch (applied by kubectl patch --local where installed,
    else by the same operations here) turns it into a Job running a command the CLI has."""
    documents = render_with_python(K8S_DIR)
    create, patch_words, apply = pipeline(recipe("kubectl patch --local"))
    assert apply == ["kubectl", "create", "-f", "-"]
    for words in (recipe("create job preflight-"), create):
        (source,) = [w.removeprefix("--from=") for w in words if w.startswith("--from=")]
        kind, _, name = source.partition("/")
        assert (kind, words[words.index("-n") + 1]) == ("cronjob", "reencrypt")
        the(documents, "CronJob", name)

    cron = the(documents, "CronJob", "reencrypt-operator")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "reencrypt-1",
            "namespace": "reencrypt",
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
        },
        "spec": cron["spec"]["jobTemplate"]["spec"],
    }
    patch = patch_words[patch_words.index("-p") + 1].replace("<your name>", "alice")
    if shutil.which("kubectl"):
        (tmp_path / "job.json").write_text(json.dumps(job))
        command = list(patch_words)
        command[command.index("-p") + 1] = patch
        command[command.index("-f") + 1] = str(tmp_path / "job.json")
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env={"KUBECONFIG": "/nonexistent", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        patched = json.loads(result.stdout)
    else:
        patched = json.loads(json.dumps(job))
        for operation in json.loads(patch):
            *parents, last = operation["path"].strip("/").split("/")
            node = patched
            for segment in parents:
                node = node[int(segment)] if isinstance(node, list) else node[segment]
            if last == "-":
                node.append(operation["value"])
            else:
                node[int(last) if isinstance(node, list) else last] = operation["value"]
    container = patched["spec"]["template"]["spec"]["containers"][0]
    assert_cli_command(container["args"], "OPERATIONS.md's Job recipe")
    assert {"name": "REENCRYPT_ACTOR", "value": "alice"} in container["env"]
    assert container["envFrom"] == container_of(documents, "CronJob", "reencrypt-operator")["envFrom"]


def test_the_kubectl_run_recipe_has_the_fleet_s_identity_settings_and_image():
    documents = render_with_python(K8S_DIR)
    cron = the(documents, "CronJob", "reencrypt-operator")

    # CONFIG=$(kubectl get cronjob reencrypt-operator -o jsonpath='{...}'): that path, walked here.
    lookup = " ".join(recipe("CONFIG=$(kubectl"))
    assert "get cronjob reencrypt-operator" in lookup
    (path,) = re.findall(r"jsonpath=\{\.([^}]*)\}", lookup)
    node = cron
    for key, index in re.findall(r"(\w+)(?:\[(\d+)\])?", path):
        node = node[key][int(index)] if index else node[key]
    config = node
    assert config.startswith("reencrypt-config-")

    words = [word.replace("$CONFIG", config) for word in recipe("kubectl -n reencrypt run ")]
    pod_name = words[words.index("run") + 1]
    command = words[words.index("--") + 1 :]
    assert_cli_command(command, "OPERATIONS.md's kubectl run recipe")
    flags = dict(
        w.removeprefix("--").split("=", 1) for w in words[: words.index("--")] if w.startswith("--") and "=" in w
    )
    worker = container_of(documents, "Deployment", "reencrypt-worker")
    assert flags["image"] == worker["image"], "the image the kustomization deploys"
    assert flags["labels"] == "azure.workload.identity/use=true" and flags["override-type"] == "strategic"
    overrides = json.loads(flags["overrides"])
    assert overrides["spec"]["serviceAccountName"] == pod_specs(cron)[0]["serviceAccountName"]
    (container,) = overrides["spec"]["containers"]
    assert container["name"] == pod_name, "strategic merge: the container kubectl run makes is named after the pod"
    assert container["envFrom"] == [{"configMapRef": {"name": config}}]
    (redis,) = [e for e in container["env"] if e["name"] == "REDIS_URL"]
    assert redis == [e for e in worker["env"] if e["name"] == "REDIS_URL"][0]
    assert overrides["spec"]["securityContext"]["runAsUser"] == pod_specs(cron)[0]["securityContext"]["runAsUser"]
