"""One local keyring file holding many keys (one MEK per product): each key administered on its
own, every key's versions wrapping and unwrapping through any provider of the file.

RSA key generation costs ~0.1 s, so most tests start from a copy of one keyring made once per
module: key ``tracker-mek-acme`` with v1 and v2 (current), key ``tracker-mek-globex`` with v1.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from tracker_reencrypt import envelope
from tracker_reencrypt.envelope import Location
from tracker_reencrypt.errors import ConfigError, KeyDisabledError, KeyNotFoundError, KeyringFileError
from tracker_reencrypt.keys import WRAP_ALGORITHM, local, open_key_provider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.local import LocalKeyProvider

ACME, GLOBEX = "tracker-mek-acme", "tracker-mek-globex"
ACME_V1, ACME_V2, ACME_V3 = f"{ACME}/v1", f"{ACME}/v2", f"{ACME}/v3"
GLOBEX_V1, GLOBEX_V2 = f"{GLOBEX}/v1", f"{GLOBEX}/v2"
DEK = bytes(range(32))
STORE_ENTRY = "store-3f9a0c12ab45"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("template") / "keyring.json"
    acme = LocalKeyProvider(path, ACME)
    acme.init()
    acme.rotate()
    LocalKeyProvider(path, GLOBEX).init()
    return path.read_bytes()


def write_private(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


@pytest.fixture
def keyring_path(tmp_path, template) -> Path:
    return write_private(tmp_path / "keyring.json", template)


def kids_and_current(provider: LocalKeyProvider) -> list[tuple[str, bool]]:
    return [(v.kid, v.current) for v in provider.versions()]


# -- each key on its own -----------------------------------------------------------------------


def test_init_adds_a_second_key_to_an_existing_file(tmp_path):
    path = tmp_path / "keyring.json"
    acme = LocalKeyProvider(path, ACME)
    assert acme.init().kid == ACME_V1
    globex = LocalKeyProvider(path, GLOBEX)
    version = globex.init()
    assert (version.kid, version.current, version.enabled) == (GLOBEX_V1, True, True)
    assert kids_and_current(acme) == [(ACME_V1, True)]
    assert kids_and_current(globex) == [(GLOBEX_V1, True)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.glob(".keyring.json.*")) == []


def test_rotating_one_key_leaves_the_other_alone(keyring_path):
    acme, globex = LocalKeyProvider(keyring_path, ACME), LocalKeyProvider(keyring_path, GLOBEX)
    assert acme.rotate().kid == ACME_V3  # numbered after acme's own highest version
    assert kids_and_current(acme) == [(ACME_V1, False), (ACME_V2, False), (ACME_V3, True)]
    assert kids_and_current(globex) == [(GLOBEX_V1, True)]
    assert globex.current_kid() == GLOBEX_V1
    assert globex.rotate().kid == GLOBEX_V2
    assert acme.current_kid() == ACME_V3


def test_promoting_one_keys_version_leaves_the_others_current_alone(keyring_path):
    acme, globex = LocalKeyProvider(keyring_path, ACME), LocalKeyProvider(keyring_path, GLOBEX)
    assert acme.promote(ACME_V1).current
    assert kids_and_current(acme) == [(ACME_V1, True), (ACME_V2, False)]
    assert kids_and_current(globex) == [(GLOBEX_V1, True)]
    # Each key keeps exactly one current version: disabling acme's abandoned v2 is allowed,
    # globex's only (current) version is still protected.
    assert not acme.set_enabled(ACME_V2, False).enabled
    with pytest.raises(KeyDisabledError, match="current version"):
        globex.set_enabled(GLOBEX_V1, False)


def test_metadata_is_kept_per_key(keyring_path):
    acme, globex = LocalKeyProvider(keyring_path, ACME), LocalKeyProvider(keyring_path, GLOBEX)
    assert acme.set_metadata({STORE_ENTRY: "acme-store"}) == {STORE_ENTRY: "acme-store"}
    assert globex.metadata() == {}
    assert globex.set_metadata({STORE_ENTRY: "globex-store", "owner": "team-g"}) == {
        STORE_ENTRY: "globex-store",
        "owner": "team-g",
    }
    assert acme.metadata() == {STORE_ENTRY: "acme-store"}
    acme.rotate()
    globex.set_metadata({"owner": None})
    assert LocalKeyProvider(keyring_path, ACME).metadata() == {STORE_ENTRY: "acme-store"}
    assert LocalKeyProvider(keyring_path, GLOBEX).metadata() == {STORE_ENTRY: "globex-store"}
    assert json.loads(keyring_path.read_text())["metadata"] == {
        ACME: {STORE_ENTRY: "acme-store"},
        GLOBEX: {STORE_ENTRY: "globex-store"},
    }


def test_administering_another_keys_version_is_refused_and_writes_nothing(keyring_path):
    acme = LocalKeyProvider(keyring_path, ACME)
    acme.rotate()  # acme/v3 current: acme's own v1 may be disabled, globex's v1 not through acme
    before = keyring_path.read_bytes()
    for attempt in (
        lambda: acme.set_enabled(GLOBEX_V1, False),
        lambda: acme.set_enabled(GLOBEX_V1, True),
        lambda: acme.promote(GLOBEX_V1),
    ):
        with pytest.raises(KeyNotFoundError, match=f"key {GLOBEX_V1} is not a version of .*key {ACME}") as refused:
            attempt()
        assert "'reencrypt keys list'" in str(refused.value) and "\n" not in str(refused.value)
    assert keyring_path.read_bytes() == before
    assert LocalKeyProvider(keyring_path, GLOBEX).versions()[0].enabled


def test_init_of_an_existing_key_is_refused_and_leaves_the_file_byte_identical(keyring_path):
    before = keyring_path.read_bytes()
    with pytest.raises(KeyringFileError, match=f"key {GLOBEX} already exists in .*'reencrypt keys rotate'"):
        LocalKeyProvider(keyring_path, GLOBEX).init()
    assert keyring_path.read_bytes() == before


def test_a_key_not_in_the_file_is_not_found_until_init(keyring_path):
    initech = LocalKeyProvider(keyring_path, "tracker-mek-initech")
    assert initech.versions() == []
    before = keyring_path.read_bytes()
    for attempt in (initech.current_kid, initech.rotate, initech.metadata, lambda: initech.set_metadata({"a": "b"})):
        with pytest.raises(KeyNotFoundError, match="key tracker-mek-initech does not exist: .*'reencrypt keys init'"):
            attempt()
    assert keyring_path.read_bytes() == before
    assert initech.init().kid == "tracker-mek-initech/v1"


def test_key_names_lists_every_key_sorted(keyring_path):
    LocalKeyProvider(keyring_path, "a-first").init()
    LocalKeyProvider(keyring_path, "tracker-mek").init()
    provider = LocalKeyProvider(keyring_path, GLOBEX)
    assert provider.key_names() == ["a-first", "tracker-mek", ACME, GLOBEX]
    assert provider.key_names() == sorted(provider.key_names())


# -- wrap and unwrap across keys -----------------------------------------------------------------


def test_a_provider_of_one_key_unwraps_what_another_keys_version_wrapped(keyring_path):
    acme, globex = LocalKeyProvider(keyring_path, ACME), LocalKeyProvider(keyring_path, GLOBEX)
    wrapped = acme.wrap(ACME_V2, DEK)
    assert globex.unwrap(ACME_V2, WRAP_ALGORITHM, wrapped) == DEK
    assert acme.unwrap(GLOBEX_V1, WRAP_ALGORITHM, globex.wrap(GLOBEX_V1, DEK)) == DEK
    # Through the envelope: sealed under acme's current version, opened by a keyring over globex.
    where = Location(document_id="issue-1", partition_key="acme", field_path="/reporter/email")
    sealed = envelope.encrypt({"email": "a@example.com"}, where, Keyring(acme))
    assert sealed["kid"] == ACME_V2
    assert envelope.decrypt(sealed, where, Keyring(globex)) == {"email": "a@example.com"}


def test_a_per_product_template_wraps_and_unwraps_any_key_but_administers_none(keyring_path):
    sweep = open_key_provider(f"local:{keyring_path}", "tracker-mek-{productId}")
    assert isinstance(sweep, LocalKeyProvider) and sweep.key_name == "tracker-mek-{productId}"
    assert sweep.unwrap(GLOBEX_V1, WRAP_ALGORITHM, sweep.wrap(GLOBEX_V1, DEK)) == DEK
    assert sweep.key_names() == [ACME, GLOBEX]
    before = keyring_path.read_bytes()
    for attempt in (sweep.init, sweep.versions, sweep.current_kid, sweep.rotate, sweep.metadata):
        with pytest.raises(ConfigError, match="template for every product's key"):
            attempt()
    with pytest.raises(ConfigError, match="template"):
        sweep.promote(ACME_V1)
    assert keyring_path.read_bytes() == before
    assert sweep.for_key(ACME).current_kid() == ACME_V2


# -- siblings ---------------------------------------------------------------------------------------


def test_a_sibling_shares_the_file_and_sees_changes_at_once(keyring_path, monkeypatch):
    monkeypatch.setattr(local, "RELOAD_CHECK_SECONDS", 3600.0)  # no reload from the clock in this test
    acme = LocalKeyProvider(keyring_path, ACME)
    assert acme.key_names() == [ACME, GLOBEX]  # the file is loaded and cached
    globex = acme.for_key(GLOBEX)
    assert (globex.path, globex.key_name) == (acme.path, GLOBEX)
    assert globex.describe() == f"local keyring {keyring_path} key {GLOBEX}"
    initech = acme.for_key("tracker-mek-initech")
    initech.init()
    globex.rotate()
    # One parsed document for the whole file: the original sees its siblings' writes at once.
    assert acme.key_names() == [ACME, GLOBEX, "tracker-mek-initech"]
    assert acme.unwrap(GLOBEX_V2, WRAP_ALGORITHM, globex.wrap(GLOBEX_V2, DEK)) == DEK
    assert kids_and_current(acme) == [(ACME_V1, False), (ACME_V2, True)]
    assert LocalKeyProvider(keyring_path, GLOBEX).current_kid() == GLOBEX_V2  # on disk, for every process


def test_for_key_refuses_a_name_key_vault_would_refuse(keyring_path):
    with pytest.raises(ConfigError):
        LocalKeyProvider(keyring_path, ACME).for_key("acme/v1")


# -- layout 1, written before per-product keys ------------------------------------------------------


def layout_1(template: bytes) -> dict:
    """The template's acme key as an older tool wrote it: one key, its metadata flat."""
    document = json.loads(template)
    keys = [jwk for jwk in document["keys"] if jwk["kid"].startswith(f"{ACME}/")]
    return {"name": ACME, "keys": keys, "metadata": {STORE_ENTRY: "12:ab|sqlite:/srv/tracker.db"}}


def test_a_layout_1_file_is_read_as_before(tmp_path, template):
    path = write_private(tmp_path / "keyring.json", json.dumps(layout_1(template)).encode())
    before = path.read_bytes()
    acme = LocalKeyProvider(path, ACME)
    assert kids_and_current(acme) == [(ACME_V1, False), (ACME_V2, True)]
    assert acme.metadata() == {STORE_ENTRY: "12:ab|sqlite:/srv/tracker.db"}
    assert acme.key_names() == [ACME]
    assert acme.unwrap(ACME_V1, WRAP_ALGORITHM, acme.wrap(ACME_V1, DEK)) == DEK
    assert LocalKeyProvider(path, GLOBEX).versions() == []  # the layout-1 metadata is acme's alone
    assert path.read_bytes() == before  # reading never rewrites


@pytest.mark.parametrize("first_write", ["rotate", "init another key", "set metadata", "disable"])
def test_the_first_write_rewrites_a_layout_1_file_as_layout_2_keeping_its_metadata(tmp_path, template, first_write):
    path = write_private(tmp_path / "keyring.json", json.dumps(layout_1(template)).encode())
    acme = LocalKeyProvider(path, ACME)
    if first_write == "rotate":
        acme.rotate()
    elif first_write == "init another key":
        LocalKeyProvider(path, GLOBEX).init()
    elif first_write == "set metadata":
        acme.set_metadata({"owner": "team-a"})
    else:
        acme.set_enabled(ACME_V1, False)
    document = json.loads(path.read_text())
    assert document["layout"] == 2 and "name" not in document
    expected = {STORE_ENTRY: "12:ab|sqlite:/srv/tracker.db"}
    if first_write == "set metadata":
        expected["owner"] = "team-a"
    assert document["metadata"] == {ACME: expected}
    assert LocalKeyProvider(path, ACME).metadata() == expected
    assert [v.kid for v in LocalKeyProvider(path, ACME).versions()][:2] == [ACME_V1, ACME_V2]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_layout_this_tool_does_not_know_is_refused_naming_it(tmp_path, template):
    document = {**json.loads(template), "layout": 3}
    path = write_private(tmp_path / "keyring.json", json.dumps(document).encode())
    with pytest.raises(KeyringFileError, match="layout 3; this tool reads layouts 1 and 2"):
        LocalKeyProvider(path, ACME).versions()


# -- several processes -----------------------------------------------------------------------------


def _init(path: str, name: str) -> None:
    LocalKeyProvider(path, name).init()


def test_products_keys_initialised_at_once_all_land(tmp_path):
    """Several 'keys init' commands, one per product, racing on a file that does not exist yet:
    each read-modify-write holds the file's lock, so none writes over another's key."""
    path = str(tmp_path / "keyring.json")
    names = [f"tracker-mek-p{n}" for n in range(5)]
    # Fresh interpreters, as separate commands are: a forked child inherits the locks other
    # tests' threads (servers, SDK pools) held at the fork, and could hang on one.
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_init, args=(path, name)) for name in names]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    provider = LocalKeyProvider(path, names[0])
    assert provider.key_names() == names
    for name in names:
        assert kids_and_current(provider.for_key(name)) == [(f"{name}/v1", True)]
