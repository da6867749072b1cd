"""The pacing package: the token bucket and the adaptive share against both backends (one suite:
the in-memory twin on a test clock, never sleeping, and Redis for real), and the per-batch pacer
on the twin.

Time: the twin's clock is moved by the test (``pacing.sleep``); against Redis, whose scripts read
Redis's own clock, the same calls really sleep, so the suite keeps its intervals short.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tracker_reencrypt.errors import BrokerUnavailableError, ReencryptError
from tracker_reencrypt.keys import LOCAL_WRAP_CALL, UNWRAP_CALL
from tracker_reencrypt.pacing.backend import BackOff, PacingBackend
from tracker_reencrypt.pacing.backends.memory import MemoryPacing
from tracker_reencrypt.pacing.backends.redis import RedisPacing
from tracker_reencrypt.pacing.bucket import TokenBucket
from tracker_reencrypt.pacing.limits import DOCUMENTS, KEY_VAULT, REQUEST_UNITS, describe_limits
from tracker_reencrypt.pacing.pacer import LIMITS_REFRESH_S, Pacer
from tracker_reencrypt.pacing.share import AdaptiveShare
from tracker_reencrypt.stores import RequestCost

FLOOR = BackOff().floor


class Clock:
    """A monotonic clock the test moves; ``sleep`` moves it as a real sleep would."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Pacing:
    """A backend, the clock of the process using it, and how time passes for both."""

    backend: PacingBackend
    peer: Callable[[], PacingBackend]  # another process's view of the same state
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    # Unique per test: a Redis named by $REDIS_URL is never flushed, and state outlives a run.
    sweep_id: str = field(default_factory=lambda: f"sw-{uuid.uuid4().hex[:12]}")

    def bucket(self, resource: str = "documents", sweep_id: str | None = None) -> TokenBucket:
        return TokenBucket(self.backend, sweep_id or self.sweep_id, resource, sleep=self.sleep)

    def share(
        self, back_off: BackOff = BackOff(), *, peer: bool = False, resource: str = "kv_ops", calm_sync_s: float = 0.0
    ) -> AdaptiveShare:
        backend = self.peer() if peer else self.backend
        return AdaptiveShare(
            backend, self.sweep_id, resource, back_off=back_off, calm_sync_s=calm_sync_s, clock=self.clock
        )


@pytest.fixture(params=["memory", "redis"])
def pacing(request) -> Pacing:
    if request.param == "memory":
        clock = Clock()
        twin = MemoryPacing(clock)
        return Pacing(twin, lambda: twin, clock, clock.sleep)
    url = request.getfixturevalue("redis_url")
    clients: list[redis.Redis] = []

    def connected() -> RedisPacing:
        clients.append(redis.Redis.from_url(url))
        return RedisPacing(clients[-1])

    request.addfinalizer(lambda: [client.close() for client in clients])
    return Pacing(connected(), connected, time.monotonic, time.sleep)


# -- the token bucket ------------------------------------------------------------------------


def test_token_bucket_grants_one_second_of_burst_then_queues_callers_behind_its_debt(pacing):
    bucket = pacing.bucket()
    assert bucket.reserve(100, rate=100) == 0  # a full bucket: one second's worth at once
    waits = [bucket.reserve(50, rate=100) for _ in range(3)]
    # Each caller is granted its tokens and told to wait for the debt before it: first come,
    # first served, the wait growing by amount / rate with every over-asking caller.
    assert waits == pytest.approx([0.5, 1.0, 1.5], abs=0.02)
    pacing.sleep(0.3)  # the debt shrinks at the rate while callers wait
    assert bucket.reserve(1, rate=100) == pytest.approx(1.5 + 0.01 - 0.3, abs=0.03)


def test_token_bucket_take_sleeps_its_wait_and_refuses_a_nonpositive_rate(pacing):
    bucket = pacing.bucket()
    assert bucket.take(0, 10) == 0 and bucket.take(5, None) == 0  # nothing asked, or no limit
    assert bucket.take(20, rate=20) == 0
    began = pacing.clock()
    waited = bucket.take(4, rate=20)
    assert waited == pytest.approx(0.2, abs=0.02)
    assert pacing.clock() - began >= waited
    with pytest.raises(ReencryptError, match="must be positive"):
        bucket.reserve(1, rate=0)


def test_a_request_larger_than_the_burst_is_granted_and_paid_for_afterwards(pacing):
    bucket = pacing.bucket()
    assert bucket.reserve(10, rate=10) == 0
    assert bucket.reserve(30, rate=10) == pytest.approx(3.0, abs=0.02)  # never starved, never refused


def test_every_process_takes_from_one_bucket_per_sweep_and_resource(pacing):
    assert pacing.bucket().reserve(10, rate=10) == 0
    other_process = TokenBucket(pacing.peer(), pacing.sweep_id, "documents")
    assert other_process.reserve(5, rate=10) == pytest.approx(0.5, abs=0.02)  # behind the first one's spend
    assert pacing.bucket("kv_ops").reserve(10, rate=10) == 0  # another resource: its own bucket
    assert pacing.bucket(sweep_id=pacing.sweep_id + "-next").reserve(10, rate=10) == 0  # another sweep: its own bucket


# -- the adaptive share ----------------------------------------------------------------------


def test_429_halves_the_share_once_per_cooldown_down_to_a_floor(pacing):
    cooldown = BackOff(cooldown_s=0.2)
    kv = pacing.share(cooldown)
    assert kv.share == 1.0
    assert kv.throttled() == 0.5
    assert kv.throttled() == 0.5  # a burst of 429s within the cooldown counts once...
    assert pacing.share(cooldown, peer=True).throttled() == 0.5  # ...fleet-wide
    pacing.sleep(0.25)
    assert kv.throttled() == 0.25
    no_cooldown = pacing.share(BackOff(cooldown_s=0.0))
    assert [no_cooldown.throttled() for _ in range(6)] == pytest.approx([0.125, 0.0625, FLOOR, FLOOR, FLOOR, FLOOR])
    assert pacing.backend.share(pacing.sweep_id, "kv_ops") == FLOOR
    assert pacing.share(resource="request_units").share == 1.0  # each resource adapts alone


def test_calm_climbs_back_additively_to_the_limit_and_never_past_it(pacing):
    kv = pacing.share(BackOff(cooldown_s=0.0, increase_every_s=0.2))
    assert kv.calm() == 1.0  # at the limit already: nothing to climb
    kv.throttled()
    assert kv.calm() == 0.5  # the increase waits increase_every_s after the last change
    pacing.sleep(0.25)
    assert kv.calm() == pytest.approx(0.55)
    eager = pacing.share(BackOff(increase_every_s=0.0))
    climb = [eager.calm() for _ in range(15)]
    assert climb[:3] == pytest.approx([0.6, 0.65, 0.7])
    assert climb[8] == pytest.approx(1.0) and all(share <= 1.0 for share in climb)
    assert climb[-1] == 1.0
    kv.throttled()
    big_steps = pacing.share(BackOff(step=0.3, increase_every_s=0.0))
    assert [big_steps.calm() for _ in range(3)] == [0.8, 1.0, 1.0]  # the last step cut short at the limit


def test_a_calm_worker_learns_the_fleets_share_within_the_sync_interval(pacing):
    calm_worker = pacing.share(calm_sync_s=0.2)
    pacing.share(peer=True).throttled()  # another worker saw a 429
    assert calm_worker.calm() == 1.0  # synced less than calm_sync_s ago: no round trip yet
    pacing.sleep(0.25)
    assert calm_worker.calm() == 0.5  # synced: it slows down with the fleet


def test_a_share_built_later_starts_at_the_fleets_share(pacing):
    pacing.share().throttled()
    # Every worker builds its shares once per batch: the next batch must not start at 1.
    assert pacing.share(peer=True).share == 0.5


def test_an_unreachable_redis_is_a_transient_error_naming_redis():
    nobody = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    backend = RedisPacing(nobody)
    with pytest.raises(BrokerUnavailableError, match="pacing state in Redis unreachable") as raised:
        TokenBucket(backend, "sw-1", "documents").take(1, rate=10)
    assert raised.value.transient
    with pytest.raises(BrokerUnavailableError):
        AdaptiveShare(backend, "sw-1", "kv_ops")


# -- the limits ------------------------------------------------------------------------------


def test_limits_are_described_in_the_units_people_read():
    record = {"rate": 100, "kv_ops_per_s": 50.5, "ru_per_s": None}
    assert describe_limits(record) == "100 docs/s, 50.5 KV ops/s"
    assert describe_limits({}) == ""
    assert DOCUMENTS.value_in(record) == 100 and REQUEST_UNITS.value_in(record) is None


# -- the pacer, on the twin ------------------------------------------------------------------


@dataclass
class VaultCounts:
    """What a key provider reports of its service: calls by operation, and 429s."""

    calls: dict[str, int] = field(default_factory=dict)
    throttled: int = 0


@dataclass
class Batch:
    """A pacer over the twin, with the totals it reads and what it reported."""

    clock: Clock
    backend: MemoryPacing
    cost: RequestCost
    vault: VaultCounts
    limits: dict
    waits: list[tuple[str, float]] = field(default_factory=list)
    shares: list[tuple[str, float]] = field(default_factory=list)

    def pacer(self) -> Pacer:
        return Pacer(
            self.backend,
            "sw-1",
            dict(self.limits),
            self.cost,
            self.vault,  # type: ignore[arg-type]
            reread_limits=lambda: dict(self.limits),
            on_wait=lambda limit, seconds: self.waits.append((limit, seconds)),
            on_share=lambda resource, share: self.shares.append((resource, share)),
            clock=self.clock,
            sleep=self.clock.sleep,
        )

    def waited(self, limit: str) -> float:
        return sum(seconds for name, seconds in self.waits if name == limit)


def batch(**limits: float) -> Batch:
    clock = Clock()
    return Batch(clock, MemoryPacing(clock), RequestCost(), VaultCounts(), limits)


def test_pages_wait_for_the_sweeps_document_rate():
    paced = batch(rate=100)
    pacer = paced.pacer()
    began = paced.clock()
    for _ in range(3):
        pacer.before_page(100)  # the first second's worth at once, then one page a second
    assert paced.clock() - began == pytest.approx(2.0)
    assert paced.waited(DOCUMENTS.label) == pytest.approx(2.0)


def test_a_sweep_without_limits_never_waits():
    paced = batch()
    pacer = paced.pacer()
    paced.cost.request_units += 10_000
    paced.vault.calls["wrap_key"] = 500
    for _ in range(100):
        pacer.before_page(1000)
        pacer.before_key_call("unwrap")
    pacer.after_page()
    assert paced.clock() == 1000.0 and paced.waited(DOCUMENTS.label) == 0


def test_every_vault_call_spends_the_key_vault_limit_once():
    paced = batch(kv_ops_per_s=10)
    pacer = paced.pacer()
    for _ in range(10):
        # Charged before the call: a tenth of a second's burst (one call), then 10/s.
        pacer.before_key_call("unwrap")
        paced.vault.calls[UNWRAP_CALL] = paced.vault.calls.get(UNWRAP_CALL, 0) + 1
    pacer.before_key_call("wrap")  # known only afterwards whether it reached the vault
    paced.vault.calls[LOCAL_WRAP_CALL] = 7  # in process: the vault never saw these
    paced.vault.calls["wrap_key"], paced.vault.calls["get_key"] = 4, 1
    assert paced.clock() - 1000.0 == pytest.approx(0.9)
    pacer.after_page()  # the five remote calls, charged once each
    assert paced.clock() - 1000.0 == pytest.approx(1.4)


def test_429s_slow_the_limit_down_and_calm_pages_bring_it_back():
    paced = batch(kv_ops_per_s=10, ru_per_s=1000)
    pacer = paced.pacer()
    paced.vault.throttled += 3
    pacer.after_page()
    assert (KEY_VAULT.label, 0.5) in paced.shares and (REQUEST_UNITS.label, 1.0) in paced.shares
    pacer.before_key_call("unwrap")  # the burst at half the limit: one call
    pacer.before_key_call("unwrap")
    assert paced.clock() - 1000.0 == pytest.approx(0.2)  # the next at 5/s
    paced.cost.throttled += 1  # the store said 429: its share halves too
    pacer.after_page()
    assert paced.shares[-2:] == [(REQUEST_UNITS.label, 0.5), (KEY_VAULT.label, 0.5)]
    paced.clock.sleep(BackOff().increase_every_s + 0.1)
    pacer.after_page()  # no new 429s: both climb back a step
    assert paced.shares[-2:] == [(REQUEST_UNITS.label, 0.55), (KEY_VAULT.label, 0.55)]


def test_request_units_are_charged_after_the_page_that_spent_them():
    paced = batch(ru_per_s=100)
    pacer = paced.pacer()
    paced.cost.request_units += 100  # the first second's worth
    pacer.after_page()
    paced.cost.request_units += 50
    pacer.after_page()
    assert paced.waited(REQUEST_UNITS.label) == pytest.approx(0.5)


def test_a_throttle_reaches_a_running_batch_within_the_refresh_interval():
    paced = batch(rate=10)
    pacer = paced.pacer()
    pacer.before_page(10)
    paced.limits["rate"] = 1  # 'sweep throttle --rate 1'
    pacer.before_page(10)  # read less than LIMITS_REFRESH_S ago: still 10/s
    assert paced.waited(DOCUMENTS.label) == pytest.approx(1.0)
    paced.clock.sleep(LIMITS_REFRESH_S)
    pacer.before_page(1)  # re-read: the 10 documents still owed and this one, at 1/s, less the 3 s gone
    assert paced.waits[-1] == (DOCUMENTS.label, pytest.approx(10 + 1 - 3))


def test_pages_are_sized_so_the_limits_let_one_through_within_the_time_given():
    """A page paced past its lease would be taken over and paced again, for ever."""
    assert batch().pacer().documents_within(5.0) is None  # no limit: the configured page
    assert batch(rate=5).pacer().documents_within(5.0) == 25
    # Key Vault calls priced by the sweep's sample: two data keys a document, half the documents.
    assert batch(kv_ops_per_s=10).pacer().documents_within(5.0, {"deks_per_document": 2.0}) == 25
    assert batch(rate=5, kv_ops_per_s=2).pacer().documents_within(5.0) == 10  # the tightest wins
    assert batch(rate=0.01).pacer().documents_within(5.0) == 1  # never an empty page
    throttled = batch(kv_ops_per_s=10)
    pacer = throttled.pacer()
    throttled.vault.throttled += 1
    pacer.after_page()  # the vault said 429: the fleet's share halves, and so do pages
    assert pacer.documents_within(5.0) == 25
