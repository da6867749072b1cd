"""The tracker-service's dotenv file: our lines set, every other line kept byte for byte."""

from __future__ import annotations

import os

import pytest

from coordinator.envfile import update_env_file
from tracker_reencrypt.errors import ConfigError

BEFORE = (
    "# tracker-service\n"
    "export DATABASE_URL='postgres://db/tracker'\n"
    "\n"
    "TRACKER_MEK_ID_ACME=https://v.vault.azure.net/keys/tracker-mek-acme/old\n"
    'FEATURE_FLAGS="a,b"  # keep this comment\n'
    "TRACKER_MEK_ID_BETA=https://v.vault.azure.net/keys/tracker-mek-beta/same\n"
)


def test_lines_are_replaced_in_place_or_added_and_the_rest_is_kept(tmp_path):
    env = tmp_path / "tracker.env"
    env.write_text(BEFORE)
    os.chmod(env, 0o640)
    update_env_file(
        env,
        [
            "TRACKER_MEK_ID_ACME=https://v.vault.azure.net/keys/tracker-mek-acme/new",
            "TRACKER_MEK_ID_GAMMA=https://v.vault.azure.net/keys/tracker-mek-gamma/first",
        ],
    )
    assert env.read_text() == (
        BEFORE.replace("tracker-mek-acme/old", "tracker-mek-acme/new")
        + "TRACKER_MEK_ID_GAMMA=https://v.vault.azure.net/keys/tracker-mek-gamma/first\n"
    )
    assert oct(env.stat().st_mode & 0o777) == oct(0o640)


def test_a_missing_file_is_created(tmp_path):
    env = tmp_path / "new.env"
    update_env_file(env, ["TRACKER_MEK_ID_ACME=tracker-mek-acme/v2"])
    assert env.read_text() == "TRACKER_MEK_ID_ACME=tracker-mek-acme/v2\n"


def test_a_missing_directory_is_one_clear_error_and_nothing_is_written(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        update_env_file(tmp_path / "nope" / "tracker.env", ["TRACKER_MEK_ID_ACME=x/v1"])
    assert not (tmp_path / "nope").exists()


def test_a_symlinked_env_file_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real.env"
    real.write_text("TRACKER_MEK_ID_P=old\n")
    link = tmp_path / "tracker.env"
    link.symlink_to(real)
    update_env_file(link, ["TRACKER_MEK_ID_P=new"])
    assert link.is_symlink()
    assert real.read_text() == "TRACKER_MEK_ID_P=new\n"  # the file the tracker-service reads


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_the_file_keeps_its_owner(tmp_path):
    env = tmp_path / "tracker.env"
    env.write_text("TRACKER_MEK_ID_P=old\n")
    os.chown(env, 4242, 4243)
    os.chmod(env, 0o600)
    update_env_file(env, ["TRACKER_MEK_ID_P=new"])
    info = env.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (4242, 4243, 0o600)
    assert env.read_text() == "TRACKER_MEK_ID_P=new\n"
