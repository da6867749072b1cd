"""The fleet in Celery's terms, in milliseconds: the flags `reencrypt worker` passes on to
`celery worker`, the options a worker refuses (and why), task events from the settings, and
each message's verdict (SUCCESS, RETRY, FAILURE) as the Celery task reports it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from coordinator import launch
from coordinator.cli import app as cli
from coordinator.context import Context
from coordinator.launch import WorkerOptions, worker_argv
from tracker_reencrypt.config import Settings
from tracker_reencrypt.fleet import enqueue_slice, make_celery
from tracker_reencrypt.sweep.records import COMPLETED, PAUSED, RUNNING, Sweep, utc_now
from worker.health import options_problem

from conftest import make_rotation
from inprocess_fleet import InProcessFleet

QUEUE = "reencrypt-0123456789ab"


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- the worker's command line ------------------------------------------------------------------


def test_a_worker_has_a_stable_node_name_heartbeats_and_fair_scheduling_by_default():
    argv = worker_argv(QUEUE)
    assert argv[argv.index("-A") + 1 : argv.index("-A") + 3] == ["worker.app", "worker"]
    assert flag(argv, "--hostname") == "reencrypt@%h"  # the same at every start
    assert (flag(argv, "--queues"), flag(argv, "--pool"), flag(argv, "-O")) == (QUEUE, "prefork", "fair")
    assert flag(argv, "--concurrency") == "1"
    assert "--without-gossip" in argv and "--without-mingle" in argv
    assert "--without-heartbeat" not in argv  # Flower and `celery events` show the worker online
    assert "--task-events" not in argv


def test_celery_flags_pass_through_to_the_worker():
    argv = worker_argv(
        QUEUE,
        WorkerOptions(
            hostname="blue@%h",
            task_events=True,
            autoscale="8,2",
            max_tasks_per_child=50,
            max_memory_per_child=400_000,
            heartbeat=False,
            gossip=True,
            mingle=True,
        ),
    )
    assert flag(argv, "--hostname") == "blue@%h" and "--task-events" in argv
    assert flag(argv, "--autoscale") == "8,2" and "--concurrency" not in argv  # autoscale sizes the pool
    assert flag(argv, "--max-tasks-per-child") == "50" and flag(argv, "--max-memory-per-child") == "400000"
    assert "--without-heartbeat" in argv and "--without-gossip" not in argv and "--without-mingle" not in argv


@pytest.fixture
def exec_worker(monkeypatch, tmp_path):
    """`reencrypt worker ...` run to the point where it would become Celery: (argv, environment)."""
    monkeypatch.setattr(Context, "redis_url", "redis://127.0.0.1:6379/0")  # no broker needed here
    became = []
    monkeypatch.setattr(launch.os, "execvpe", lambda path, argv, env: became.append((argv, env)))
    env = {"REENCRYPT_STORE": f"sqlite:///{tmp_path / 'tracker.db'}", "REENCRYPT_KEYS": "local:keyring.json"}

    def run(*args: str, **extra: str):
        result = CliRunner().invoke(cli, ["worker", *args], env={**env, **extra})
        if not became:
            return result
        argv, environment = became.pop()
        assert "PROMETHEUS_MULTIPROC_DIR" not in environment  # no --metrics-port: no sample files
        return argv, environment

    return run


def test_reencrypt_worker_takes_celerys_flags(exec_worker):
    argv, env = exec_worker(
        "-E", "-n", "probe@%h", "--autoscale", "6", "--max-tasks-per-child", "9", "-P", "solo", "--without-heartbeat"
    )
    assert flag(argv, "--hostname") == "probe@%h" and flag(argv, "--pool") == "solo"
    assert flag(argv, "--autoscale") == "6,0" and flag(argv, "--max-tasks-per-child") == "9"
    assert "--task-events" in argv and "--without-heartbeat" in argv
    assert env["REENCRYPT_TASK_EVENTS"] == "1"  # the worker's own sends say "task-sent" too


def test_task_events_from_the_environment_turn_on_minus_e(exec_worker):
    argv, _ = exec_worker(REENCRYPT_TASK_EVENTS="1")
    assert "--task-events" in argv


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--autoscale", "2,8"], "--autoscale 2,8: give MAX,MIN"),
        (["--autoscale", "x"], "--autoscale x: give MAX,MIN"),
        (["--autoscale", "4,1", "-c", "2"], "drop --concurrency"),
    ],
)
def test_reencrypt_worker_refuses_an_autoscale_it_cannot_pass_on(exec_worker, args, says):
    result = exec_worker(*args)
    assert result.exit_code != 0 and says in str(result.exception), result.output


# -- what a worker refuses to start with ---------------------------------------------------------


def test_a_worker_runs_in_prefork_or_solo_on_its_own_queue():
    assert options_problem("prefork", own_queue=QUEUE, queues=[QUEUE], concurrency=4, autoscale="8,1") is None
    assert options_problem("solo", own_queue=QUEUE, concurrency=1) is None


@pytest.mark.parametrize(
    ("pool", "given", "says"),
    [
        ("threads", {}, "--pool threads cannot run a reencrypt worker"),
        ("gevent", {}, "--pool gevent cannot run a reencrypt worker"),
        ("prefork", {"queues": [QUEUE, "celery"]}, "only its store's queue (reencrypt-0123456789ab), not celery"),
        ("solo", {"concurrency": 4}, "--concurrency 4: the solo pool runs one batch at a time"),
        ("solo", {"autoscale": "4,1"}, "--autoscale tunes prefork's pool processes"),
        ("solo", {"max_memory_per_child": 1000}, "--max-memory-per-child tunes prefork's pool processes"),
    ],
)
def test_a_worker_refuses_options_it_cannot_run_with_in_one_line(pool, given, says):
    problem = options_problem(pool, own_queue=QUEUE, **given)
    assert problem and says in problem and "\n" not in problem


def test_task_events_come_from_the_settings():
    quiet = make_celery(Settings(store="sqlite:///t.db"), "redis://127.0.0.1:6379/0")
    assert not quiet.conf.worker_send_task_events and not quiet.conf.task_send_sent_event
    monitored = make_celery(Settings(store="sqlite:///t.db", task_events=True), "redis://127.0.0.1:6379/0")
    assert monitored.conf.worker_send_task_events and monitored.conf.task_send_sent_event
    assert monitored.conf.task_acks_late and monitored.conf.task_acks_on_failure_or_timeout  # a FAILURE is acked


# -- each message's verdict ---------------------------------------------------------------------


@pytest.fixture
def rotation(tmp_path):
    return make_rotation(tmp_path, 120)


def fleet_for(rotation) -> InProcessFleet:
    return InProcessFleet(
        Settings(store=rotation.store_url, keys=rotation.keys_url, batch_documents=40, page_size=20, dek_max_uses=1)
    )


def start(fleet: InProcessFleet, target_kid: str, slices: int) -> Sweep:
    """What 'sweep start' writes and sends, without the CLI's checks."""
    store = fleet.runtime.store
    sweep = fleet.state.create_sweep(
        Sweep(id="sw-terms", target_kid=target_kid, mode="reencrypt", status=RUNNING, started_at=utc_now()),
        store.feed_ranges(slices),
    )
    for index in range(sweep.slice_count):
        enqueue_slice(fleet.broker, sweep.id, index, 0)
    return sweep


def test_an_outage_mid_batch_is_a_retry_naming_the_slices_new_fence(rotation):
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2, slices=1)
    fleet.store_down(scans=1)
    (first,) = fleet.broker.messages
    failed_at = fleet.clock.now
    assert fleet.step() == "error: retrying" and fleet.verdicts == ["retry"]

    # The back-off is kept with the slice, not in a countdown message some worker would hold.
    assert fleet.broker.messages == []
    (waiting,) = fleet.state.slices(sweep.id)
    assert (waiting.retry_at, waiting.retry_task_id, waiting.error_retries) == (failed_at + 10, first.task_id, 1)
    fleet.clock.now = failed_at + 9
    assert not fleet.watch() and fleet.broker.messages == []  # not due yet
    fleet.clock.now = failed_at + 10
    assert fleet.watch() and not fleet.watch()  # due: sent once, however many watches look
    (again,) = fleet.broker.messages
    assert (again.task_id, again.retries) == (first.task_id, 1)  # Celery's retry: same task, counted
    assert again.args[2] == waiting.fence == 1  # the claim's fence, not the first message's
    fleet.join()
    assert set(fleet.verdicts[1:]) == {"done"} and fleet.state.get_sweep(sweep.id).status == COMPLETED


def test_a_message_for_a_slice_in_back_off_is_dropped_and_resume_ends_the_back_off(rotation):
    fleet = fleet_for(rotation)
    sweep = start(fleet, rotation.v2, slices=1)
    fleet.store_down()
    assert fleet.step() == "error: retrying"
    (waiting,) = fleet.state.slices(sweep.id)
    enqueue_slice(fleet.broker, sweep.id, 0, waiting.fence)  # a rescue or an earlier resume's message
    assert fleet.step().startswith("dropped: backing off after a failed batch")
    assert fleet.state.slices(sweep.id)[0].retry_at == waiting.retry_at  # it waits on

    fleet.store_up()  # fixed: 'sweep resume' ends every back-off, then sends each slice
    fleet.state.clear_back_offs(sweep.id)
    assert fleet.state.slices(sweep.id)[0].retry_at == 0
    enqueue_slice(fleet.broker, sweep.id, 0, waiting.fence)
    fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == COMPLETED


def test_a_batch_that_pauses_the_sweep_and_a_message_that_cannot_succeed_are_failures(rotation):
    rotation.provider().rotate()
    fleet = fleet_for(rotation)
    fleet.runtime.keyring.provider.set_enabled(rotation.v2, False)
    sweep = start(fleet, rotation.v2, slices=2)
    outcomes = fleet.join()
    assert fleet.state.get_sweep(sweep.id).status == PAUSED
    assert outcomes[0].startswith("paused: ") and fleet.verdicts[0] == "failed"
    assert fleet.verdicts[1:] == ["done"]  # the other slice's message: dropped, the sweep being paused

    enqueue_slice(fleet.broker, "sw-never-started", 0, 0)
    assert fleet.join()[0].startswith("dropped: no sweep") and fleet.verdicts[-1] == "failed"
