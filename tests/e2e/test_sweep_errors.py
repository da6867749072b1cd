"""A problem only a person can fix mid-sweep (the target key disabled): the fleet pauses the
sweep and says why instead of retrying for ever; once fixed, 'sweep resume' finishes it with
nothing lost."""

import json

from conftest import assert_every_field_on, run_cli, wait_for


def status(rotation, sweep_id):
    result = run_cli("sweep", "status", sweep_id, "--json", env=rotation.env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_target_key_disabled_mid_sweep_pauses_the_sweep_until_it_is_enabled_and_resumed(rotation, fleet):
    provider = rotation.provider()
    provider.rotate()  # v3 current, so the sweep's target v2 may be disabled under it
    # One wrap per field: a disabled target shows at once, not when a cached DEK runs out.
    fleet.start(count=1, REENCRYPT_DEK_MAX_USES="1")
    started = run_cli(
        "sweep", "start", "--to", rotation.v2, "--slices", "2", "--rate", "40", "--json", env=rotation.env()
    )
    sweep_id = json.loads(started.stdout)["id"]
    wait_for(lambda: status(rotation, sweep_id)["totals"]["documents_scanned"] > 0, 30, message="first batch")

    provider.set_enabled(rotation.v2, False)
    paused = wait_for(
        lambda: (s := status(rotation, sweep_id))["sweep"]["status"] == "paused" and s, 30, message="the sweep to pause"
    )
    assert "disabled" in paused["sweep"]["paused_reason"] and "Traceback" not in paused["sweep"]["paused_reason"]
    shown = run_cli("sweep", "status", sweep_id, env=rotation.env())
    assert "paused because" in shown.stdout and f"sweep resume {sweep_id}" in shown.stdout.replace("\n", "")

    provider.set_enabled(rotation.v2, True)
    run_cli("sweep", "throttle", sweep_id, "--unlimited", env=rotation.env())
    resumed = run_cli("sweep", "resume", sweep_id, env=rotation.env())
    assert resumed.returncode == 0, resumed.stderr
    final = wait_for(
        lambda: (s := status(rotation, sweep_id))["sweep"]["status"] in ("completed", "failed") and s,
        90,
        message="the sweep to finish",
    )
    assert final["sweep"]["status"] == "completed" and final["totals"]["failures"] == 0, final["totals"]
    assert not final["sweep"]["paused_reason"] and not final["sweep"]["last_error"]
    assert final["totals"]["documents_scanned"] == rotation.documents

    fields = assert_every_field_on(rotation, rotation.v2)
    # A batch given back mid-page had already written some documents: the rerun finds them on target.
    assert final["totals"]["fields_reencrypted"] + final["totals"]["fields_on_target"] == fields
