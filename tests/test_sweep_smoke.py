"""The smallest end-to-end sweep: real Redis, real worker processes, SQLite store."""

from conftest import run_cli
from tracker_reencrypt.documents import check_document
from tracker_reencrypt.keys.keyring import Keyring


def test_two_workers_move_every_field_and_counts_are_exact(rotation, fleet):
    fleet.start(count=2)
    result = run_cli("sweep", "start", "--to", rotation.v2, "--slices", "6", "--wait", "--json", env=rotation.env(), timeout=180)
    assert result.returncode == 0, result.stderr + fleet.logs()[-3000:]

    store, keyring = rotation.store(), Keyring(rotation.provider())
    fields = 0
    for document in store.scan({"epk_min": 0, "epk_max": 2**32}, None, 10_000).documents:
        for check in check_document(document.body, document.body["productId"], keyring):
            fields += 1
            assert check.kid == rotation.v2 and check.decrypts, check
    import json
    totals = json.loads(result.stdout)["totals"]
    assert totals["documents_scanned"] == rotation.documents
    assert totals["fields_reencrypted"] == fields
    assert totals["failures"] == 0
