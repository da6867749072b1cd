"""The CLI's habits (issue 18), in-process through the real entry point, ``coordinator.cli.main``:
``--version``, ``-h``, shell completion, what ``--help`` names each parameter, the exit-code
table, setting errors named by their variable, a corrupt keyring's parse detail without its
content, audit rows as ``key=value`` text, and the worker's metrics directory.

The store here is SQLite and the keys a local keyring; nothing needs Redis (sweeps and the
embedded Redis are tests/e2e/test_cli_habits.py)."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from coordinator import launch
from coordinator.cli import app, main
from coordinator.commands import common
from coordinator.context import Context
from coordinator.render import audit_details
from tracker_reencrypt.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    BrokerUnavailableError,
    ConfigError,
    KeyProviderUnavailableError,
    StoreUnavailableError,
    SweepError,
    UnknownNameError,
)

from conftest import ROOT

V1, V2, V3 = "tracker-mek/v1", "tracker-mek/v2", "tracker-mek/v3"
WIDE = {"COLUMNS": "250"}  # one line per option: the assertions read whole rows


@pytest.fixture
def reencrypt(monkeypatch, capsys, tmp_path):
    """``reencrypt ARGS`` through main(): (exit code, stdout, stderr), in a home of its own with
    no setting from the caller's environment (``env`` adds some)."""
    for name in [n for n in os.environ if n.startswith("REENCRYPT_") or n == "REDIS_URL"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REENCRYPT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "250")
    # The consoles read COLUMNS when their module is imported, maybe by an earlier test: wide here.
    for console in (common.out, common.err):
        monkeypatch.setattr(console, "width", 250)

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "argv", ["reencrypt", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        for name in env:
            monkeypatch.delenv(name)
        shown = capsys.readouterr()
        assert "Traceback" not in shown.err, shown.err
        return exited.value.code, shown.out, shown.err

    return run


@pytest.fixture
def configured(monkeypatch, tmp_path) -> Path:
    """REENCRYPT_STORE and REENCRYPT_KEYS of a fresh SQLite file and keyring under ``tmp_path``."""
    monkeypatch.setenv("REENCRYPT_STORE", f"sqlite:///{tmp_path / 'tracker.db'}")
    monkeypatch.setenv("REENCRYPT_KEYS", f"local:{tmp_path / 'keyring.json'}")
    return tmp_path


# -- --version, -h, completion --------------------------------------------------------------------


def test_version_is_the_installed_distributions(reencrypt):
    code, out, _ = reencrypt("--version")
    assert (code, out.strip()) == (EXIT_OK, f"reencrypt {version('tracker-reencrypt')}")


def _command_paths() -> list[tuple[str, ...]]:
    def walk(command, path):
        yield path
        for name, child in getattr(command, "commands", {}).items():
            yield from walk(child, (*path, name))

    return list(walk(typer.main.get_command(app), ()))


def test_minus_h_is_help_everywhere():
    runner = CliRunner()
    for path in _command_paths():
        short, long = (runner.invoke(app, [*path, flag], env=WIDE) for flag in ("-h", "--help"))
        assert short.exit_code == 0 and "Usage: " in short.output, (path, short.output)
        assert short.output == long.output, path


def test_help_names_parameters_not_python_types():
    """No <bool>, <list[str]>, <str>: a flag takes no value, a list option is named after one
    item, a number is N, a choice lists its choices, every argument has help."""
    runner = CliRunner()
    for path in _command_paths():
        shown = runner.invoke(app, [*path, "--help"], env=WIDE).output
        assert not re.search(r"<(bool|str|int|float|list\[|path|int range|float range)", shown), (path, shown)
        for argument in re.findall(r"│\s+\*?\s*([A-Z_]+)\s{2,}(.*?)\s*│", _panel(shown, "Arguments")):
            assert argument[1], f"reencrypt {' '.join(path)}: argument {argument[0]} has no help"
    start = runner.invoke(app, ["sweep", "start", "--help"], env=WIDE).output
    assert _row(start, "--to").split()[:2] == ["--to", "KID"]
    assert _row(start, "--product").split()[:2] == ["--product", "PRODUCT"]
    assert _row(start, "--from").split()[:2] == ["--from", "KID"]
    assert _row(start, "--mode").split()[:2] == ["--mode", "[reencrypt|rewrap]"]
    assert _row(start, "--slices").split()[:3] == ["--slices", "N", "[1<=x<=1024]"]
    assert _row(start, "--json").split()[:3] == ["--json", "Print", "machine-readable"]  # a flag: no value
    status = runner.invoke(app, ["sweep", "status", "--help"], env=WIDE).output
    assert "[SWEEP_ID]" in status and "The sweep's id (default: the latest sweep" in status
    root = runner.invoke(app, ["--help"], env=WIDE).output
    assert _row(root, "--store").split()[:2] == ["--store", "URL"] and "--version" in root
    assert "--install-completion" in root and "--show-completion" in root


def _panel(text: str, title: str) -> str:
    match = re.search(rf"╭─ {title} .*?╰", text, re.S)
    return match.group(0) if match else ""


def _row(text: str, option: str) -> str:
    rows = (line.strip("│ *") for line in text.splitlines())
    return next(row for row in rows if row.startswith(option + " "))


def test_shell_completion_completes_commands_and_choices(reencrypt, monkeypatch):
    """Bash's completion protocol, as the script --show-completion prints drives it."""
    monkeypatch.setenv("_REENCRYPT_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "reencrypt sw")
    monkeypatch.setenv("COMP_CWORD", "1")
    assert reencrypt()[:2] == (0, "sweep\n")
    monkeypatch.setenv("COMP_WORDS", "reencrypt sweep start --mode ")
    monkeypatch.setenv("COMP_CWORD", "4")
    assert reencrypt()[1].split() == ["reencrypt", "rewrap"]


# -- exit codes ---------------------------------------------------------------------------------


def test_each_kind_of_error_carries_its_exit_code():
    assert (EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNAVAILABLE, EXIT_INTERRUPTED) == (0, 1, 2, 3, 130)
    for kind in (ConfigError, UnknownNameError):
        assert kind("x").exit_code == EXIT_BAD_INPUT
    for kind in (StoreUnavailableError, KeyProviderUnavailableError, BrokerUnavailableError):
        assert kind("x").exit_code == EXIT_UNAVAILABLE and kind("x").transient
    assert SweepError("x").exit_code == EXIT_FAILED


def test_exit_codes_through_the_entry_point(reencrypt, configured, monkeypatch):
    """A representative case of each code of the table in tracker_reencrypt.errors."""
    assert reencrypt("keys", "init")[0] == EXIT_OK
    assert reencrypt("seed", "--docs", "20")[0] == EXIT_OK
    for _ in range(2):
        assert reencrypt("keys", "rotate")[0] == EXIT_OK  # v3 current
    assert reencrypt("keys", "disable", V2, "--force")[0] == EXIT_OK

    failed = {
        "verify failed": ("verify", "--expect", V3),
        "disable refused: fields use it": ("keys", "disable", V1),
    }
    bad_input = {
        "unknown option": ("keys", "list", "--colour"),
        "--mode foo": ("sweep", "start", "--to", V3, "--mode", "foo"),
        "--slices 0": ("sweep", "start", "--to", V3, "--slices", "0"),
        "unknown --to kid": ("sweep", "start", "--to", "tracker-mek/v9"),
        "disabled --to kid": ("sweep", "start", "--to", V2),
        "unknown sweep id": ("sweep", "status", "sw-nope"),
        "options that do not go together": ("verify", "--expect", V3, "--current"),
        "--format and --json": ("sweep", "failures", "--format", "csv", "--json"),
        "--watch and --json": ("sweep", "status", "--watch", "--json"),
        "malformed setting": ("--redis-url", "http://x", "queue"),
    }
    for name, args in failed.items():
        code, _, err = reencrypt(*args)
        assert code == EXIT_FAILED, f"{name}: exit {code}\n{err}"
    for name, args in bad_input.items():
        code, _, err = reencrypt(*args)
        assert code == EXIT_BAD_INPUT, f"{name}: exit {code}\n{err}"
    code, _, err = reencrypt("sweep", "start", "--to", V3, REDIS_URL="redis://127.0.0.1:1/0")
    assert code == EXIT_UNAVAILABLE and "is unreachable" in err, err  # the broker did not answer: try again

    def interrupted(_settings):
        raise KeyboardInterrupt

    monkeypatch.setattr("tracker_reencrypt.fleet.store_queue", interrupted)
    assert reencrypt("queue")[0] == EXIT_INTERRUPTED  # Ctrl-C


def test_setting_errors_name_the_variable_or_the_flag(reencrypt):
    code, _, err = reencrypt("queue", REENCRYPT_BATCH_DOCUMENTS="0")
    assert code == EXIT_BAD_INPUT
    assert err.startswith("error: REENCRYPT_BATCH_DOCUMENTS is invalid: ") and "batch_documents" not in err
    code, _, err = reencrypt("queue", REDIS_URL="http://user:pw@x")
    assert err.startswith("error: REDIS_URL (or --redis-url) is invalid: must start with redis://")
    assert "pw" not in err  # never the value: a broker URL may carry a password
    code, _, err = reencrypt("--redis-url", "http://x", "queue")
    assert err.startswith("error: --redis-url is invalid")


# -- a corrupt keyring --------------------------------------------------------------------------


def test_a_corrupt_keyring_says_where_without_its_content(reencrypt, configured):
    assert reencrypt("keys", "init")[0] == EXIT_OK
    keyring = configured / "keyring.json"
    text = keyring.read_text()
    secret = json.loads(text)["keys"][0]["d"]
    cut = text.index(secret) + len(secret) // 2  # a truncated private member: unterminated string
    keyring.write_text(text[:cut])
    code, out, err = reencrypt("keys", "list")
    line = f"keyring file {keyring} is not a JWKS keyring this tool wrote: invalid JSON at line "
    assert code == EXIT_BAD_INPUT and err.startswith(f"error: {line}") and len(err.splitlines()) == 1, err
    assert re.search(r"line \d+, column \d+ \(Unterminated string starting at\)$", err.strip()), err
    assert secret[: len(secret) // 2][:16] not in out + err

    keyring.write_text('{"keys": [{"kty": "RSA"}]}')
    assert 'a key has no "kid"' in reencrypt("keys", "list")[2]
    keyring.write_bytes(b'{"keys": []}\xff')
    assert "not UTF-8 text (at byte 12)" in reencrypt("keys", "list")[2]


# -- JSON of seed, audit rows --------------------------------------------------------------------


def test_seed_json_gives_the_store_url_and_the_kid(reencrypt, configured):
    reencrypt("keys", "init")
    code, out, _ = reencrypt("seed", "--docs", "5", "--json")
    assert code == EXIT_OK
    assert json.loads(out) == {"documents": 5, "kid": V1, "store": f"sqlite:///{configured / 'tracker.db'}"}


def test_audit_rows_are_key_value_text(reencrypt, configured):
    reencrypt("keys", "init")
    reencrypt("seed", "--docs", "5")
    reencrypt("keys", "rotate")
    reencrypt("verify", "--expect", V2)
    code, out, _ = reencrypt("audit")
    assert code == EXIT_OK
    assert "kid=tracker-mek/v2" in out and "ok=false" in out and f"fields_by_kid.{V1}=" in out
    assert not re.search(r"[{}']|\bNone\b|\bTrue\b|\bFalse\b", out), out


def test_audit_details_flatten_quote_and_never_repr():
    assert audit_details(
        {
            "sweep_id": "sw-1",
            "source_kids": "all others",
            "products": None,
            "limits": {},
            "totals": {"documents_scanned": 60, "failures": 0},
            "failed_checks": ["key vault: tracker-mek", "store"],
            "forced": True,
        }
    ) == (
        'sweep_id=sw-1 source_kids="all others" products=- limits=- totals.documents_scanned=60 '
        'totals.failures=0 failed_checks="key vault: tracker-mek",store forced=true'
    )


# -- the worker's metrics directory ------------------------------------------------------------


def test_worker_starts_reuse_one_metrics_directory_per_node_name(monkeypatch, tmp_path):
    """Each start empties and reuses $REENCRYPT_HOME/metrics/<node name> (reencrypt worker execs
    into Celery: nothing of ours runs after it to remove a directory); without a metrics port
    there is no directory at all, and nothing is made in the system's temp directory."""
    monkeypatch.setenv("REENCRYPT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(Context, "redis_url", "redis://127.0.0.1:6379/0")  # no broker needed here
    became: list[dict[str, str]] = []
    monkeypatch.setattr(launch.os, "execvpe", lambda path, argv, env: became.append(env))
    env = {"REENCRYPT_STORE": f"sqlite:///{tmp_path / 'tracker.db'}", "REENCRYPT_KEYS": "local:keyring.json"}
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("reencrypt-metrics-*"))

    def start(*args: str) -> dict[str, str]:
        result = CliRunner().invoke(app, ["worker", *args], env=env)
        assert result.exit_code == 0 and became, result.output
        return became.pop()

    first = Path(start("--metrics-port", "9999", "-n", "blue@%h")["PROMETHEUS_MULTIPROC_DIR"])
    assert first.parent == (tmp_path / "home" / "metrics").resolve() and first.name.startswith("blue@")
    (first / "counter_4242.db").write_bytes(b"an earlier run's samples")
    # While that worker runs (here: while this process holds what its exec would have), a second
    # worker of the same name is refused before it touches the running one's samples.
    twin = CliRunner().invoke(app, ["worker", "--metrics-port", "9998", "-n", "blue@%h"], env=env)
    assert isinstance(twin.exception, ConfigError) and twin.exception.exit_code == 2  # main() exits with it
    assert "already runs on this host" in str(twin.exception) and "-n NAME@%h" in str(twin.exception)
    assert [p.name for p in first.iterdir()] == ["counter_4242.db"]
    launch.release_metrics_dir(first)  # the worker exited
    again = Path(start("--metrics-port", "9999", "-n", "blue@%h")["PROMETHEUS_MULTIPROC_DIR"])
    assert again == first and list(first.iterdir()) == []
    other = Path(start("--metrics-port", "9999", "-n", "green@%h")["PROMETHEUS_MULTIPROC_DIR"])
    assert other != first
    assert "PROMETHEUS_MULTIPROC_DIR" not in start()  # no metrics served: no sample files
    assert sorted(p.name for p in first.parent.iterdir() if p.is_dir()) == sorted([first.name, other.name])
    for directory in (first, other):
        launch.release_metrics_dir(directory)
    assert set(temp.glob("reencrypt-metrics-*")) == before


def test_the_readme_shows_the_exit_code_table():
    """The README's command reference and errors.py's docstring give the same codes."""
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", readme, re.M))
    assert sorted(map(int, table)) == [EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNAVAILABLE, EXIT_INTERRUPTED]
    assert "disabled" in table["2"] and "--mode" in table["2"] and "try again" in table["3"]
