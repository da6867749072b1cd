"""Fleet-wide budgets: documents/s, Key Vault calls/s and request units/s, shared by every
worker process, with adaptive back-off after 429s.

Rates are measured from the store's own state, never from the limiter: the documents already
rewritten onto the target key, read in one query (a snapshot) before and after a window. The
container is seeded with ``dek_share=1`` (every document has its own data key), so each
rewritten document cost exactly one unwrap; its request units follow from its sizes by the
store's cost formula (:func:`estimated_request_units`).

Redis: database 10 of the test server, not the 9 other suites flush before each test, so this
file can run beside them without either flushing the other's queue.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from itertools import pairwise

import pytest
import redis
from azure.core.credentials import AccessToken

from coordinator.context import Context
from coordinator.steering import LimitFlags, start
from tracker_reencrypt import envelope
from tracker_reencrypt.config import load_settings
from tracker_reencrypt.documents import find_envelopes, json_pointer, location
from tracker_reencrypt.keys.azure import AzureKeyVaultProvider
from tracker_reencrypt.keys.keyring import Keyring
from tracker_reencrypt.keys.products import ProductKeys
from tracker_reencrypt.pacing.backends.memory import MemoryPacing
from tracker_reencrypt.pacing.backends.redis import RedisPacing
from tracker_reencrypt.pacing.limits import KEY_VAULT
from tracker_reencrypt.pacing.pacer import Pacer
from tracker_reencrypt.seed import seed_store, seeding_keyring
from tracker_reencrypt.stores import estimated_request_units
from tracker_reencrypt.stores.sqlite import SqliteStore
from tracker_reencrypt.sweep.records import RUNNING
from tracker_reencrypt.sweep.state import SweepState
from worker.runtime import Runtime
from worker.tasks import process_slice

from conftest import Fleet, make_rotation, run_cli, wait_for
from keyvault_server import KeyVaultServer

BUDGETS_DB = 10

#: Worker settings for rate measurements: small pages, so a page's worth of tokens (documents
#: reserved before a page, request units charged after it) is small against a window's budget.
PAGE_SIZE = 5
FLEET_ENV = {"REENCRYPT_PAGE_SIZE": str(PAGE_SIZE), "REENCRYPT_BATCH_DOCUMENTS": "50", "REENCRYPT_BATCH_SECONDS": "2"}
FLEET_DOCUMENTS = 1500
#: Past the bucket's initial burst (one second of budget), with room for workers slowed by a
#: busy machine (the suite runs in two processes): a burst inside a window reads as overspend.
WARMUP_S = 3.0
WINDOW_S = 5.0
TOLERANCE = 1.10
WORKERS = 3


@pytest.fixture
def redis_url(redis_server_url, _private_redis):
    """A database of its own on the real server, flushed only when the session started that
    server itself (a Redis named by $REDIS_URL may hold someone's data: budget keys are named
    by sweep id, unique per test, so nothing needs flushing there)."""
    url = f"{redis_server_url}/{BUDGETS_DB}"
    client = redis.Redis.from_url(url)
    if _private_redis:
        client.flushdb()
    yield url
    if _private_redis:
        client.flushdb()
    client.close()


@pytest.fixture
def client(redis_url):
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


# -- measuring from the store ----------------------------------------------------------------


def snapshot(store: SqliteStore) -> list[dict]:
    """Every document, in one query: a consistent snapshot of the container."""
    (feed_range,) = store.feed_ranges(1)
    return [document.body for document in store.scan(feed_range, None, 10**6).documents]


def stored_size(body: dict) -> int:
    """The document's size as the SQLite store serialises it (what it charges RU for)."""
    return len(json.dumps(body, separators=(",", ":"), ensure_ascii=False))


def kids(body: dict) -> set[str]:
    return {str(sealed["kid"]) for _, sealed in find_envelopes(body)}


@dataclass
class Container:
    """The seeded container before the sweep: sizes, and who has fields to move."""

    documents: int
    read_units: dict[str, float]  # id -> RU of reading it (as the scan charges)
    with_fields: set[str]
    bodies: list[dict]

    @classmethod
    def of(cls, rotation) -> Container:
        store = rotation.store()  # a fresh one: its cost counter starts at zero
        bodies = snapshot(store)
        read_units = {body["id"]: estimated_request_units(stored_size(body), write=False) for body in bodies}
        # Sizes as the store sees them: its own charge for that one-page scan agrees.
        assert store.cost.request_units == pytest.approx(2.5 + sum(read_units.values()))
        with_fields = {body["id"] for body in bodies if kids(body)}
        # dek_share=1: one data key per document with fields, none shared, so one unwrap each.
        deks = [{sealed["dek"] for _, sealed in find_envelopes(body)} for body in bodies if body["id"] in with_fields]
        assert all(len(own) == 1 for own in deks) and len(set().union(*deks)) == len(with_fields)
        store.close()
        return cls(len(bodies), read_units, with_fields, bodies)

    def scan_overhead(self) -> float:
        """RU the scan spends that no rewritten document accounts for (documents without fields,
        and the store's per-page charge), spread evenly over the documents rewritten."""
        unwritten = sum(ru for doc_id, ru in self.read_units.items() if doc_id not in self.with_fields)
        return (unwritten + 2.5 * self.documents / PAGE_SIZE) / len(self.with_fields)


@dataclass(frozen=True)
class Sample:
    started: float
    finished: float
    documents: int  # rewritten onto the target
    spent: float  # of the budget's resource, for those documents


class Moved:
    """What the sweep has spent so far, derived from the documents already on the target.

    A document is counted when it is written, but its budget was taken before (documents and
    unwraps) or just after (request units) its page: a window can hold the writes of pages whose
    budget was spent before it opened, at most one page per worker (``in_hand``). The bound
    leaves that out; at 10 unwraps/s over 5 s it is 15 of 50, so it is not noise to ignore."""

    def __init__(self, rotation, container: Container, cost) -> None:
        self.store, self.target, self.cost = rotation.store(), rotation.v2, cost
        largest = max(cost(body) for body in container.bodies if body["id"] in container.with_fields)
        self.in_hand = WORKERS * PAGE_SIZE * largest

    def sample(self) -> Sample:
        started = time.monotonic()
        moved = [body for body in snapshot(self.store) if self.target in kids(body)]
        return Sample(started, time.monotonic(), len(moved), sum(self.cost(body) for body in moved))

    def rate_over(self, seconds: float) -> tuple[float, float, Sample]:
        """(upper bound, central estimate) of the spend per second over a window; and its end.
        The bound leaves out the pages in hand when the window opened, and divides by the
        shortest interval the two snapshots can be apart."""
        first = self.sample()
        time.sleep(seconds)
        last = self.sample()
        spent = last.spent - first.spent
        middle = (last.started + last.finished - first.started - first.finished) / 2
        return (spent - self.in_hand) / (last.started - first.finished), spent / middle, last


def costs(container: Container, flag: str):
    """What one rewritten document cost, in the unit of the budget ``flag`` sets."""
    if flag == "--kv-ops-per-s":
        return lambda body: 1.0  # its one data key's unwrap
    if flag == "--rate":
        share = container.documents / len(container.with_fields)  # documents without fields are scanned too
        return lambda body: share
    overhead = container.scan_overhead()
    return lambda body: (
        container.read_units[body["id"]] + estimated_request_units(stored_size(body), write=True) + overhead
    )


@pytest.fixture
def rotation(tmp_path, redis_url):
    """A container where every document has its own data key (the vault's worst case)."""
    return make_rotation(tmp_path, FLEET_DOCUMENTS, redis_url, dek_share=1)


def start_sweep(rotation, *options: str) -> str:
    result = run_cli("sweep", "start", "--to", rotation.v2, "--slices", "6", "--json", *options, env=rotation.env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["id"]


def cli_json(rotation, *args: str):
    result = run_cli(*args, "--json", env=rotation.env())
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return json.loads(result.stdout)


def warmed_up(moved: Moved, fleet: Fleet) -> None:
    try:
        wait_for(lambda: moved.sample().documents > 0, 30, 0.3, message="the first documents on the target")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{fleet.logs()[-3000:]}") from None
    time.sleep(WARMUP_S)


# -- three processes share one budget -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("flag, budget", [("--kv-ops-per-s", 40), ("--ru-per-s", 1000), ("--rate", 50)])
def test_three_worker_processes_together_stay_within_the_budget(rotation, fleet, flag, budget):
    container = Container.of(rotation)
    moved = Moved(rotation, container, costs(container, flag))
    fleet.start(count=WORKERS, **FLEET_ENV)
    start_sweep(rotation, flag, str(budget))
    warmed_up(moved, fleet)

    bound, rate, last = moved.rate_over(WINDOW_S)

    assert last.documents < len(container.with_fields), "the sweep ended inside the window: measure a bigger container"
    print(f"{flag} {budget}: measured {rate:.1f}/s (at most {bound:.1f}/s) over {WINDOW_S:.0f} s, 3 processes")
    assert bound <= TOLERANCE * budget, (flag, budget, bound, rate)
    assert rate >= 0.5 * budget, f"{flag} {budget}: only {rate:.1f}/s; the fleet, not the budget, bound the rate"


# -- throttle reaches a running sweep within seconds --------------------------------------

THROTTLE_LAG_S = 3.0


@pytest.mark.slow
@pytest.mark.parametrize("flag, before, after", [("--kv-ops-per-s", 10, 60), ("--ru-per-s", 1500, 500)])
def test_throttle_changes_a_running_sweeps_budget_within_seconds(rotation, fleet, flag, before, after):
    container = Container.of(rotation)
    moved = Moved(rotation, container, costs(container, flag))
    fleet.start(count=WORKERS, **FLEET_ENV)
    sweep_id = start_sweep(rotation, flag, str(before))
    warmed_up(moved, fleet)
    old_bound, old_rate, _ = moved.rate_over(WINDOW_S)

    changed = cli_json(rotation, "sweep", "throttle", sweep_id, flag, str(after))
    assert changed[flag[2:].replace("-", "_")] == after
    time.sleep(THROTTLE_LAG_S)  # workers read limits per batch: 2 s batches, plus the page in hand
    new_bound, new_rate, last = moved.rate_over(4.0)

    assert last.documents < len(container.with_fields), "the sweep ended inside the window: measure a bigger container"
    print(
        f"{flag} {before} -> {after}: {old_rate:.1f}/s (at most {old_bound:.1f}/s) before,"
        f" {new_rate:.1f}/s (at most {new_bound:.1f}/s) from {THROTTLE_LAG_S:.0f} s after"
    )
    assert old_bound <= TOLERANCE * before and new_bound <= TOLERANCE * after, (old_bound, new_bound)
    assert new_rate >= 0.5 * after and old_rate >= 0.5 * before, (old_rate, new_rate)


# -- a vault answering 429: the fleet backs off and loses nothing -------------------------

KEY_NAME = "tracker-mek"


class StaticTokenCredential:
    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("test-token", int(time.time()) + 3600)


@pytest.fixture
def vault():
    with KeyVaultServer() as server:
        yield server


@pytest.fixture
def vault_provider(vault):
    provider = AzureKeyVaultProvider(
        vault.url,
        KEY_NAME,
        StaticTokenCredential(),
        connection_verify=vault.cert_path,
        verify_challenge_resource=False,
        retry_backoff_factor=0.001,
    )
    yield provider
    provider.close()


class ShareWatch(threading.Thread):
    """Samples (time, the fleet's Key Vault share in Redis, unwraps the vault served); tells
    the vault to stop throttling once the share is down to ``recover_at``."""

    def __init__(self, client: redis.Redis, sweep_id: str, vault: KeyVaultServer, recover_at: float) -> None:
        super().__init__(daemon=True)
        self.pacing, self.sweep_id, self.vault, self.recover_at = RedisPacing(client), sweep_id, vault, recover_at
        self.samples: list[tuple[float, float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            share = self.pacing.share(self.sweep_id, KEY_VAULT.label)
            self.samples.append((time.monotonic(), share, self.vault.counts["unwrap_key"]))
            if share <= self.recover_at:
                self.vault.throttle(0)
            time.sleep(0.02)

    def window_after(self, share: float, delay: float) -> list[tuple[float, float, int]]:
        """The samples from ``delay`` seconds after the share first fell to ``share``."""
        fell = next(t for t, f, _ in self.samples if f <= share)
        return [sample for sample in self.samples if sample[0] >= fell + delay]


def read_fields(store: SqliteStore, keyring: Keyring) -> dict[tuple[str, str], tuple[str, object]]:
    """{(document id, field pointer): (kid, decrypted value)} for every encrypted field."""
    fields = {}
    for body in snapshot(store):
        partition_key = store.partition_key_of(body)
        for parts, sealed in find_envelopes(body):
            value = envelope.decrypt(sealed, location(body, partition_key, parts), keyring)
            fields[(body["id"], json_pointer(parts))] = (sealed["kid"], value)
    return fields


def test_vault_429s_shrink_the_fleets_share_and_the_sweep_still_moves_every_field(
    tmp_path, redis_url, client, vault, vault_provider
):
    budget, documents, backed_off = 120, 300, 0.25
    v1 = vault_provider.init().kid
    store = SqliteStore(tmp_path / "tracker.db")
    seed_store(store, seeding_keyring(vault_provider), documents, dek_share=1)
    v2 = vault_provider.rotate().kid
    originals = read_fields(store, Keyring(vault_provider))
    assert {kid for kid, _ in originals.values()} == {v1}

    settings = load_settings(
        store=f"sqlite:///{tmp_path / 'tracker.db'}",
        redis_url=redis_url,
        batch_documents=20,
        batch_seconds=2,
        page_size=10,
        lease_seconds=30,
    )
    ctx = Context(settings)
    ctx.keys = ProductKeys(vault_provider)  # the loopback vault, with its test credential and CA
    sweep_id = start(ctx, to=v2, sources=[], mode="reencrypt", slices=4, limits=LimitFlags(kv_ops_per_s=budget)).id
    # The task function itself, in this process, as a worker's pool process runs it; the
    # continuations it queues stay in Redis (the loop below picks each slice up again).
    runtime = Runtime(settings, redis_url, provider=vault_provider)
    state = SweepState(store.records())
    # The vault answers 429 (Retry-After: 0) to 30% of calls until the fleet has backed off to
    # a quarter of its budget, then recovers, as a vault whose quota was exceeded does.
    watch = ShareWatch(client, sweep_id, vault, recover_at=backed_off)
    vault.throttle(fraction=0.3, retry_after="0")
    watch.start()
    began, outcomes = time.monotonic(), []
    try:
        while state.get_sweep(sweep_id).status == RUNNING:
            assert time.monotonic() - began < 60, f"sweep still running after 60 s: {outcomes[-5:]}"
            for piece in state.slices(sweep_id):
                if not piece.done:
                    outcomes.append(process_slice(ctx.celery, runtime, sweep_id, piece.index, piece.fence))
    finally:
        watch.done.set()
        watch.join()
        vault.throttle(0)
    took = time.monotonic() - began

    # The fleet saw the 429s (the provider's counter is what the pacer reads) and backed off.
    assert vault.throttled > 0 and vault_provider.throttled == vault.throttled
    shares = [f for _, f, _ in watch.samples]
    assert min(shares) <= backed_off, f"the Key Vault share never halved twice: lowest {min(shares)}"
    # From then on the vault served as many unwraps as the shrunken limit allowed (limit x
    # share, integrated over time) and no more. A token bucket also lets through one second
    # of its rate at once when this single process fell behind it (a busy CPU), so that much
    # burst is allowed on top.
    window = watch.window_after(backed_off, delay=1.0)
    seconds = window[-1][0] - window[0][0]
    assert seconds >= 2.0, "the sweep ended too soon after backing off to measure"
    allowed = sum(budget * f0 * (t1 - t0) for (t0, f0, _), (t1, _, _) in pairwise(window))
    burst = budget * max(f for _, f, _ in window) * 1.0
    served = window[-1][2] - window[0][2]
    print(
        f"{vault.throttled} 429s; share down to {min(shares):.3f}; then {served} unwraps in {seconds:.1f} s "
        f"({served / seconds:.1f}/s; limit x share allowed {allowed:.0f}, {allowed / seconds:.1f}/s); "
        f"sweep took {took:.1f} s, {sum(o.startswith('error') for o in outcomes)} batches retried"
    )
    assert served <= TOLERANCE * allowed + burst, (served, allowed, burst)
    assert served / seconds <= 0.5 * budget, "the rate did not come down to half the budget"
    assert served >= 0.5 * allowed, f"only {served} of {allowed:.0f} allowed: the fleet, not the budget, bound the rate"

    # Nothing lost, nothing failed: every field on v2 with its original value.
    final = state.get_sweep(sweep_id)
    totals = state.totals(sweep_id)
    assert final.status == "completed", final
    assert totals["failures"] == 0 and totals["documents_failed"] == 0, totals
    assert totals["documents_scanned"] == documents
    assert totals["fields_reencrypted"] == len(originals)
    now = read_fields(store, Keyring(vault_provider))
    assert now.keys() == originals.keys()
    assert all(now[key] == (v2, value) for key, (_, value) in originals.items())


class ChargeLog(MemoryPacing):
    """The in-memory pacing state, noting every amount charged to each resource."""

    def __init__(self) -> None:
        super().__init__()
        self.charged: dict[str, list[float]] = {}

    def reserve(self, sweep_id: str, resource: str, tokens: float, rate: float, burst: float) -> float:
        self.charged.setdefault(resource, []).append(tokens)
        return super().reserve(sweep_id, resource, tokens, rate, burst)


@pytest.mark.parametrize("public_key_readable", [True, False], ids=["local-wraps", "vault-wraps"])
def test_every_call_that_reaches_the_vault_spends_the_kv_budget_once(
    tmp_path, vault, vault_provider, public_key_readable
):
    kid = vault_provider.init().kid
    if not public_key_readable:
        vault.keys[KEY_NAME][-1].key_ops = ["unwrapKey"]  # no public-key wraps: the vault wraps
    wrapped = [vault_provider.wrap(kid, bytes([i]) * 32) for i in range(2)]
    cold = AzureKeyVaultProvider(
        vault.url, KEY_NAME, StaticTokenCredential(), connection_verify=vault.cert_path, verify_challenge_resource=False
    )  # nothing fetched yet, as in a fresh worker
    try:
        pacing = ChargeLog()
        pacer = Pacer(pacing, "sw-pacing", {"kv_ops_per_s": 1000}, SqliteStore(tmp_path / "t.db").cost, cold)
        keyring = Keyring(cold, before_provider_call=pacer.before_key_call)
        served_before = sum(vault.counts.values())

        for blob in wrapped:  # one page: two unwraps, three fresh data keys wrapped
            keyring.unwrap(kid, "RSA-OAEP-256", blob)
        for i in range(3):
            keyring.wrap(kid, bytes([10 + i]) * 32)
        pacer.after_page()
    finally:
        cold.close()

    served = sum(vault.counts.values()) - served_before
    # The version's key read and the two unwraps; the wraps too where the vault does them.
    assert served == (3 if public_key_readable else 6), dict(vault.counts)
    assert sum(pacing.charged[KEY_VAULT.label]) == served, pacing.charged


# -- the dry run's estimate ----------------------------------------------------------------


def test_dry_run_estimate_matches_a_hand_computation(tmp_path, redis_url):
    rotation = make_rotation(tmp_path, 400, redis_url, dek_share=3)
    bodies = snapshot(rotation.store())
    on_v1 = [body for body in bodies if rotation.v1 in kids(body)]
    deks = {sealed["dek"] for body in on_v1 for _, sealed in find_envelopes(body)}
    average = sum(len(json.dumps(body, separators=(",", ":"))) for body in bodies) / len(bodies)
    # The documented model, written out here rather than imported: a read of k KB (at least 1)
    # costs k RU, a replace 5 + 5k RU (1 KB: ~1 and ~10, as Microsoft gives for Cosmos).
    kilobytes = max(1.0, average / 1024)
    request_units = len(bodies) * kilobytes + len(on_v1) * (5 + 5 * kilobytes)
    print(
        f"{len(bodies)} documents ({average:.0f} B average), {len(on_v1)} to rewrite, {len(deks)} distinct DEKs, "
        f"{request_units:.0f} RU: {len(deks) / 200:.2f} s at 200 KV ops/s, {request_units / 5000:.2f} s at 5000 RU/s"
    )
    # The seeded sizes put each run below on the bound it means to show.
    assert request_units / 5000 > len(deks) / 200 and len(deks) / 40 > request_units / 5000 > len(bodies) / 1000

    def dry_run(*limits: str) -> dict:
        return cli_json(rotation, "sweep", "start", "--to", rotation.v2, "--dry-run", *limits)

    ru_bound = dry_run("--kv-ops-per-s", "200", "--ru-per-s", "5000")
    assert ru_bound["documents"] == len(bodies) and ru_bound["distinct_source_deks"] == len(deks)
    assert ru_bound["estimate"]["kv_ops"] == len(deks)
    assert ru_bound["estimate"]["request_units"] == round(request_units)
    assert ru_bound["estimate"]["bound_by"] == "store request units"  # RU/5000 > DEKs/200
    assert ru_bound["estimate"]["seconds"] == pytest.approx(request_units / 5000)

    kv_bound = dry_run("--kv-ops-per-s", "40", "--ru-per-s", "5000", "--rate", "1000")
    assert kv_bound["estimate"]["bound_by"] == "Key Vault"  # DEKs/40 > RU/5000 > documents/1000
    assert kv_bound["estimate"]["seconds"] == pytest.approx(len(deks) / 40)
    assert "bound by Key Vault" in kv_bound["estimate"]["text"]

    assert SweepState(rotation.store().records()).sweeps() == []  # a dry run writes nothing
