"""What an MEK protects, and proof that its containers no longer need a version.

Two facts live with the key itself (provider metadata: keyring file metadata, Key Vault tags),
not in any store, because the store is what they must be checked against:

- **the containers the key protects**: every store a command used with the key (seed, sweep
  start, key operations) leaves a mark ``store-<fingerprint>``;
- **the audit anchor** of each of those stores: the sequence number and hash of its audit
  trail's newest entry at the last key operation. ``audit --check`` compares the trail with
  it, so deleting the newest entries, or rebuilding the whole chain, shows.

A mark's value is ``<seq>:<hash prefix>|<store location>`` (Key Vault tag values hold 256
characters: the hash is cut to 32 hex digits, 128 bits, plenty to detect a rebuilt chain).

The disable gate (:func:`disable_refusal`) builds on both: a version may be disabled only when
every container the key protects recorded, in its own audit trail, a passing ``verify`` that
proves no field uses the version, made after the last moment anything could write under it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracker_reencrypt.keys import KeyProvider
from tracker_reencrypt.stores import store_fingerprint, store_location
from tracker_reencrypt.sweep.records import TARGET_CURRENT, VERIFY

MARK_PREFIX = "store-"
#: When the key's current version last changed: writes under any other version may have
#: happened until then, whichever store (or none) the operator had configured.
SWITCHED_ENTRY = "current-switched-at"
ANCHOR_HASH_CHARS = 32
#: Audit actions after which new writes go to the version they name.
MAKES_CURRENT = ("key created", "key rotated", "key promoted")
#: Audit actions of key operations: each anchors the trail's head in the key's metadata.
KEY_OPERATIONS = (*MAKES_CURRENT, "key disabled", "key enabled")
SWEEP_ENDS = ("sweep completed", "sweep failed", "sweep cancelled")
#: The start of a sweep that may write: under its target, or under each product's current version.
SWEEP_STARTED = "sweep started"
#: The start of a verify sweep (``verify --fleet``): it only reads, so it never opens a write
#: window; its result, the "verify" entry naming its ``sweep_id``, proves what the container
#: held from this entry on, not from when the result was collected.
VERIFY_STARTED = "verify started"


@dataclass(frozen=True)
class StoreMark:
    """One container recorded with the key, and its audit trail's anchored head."""

    fingerprint: str
    location: str
    anchor_seq: int = 0
    anchor_hash: str = ""

    def encode(self) -> str:
        return f"{self.anchor_seq}:{self.anchor_hash}|{self.location}"

    @classmethod
    def decode(cls, fingerprint: str, value: str) -> StoreMark:
        head, _, location = value.partition("|")
        seq, _, digest = head.partition(":")
        return cls(fingerprint, location, int(seq) if seq.isdigit() else 0, digest)

    @property
    def url(self) -> str:
        """The store URL to open this container again (locations are ``sqlite:/abs`` or ``cosmos:host/db/c``)."""
        scheme, _, rest = self.location.partition(":")
        return f"sqlite:///{rest}" if scheme == "sqlite" else f"cosmos://{rest}"


def marks(provider: KeyProvider) -> dict[str, StoreMark]:
    """The containers the key protects, by fingerprint."""
    return {
        name[len(MARK_PREFIX) :]: StoreMark.decode(name[len(MARK_PREFIX) :], value)
        for name, value in provider.metadata().items()
        if name.startswith(MARK_PREFIX)
    }


def mark_store(provider: KeyProvider, store_url: str, head: dict | None) -> StoreMark:
    """Record that the key protects this store, anchoring its audit head when given."""
    fingerprint = store_fingerprint(store_url)
    previous = marks(provider).get(fingerprint)
    if head is not None:
        mark = StoreMark(fingerprint, store_location(store_url), head["seq"], head["hash"][:ANCHOR_HASH_CHARS])
    elif previous is not None:
        return previous
    else:
        mark = StoreMark(fingerprint, store_location(store_url))
    provider.set_metadata({MARK_PREFIX + fingerprint: mark.encode()})
    return mark


def anchor_problems(mark: StoreMark | None, entries: list[dict], where: str) -> list[str]:
    """What the anchor says is wrong with an audit trail (``entries`` in sequence order)."""
    if mark is None or not mark.anchor_seq:
        return []
    by_seq = {entry.get("seq"): entry for entry in entries}
    newest = entries[-1].get("seq", 0) if entries else 0
    anchored = by_seq.get(mark.anchor_seq)
    if anchored is None:
        return [
            f"the trail ends at entry {newest}, but {where} anchors entry {mark.anchor_seq}: "
            f"entries were deleted from its end"
        ]
    if not str(anchored.get("hash", "")).startswith(mark.anchor_hash):
        return [f"entry {mark.anchor_seq} differs from the one {where} anchors: the trail was rebuilt"]
    return []


@dataclass(frozen=True)
class WriteWindow:
    """When anything may last have written fields under one key version, from a store's audit trail."""

    ends_at: str | None  # a utc_now() timestamp; None: the trail does not say
    open_sweeps: tuple[str, ...] = ()  # sweeps towards the version that have not ended
    #: The sequence number of the entry that ended them (0: the trail does not say). Timestamps
    #: are whole seconds: only the sequence orders a verify and a key operation of the same second.
    ends_seq: int = 0


def covers(details: dict, product: str | None) -> bool:
    """Whether an audited sweep or verify read ``product``'s documents: one that read the whole
    container did; one scoped to products did only for those (and never for a key shared by
    every product, ``product`` None)."""
    products = details.get("products")
    return products is None or (product is not None and product in products)


def write_window(entries: list[dict], kid: str, product: str | None = None) -> WriteWindow:
    """The tracker writes under ``kid`` from the key operation that made it current until the
    next one made another version current; a sweep towards ``kid`` writes under it until it ends,
    and so may a sweep towards "current" that read ``kid``'s product (``product``: the one the
    key belongs to; None for a key shared by every product)."""
    current_since = stopped = None
    sweeps_to_kid: set[str] = set()
    ended: dict[str, dict] = {}
    for entry in entries:
        action, details = entry.get("action"), entry.get("details") or {}
        if action in MAKES_CURRENT:
            if details.get("kid") == kid:
                current_since, stopped = entry["at"], None
            elif current_since is not None and stopped is None:
                stopped = entry
        elif action == SWEEP_STARTED and _may_write(details, kid, product):
            sweeps_to_kid.add(str(details.get("sweep_id")))
        elif action in SWEEP_ENDS and details.get("sweep_id") in sweeps_to_kid:
            ended[details["sweep_id"]] = entry
    last = max((e for e in (stopped, *ended.values()) if e), key=lambda e: e.get("seq", 0), default=None)
    return WriteWindow(
        last["at"] if last else None, tuple(sorted(sweeps_to_kid - set(ended))), last.get("seq", 0) if last else 0
    )


def _may_write(details: dict, kid: str, product: str | None) -> bool:
    if details.get("mode") == VERIFY:  # a check-only sweep, should one ever be audited as a sweep
        return False
    target = details.get("target_kid")
    return target == kid or (target == TARGET_CURRENT and covers(details, product))


def proving_verify(
    entries: list[dict], kid: str, after: str, after_seq: int = 0, product: str | None = None
) -> dict | None:
    """The newest verify recorded at or after ``after``, and after entry ``after_seq`` of the
    trail when it says, that proves no field uses ``kid``: it counted every field by kid (none
    on ``kid``), read every document of ``kid``'s product (or of the whole container, for a key
    every product shares), and saw documents (or was told the container is empty).
    Whether its own expectation held does not matter here: a later rotation may already have
    moved the current version on.

    A verify made on the fleet (its entry names the ``sweep_id`` of a verify sweep) read the
    container from its "verify started" entry on, which may be long before its result was
    recorded: it is the start that must come after ``after`` (and there must be one)."""
    started = {
        (entry.get("details") or {}).get("sweep_id"): entry
        for entry in entries
        if entry.get("action") == VERIFY_STARTED
    }
    for entry in reversed(entries):
        if _before(entry, after, after_seq):
            return None
        details = entry.get("details") or {}
        counted = details.get("fields_by_kid")
        if (
            entry.get("action") == "verify"
            and isinstance(counted, dict)
            and not counted.get(kid)
            and details.get("undecryptable") == 0
            and (details.get("documents", 0) > 0 or details.get("allow_empty"))
            and covers(details, product)
            and _read_after(entry, started, after, after_seq)
        ):
            return entry
    return None


def _before(entry: dict, after: str, after_seq: int) -> bool:
    return entry.get("at", "") < after or entry.get("seq", 0) <= after_seq


def _read_after(entry: dict, started: dict, after: str, after_seq: int) -> bool:
    """Whether the verify began reading after ``after``: a fleet verify's start is its "verify
    started" entry; a one-process verify records when it began (the time, and the newest entry
    of the trail then: it began after that entry, before the next). One recorded before starts
    were (its entry is its end) is dated by its entry, as it always was."""
    details = entry.get("details") or {}
    if "sweep_id" in details:
        start = started.get(details["sweep_id"])
        return start is not None and not _before(start, after, after_seq)
    if "started_at" in details:
        began = {"at": details["started_at"], "seq": details.get("started_after_seq", 0) + 0.5}
        return not _before(began, after, after_seq)
    return True


def gate_problem(
    entries: list[dict], kid: str, key_end: str | None, where: str, product: str | None = None
) -> str | None:
    """Why this store's audit trail does not yet allow disabling ``kid`` (None: it does).

    Writes under ``kid`` may have happened until the later of what this trail shows and
    ``key_end`` (what the key itself records: its last change of current version, and the
    creation of the version after ``kid``), since key operations made with another store, or
    none, leave no entry here."""
    window = write_window(entries, kid, product)
    if window.open_sweeps:
        return f"sweep {window.open_sweeps[0]}, which may write under {kid}, has not ended in {where}"
    ends_at = max((t for t in (window.ends_at, key_end) if t), default=None)
    if ends_at is None:
        return f"{where}: nothing shows when writes under {kid} stopped (it was never replaced as current)"
    after_seq = window.ends_seq if window.ends_at == ends_at else 0
    if proving_verify(entries, kid, ends_at, after_seq, product) is None:
        how = f"verify --product {product} --expect <current kid>" if product else "verify --expect <current kid>"
        return (
            f"{where} has no passing verify{' of product ' + product if product else ''} since {ends_at} "
            f"(when writes under {kid} last could happen): run 'reencrypt --store <it> {how}' there first"
        )
    return None


def note_switch(provider: KeyProvider, at: str) -> None:
    """Record with the key when its current version last changed (rotate, promote)."""
    provider.set_metadata({SWITCHED_ENTRY: at})


def last_switch(provider: KeyProvider) -> str | None:
    return provider.metadata().get(SWITCHED_ENTRY) or None


def disable_refusal(
    provider: KeyProvider,
    kid: str,
    store_url: str,
    trail_of: Callable[[str], list[dict]],
    key_end: str | None,
    product: str | None = None,
) -> str | None:
    """Why ``kid`` may not be disabled yet, checking this store and every other container the
    key protects (``trail_of(url)`` reads a store's audit entries, raising our error when the
    store cannot be opened); None when every one of them proved it unused. ``product``: the
    one whose key ``provider`` is (None: a key every product shares)."""
    checked = {store_fingerprint(store_url): store_url}
    for fingerprint, mark in marks(provider).items():
        checked.setdefault(fingerprint, mark.url)
    for url in checked.values():
        problem = gate_problem(trail_of(url), kid, key_end, f"container {store_location(url)}", product)
        if problem:
            return problem
    return None
