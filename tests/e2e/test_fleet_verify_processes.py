"""`verify --fleet` as an operator runs it: real Redis, real `celery worker` processes, the real CLI.

A verify sweep must say exactly what one-process `verify` says (minus its sweep id), on a passing
container and on a failing one; be the proof `keys disable` needs; never count as a sweep that
writes; go on running when its follower is interrupted, its result collected later once; and
count every document exactly once when a worker dies under it.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tracker_reencrypt import envelope
from tracker_reencrypt.documents import location
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.sweep.state import SweepState

from conftest import ROOT, run_cli, wait_for

pytestmark = pytest.mark.slow

EVERYTHING = {"epk_min": 0, "epk_max": 2**32}


def cli(rotation, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    result = run_cli(*args, env=rotation.env(), timeout=120)
    assert result.returncode == code, f"reencrypt {' '.join(args)} exited {result.returncode}: {result.stderr}"
    return result


def verify(rotation, *args: str, code: int = 0) -> dict:
    return json.loads(cli(rotation, "verify", *args, "--json", code=code).stdout)


def same_result(fleet: dict, one_process: dict) -> None:
    assert fleet["sweep_id"].startswith("sw-")
    assert {name: value for name, value in fleet.items() if name != "sweep_id"} == one_process


def sweep_to_v2(rotation) -> None:
    cli(rotation, "sweep", "start", "--to", rotation.v2, "--slices", "4", "--wait", "--json")


def audit(rotation) -> list[dict]:
    return json.loads(cli(rotation, "audit", "--json").stdout)


def all_documents(rotation) -> list:
    return rotation.store().scan(EVERYTHING, None, 10_000).documents


def test_a_fleet_verify_passes_as_one_process_verify_does_and_is_the_proof_keys_disable_needs(rotation, fleet):
    fleet.start(count=2)
    sweep_to_v2(rotation)

    on_fleet = verify(rotation, "--expect", rotation.v2, "--fleet", "--slices", "4")
    assert on_fleet["ok"] and on_fleet["documents"] == rotation.documents
    # The fleet's verify is the only one in the trail: the gate takes it as proof.
    cli(rotation, "keys", "disable", rotation.v1)
    same_result(on_fleet, verify(rotation, "--expect", rotation.v2))

    trail = [(entry["action"], entry["details"].get("sweep_id")) for entry in audit(rotation)]
    sweep_id = on_fleet["sweep_id"]
    assert (
        trail.index(("verify started", sweep_id))
        < trail.index(("verify", sweep_id))
        < trail.index(("key disabled", None))
    )
    assert trail.count(("verify", sweep_id)) == 1


def test_lagging_and_tampered_fields_fail_it_with_the_same_counts_and_examples(rotation, fleet):
    fleet.start(count=2)
    sweep_to_v2(rotation)
    store, keyring = rotation.store(), Keyring(rotation.provider())
    documents = all_documents(rotation)
    lagging, victim = documents[7], next(d for d in documents if d.body["type"] == "item")
    late = json.loads(json.dumps(lagging.body))  # the tracker wrote a field under the old version
    late["lateNote"] = envelope.encrypt("late", location(late, late["productId"], ("lateNote",)), keyring, rotation.v1)
    store.replace(late, lagging.etag)
    tampered = json.loads(json.dumps(victim.body))
    raw = bytearray(envelope.b64decode(tampered["description"]["ct"], "ct"))
    raw[3] ^= 1
    tampered["description"]["ct"] = envelope.b64encode(bytes(raw))
    store.replace(tampered, victim.etag)

    on_fleet = verify(rotation, "--expect", rotation.v2, "--fleet", "--slices", "4", code=1)
    same_result(on_fleet, verify(rotation, "--expect", rotation.v2, code=1))
    assert on_fleet["off_target"] == 1 and on_fleet["fields_by_kid"][rotation.v1] == 1
    assert on_fleet["lagging_products"] == {lagging.body["productId"]: 1}
    assert on_fleet["undecryptable"] == 1
    assert on_fleet["undecryptable_examples"] == [
        {
            "document_id": victim.id,
            "partition_key": victim.body["productId"],
            "field_path": "/description",
            "reason": "authentication_failed",
        }
    ]
    failures = json.loads(cli(rotation, "sweep", "failures", on_fleet["sweep_id"], "--format", "json").stdout)
    assert [(f["document_id"], f["field_path"]) for f in failures] == [(victim.id, "/description")]
    assert rotation.store().read(victim.id, victim.body["productId"]).body == tampered  # read, never rewritten


def test_ctrl_c_leaves_the_verify_sweep_running_it_never_holds_the_gate_and_its_result_is_collected_once(
    rotation, fleet, tmp_path
):
    fleet.start(count=1)
    sweep_to_v2(rotation)
    verify(rotation, "--expect", rotation.v2)  # the proof, one process
    fleet.stop()  # no worker: the verify sweep waits in the queue

    errors = tmp_path / "follower.err"
    with errors.open("wb") as stderr:
        follower = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "verify", "--current", "--fleet", "--slices", "2"],
            cwd=ROOT,
            env=rotation.env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            wait_for(lambda: "following sweep" in errors.read_text(), 30, message="the follower following")
            follower.send_signal(signal.SIGINT)  # Ctrl-C
            assert follower.wait(30) == 130
        finally:
            if follower.poll() is None:
                follower.kill()
    said = errors.read_text()
    sweep_id = re.search(r"verify sweep (sw-\S+) started", said).group(1)
    assert f"verify sweep {sweep_id} goes on running" in said and f"reencrypt verify --sweep {sweep_id}" in said
    assert json.loads(cli(rotation, "sweep", "status", sweep_id, "--json").stdout)["sweep"]["status"] == "running"

    # A sweep towards "current" still running would hold the gate; a verify sweep does not.
    cli(rotation, "keys", "disable", rotation.v1)

    fleet.start(count=1)
    collected = verify(rotation, "--sweep", sweep_id)
    assert collected["ok"] and collected["sweep_id"] == sweep_id and collected["expect"] == "current"
    assert verify(rotation, "--sweep", sweep_id) == collected
    verifies = [e for e in audit(rotation) if e["action"] == "verify" and e["details"].get("sweep_id") == sweep_id]
    assert len(verifies) == 1


def pool_owners(process) -> set[str]:
    """Lease owner names of a worker's pool processes (as worker.runtime spells them)."""
    return {f"{socket.gethostname()}:{child.pid}" for child in psutil.Process(process.pid).children(recursive=True)}


def test_a_worker_killed_mid_verify_leaves_the_counts_exact(rotation, fleet):
    doomed, _ = fleet.start(count=2)
    follower = subprocess.Popen(
        [sys.executable, "-m", "coordinator.cli", "verify", "--expect", rotation.v1, "--fleet"]
        + ["--slices", "6", "--rate", "100", "--json"],
        cwd=ROOT,
        env=rotation.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        state = SweepState(rotation.store().records())

        def doomed_holds_a_slice_mid_verify() -> bool:
            sweeps = state.sweeps()
            if not sweeps:
                return False
            slices, now = state.slices(sweeps[-1].id), time.time()
            held = {piece.lease_owner for piece in slices if piece.lease_is_live(now)}
            return bool(held & pool_owners(doomed)) and sum(piece.counts["documents_scanned"] for piece in slices) > 0

        wait_for(doomed_holds_a_slice_mid_verify, 30, 0.05, message="the doomed worker holding a slice mid-verify")
        fleet.kill(doomed)
        fleet.start(count=1)  # the operator replaces it
        out, err = follower.communicate(timeout=90)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err + fleet.logs()[-3000:]
    on_fleet = json.loads(out)
    # The dead worker's lease expired and its slice was sent again: its batch was checked twice, counted once.
    assert any(piece.rescued_fence is not None for piece in state.slices(on_fleet["sweep_id"]))
    assert on_fleet["documents"] == rotation.documents
    same_result(on_fleet, verify(rotation, "--expect", rotation.v1))
