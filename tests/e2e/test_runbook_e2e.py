"""The runbook's rotations (one product, every product) and its rollback run end to end exactly as written.

Each procedure is the runbook's ```sh blocks of its sections, in order (tests/runbook_blocks.py),
run in one ``bash -euo pipefail`` (plus -x, for the trace when a step fails) with ``reencrypt`` on
PATH, the environment an operator sets from the conventions block (per-product keys
``tracker-mek-{productId}``, ``TRACKER_ENV``, ``PRODUCT``), real workers, Redis and a SQLite
store. ``TRACKER_ENV`` is the tracker-service's dotenv file: it starts with the tracker's own
lines and each product's current id, as a deployed tracker's would; the test checks that the
steps change exactly the lines of the products concerned. The rollback runs in a new shell, as
an operator coming back to the change would: it reads the previous id from the
mek-rotation.previous.env the rotation left in the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracker_reencrypt.documents import check_document
from tracker_reencrypt.keys import open_key_provider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.state import SweepState

from conftest import Fleet, Rotation, run_cli, wait_for
from runbook_blocks import ALL_PRODUCTS, ONE_PRODUCT, ROLLBACK_SECTIONS, procedure

pytestmark = pytest.mark.slow

KEY_NAME = "tracker-mek-{productId}"
PRODUCTS = [f"product-{n:03d}" for n in range(4)]
PRODUCT = "product-002"  # the product rotated alone, then rolled back
DOCUMENTS = 300
#: Small pages: a sweep held to a few documents/s (the mid-sweep rollback) waits for its rate
#: page by page, each wait well within the workers' 4 s lease.
PAGE = 5
BIN = Path(sys.executable).parent  # the venv's bin: python and the `reencrypt` console script
#: The tracker-service's own lines, which no step may touch (an export, a comment, a blank line).
TRACKER_OWN = (
    "# tracker-service, deployed by its pipeline\nCOSMOS_ENDPOINT=https://tracker.example\n\nexport LOG_LEVEL=info\n"
)


def kid(product: str, version: int) -> str:
    return f"tracker-mek-{product}/v{version}"


def variable(product: str) -> str:
    return "TRACKER_MEK_ID_" + product.upper().replace("-", "_")


@dataclasses.dataclass
class Operator:
    """A seeded container of four products, each under its own key's v1 (the state before section
    1), the tracker-service's dotenv file, its workers, and a shell."""

    rotation: Rotation
    fleet: Fleet
    workdir: Path

    @property
    def tracker_env(self) -> Path:
        return self.workdir / "tracker.env"

    def env(self) -> dict[str, str]:
        return self.rotation.env(
            REENCRYPT_KEY_NAME=KEY_NAME,
            REENCRYPT_ACTOR="runbook e2e (change CHG-TEST)",
            TRACKER_ENV=str(self.tracker_env),
            PRODUCT=PRODUCT,
            QUIET_FOR="2",  # no tracker writes here: the wait only has to outlast the grace
            # The comparisons judge timings of this busy machine (two test processes and their
            # workers), where two slow unwraps of 20 read as +800%: the gate's verdicts are tested
            # on given figures (tests/unit/test_baseline.py); here the commands as written.
            REENCRYPT_COMPARE_TOLERANCE="2000",
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )

    def run(self, sections: tuple[int, ...], *, until: str | None = None) -> subprocess.CompletedProcess:
        script = procedure(sections, until=until)
        assert script.strip(), f"no ```sh step in sections {sections} of the runbook"
        result = subprocess.run(
            ["bash", "-euxo", "pipefail", "-c", script],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        # The transcript stays in the test's tmp dir, to read what each step printed.
        name = "-".join(map(str, sections)) + ("-part" if until else "")
        (self.workdir / f"sections-{name}.log").write_text(self.explain(result))
        assert result.returncode == 0, self.explain(result)
        return result

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        result = run_cli(*args, env=self.env())
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def versions(self) -> dict[str, tuple[bool, bool]]:
        """Every product's key versions: kid -> (enabled, current)."""
        root = open_key_provider(self.rotation.keys_url, KEY_NAME)
        return {
            v.kid: (v.enabled, v.current)
            for product in PRODUCTS
            for v in root.for_key(f"tracker-mek-{product}").versions()
        }

    def documents(self) -> dict[tuple[str, str], tuple[str, dict]]:
        """Every document by (product, id): its ETag and body."""
        store = SqliteStore(self.rotation.home / "tracker.db")
        try:
            page = store.scan({"epk_min": 0, "epk_max": 2**32}, None, 10_000)
        finally:
            store.close()
        assert page.continuation is None
        return {(d.body["productId"], d.id): (d.etag, d.body) for d in page.documents}

    def assert_fields_on(self, expected: dict[str, str]) -> None:
        """Each product's every field on ``expected[product]`` and decrypting there; no document lost."""
        keyring, documents, fields = Keyring(open_key_provider(self.rotation.keys_url, KEY_NAME)), 0, set()
        for (product, document_id), (_, body) in self.documents().items():
            documents += 1
            for check in check_document(body, product, keyring):
                fields.add(product)
                assert check.kid == expected[product] and check.decrypts, (product, document_id, check)
        assert documents == DOCUMENTS and fields == set(PRODUCTS)

    def assert_tracker_env(self, expected: dict[str, str]) -> None:
        """The tracker's own lines kept byte for byte, each product's line holding its kid."""
        text = self.tracker_env.read_text()
        assert text.startswith(TRACKER_OWN), text
        assert text[len(TRACKER_OWN) :] == "".join(f"{variable(p)}={expected[p]}\n" for p in PRODUCTS), text

    def audit_actions(self) -> list[str]:
        """The audit trail's actions, each key operation with the product it names."""
        entries = json.loads(self.cli("audit", "--json").stdout)
        return [
            f"{e['action']} {e['details']['product']}" if e["action"].startswith("key ") else e["action"]
            for e in entries
        ]

    def explain(self, result: subprocess.CompletedProcess) -> str:
        return (
            f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n"
            f"--- workers\n{self.fleet.logs()[-3000:]}"
        )


@pytest.fixture
def operator(tmp_path, redis_url):
    """`seed` through the CLI (it creates each product's key), the tracker's dotenv file holding
    each product's current id, two workers running."""
    home = tmp_path / "tracker"
    home.mkdir()
    rotation = Rotation(
        home, f"sqlite:///{home / 'tracker.db'}", f"local:{home / 'keyring.json'}", "", "", DOCUMENTS, redis_url
    )
    workdir = tmp_path / "operator"
    workdir.mkdir()
    fleet = Fleet(rotation, tmp_path / "logs")
    fleet.log_dir.mkdir()
    operator = Operator(rotation, fleet, workdir)
    operator.cli("seed", "--docs", str(DOCUMENTS), "--products", str(len(PRODUCTS)))
    operator.tracker_env.write_text(TRACKER_OWN)
    operator.cli("keys", "env", "--all-products", "--env-file", str(operator.tracker_env))
    operator.assert_tracker_env({p: kid(p, 1) for p in PRODUCTS})
    fleet.start(count=2, REENCRYPT_KEY_NAME=KEY_NAME, REENCRYPT_PAGE_SIZE=str(PAGE))
    fleet.wait_answering(2)  # section 1's preflight counts them
    yield operator
    fleet.stop()


def previous_record(operator: Operator) -> str:
    return (operator.workdir / "mek-rotation.previous.env").read_text()


def others_of(documents: dict) -> dict:
    """The documents of every product but PRODUCT, with their ETags and bodies."""
    return {key: value for key, value in documents.items() if key[0] != PRODUCT}


def contains_in_order(actions: list, expected: list) -> bool:
    remaining = iter(actions)
    return all(action in remaining for action in expected)


def test_one_product_then_every_product_then_rollback_as_written(operator):
    others = [p for p in PRODUCTS if p != PRODUCT]
    before = operator.documents()

    # Section 2: PRODUCT alone. Only its documents are written; its previous version is disabled.
    operator.run(ONE_PRODUCT)
    assert previous_record(operator) == f"{variable(PRODUCT)}={kid(PRODUCT, 1)}\n"
    assert (operator.workdir / "mek-rotation.tracker.env").read_text() == TRACKER_OWN + "".join(
        f"{variable(p)}={kid(p, 1)}\n" for p in PRODUCTS
    )
    expected = {p: kid(p, 1) for p in others} | {PRODUCT: kid(PRODUCT, 2)}
    operator.assert_fields_on(expected)
    operator.assert_tracker_env(expected)
    assert others_of(operator.documents()) == others_of(before)  # not one write outside PRODUCT
    assert operator.versions() == {kid(p, 1): (True, True) for p in others} | {
        kid(PRODUCT, 1): (False, False),
        kid(PRODUCT, 2): (True, True),
    }

    # Section 3: every product, from each one's current version.
    operator.run(ALL_PRODUCTS)
    assert previous_record(operator) == "".join(f"{variable(p)}={expected[p]}\n" for p in PRODUCTS)
    rotated = {p: kid(p, 2) for p in others} | {PRODUCT: kid(PRODUCT, 3)}
    operator.assert_fields_on(rotated)
    operator.assert_tracker_env(rotated)
    assert operator.versions() == {
        **{kid(p, 1): (False, False) for p in others},
        **{kid(p, 2): (True, True) for p in others},
        kid(PRODUCT, 1): (False, False),
        kid(PRODUCT, 2): (False, False),
        kid(PRODUCT, 3): (True, True),
    }
    after_all = operator.documents()

    # Section 4 in a new shell: PRODUCT back to the id it had before the scheduled rotation.
    operator.run(ROLLBACK_SECTIONS)
    rolled_back = rotated | {PRODUCT: kid(PRODUCT, 2)}
    operator.assert_fields_on(rolled_back)
    operator.assert_tracker_env(rolled_back)
    assert others_of(operator.documents()) == others_of(after_all)
    versions = operator.versions()
    assert (versions[kid(PRODUCT, 2)], versions[kid(PRODUCT, 3)]) == ((True, True), (False, False))
    assert all(versions[kid(p, 2)] == (True, True) for p in others)

    operator.cli("audit", "--check")
    actions = operator.audit_actions()
    assert contains_in_order(
        actions,
        [
            "verify",
            f"key rotated {PRODUCT}",
            "sweep started",
            "sweep completed",
            "verify",
            f"key disabled {PRODUCT}",
            "verify",
            *[f"key rotated {p}" for p in PRODUCTS],
            "sweep started",
            "sweep completed",
            "verify",
            *[f"key disabled {p}" for p in PRODUCTS],
            f"key enabled {PRODUCT}",
            f"key promoted {PRODUCT}",
            "sweep started",
            "sweep completed",
            "verify",
            f"key disabled {PRODUCT}",
        ],
    ), actions


def test_rollback_while_the_product_sweep_runs(operator):
    """Section 4 from the middle of section 2's sweep: its guarded cancel stops the sweep, then the
    rest runs as after a finished rotation (the previous version was never disabled: enabling it
    again is harmless)."""
    operator.run(ONE_PRODUCT, until="reencrypt sweep start")
    operator.assert_tracker_env({p: kid(p, 1) for p in PRODUCTS} | {PRODUCT: kid(PRODUCT, 2)})
    forward = operator.cli("sweep", "start", "--to", "current", "--product", PRODUCT, "--rate", "6", "--json")
    sweep_id = json.loads(forward.stdout)["id"]
    state = SweepState(operator.rotation.store().records())
    wait_for(
        lambda: sum(s.counts.get("documents_written", 0) for s in state.slices(sweep_id)) > 0,
        60,
        message="the forward sweep to move some documents",
    )

    operator.run(ROLLBACK_SECTIONS)
    assert state.get_sweep(sweep_id).status == "cancelled"
    operator.assert_fields_on({p: kid(p, 1) for p in PRODUCTS})
    operator.assert_tracker_env({p: kid(p, 1) for p in PRODUCTS})
    versions = operator.versions()
    assert (versions[kid(PRODUCT, 1)], versions[kid(PRODUCT, 2)]) == ((True, True), (False, False))
    operator.cli("audit", "--check")
