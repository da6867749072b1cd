"""Stale writes, the pure decision (tracker_reencrypt.stale): a document written after its
product's key rotated that still holds a field under a retired version of that key."""

from __future__ import annotations

import pytest

from tracker_reencrypt import stale
from tracker_reencrypt.errors import KeyNotFoundError, KeyProviderUnavailableError
from tracker_reencrypt.keys import KeyVersion
from tracker_reencrypt.keys.naming import UnmappableProductError
from tracker_reencrypt.stale import GRACE_S, StaleWrite, current_version, find

SINCE = "2026-11-28T02:00:00Z"
SINCE_S = 1795831200.0  # SINCE in seconds since the epoch
V1, V2, V3 = "tracker-mek-p1/v1", "tracker-mek-p1/v2", "tracker-mek-p1/v3"
CURRENT = KeyVersion(V2, enabled=True, current=True, created=SINCE, current_since=SINCE)
LATE = SINCE_S + GRACE_S + 1


def test_a_field_under_the_previous_version_written_after_the_grace_is_a_stale_write():
    found = find("doc-1", "p1", LATE, [V2, V1, V1], CURRENT)
    assert found == StaleWrite("doc-1", "p1", LATE, V1, V2, fields=2)
    assert found.as_json() == {
        "document_id": "doc-1",
        "product": "p1",
        "ts": LATE,
        "kid": V1,
        "current_kid": V2,
        "fields": 2,
        "written_at": "2026-11-28T02:00:06Z",
    }
    assert StaleWrite.from_record(found.as_json()) == found


@pytest.mark.parametrize("written_at", [SINCE_S - 3600, SINCE_S, SINCE_S + GRACE_S, None])
def test_a_write_before_the_rotation_within_the_grace_or_at_an_unknown_time_is_not(written_at):
    assert find("doc-1", "p1", written_at, [V1], CURRENT) is None


def test_just_past_the_grace_is():
    assert find("doc-1", "p1", SINCE_S + GRACE_S + 0.001, [V1], CURRENT) is not None


def test_a_document_on_the_current_version_is_not_as_the_sweeps_own_writes_are():
    assert find("doc-1", "p1", LATE, [V2, V2], CURRENT) is None
    assert find("doc-1", "p1", LATE, [], CURRENT) is None


def test_any_other_version_of_the_same_key_is_retired_a_newer_one_after_a_rollback_too():
    rolled_back = KeyVersion(V1, enabled=True, current=True, created=SINCE, current_since=SINCE)
    assert find("doc-1", "p1", LATE, [V2], rolled_back).kid == V2
    assert find("doc-1", "p1", LATE, [V3, V1], CURRENT).kid == V3  # the first in document order


def test_fields_under_another_key_or_an_unreadable_kid_are_other_problems():
    assert find("doc-1", "p1", LATE, ["tracker-mek-p2/v1", "None", "", "tracker-mek-p1"], CURRENT) is None
    found = find("doc-1", "p1", LATE, ["tracker-mek-p2/v1", V1], CURRENT)
    assert (found.kid, found.fields) == (V1, 1)


def test_key_vault_kids_compare_by_key_name_whatever_its_case():
    vault = "https://v.vault.azure.net/keys/tracker-mek-p1/"
    current = KeyVersion(vault + "b" * 32, enabled=True, current=True, created=SINCE, current_since=SINCE)
    retired = "https://v.vault.azure.net/keys/Tracker-MEK-p1/" + "a" * 32
    other = "https://v.vault.azure.net/keys/tracker-mek-p2/" + "a" * 32
    assert find("doc-1", "p1", LATE, [other, retired], current).kid == retired
    assert find("doc-1", "p1", LATE, [other], current) is None
    unversioned = ["https://v.vault.azure.net/keys/tracker-mek-p1", "https://v.vault.azure.net/keys/tracker-mek-p1/"]
    assert find("doc-1", "p1", LATE, unversioned, current) is None


def test_a_current_version_with_no_known_start_judges_nothing():
    undated = KeyVersion(V2, enabled=True, current=True, created="", current_since="")
    assert find("doc-1", "p1", LATE, [V1], undated) is None


def test_a_target_other_than_the_current_version_judges_nothing():
    """A sweep (or verify) pointed at another version on purpose: its writes are the operator's."""
    assert find("doc-1", "p1", LATE, [V1], CURRENT, target_kid=V1) is None
    assert find("doc-1", "p1", LATE, [V1], CURRENT, target_kid=V2) is not None


def test_the_product_is_recorded_as_text():
    assert find("doc-1", 7, LATE, [V1], CURRENT).product == "7"


def test_the_current_version_lookup_gives_none_for_a_product_without_one_and_raises_an_outage():
    assert current_version(lambda product: CURRENT, "p1") == CURRENT

    def refused(error):
        def lookup(product):
            raise error

        return lookup

    assert current_version(refused(KeyNotFoundError("no key tracker-mek-p9")), "p9") is None
    assert current_version(refused(UnmappableProductError("product 'a b' names no key")), "a b") is None
    with pytest.raises(KeyProviderUnavailableError):
        current_version(refused(KeyProviderUnavailableError("vault unreachable")), "p1")


def test_an_example_carries_ids_times_and_kids_only():
    assert set(find("doc-1", "p1", LATE, [V1], CURRENT).as_json()) == {
        "document_id",
        "product",
        "ts",
        "written_at",
        "kid",
        "current_kid",
        "fields",
    }
    assert stale.SLICE_EXAMPLES <= stale.REPORT_EXAMPLES
