"""Issue 13's fleet cases, end to end: real Redis, real worker processes, the real CLI.

Each test reproduces one case of the issue as an operator met it and checks what they would
notice: a cancel that settles (case 2), workers of another store that leave this sweep alone
(case 4), broken workers that say so and a vault outage the sweep rides out (case 5), a
killed worker's slice taken over within its lease (case 10), no flood of do-nothing tasks
from `sweep start --wait` (case 11), and Ctrl-C on `--wait` saying what goes on (case 6).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from test_sweep_fleet import all_documents, cli_json, pool_owners, start_sweep

from tracker_reencrypt.config import load_settings
from tracker_reencrypt.errors import ConflictError
from tracker_reencrypt.fleet import PROCESS_SLICE, STALL_S, make_celery, pending_messages
from tracker_reencrypt.seed import seed_store, seeding_keyring
from tracker_reencrypt.stores import store_fingerprint
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.state import SLICE, SWEEP

from conftest import (
    FAST_RECOVERY,
    ROOT,
    Rotation,
    TaskEvents,
    assert_every_field_on,
    free_port,
    loopback_get,
    make_rotation,
    run_cli,
    wait_for,
)
from keyvault_server import KeyVaultServer
from loopback_vault import open_provider

pytestmark = pytest.mark.slow

#: A worker log line for each message a worker handled (worker/app.py).
OUTCOME = re.compile(r"slice (sw-[\w-]+)/(\d+): (.+)$", re.MULTILINE)
#: The statuses `sweep status` shows for a sweep that will not change again.
FINISHED = ("cancelled", "completed", "failed")


# -- helpers ---------------------------------------------------------------------------------


class Stored:
    """A sweep's records as the store keeps them (the JSON the workers and the CLI share),
    read directly: cheap enough to poll every fraction of a second."""

    def __init__(self, rotation: Rotation, sweep_id: str | None = None) -> None:
        self.rotation = rotation
        self.records = rotation.store().records()
        self.sweep_id = sweep_id

    def find_sweep(self, timeout: float = 30) -> str:
        """The id of the store's one sweep, once a command has written it."""
        self.sweep_id = wait_for(
            lambda: next((body["id"] for _, body, _ in self.records.list(SWEEP)), None),
            timeout,
            0.05,
            message="the sweep to be recorded",
        )
        return self.sweep_id

    def sweep(self) -> dict:
        return self.records.get(SWEEP, self.sweep_id)[0]

    def status(self) -> str:
        return self.sweep()["status"]

    def slices(self) -> list[dict]:
        return [body for _, body, _ in self.records.list(SLICE, prefix=f"{self.sweep_id}/")]

    def scanned(self) -> int:
        return sum(body["counts"].get("documents_scanned", 0) for body in self.slices())

    def live_leases(self) -> set[str]:
        now = time.time()
        return {body["lease_owner"] for body in self.slices() if body["lease_owner"] and body["lease_expires"] > now}

    def describe(self) -> str:
        slices = [
            (s["index"], s["done"], s["fence"], s["lease_owner"], s["counts"].get("documents_scanned"))
            for s in self.slices()
        ]
        return f"sweep {self.sweep()}, slices (index, done, fence, lease, scanned): {slices}"

    def wait_finished(self, timeout: float, logs=lambda: "") -> dict:
        """Wait for the sweep to end; returns `sweep status --json`."""
        try:
            wait_for(lambda: self.status() in FINISHED, timeout, 0.3, message=f"sweep {self.sweep_id} to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}\n{logs()[-4000:]}") from None
        return cli_json(self.rotation, "sweep", "status", self.sweep_id, "--json")


@dataclass
class Spawned:
    """A process of ours in its own session (so its whole group can be stopped), output in ``log``."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def spawn(tmp_path):
    """spawn(name, argv, env) -> Spawned; everything spawned is stopped at the end of the test."""
    started: list[Spawned] = []

    def spawn_one(name: str, argv: list[str], env: dict[str, str]) -> Spawned:
        log = tmp_path / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started.append(Spawned(process, log))
        return started[-1]

    yield spawn_one
    for spawned in started:
        spawned.stop()


def cli_worker(*options: str) -> list[str]:
    """`reencrypt worker` as an operator (and the Kubernetes manifest) starts it."""
    return [sys.executable, "-m", "coordinator.cli", "worker", *options]


def wait_ready(worker: Spawned, timeout: float = 30) -> None:
    try:
        wait_for(
            lambda: " ready." in worker.output() or worker.process.poll() is not None,
            timeout,
            message="the worker to say ready",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.output()[-3000:]}") from None
    assert worker.process.poll() is None, worker.output()[-3000:]


def snapshot(rotation: Rotation) -> dict[str, tuple[str, str]]:
    """{document id: (ETag, body as stored)} of every document of a container."""
    store = rotation.store()
    try:
        return {doc.id: (doc.etag, json.dumps(doc.body, sort_keys=True)) for doc in all_documents(store)}
    finally:
        store.close()


def outcomes(log: str, sweep_id: str) -> list[str]:
    """What each message of the sweep came to, in the order the worker logged them."""
    return [outcome for found, _, outcome in OUTCOME.findall(log) if found == sweep_id]


# -- case 2: a cancel settles ----------------------------------------------------------------

#: A worker whose one batch covers a whole slice (150 documents here).
WHOLE_SLICE_BATCHES = {
    "REENCRYPT_BATCH_DOCUMENTS": "1000",
    "REENCRYPT_BATCH_SECONDS": "20",
    "REENCRYPT_LEASE_SECONDS": "40",
}


def test_cancel_settles_to_cancelled_audits_both_steps_and_frees_the_container(rotation, fleet):
    # The stuck path: at the cancel, one worker is in a batch that will end its slice
    # while the other drops every queued message (the sweep is cancelling) and stops. The
    # batch ending its slice is then the last task there is: it must settle the cancel.
    long, _ = fleet.start(count=1, **WHOLE_SLICE_BATCHES)[0], fleet.start(count=1)
    sweep_id = start_sweep(rotation, "--slices", "4", "--rate", "50")
    stored = Stored(rotation, sweep_id)
    wait_for(
        lambda: stored.scanned() > 0 and stored.live_leases() & pool_owners(long),
        30,
        0.05,
        message="the first batch committed and a whole-slice batch in hand",
    )

    asked = cli_json(rotation, "sweep", "cancel", sweep_id, "--json")
    assert asked["status"] == "cancelling", asked["status"]
    # No second 'sweep cancel': the workers' own tasks settle it.
    stored.wait_finished(30, fleet.logs)
    assert stored.status() == "cancelled", stored.describe()
    assert not all(body["done"] for body in stored.slices())

    again = run_cli("sweep", "start", "--to", rotation.v2, "--rate", "50", "--json", env=rotation.env())
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)["id"]
    assert second != sweep_id

    trail = cli_json(rotation, "audit", "--json")
    ours = [entry["action"] for entry in trail if entry["details"].get("sweep_id") == sweep_id]
    assert ours == ["sweep started", "sweep cancel requested", "sweep cancelled"], ours
    cli_json(rotation, "sweep", "cancel", second, "--json")


# -- case 4: workers of another store --------------------------------------------------------


def test_a_worker_of_another_store_leaves_the_sweep_and_its_own_container_alone(rotation, fleet, spawn, tmp_path):
    other = make_rotation(tmp_path / "other", 100, rotation.redis_url)
    before = snapshot(other)
    foreign = spawn("foreign-worker", cli_worker(), other.env(**FAST_RECOVERY))
    wait_ready(foreign)
    fleet.start(count=1)

    sweep_id = start_sweep(rotation, "--slices", "4")
    final = Stored(rotation, sweep_id).wait_finished(60, fleet.logs)
    assert final["sweep"]["status"] == "completed", final["sweep"]
    assert final["totals"]["documents_scanned"] == rotation.documents
    assert_every_field_on(rotation, rotation.v2)

    log = foreign.output()
    assert foreign.process.poll() is None, log[-3000:]
    assert sweep_id not in log and "Traceback" not in log, log[-3000:]
    assert snapshot(other) == before


def test_a_message_delivered_to_another_stores_worker_is_forwarded_not_lost(rotation, fleet, spawn, tmp_path):
    other = make_rotation(tmp_path / "other", 100, rotation.redis_url)
    before = snapshot(other)
    foreign = spawn("foreign-worker", cli_worker(), other.env(**FAST_RECOVERY))
    wait_ready(foreign)
    ours, theirs = rotation.queue(), other.queue()
    assert ours != theirs

    slices = 3
    sweep_id = start_sweep(rotation, "--slices", str(slices))
    client = redis.Redis.from_url(rotation.redis_url)
    # The start's own messages are taken away; the only ones left are on the other store's
    # queue (a queue shared by hand, or messages from before the queues were per store).
    assert client.delete(ours) == 1 and pending_messages(client, ours) == (0, 0)
    their_app = make_celery(load_settings(store=other.store_url, redis_url=rotation.redis_url), rotation.redis_url)
    for index in range(slices):
        their_app.send_task(
            PROCESS_SLICE,
            args=[sweep_id, index, 0],
            kwargs={"store": store_fingerprint(rotation.store_url)},
            queue=theirs,
        )

    try:
        wait_for(
            lambda: len(outcomes(foreign.output(), sweep_id)) == slices,
            30,
            message="the other store's worker to handle the misrouted messages",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{foreign.output()[-3000:]}") from None
    assert outcomes(foreign.output(), sweep_id) == ["forwarded to its own store's queue"] * slices
    assert pending_messages(client, ours)[0] == slices

    fleet.start(count=1)  # our own worker, on our queue
    final = Stored(rotation, sweep_id).wait_finished(60, fleet.logs)
    assert final["sweep"]["status"] == "completed", final["sweep"]
    assert_every_field_on(rotation, rotation.v2)
    assert "Traceback" not in foreign.output()
    assert snapshot(other) == before


# -- case 5: permanent and transient problems ------------------------------------------------


@pytest.mark.parametrize("broken", ["keyring file", "store"])
def test_a_worker_with_a_broken_configuration_exits_naming_the_problem(rotation, spawn, tmp_path, broken):
    if broken == "keyring file":
        missing = tmp_path / "no-such-keyring.json"
        env = rotation.env(REENCRYPT_KEYS=f"local:{missing}")
    else:
        missing = tmp_path / "no-such-tracker.db"
        env = rotation.env(REENCRYPT_STORE=f"sqlite:///{missing}")
    worker = spawn("broken-worker", cli_worker(), env)

    try:
        code = worker.process.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"a worker with a missing {broken} is still running:\n{worker.output()[-3000:]}") from None
    lines = [line for line in worker.output().splitlines() if line.strip()]
    assert code == 2  # bad configuration, as the CLI's exit-code table says
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: worker not started:") and str(missing) in lines[0], lines
    assert "ready" not in lines[0]
    assert not missing.exists(), f"the worker created {missing}"


def test_a_healthy_worker_answers_its_liveness_and_readiness_probes(rotation, spawn):
    # As the Kubernetes manifest starts it (--health-port).
    port = free_port()
    worker = spawn("healthy-worker", cli_worker("--health-port", str(port)), rotation.env())
    try:
        wait_for(
            lambda: loopback_get(port, "/readyz", timeout=2)[0] == 200 or worker.process.poll() is not None,
            30,
            message="/readyz to answer 200",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.output()[-3000:]}") from None
    assert worker.process.poll() is None, worker.output()[-3000:]
    assert loopback_get(port, "/livez", timeout=2)[0] == 200
    assert " ready." in worker.output()


KEY_NAME = "tracker-mek"
OUTAGE = (503, {"error": {"code": "ServiceUnavailable", "message": "The service is unavailable."}}, {})


@pytest.fixture
def vault():
    with KeyVaultServer() as server:
        yield server


def vault_rotation(home: Path, vault: KeyVaultServer, documents: int, redis_url: str) -> Rotation:
    """A container under v1 with v2 current, both in the loopback vault; every document has a
    data key of its own, so every document the sweep moves needs the vault (an unwrap)."""
    home.mkdir()
    provider = open_provider(vault.url, KEY_NAME, vault.cert_path)
    try:
        v1 = provider.init().kid
        store = SqliteStore(home / "tracker.db")
        seed_store(store, seeding_keyring(provider), documents, dek_share=1)
        store.close()
        v2 = provider.rotate().kid
    finally:
        provider.close()
    return Rotation(
        home, f"sqlite:///{home / 'tracker.db'}", f"{vault.url}/keys/{KEY_NAME}", v1, v2, documents, redis_url
    )


def vault_worker(rotation: Rotation, concurrency: int) -> list[str]:
    """A Celery worker of the project's app whose Key Vault client trusts the loopback vault."""
    return [
        *[sys.executable, "-m", "celery", "-A", "vault_worker", "worker", "--queues", rotation.queue()],
        *["--concurrency", str(concurrency), "--loglevel", "INFO", "--task-events"],
        *["--without-gossip", "--without-mingle"],
    ]


def vault_cli(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """The CLI, as a client of the loopback vault."""

    def reencrypt(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "loopback_vault", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return reencrypt


def test_a_vault_outage_is_retried_and_the_sweep_completes_with_no_error_left(
    tmp_path, redis_url, vault, spawn, request
):
    """...and Celery's events say so: the failed batches as RETRY, then the same tasks SUCCESS."""
    rotation = vault_rotation(tmp_path / "vaulted", vault, 300, redis_url)
    env = rotation.env(**FAST_RECOVERY, TEST_VAULT_CA=vault.cert_path, PYTHONPATH=str(ROOT / "tests"))
    events = TaskEvents(redis_url)
    request.addfinalizer(events.close)
    worker = spawn("vault-worker", vault_worker(rotation, concurrency=2), env)
    wait_ready(worker)
    reencrypt = vault_cli(env)

    started = reencrypt("sweep", "start", "--to", rotation.v2, "--slices", "4", "--rate", "60", "--json")
    assert started.returncode == 0, started.stderr
    stored = Stored(rotation, json.loads(started.stdout)["id"])

    def explain() -> str:
        return f"{stored.describe()}\n{worker.output()[-3000:]}"

    wait_for(lambda: stored.scanned() > 0, 30, message="the first batch committed")
    wait_for(lambda: events.of("worker-heartbeat"), 30, message="the event capture listening")
    vault.handle = lambda *request: OUTAGE  # every call now answers 503, as a vault in an outage does
    try:
        try:
            wait_for(lambda: stored.sweep().get("last_error"), 30, message="the outage seen by the sweep")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{explain()}") from None
        during = stored.sweep()
        assert during["status"] == "running" and not during.get("paused_reason"), explain()
        assert "503" in during["last_error"] and vault.url in during["last_error"], during["last_error"]
        time.sleep(1)
        assert stored.status() == "running", explain()
    finally:
        del vault.handle  # the vault is back

    final = stored.wait_finished(60, worker.output)
    assert final["sweep"]["status"] == "completed", explain()
    assert not final["sweep"].get("last_error"), final["sweep"]
    retried = events.of("task-retried")
    assert retried and all("503" in event["exception"] for event in retried), retried
    assert not events.of("task-failed")
    # Celery's own retry: the same task id, succeeding once the vault is back.
    retried_ids = {event["uuid"] for event in retried}
    wait_for(
        lambda: retried_ids <= {event["uuid"] for event in events.of("task-succeeded")},
        30,
        message="every retried task to succeed",
    )
    assert final["totals"]["documents_scanned"] == rotation.documents and final["totals"]["failures"] == 0
    verified = reencrypt("verify", "--expect", rotation.v2, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["undecryptable"] == 0, report


def test_a_retry_waiting_out_its_back_off_is_not_lost_with_the_worker_that_failed(
    tmp_path, redis_url, vault, spawn, request
):
    """Celery's own retry would be a countdown message held in the failing worker's memory:
    killed, the retry would wait for the visibility timeout (here ten minutes). The back-off is
    kept with the slice instead, and the next worker's lease watch sends it when it is due."""
    rotation = vault_rotation(tmp_path / "vaulted", vault, 300, redis_url)
    env = rotation.env(
        **{**FAST_RECOVERY, "REENCRYPT_VISIBILITY_TIMEOUT_SECONDS": "600"},
        TEST_VAULT_CA=vault.cert_path,
        PYTHONPATH=str(ROOT / "tests"),
    )
    events = TaskEvents(redis_url)
    request.addfinalizer(events.close)
    failing = spawn("failing-worker", vault_worker(rotation, concurrency=1), env)
    wait_ready(failing)
    started = vault_cli(env)("sweep", "start", "--to", rotation.v2, "--slices", "2", "--rate", "60", "--json")
    assert started.returncode == 0, started.stderr
    stored = Stored(rotation, json.loads(started.stdout)["id"])
    wait_for(lambda: stored.scanned() > 0, 30, message="the first batch committed")
    wait_for(lambda: events.of("worker-heartbeat"), 30, message="the event capture listening")

    def backing_off() -> set[str] | None:
        """The task ids of the slices left, once each waits out a back-off reported as RETRY."""
        left = [piece for piece in stored.slices() if not piece["done"]]
        waiting = {piece["retry_task_id"] for piece in left if piece["retry_at"] > time.time()}
        retried = {event["uuid"] for event in events.of("task-retried")}
        return waiting if len(waiting) == len(left) and waiting <= retried else None

    vault.handle = lambda *request: OUTAGE
    try:
        waiting = wait_for(backing_off, 30, 0.1, message=f"every slice in back-off\n{failing.output()[-3000:]}")
        os.killpg(failing.process.pid, signal.SIGKILL)  # the worker that saw every failure, gone
        failing.process.wait()
    finally:
        del vault.handle

    survivor = spawn("next-worker", vault_worker(rotation, concurrency=1), env)
    final = stored.wait_finished(90, survivor.output)  # a back-off (10 s) and a look, not ten minutes
    assert final["sweep"]["status"] == "completed", f"{stored.describe()}\n{survivor.output()[-3000:]}"
    assert final["totals"]["documents_scanned"] == rotation.documents and final["totals"]["failures"] == 0
    # Sent again as Celery's retry is: the same task ids, now succeeding on the other worker.
    wait_for(
        lambda: waiting <= {event["uuid"] for event in events.of("task-succeeded")},
        30,
        message="the retried tasks to succeed",
    )
    assert "back-off over; retry" in survivor.output()


# -- case 10: a killed worker ----------------------------------------------------------------


def test_a_killed_workers_slice_is_taken_over_within_its_lease_not_the_visibility_timeout(rotation, fleet):
    lease = float(FAST_RECOVERY["REENCRYPT_LEASE_SECONDS"])
    # The broker would hand the dead worker's message back only after ten minutes.
    doomed, survivor = fleet.start(count=2, REENCRYPT_VISIBILITY_TIMEOUT_SECONDS="600")
    sweep_id = start_sweep(rotation, "--slices", "6", "--rate", "60")
    stored = Stored(rotation, sweep_id)

    def doomed_slice() -> dict | None:
        owners, now = pool_owners(doomed), time.time()
        return next((s for s in stored.slices() if s["lease_owner"] in owners and s["lease_expires"] > now), None)

    held = wait_for(
        lambda: stored.scanned() > 0 and stored.status() == "running" and doomed_slice(),
        20,
        0.05,
        message="the doomed worker holding a slice lease mid-sweep",
    )
    fleet.kill(doomed)
    killed = time.monotonic()

    def taken_over() -> bool:
        now = next(s for s in stored.slices() if s["index"] == held["index"])
        return now["done"] or now["fence"] > held["fence"]

    try:
        # Within the lease, a look of the lease watch (lease/4) and the survivor's batch in hand.
        wait_for(taken_over, 2 * lease + 6, 0.2, message=f"slice {held['index']} taken over")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stored.describe()}\n{fleet.logs()[-3000:]}") from None
    final = stored.wait_finished(max(5.0, 40 - (time.monotonic() - killed)), fleet.logs)
    assert final["sweep"]["status"] == "completed", final["sweep"]
    assert survivor.poll() is None
    assert final["totals"]["documents_scanned"] == rotation.documents
    assert final["totals"]["failures"] == 0
    assert_every_field_on(rotation, rotation.v2)


# -- case 11: --wait does not flood the queue ------------------------------------------------


def backdate_untouched_slices(stored: Stored, seconds: float) -> int:
    """Make every slice no worker has touched yet look idle for ``seconds`` more: what a slow
    fleet's last slices look like after that long, without waiting for it."""
    backdated = 0
    for record_id, body, etag in stored.records.list(SLICE, prefix=f"{stored.sweep_id}/"):
        if body["fence"] == 0 and not body["lease_owner"]:
            try:
                stored.records.replace(SLICE, record_id, {**body, "updated_at": body["updated_at"] - seconds}, etag)
                backdated += 1
            except ConflictError:
                pass  # a worker took it meanwhile
    return backdated


def start_following(rotation, slices: int, *extra: str, **streams) -> subprocess.Popen:
    """`reencrypt sweep start --wait` at 40 documents/s, as an operator runs it, in the background."""
    argv = [sys.executable, "-m", "coordinator.cli", "sweep", "start", "--to", rotation.v2, "--slices", str(slices)]
    return subprocess.Popen([*argv, "--rate", "40", "--wait", *extra], cwd=ROOT, env=rotation.env(), **streams)


def test_sweep_start_wait_sends_no_flood_of_do_nothing_tasks(rotation, fleet, tmp_path):
    slices = 16
    fleet.start(count=1)  # one slow worker: 16 slices at 40 documents/s take ~15 s
    output = tmp_path / "wait.out"
    with open(output, "wb") as out:
        follower = start_following(rotation, slices, "--json", stdout=out, stderr=subprocess.STDOUT)
    try:
        stored = Stored(rotation)
        sweep_id = stored.find_sweep()
        wait_for(
            lambda: len(stored.slices()) == slices and stored.status() == "running",
            10,
            0.05,
            message="the sweep's slices",
        )
        # The slices still queued behind the worker have waited past the follower's stall
        # window: the old follower re-queued every idle slice each second from then on.
        assert backdate_untouched_slices(stored, 2 * STALL_S) >= slices // 2
        follower.wait(120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, output.read_text()[-3000:]
    assert stored.status() == "completed"

    # Every message published for the sweep is either handled (one log line each) or still
    # in the broker: let the worker drain what is left, then count both.
    client = redis.Redis.from_url(rotation.redis_url)
    try:
        wait_for(lambda: pending_messages(client, rotation.queue()) == (0, 0), 20, message="the queue drained")
    except AssertionError:
        pass  # counted below as still pending
    handled = outcomes(fleet.logs(), sweep_id)
    published = len(handled) + sum(pending_messages(client, rotation.queue()))
    batches = sum(1 for outcome in handled if outcome in ("continued", "slice done"))
    idle = [outcome for outcome in handled if outcome not in ("continued", "slice done")]
    print(f"{published} messages published for {batches} batches over {slices} slices; idle: {idle}")
    assert batches >= slices
    assert published <= batches + slices, f"{published} messages for {batches} batches; idle ones: {idle[:10]}"


# -- case 6: Ctrl-C on sweep start --wait ----------------------------------------------------


def test_ctrl_c_on_sweep_start_wait_says_the_sweep_goes_on_and_how_to_stop_it(rotation, fleet, tmp_path):
    fleet.start(count=1)
    errors = tmp_path / "wait.err"
    with open(errors, "wb") as err:
        follower = start_following(rotation, 4, stdout=subprocess.PIPE, stderr=err)
    try:
        stored = Stored(rotation)
        sweep_id = stored.find_sweep()
        wait_for(
            lambda: stored.scanned() > 0 and f"sweep {sweep_id} started" in errors.read_text(),
            30,
            message="the first progress",
        )
        try:  # the line saying where the sweep's messages wait comes first, when following starts
            wait_for(lambda: "following sweep" in errors.read_text(), 5, message="the following line")
        except AssertionError:
            pass  # asserted below, after what Ctrl-C says
        follower.send_signal(signal.SIGINT)  # Ctrl-C
        follower.wait(30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    said = " ".join(errors.read_text().split())  # as read, whatever the console's line width
    assert follower.returncode == 130, said[-3000:]
    # On Ctrl-C: it goes on, and how to stop it.
    assert "goes on running" in said, said
    assert f"reencrypt sweep pause {sweep_id}" in said and f"reencrypt sweep cancel {sweep_id}" in said, said
    # Where the sweep's messages went, said when following started.
    assert f"broker {rotation.redis_url} queue {rotation.queue()}" in said, said

    at_exit = stored.scanned()
    wait_for(lambda: stored.scanned() > at_exit, 20, message="the sweep moving on after Ctrl-C")
    assert stored.status() == "running"
    cli_json(rotation, "sweep", "cancel", sweep_id, "--json")
    assert stored.wait_finished(20, fleet.logs)["sweep"]["status"] == "cancelled"
