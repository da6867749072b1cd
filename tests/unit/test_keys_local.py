"""The local JWKS keyring provider: what `reencrypt keys init/rotate/disable/enable` rely on.

RSA key generation costs ~0.1 s, so most tests start from a copy of one two-version keyring
made once per module. Crash and cross-process tests use real subprocesses.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracker_reencrypt import envelope
from tracker_reencrypt.envelope import Location
from tracker_reencrypt.errors import (
    ConfigError,
    KeyDisabledError,
    KeyNotFoundError,
    KeyProviderError,
    KeyringFileError,
    UnwrapError,
)
from tracker_reencrypt.keys import WRAP_ALGORITHM, local, open_key_provider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider

ROOT = Path(__file__).resolve().parents[2]
V1, V2, V3 = "tracker-mek/v1", "tracker-mek/v2", "tracker-mek/v3"
DEK = bytes(range(32))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> bytes:
    """The bytes of a keyring with v1 (enabled) and v2 (enabled, current)."""
    path = tmp_path_factory.mktemp("template") / "keyring.json"
    provider = LocalKeyProvider(path)
    provider.init()
    provider.rotate()
    return path.read_bytes()


@pytest.fixture
def keyring_path(tmp_path, template) -> Path:
    path = tmp_path / "keyring.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(template)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


# -- init / rotate / versions / current ---------------------------------------------------


def test_init_creates_one_current_version_in_a_0600_file(tmp_path):
    path = tmp_path / "nested" / "dir" / "keyring.json"
    provider = LocalKeyProvider(path)
    version = provider.init()
    assert version.kid == V1 and version.current and version.enabled and version.status == "enabled"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", version.created)
    assert mode_of(path) == 0o600
    assert provider.versions() == [version]
    assert provider.current_kid() == V1
    assert version.as_json() == {
        "kid": V1,
        "enabled": True,
        "current": True,
        "created": version.created,
        "current_since": version.created,
        "status": "enabled",
    }
    document = json.loads(path.read_text())
    assert document["layout"] == 2 and "name" not in document
    (jwk,) = document["keys"]
    assert {"kty", "kid", "alg", "use", "n", "e", "d", "p", "q", "dp", "dq", "qi"} <= jwk.keys()
    assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["e"]) == ("RSA", WRAP_ALGORITHM, "enc", "AQAB")
    assert list(path.parent.glob(".keyring.json.*")) == []  # no temporary file left behind


def test_init_refuses_an_existing_key(keyring_path):
    before = keyring_path.read_bytes()
    with pytest.raises(KeyringFileError, match="key tracker-mek already exists.*rotate"):
        LocalKeyProvider(keyring_path).init()
    assert keyring_path.read_bytes() == before


def test_init_with_another_name(tmp_path):
    provider = LocalKeyProvider(tmp_path / "k.json", "billing-mek")
    assert provider.init().kid == "billing-mek/v1"
    assert provider.describe() == f"local keyring {tmp_path / 'k.json'} key billing-mek"


def test_rotate_adds_a_version_and_makes_it_the_only_current_one(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    assert [(v.kid, v.current) for v in provider.versions()] == [(V1, False), (V2, True)]
    version = provider.rotate()
    assert version.kid == V3 and version.current
    assert [(v.kid, v.current, v.enabled) for v in provider.versions()] == [
        (V1, False, True),
        (V2, False, True),
        (V3, True, True),
    ]
    assert provider.current_kid() == V3
    assert mode_of(keyring_path) == 0o600
    # Older versions still unwrap what they wrapped: rotation never retires a key by itself.
    for kid in (V1, V2, V3):
        assert provider.unwrap(kid, WRAP_ALGORITHM, provider.wrap(kid, DEK)) == DEK


def test_rotate_numbers_after_the_highest_version_even_when_disabled(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    provider.set_enabled(V1, False)
    assert provider.rotate().kid == V3


def test_no_current_version_is_an_error_naming_the_fix(keyring_path):
    document = json.loads(keyring_path.read_text())
    document["keys"] = [{**jwk, "current": False} for jwk in document["keys"]]
    keyring_path.write_text(json.dumps(document))
    with pytest.raises(KeyringFileError, match="reencrypt keys rotate"):
        LocalKeyProvider(keyring_path).current_kid()


# -- wrap / unwrap ---------------------------------------------------------------------------


def test_wrap_unwrap_and_its_refusals(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    wrapped = provider.wrap(V1, DEK)
    assert len(wrapped) == 256 and wrapped != provider.wrap(V1, DEK)  # RSA-2048, OAEP is randomized
    assert provider.unwrap(V1, WRAP_ALGORITHM, wrapped) == DEK
    with pytest.raises(UnwrapError):
        provider.unwrap(V2, WRAP_ALGORITHM, wrapped)  # another version's key
    with pytest.raises(UnwrapError):
        provider.unwrap(V1, WRAP_ALGORITHM, bytes([wrapped[0] ^ 1]) + wrapped[1:])
    with pytest.raises(UnwrapError):
        provider.unwrap(V1, WRAP_ALGORITHM, wrapped[:-1])
    with pytest.raises(UnwrapError):
        provider.unwrap(V1, "RSA-OAEP", wrapped)
    with pytest.raises(KeyNotFoundError):
        provider.unwrap("tracker-mek/v7", WRAP_ALGORITHM, wrapped)
    with pytest.raises(KeyNotFoundError):
        provider.unwrap("tracker-mek", WRAP_ALGORITHM, wrapped)  # versionless: never "latest"
    with pytest.raises(KeyNotFoundError):
        provider.wrap("tracker-mek/v7", DEK)


# -- disable / enable ------------------------------------------------------------------------


def test_disable_and_enable_a_version(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    wrapped = provider.wrap(V1, DEK)
    version = provider.set_enabled(V1, False)
    assert (version.kid, version.enabled, version.status) == (V1, False, "disabled")
    assert [v.enabled for v in provider.versions()] == [False, True]
    with pytest.raises(KeyDisabledError, match="disabled"):
        provider.unwrap(V1, WRAP_ALGORITHM, wrapped)
    with pytest.raises(KeyDisabledError):
        provider.wrap(V1, DEK)
    assert provider.set_enabled(V1, True).enabled
    assert provider.unwrap(V1, WRAP_ALGORITHM, wrapped) == DEK
    assert mode_of(keyring_path) == 0o600


def test_disabling_the_current_version_is_refused(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    before = keyring_path.read_bytes()
    with pytest.raises(KeyDisabledError, match="current version; rotate"):
        provider.set_enabled(V2, False)
    assert keyring_path.read_bytes() == before
    assert provider.versions()[1].enabled


def test_enabling_an_unknown_version_is_refused(keyring_path):
    with pytest.raises(KeyNotFoundError):
        LocalKeyProvider(keyring_path).set_enabled("tracker-mek/v9", True)


# -- promote (rollback to an older version) ---------------------------------------------------

WHERE = Location(document_id="issue-1", partition_key="project-1", field_path="/reporter/email")


def test_promote_rolls_new_writes_back_to_an_older_version(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    version = provider.promote(V1)
    assert (version.kid, version.current, version.enabled) == (V1, True, True)
    assert provider.current_kid() == V1
    assert [(v.kid, v.current) for v in provider.versions()] == [(V1, True), (V2, False)]
    sealed = envelope.encrypt({"email": "a@example.com"}, WHERE, Keyring(provider))
    assert sealed["kid"] == V1
    assert envelope.decrypt(sealed, WHERE, Keyring(LocalKeyProvider(keyring_path))) == {"email": "a@example.com"}
    # The abandoned newer version may now be disabled; the promoted one may not.
    assert not provider.set_enabled(V2, False).enabled
    with pytest.raises(KeyDisabledError, match="current version"):
        provider.set_enabled(V1, False)
    assert LocalKeyProvider(keyring_path).current_kid() == V1  # on disk, for every process
    assert mode_of(keyring_path) == 0o600
    # A later rotation takes over as usual.
    assert provider.rotate().kid == V3
    assert [(v.kid, v.current) for v in provider.versions()] == [(V1, False), (V2, False), (V3, True)]


def test_promoting_the_current_version_changes_nothing(keyring_path):
    before = keyring_path.read_bytes()
    version = LocalKeyProvider(keyring_path).promote(V2)
    assert (version.kid, version.current) == (V2, True)
    assert keyring_path.read_bytes() == before


def test_promote_refuses_a_disabled_or_unknown_version(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    provider.set_enabled(V1, False)
    before = keyring_path.read_bytes()
    with pytest.raises(KeyDisabledError, match=f"enable it first with 'reencrypt keys enable {V1}'") as disabled:
        provider.promote(V1)
    with pytest.raises(KeyNotFoundError, match="'reencrypt keys list'") as unknown:
        provider.promote("tracker-mek/v9")
    assert "\n" not in str(disabled.value) + str(unknown.value)
    assert keyring_path.read_bytes() == before
    assert provider.current_kid() == V2


def test_a_running_provider_sees_another_process_promote(keyring_path, monkeypatch):
    monkeypatch.setattr(local, "RELOAD_CHECK_SECONDS", 0.0)
    provider = LocalKeyProvider(keyring_path)
    assert provider.current_kid() == V2
    LocalKeyProvider(keyring_path).promote(V1)
    assert provider.current_kid() == V1


# -- metadata ---------------------------------------------------------------------------------

STORE_ENTRY = "store-3f9a0c12ab45"
STORE_VALUE = "12:" + "ab34" * 16 + "|sqlite:/abs/path/tracker.db"


def test_metadata_set_get_and_delete(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    assert provider.metadata() == {}
    both = {STORE_ENTRY: STORE_VALUE, "owner": "team-a"}
    assert provider.set_metadata(both) == both
    assert provider.set_metadata({"owner": None, "absent": None}) == {STORE_ENTRY: STORE_VALUE}
    assert provider.metadata() == {STORE_ENTRY: STORE_VALUE}
    assert json.loads(keyring_path.read_text())["metadata"] == {"tracker-mek": {STORE_ENTRY: STORE_VALUE}}
    assert mode_of(keyring_path) == 0o600
    assert list(keyring_path.parent.glob(".keyring.json.*")) == []


def test_metadata_survives_rotate_promote_and_a_new_provider(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    provider.set_metadata({STORE_ENTRY: STORE_VALUE})
    provider.rotate()
    provider.promote(V1)
    assert provider.metadata() == {STORE_ENTRY: STORE_VALUE}
    assert LocalKeyProvider(keyring_path).metadata() == {STORE_ENTRY: STORE_VALUE}


def test_another_process_metadata_change_is_read_at_once(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    assert provider.metadata() == {}
    LocalKeyProvider(keyring_path).set_metadata({STORE_ENTRY: STORE_VALUE})
    assert provider.metadata() == {STORE_ENTRY: STORE_VALUE}  # no wait for the reload interval


@pytest.mark.parametrize("changes", [{"current-version": "v1"}, {"": "x"}, {"n": 3}, {7: "x"}])
def test_bad_metadata_changes_are_refused_and_nothing_is_written(keyring_path, changes):
    provider = LocalKeyProvider(keyring_path)
    provider.set_metadata({"kept": "yes"})
    before = keyring_path.read_bytes()
    with pytest.raises(KeyProviderError):
        provider.set_metadata({"other": "x", **changes})
    assert keyring_path.read_bytes() == before


@pytest.mark.parametrize("metadata", [{"n": 3}, {"tracker-mek": {"n": 3}}, {"other-mek": {"n": 3}}, ["x"]])
def test_a_metadata_that_is_not_an_object_of_strings_is_refused(keyring_path, metadata):
    document = json.loads(keyring_path.read_text())
    document["metadata"] = metadata
    keyring_path.write_text(json.dumps(document))
    with pytest.raises(KeyringFileError, match="metadata"):
        LocalKeyProvider(keyring_path).metadata()


# -- the file: permissions, shape ------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o601])
def test_a_file_group_or_others_can_touch_is_refused_naming_the_chmod_fix(keyring_path, mode):
    os.chmod(keyring_path, mode)
    with pytest.raises(KeyringFileError) as caught:
        LocalKeyProvider(keyring_path).versions()
    message = str(caught.value)
    assert f"chmod 600 {keyring_path}" in message and f"{mode:o}" in message
    os.chmod(keyring_path, 0o600)
    assert len(LocalKeyProvider(keyring_path).versions()) == 2


def test_a_running_provider_notices_the_mode_change(keyring_path, monkeypatch):
    monkeypatch.setattr(local, "RELOAD_CHECK_SECONDS", 0.0)
    provider = LocalKeyProvider(keyring_path)
    provider.versions()
    os.chmod(keyring_path, 0o644)
    with pytest.raises(KeyringFileError, match="chmod 600"):
        provider.versions()


def test_a_missing_file_names_keys_init(tmp_path):
    with pytest.raises(KeyringFileError, match="reencrypt keys init"):
        LocalKeyProvider(tmp_path / "absent.json").current_kid()


@pytest.mark.parametrize(
    "content",
    [
        "",
        "not json",
        "[]",
        "{}",
        '{"keys": {}}',
        '{"keys": []}',
        '{"layout": 2, "keys": [{"kty": "RSA"}]}',
        '"text"',
        "\xff",
    ],
)
def test_a_file_that_is_not_a_keyring_is_refused(tmp_path, content):
    path = tmp_path / "keyring.json"
    path.write_bytes(content.encode("latin-1"))
    os.chmod(path, 0o600)
    with pytest.raises(KeyringFileError, match="not a JWKS keyring"):
        LocalKeyProvider(path).versions()


def test_an_incomplete_private_jwk_is_refused(keyring_path):
    document = json.loads(keyring_path.read_text())
    del document["keys"][0]["d"]
    keyring_path.write_text(json.dumps(document))
    with pytest.raises(KeyringFileError, match="not a complete RSA private JWK"):
        LocalKeyProvider(keyring_path).unwrap(V1, WRAP_ALGORITHM, b"x" * 256)


def test_open_key_provider_builds_the_local_provider(keyring_path):
    provider = open_key_provider(f"local:{keyring_path}")
    assert isinstance(provider, LocalKeyProvider) and provider.current_kid() == V2
    assert str(keyring_path) in provider.describe()
    for bad in ("", "local:", "file:/x", "https://vault.example/other/x"):
        with pytest.raises(ConfigError):
            open_key_provider(bad)


# -- crash safety ------------------------------------------------------------------------------

CRASH_SCRIPT = r"""
import os, sys, time
from tracker_reencrypt.keys import local

path, point = sys.argv[1], sys.argv[2]

def stall():
    print("stalled", flush=True)
    time.sleep(60)
    raise SystemExit("not killed")

if point == "write":         # half the new keyring is in the temporary file
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.handle.close()
        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            stall()

    os.fdopen = lambda fd, *args, **kwargs: HalfWriter(real_fdopen(fd, *args, **kwargs))
elif point == "fsync":       # all written, not yet synced
    os.fsync = lambda fd: stall()
elif point == "replace":     # synced, not yet renamed over the keyring
    os.replace = lambda src, dst: stall()

local.LocalKeyProvider(path).rotate()
"""


@pytest.mark.parametrize("point", ["write", "fsync", "replace"])
def test_a_writer_killed_mid_write_leaves_the_old_keyring_intact(keyring_path, point):
    before = keyring_path.read_bytes()
    child = run_python(CRASH_SCRIPT, str(keyring_path), point)
    try:
        assert child.stdout.readline().strip() == "stalled", child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert keyring_path.read_bytes() == before
    provider = LocalKeyProvider(keyring_path)
    assert [v.kid for v in provider.versions()] == [V1, V2] and provider.current_kid() == V2
    assert provider.unwrap(V1, WRAP_ALGORITHM, provider.wrap(V1, DEK)) == DEK
    # The killed writer's temporary file (which may hold a new private key) is owner-only.
    leftovers = list(keyring_path.parent.glob(".keyring.json.*.tmp"))
    assert leftovers and all(mode_of(p) == 0o600 for p in leftovers)
    # And the keyring can still be rotated.
    assert provider.rotate().kid == V3


# -- several processes -------------------------------------------------------------------------

ROTATE_SCRIPT = r"""
import base64, sys
from tracker_reencrypt.keys.local import LocalKeyProvider
provider = LocalKeyProvider(sys.argv[1])
kid = provider.rotate().kid
print(kid, base64.b64encode(provider.wrap(kid, bytes(range(32)))).decode(), flush=True)
"""


def test_a_running_provider_sees_another_process_rotate(keyring_path):
    provider = LocalKeyProvider(keyring_path)
    assert provider.current_kid() == V2  # loaded and cached
    child = run_python(ROTATE_SCRIPT, str(keyring_path))
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    kid, wrapped = out.split()
    assert kid == V3
    # A kid it has not seen makes it look at the file at once: no wait for the reload interval.
    assert provider.unwrap(V3, WRAP_ALGORITHM, base64.b64decode(wrapped)) == DEK
    assert provider.current_kid() == V3
    assert mode_of(keyring_path) == 0o600


def test_a_running_provider_sees_another_process_disable_after_the_reload_interval(keyring_path, monkeypatch):
    monkeypatch.setattr(local, "RELOAD_CHECK_SECONDS", 0.05)
    provider = LocalKeyProvider(keyring_path)
    wrapped = provider.wrap(V1, DEK)
    assert provider.unwrap(V1, WRAP_ALGORITHM, wrapped) == DEK
    LocalKeyProvider(keyring_path).set_enabled(V1, False)  # "another process": its own instance
    time.sleep(0.06)
    with pytest.raises(KeyDisabledError):
        provider.unwrap(V1, WRAP_ALGORITHM, wrapped)
    LocalKeyProvider(keyring_path).set_enabled(V1, True)
    time.sleep(0.06)
    assert provider.unwrap(V1, WRAP_ALGORITHM, wrapped) == DEK


def test_a_same_size_rewrite_with_an_unchanged_mtime_is_still_seen(keyring_path, monkeypatch):
    """Coarse file-system timestamps: (mtime, size) alone would miss this change."""
    monkeypatch.setattr(local, "RELOAD_CHECK_SECONDS", 0.0)
    other = LocalKeyProvider(keyring_path)
    other.rotate()  # v3 current, so v1 and v2 may both be disabled
    other.set_enabled(V1, False)
    provider = LocalKeyProvider(keyring_path)
    wrapped = provider.wrap(V2, DEK)
    seen = keyring_path.stat()
    other.set_enabled(V1, True)
    other.set_enabled(V2, False)
    assert keyring_path.stat().st_size == seen.st_size
    os.utime(keyring_path, ns=(seen.st_atime_ns, seen.st_mtime_ns))
    with pytest.raises(KeyDisabledError):
        provider.unwrap(V2, WRAP_ALGORITHM, wrapped)
    assert [v.enabled for v in provider.versions()] == [True, False, True]


def _mark(path: str, number: int) -> None:
    LocalKeyProvider(path).set_metadata({f"store-{number:012d}": f"{number}:x|sqlite:/x{number}.db"})


def _rotate(path: str, _: int) -> None:
    LocalKeyProvider(path).rotate()


def test_concurrent_changes_to_the_keyring_all_land(keyring_path):
    """Store marks written by several commands at once, beside rotations: none is written over
    (each change is a read-modify-write of the file, under its lock)."""
    import multiprocessing

    jobs = [(_mark, n) for n in range(8)] + [(_rotate, n) for n in range(3)]
    # Fresh interpreters, as separate commands are: a forked child inherits the locks other
    # tests' threads (servers, SDK pools) held at the fork, and could hang on one.
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=job, args=(str(keyring_path), n)) for job, n in jobs]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    provider = LocalKeyProvider(keyring_path)
    assert sorted(provider.metadata()) == [f"store-{n:012d}" for n in range(8)]
    assert len(provider.versions()) == 2 + 3  # the template's two, and every rotation
