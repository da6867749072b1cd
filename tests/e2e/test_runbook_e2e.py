"""The runbook's rotation (sections 1-5) and rollback (section 6) run end to end exactly as written.

Each procedure is the runbook's ```sh blocks in order (tests/runbook_blocks.py), run in one
``bash -euo pipefail`` (plus -x, for the trace when a step fails) with ``reencrypt`` on PATH, the
environment an operator sets from the conventions block, and real workers, Redis and SQLite
store. The rollback runs in a second shell, as an operator coming back to the change would: it
reads OLD and NEW from the mek-rotation.env the rotation left in the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracker_reencrypt.sweep.state import SweepState

from conftest import Fleet, Rotation, assert_every_field_on, run_cli, wait_for
from runbook_blocks import ROLLBACK_SECTIONS, ROTATION_SECTIONS, procedure

pytestmark = pytest.mark.slow

DOCUMENTS = 300
BIN = Path(sys.executable).parent  # the venv's bin: python and the `reencrypt` console script


@dataclasses.dataclass
class Operator:
    """A seeded container under OLD only (the state before section 1), its workers, and a shell."""

    rotation: Rotation
    fleet: Fleet
    workdir: Path

    def run(self, sections: tuple[int, ...]) -> subprocess.CompletedProcess:
        script = procedure(sections)
        assert script.strip(), f"no ```sh step in sections {sections} of the runbook"
        env = self.rotation.env(
            REENCRYPT_ACTOR="runbook e2e (change CHG-TEST)", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        )
        result = subprocess.run(
            ["bash", "-euxo", "pipefail", "-c", script],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        # The transcript stays in the test's tmp dir, to read what each step printed.
        (self.workdir / f"sections-{'-'.join(map(str, sections))}.log").write_text(self.explain(result))
        return result

    def versions(self) -> dict[str, dict]:
        return {v.kid: {"enabled": v.enabled, "current": v.current} for v in self.rotation.provider().versions()}

    def recorded(self) -> dict[str, str]:
        """OLD and NEW as the runbook recorded them for the rollback."""
        lines = (self.workdir / "mek-rotation.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def audit_actions(self) -> list[str]:
        result = run_cli("audit", "--json", env=self.rotation.env())
        assert result.returncode == 0, result.stderr
        return [entry["action"] for entry in json.loads(result.stdout)]

    def explain(self, result: subprocess.CompletedProcess) -> str:
        return (
            f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n"
            f"--- workers\n{self.fleet.logs()[-3000:]}"
        )


@pytest.fixture
def operator(tmp_path, redis_url):
    """`keys init` and `seed` through the CLI (the runbook itself rotates), two workers running."""
    home = tmp_path / "tracker"
    home.mkdir()
    rotation = Rotation(
        home, f"sqlite:///{home / 'tracker.db'}", f"local:{home / 'keyring.json'}", "", "", DOCUMENTS, redis_url
    )
    for argv in (("keys", "init"), ("seed", "--docs", str(DOCUMENTS))):
        result = run_cli(*argv, env=rotation.env())
        assert result.returncode == 0, result.stderr
    rotation.v1 = rotation.provider().current_kid()
    fleet = Fleet(rotation, tmp_path / "logs")
    fleet.log_dir.mkdir()
    fleet.start(count=2)
    workdir = tmp_path / "operator"
    workdir.mkdir()
    yield Operator(rotation, fleet, workdir)
    fleet.stop()


def contains_in_order(actions: list[str], expected: list[str]) -> bool:
    remaining = iter(actions)
    return all(action in remaining for action in expected)


def test_rotation_then_rollback_as_written(operator):
    old = operator.rotation.v1

    rotated = operator.run(ROTATION_SECTIONS)
    assert rotated.returncode == 0, operator.explain(rotated)
    recorded = operator.recorded()
    new = recorded["NEW"]
    assert recorded["OLD"] == old and new != old
    assert operator.versions() == {old: {"enabled": False, "current": False}, new: {"enabled": True, "current": True}}
    assert_every_field_on(operator.rotation, new)

    rolled_back = operator.run(ROLLBACK_SECTIONS)
    assert rolled_back.returncode == 0, operator.explain(rolled_back)
    assert operator.versions() == {old: {"enabled": True, "current": True}, new: {"enabled": False, "current": False}}
    assert_every_field_on(operator.rotation, old)

    check = run_cli("audit", "--check", env=operator.rotation.env())
    assert check.returncode == 0, check.stdout + check.stderr
    assert contains_in_order(
        operator.audit_actions(),
        [
            "verify",
            "key rotated",
            "sweep started",
            "sweep completed",
            "verify",
            "key disabled",
            "key enabled",
            "key promoted",
            "sweep started",
            "sweep completed",
            "verify",
            "key disabled",
        ],
    ), operator.audit_actions()


def test_rollback_while_the_forward_sweep_runs(operator):
    """Section 6 from mid-sweep: its guarded cancel stops the forward sweep, then the rest runs as
    after a finished rotation (OLD was never disabled: enabling it again is harmless)."""
    old = operator.rotation.v1
    rotated = operator.run((1, 2))
    assert rotated.returncode == 0, operator.explain(rotated)
    new = operator.recorded()["NEW"]
    forward = run_cli("sweep", "start", "--to", new, "--rate", "25", "--json", env=operator.rotation.env())
    assert forward.returncode == 0, forward.stderr
    sweep_id = json.loads(forward.stdout)["sweep_id"]
    state = SweepState(operator.rotation.store().records())
    wait_for(
        lambda: sum(s.counts.get("documents_written", 0) for s in state.slices(sweep_id)) > 0,
        60,
        message="the forward sweep to move some documents",
    )

    rolled_back = operator.run(ROLLBACK_SECTIONS)
    assert rolled_back.returncode == 0, operator.explain(rolled_back)
    assert state.get_sweep(sweep_id).status == "cancelled"
    assert operator.versions() == {old: {"enabled": True, "current": True}, new: {"enabled": False, "current": False}}
    assert_every_field_on(operator.rotation, old)
    check = run_cli("audit", "--check", env=operator.rotation.env())
    assert check.returncode == 0, check.stdout + check.stderr
