"""The README's Python example runs as written, and its JSON shapes are what the commands print."""

import re
import subprocess
import sys

from coordinator import steering
from coordinator.context import Context
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.keys.local import LocalKeyProvider
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.records import RUNNING, Failure, Sweep, utc_now

from conftest import ROOT


def test_the_readme_field_example_encrypts_and_decrypts(tmp_path):
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    LocalKeyProvider(tmp_path / "keyring.json").init()
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "tracker-mek/v1 ['alg', 'ct', 'dek', 'iv', 'kid', 'v', 'wrap']",
        "{'text': 'Call Ada on +1-555-0100'}",
    ]


# -- the JSON shapes the README's command reference lists are the ones the commands print --------


def readme_shape(kind: str) -> tuple[set[str], set[str]]:
    """The keys the README lists for ``kind`` (its bullet "- *kind*: ... `{...}`"), and the keys of
    the objects in a list among them (``"slices": [{...}]``). Parenthesised notes are left out."""
    readme = (ROOT / "README.md").read_text()
    bullet = re.search(rf"^- \*{re.escape(kind)}\*:(.*?)(?=^- |^\n)", readme, re.S | re.M).group(1)
    shape = bullet[bullet.index("`{") + 1 : bullet.index("}`") + 1]
    while re.search(r"\([^()]*\)", shape):
        shape = re.sub(r"\([^()]*\)", "", shape)
    nested = re.findall(r"\[\{(.*?)\}\]", shape, re.S)
    top = re.sub(r"\[\{.*?\}\]", "", shape, flags=re.S)
    return set(re.findall(r'"(\w+)"', top)), {key for inner in nested for key in re.findall(r'"(\w+)"', inner)}


def test_the_readme_lists_the_keys_of_a_sweep_and_of_a_failure_as_printed():
    sweep = Sweep(id="sw-1", target_kid="tracker-mek/v2", mode="reencrypt", status=RUNNING)
    assert readme_shape("a sweep") == (set(sweep.to_record()), set())
    failure = Failure(sweep_id="sw-1", slice=0, document_id="d", partition_key="p", field_path="/f", reason="r")
    assert readme_shape("a failure")[0] == set(failure.to_record())  # `row` only for a document without an id


def test_the_readme_lists_the_keys_of_a_sweeps_progress_as_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("REENCRYPT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    SqliteStore(tmp_path / "tracker.db").close()
    ctx = Context(load_settings(store=f"sqlite:///{tmp_path / 'tracker.db'}"))
    sweep = ctx.state.create_sweep(
        Sweep(id="sw-1", target_kid="tracker-mek/v2", mode="reencrypt", status=RUNNING, started_at=utc_now()),
        [{"epk_min": 0, "epk_max": 1}],
    )
    printed = steering.progress(ctx, sweep).as_json()
    assert readme_shape("a sweep's progress") == (set(printed), set(printed["slices"][0]))
