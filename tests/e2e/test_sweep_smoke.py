"""The smallest end-to-end sweep: real Redis, real worker processes, SQLite store."""

import json

from conftest import assert_every_field_on, run_cli


def test_two_workers_move_every_field_and_counts_are_exact(rotation, fleet):
    fleet.start(count=2)
    result = run_cli(
        "sweep", "start", "--to", rotation.v2, "--slices", "6", "--wait", "--json", env=rotation.env(), timeout=180
    )
    assert result.returncode == 0, result.stderr + fleet.logs()[-3000:]

    fields = assert_every_field_on(rotation, rotation.v2)
    totals = json.loads(result.stdout)["totals"]
    assert totals["documents_scanned"] == rotation.documents
    assert totals["fields_reencrypted"] == fields
    assert totals["failures"] == 0
