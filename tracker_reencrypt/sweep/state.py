"""Durable sweep state: sweeps, slices with checkpoints and leases, failures.

Kept in the store backend's record store (a SQLite table or a Cosmos container), never only
in Redis: flushing the broker must not lose a sweep. Every write is conditional on the
record's ETag, which is all leases and fencing need.

Slice ownership (why no two workers ever advance one slice)
-----------------------------------------------------------
A slice record carries ``fence`` (a counter) and a lease (``lease_owner``, ``lease_expires``).
Every task message names the fence it expects. To work, a task *claims* the slice: a
conditional write that bumps the fence and takes the lease. It then processes one batch and
*commits*: a conditional write of checkpoint and counts that succeeds only if the fence is
still its own, releasing the lease. Only then does it enqueue the continuation, naming the
new fence. So:

- a duplicate of an old message names a fence that has moved on while the lease is free:
  it is dropped;
- a message that arrives while another task holds a live lease waits (retries) until the
  lease is released or expires;
- a worker that died holding a lease leaves it to expire; the fleet's lease watch (and
  ``sweep start --wait``) then sends the slice one new message (:meth:`SweepState.rescue_expired`),
  which takes it over with a new fence. The broker's own redelivery of the dead worker's
  message (the visibility timeout, 15 min) is not the recovery path: when it comes, its
  fence is stale and it is dropped. If the dead worker was only slow, its commit fails with
  LeaseLostError and it stops (its document writes were conditional and idempotent).

Settling (why no sweep stays ``cancelling`` or ``running`` for ever)
--------------------------------------------------------------------
Every path out of a task, whatever happened to its batch (committed, slice done, dropped,
lease lost, error), ends in :meth:`SweepState.settle`: a cancelling sweep with no live lease
becomes ``cancelled``; a running sweep whose slices are all done becomes ``completed`` (or
``failed`` with failures). ``sweep cancel`` settles too, so a sweep whose workers all died can
always be cancelled once their leases expire.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from tracker_reencrypt.errors import ConflictError, LeaseLostError, NotFoundError, SweepError, UnknownNameError
from tracker_reencrypt.stale import SLICE_EXAMPLES, StaleWrite
from tracker_reencrypt.stores import FeedRange, RecordStore
from tracker_reencrypt.sweep.records import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    FAILED,
    PAUSED,
    PLANNED,
    RUNNING,
    CheckCounts,
    Counts,
    Failure,
    Slice,
    Status,
    Sweep,
    add_counts,
    slice_id,
    sum_counts,
    utc_now,
    zero_counts,
)

SWEEP, SLICE, FAILURE, LOCK = "sweep", "slice", "failure", "lock"
ACTIVE_LOCK_ID = "active-sweep"
#: After a failed batch (vault or store unreachable), the slice's first retry comes this late,
#: doubling with each failure in a row up to ERROR_BACKOFF_MAX_S.
ERROR_BACKOFF_S = 10.0
ERROR_BACKOFF_MAX_S = 300.0


def error_backoff(failures_in_a_row: int) -> float:
    return min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_S * 2 ** max(0, failures_in_a_row - 1))


#: A lock naming a sweep with no record yet is a start still writing it, for this long; after
#: that, a start that crashed before writing it, and no longer blocks the container.
LOCK_GRACE_S = 60.0


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to take a slice: work it, wait and retry, or drop the message."""

    action: Literal["work", "retry", "drop"]
    slice: Slice | None = None
    fence: int = 0
    retry_after: float = 0.0
    why: str = ""
    #: A drop because the slice is done: the sweep may have reached its end.
    slice_done: bool = False


@dataclass
class BatchResult:
    """What one batch did to a slice, committed atomically with its checkpoint."""

    continuation: str | None
    done: bool
    counts: Counts = field(default_factory=zero_counts)
    #: A verify sweep's batch: what it checked, added to the slice's by the same commit.
    checked: CheckCounts | None = None
    #: The stale writes met (``counts["stale_writes"]`` counts them), as examples: the slice
    #: keeps the first SLICE_EXAMPLES of all its batches.
    stale_writes: list[StaleWrite] = field(default_factory=list)


def _time_paused(before: Sweep, after: Sweep, now: float) -> Sweep:
    """Keep count of the time a sweep spends paused, whichever command or worker pauses and
    resumes or cancels it: its throughput is measured over the time it ran."""
    if after.status == PAUSED and before.status != PAUSED:
        return after.but(paused_since=now)
    if before.status == PAUSED and after.status != PAUSED and before.paused_since is not None:
        return after.but(paused_s=before.paused_s + max(0.0, now - before.paused_since), paused_since=None)
    return after


class SweepState:
    """Sweeps, slices and failures over a RecordStore, as typed records (sweep/records.py).

    ``clock`` (seconds since the epoch) is injectable so leases and expiry are tested without
    sleeping, as Fernet's ``*_at_time`` methods take the time.
    """

    def __init__(self, records: RecordStore, clock: Callable[[], float] = time.time) -> None:
        self.records = records
        self.clock = clock

    # -- sweeps ----------------------------------------------------------------------------

    def create_sweep(self, sweep: Sweep, feed_ranges: list[FeedRange]) -> Sweep:
        """Record a sweep and its slices, holding the container's one active-sweep lock.

        The lock is taken first, then the sweep record is written as ``planned`` (until it
        exists the lock counts as live for LOCK_GRACE_S, so a concurrent start cannot take it
        meanwhile); the sweep takes its requested status only once every slice exists.
        """
        self._take_active_lock(sweep.id)
        planned = sweep.but(status=PLANNED, slice_count=len(feed_ranges), created_at=utc_now(), updated_at=utc_now())
        self.records.create(SWEEP, sweep.id, planned.to_record())
        for index, feed_range in enumerate(feed_ranges):
            piece = Slice(sweep_id=sweep.id, index=index, feed_range=feed_range, updated_at=self.clock())
            self.records.create(SLICE, slice_id(sweep.id, index), piece.to_record())
        started = self.update_sweep(
            sweep.id, lambda body: body.but(status=sweep.status), only_if=lambda body: body.status == PLANNED
        )
        if started.status != sweep.status:  # cancelled while its slices were being written
            raise SweepError(f"sweep {sweep.id} was {started.status} before it started: nothing was queued")
        return started

    def get_sweep(self, sweep_id: str) -> Sweep:
        try:
            return Sweep.from_record(self.records.get(SWEEP, sweep_id)[0])
        except NotFoundError:
            raise UnknownNameError(f"no sweep {sweep_id!r}: list sweeps with 'reencrypt sweep status --all'") from None

    def sweeps(self) -> list[Sweep]:
        return sorted((Sweep.from_record(body) for _, body, _ in self.records.list(SWEEP)), key=lambda s: s.created_at)

    def latest_sweep(self) -> Sweep:
        sweeps = self.sweeps()
        if not sweeps:
            raise SweepError("no sweep has been started on this store: start one with 'reencrypt sweep start --to KID'")
        return sweeps[-1]

    def active_sweep_id(self) -> str | None:
        """The sweep holding the container's lock, if it is live (see :meth:`_live_holder`)."""
        try:
            body, _ = self.records.get(LOCK, ACTIVE_LOCK_ID)
        except NotFoundError:
            return None
        return self._live_holder(body)

    def update_sweep(
        self, sweep_id: str, change: Callable[[Sweep], Sweep], *, only_if: Callable[[Sweep], bool] | None = None
    ) -> Sweep:
        """Apply ``change(sweep) -> sweep`` conditionally; ``only_if(sweep)`` False refuses."""
        while True:
            try:
                body, etag = self.records.get(SWEEP, sweep_id)
            except NotFoundError:
                raise SweepError(f"no sweep {sweep_id!r}") from None
            before = Sweep.from_record(body)
            if only_if is not None and not only_if(before):
                return before
            after = _time_paused(before, change(before), self.clock()).but(updated_at=utc_now())
            try:
                self.records.replace(SWEEP, sweep_id, after.to_record(), etag)
            except ConflictError:
                continue
            if after.finished and not before.finished:
                self._release_active_lock(sweep_id)
            return after

    def set_status(self, sweep_id: str, status: Status, *, allowed_from: frozenset[str]) -> Sweep:
        current = self.get_sweep(sweep_id)
        if current.status not in allowed_from:
            raise SweepError(
                f"sweep {sweep_id} is {current.status}; "
                f"it can become {status} only from {', '.join(sorted(allowed_from))}"
            )
        finished_at = utc_now() if status in (CANCELLED, COMPLETED, FAILED) else current.finished_at
        return self.update_sweep(
            sweep_id,
            lambda sweep: sweep.but(status=status, finished_at=finished_at),
            only_if=lambda sweep: sweep.status in allowed_from,
        )

    def _take_active_lock(self, sweep_id: str) -> None:
        mine = {"sweep_id": sweep_id, "taken_at": self.clock()}
        try:
            body, etag = self.records.get(LOCK, ACTIVE_LOCK_ID)
        except NotFoundError:
            try:
                self.records.create(LOCK, ACTIVE_LOCK_ID, mine)
                return
            except ConflictError:
                body, etag = self.records.get(LOCK, ACTIVE_LOCK_ID)
        holder = self._live_holder(body)
        if holder:
            raise SweepError(
                f"sweep {holder} is still active on this container: wait for it, or 'reencrypt sweep cancel {holder}'"
            )
        try:
            self.records.replace(LOCK, ACTIVE_LOCK_ID, mine, etag)
        except ConflictError:
            raise SweepError(
                "another sweep started on this container at the same moment: check 'reencrypt sweep status'"
            ) from None

    def _live_holder(self, lock: dict) -> str | None:
        """The lock's sweep while it is live: not finished, or with no record yet but taken less
        than LOCK_GRACE_S ago (a start still writing it). A start that crashed before writing
        its record, or a sweep that finished without releasing, must not block the container."""
        holder = lock.get("sweep_id")
        if not holder:
            return None
        try:
            live = not Sweep.from_record(self.records.get(SWEEP, holder)[0]).finished
        except NotFoundError:
            live = self.clock() - lock.get("taken_at", 0.0) < LOCK_GRACE_S
        return holder if live else None

    def _release_active_lock(self, sweep_id: str) -> None:
        try:
            body, etag = self.records.get(LOCK, ACTIVE_LOCK_ID)
            if body.get("sweep_id") == sweep_id:
                self.records.replace(LOCK, ACTIVE_LOCK_ID, {"sweep_id": None}, etag)
        except (NotFoundError, ConflictError):
            pass  # someone else moved the lock on; nothing of ours to release

    # -- slices ----------------------------------------------------------------------------

    def slices(self, sweep_id: str) -> list[Slice]:
        return [Slice.from_record(body) for _, body, _ in self.records.list(SLICE, prefix=f"{sweep_id}/")]

    def claim_slice(self, sweep_id: str, index: int, expected_fence: int, owner: str, lease_seconds: float) -> Claim:
        record_id = slice_id(sweep_id, index)
        while True:
            body, etag = self.records.get(SLICE, record_id)
            piece, now = Slice.from_record(body), self.clock()
            if piece.done:
                return Claim("drop", why="slice already done", slice_done=True)
            if piece.lease_is_live(now):
                return Claim("retry", retry_after=piece.lease_expires - now, why=f"leased by {piece.lease_owner}")
            if not piece.lease_owner and piece.fence != expected_fence:
                return Claim("drop", why="stale message: the slice moved on")
            if piece.retry_at > now:
                # Its try is due later and the lease watch sends it then (a resume or a rescue
                # of a running sweep sends every slice a message, this one too).
                return Claim("drop", why=f"backing off after a failed batch, {piece.retry_at - now:.0f}s to go")
            claimed = piece.but(
                fence=piece.fence + 1,
                lease_owner=owner,
                lease_expires=now + lease_seconds,
                updated_at=now,
                retry_at=0.0,
                retry_task_id=None,
            )
            try:
                self.records.replace(SLICE, record_id, claimed.to_record(), etag)
            except ConflictError:
                continue
            return Claim("work", slice=claimed, fence=claimed.fence)

    def commit_slice(self, sweep_id: str, index: int, fence: int, result: BatchResult) -> Slice:
        """Write checkpoint and counts, release the lease: only while the fence is ours."""
        return self._settle_slice(
            sweep_id,
            index,
            fence,
            lambda piece: piece.but(
                continuation=result.continuation,
                done=result.done,
                error_retries=0,
                counts=add_counts(piece.counts, result.counts),
                checked=piece.checked.plus(result.checked) if result.checked is not None else piece.checked,
                stale_write_examples=(*piece.stale_write_examples, *result.stale_writes)[:SLICE_EXAMPLES],
            ),
        )

    def back_off_slice(self, sweep_id: str, index: int, fence: int, task_id: str | None) -> Slice:
        """Give a claimed slice back at its checkpoint after its batch failed (documents already
        rewritten are on target and will be skipped), to be tried again after the back-off
        (``error_retries`` counts on; ``retry_at`` says when), as Celery task ``task_id`` again:
        :meth:`due_retries` hands it to the lease watch then. Nothing waits in a worker."""

        def back_off(piece: Slice) -> Slice:
            failures = piece.error_retries + 1
            # A rescue already sent for this fence (its lease expired while the batch ran)
            # would meet the back-off and be dropped: the retry is a message of its own.
            return piece.but(
                error_retries=failures,
                retry_at=self.clock() + error_backoff(failures),
                retry_task_id=task_id,
                rescued_fence=None,
            )

        return self._settle_slice(sweep_id, index, fence, back_off)

    def clear_back_offs(self, sweep_id: str) -> None:
        """End every slice's back-off now: ``sweep resume`` says the cause is fixed (and then
        sends every unfinished slice a message)."""
        self._end_back_offs(sweep_id, due_by=math.inf)

    def due_retries(self, sweep_id: str) -> list[Slice]:
        """Slices whose back-off after a failed batch is over, each taken for ONE message by the
        conditional write that ends its back-off: the caller sends each as Celery task
        ``retry_task_id``. Ended, not marked as a rescue: the message then meets no back-off on
        a worker whose clock is behind, and a message lost (a send that failed, a broker that
        lost it) leaves an idle slice without one, which the lost-message look re-queues."""
        return self._end_back_offs(sweep_id, due_by=self.clock())

    def _end_back_offs(self, sweep_id: str, *, due_by: float) -> list[Slice]:
        """End the back-off of every slice whose retry is due by ``due_by``; the slices as they
        were, for those this call ended (a conflict is read again: claimed, or ended by another
        look, it needs nothing more)."""
        ended: list[Slice] = []
        for record_id, body, etag in self.records.list(SLICE, prefix=f"{sweep_id}/"):
            while True:
                piece = Slice.from_record(body)
                if piece.done or piece.lease_owner or not 0 < piece.retry_at <= due_by:
                    break
                try:
                    self.records.replace(SLICE, record_id, piece.but(retry_at=0.0).to_record(), etag)
                except ConflictError:
                    body, etag = self.records.get(SLICE, record_id)
                    continue
                ended.append(piece)
                break
        return ended

    def _settle_slice(self, sweep_id: str, index: int, fence: int, change: Callable[[Slice], Slice]) -> Slice:
        record_id = slice_id(sweep_id, index)
        while True:
            body, etag = self.records.get(SLICE, record_id)
            piece = Slice.from_record(body)
            if piece.fence != fence:
                raise LeaseLostError(f"slice {record_id} was taken over (fence {piece.fence}, ours {fence})")
            settled = change(piece).but(lease_owner=None, lease_expires=0.0, updated_at=self.clock())
            try:
                self.records.replace(SLICE, record_id, settled.to_record(), etag)
                return settled
            except ConflictError:
                continue

    def unmark_rescue(self, sweep_id: str, index: int, fence: int) -> None:
        """Undo :meth:`rescue_expired`'s mark when its message could not be sent, so the next
        look tries again (best effort: a slice that moved on needs no rescue)."""
        record_id = slice_id(sweep_id, index)
        try:
            body, etag = self.records.get(SLICE, record_id)
            piece = Slice.from_record(body)
            if piece.rescued_fence == fence:
                self.records.replace(SLICE, record_id, piece.but(rescued_fence=None).to_record(), etag)
        except (NotFoundError, ConflictError):
            pass

    def rescue_expired(self, sweep_id: str) -> list[tuple[int, int]]:
        """Slices held by a lease that expired (their worker died), each claimed for ONE rescue
        message: (index, fence) pairs for the caller to enqueue. A conditional write marks the
        fence rescued, so however many workers and followers look, each expiry is re-queued once."""
        now = self.clock()
        return self._rescue(sweep_id, lambda piece: bool(piece.lease_owner) and not piece.lease_is_live(now))

    def rescue_stalled(self, sweep_id: str, idle_for_s: float, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` slices nobody holds that have not moved for ``idle_for_s`` (and wait
        for no back-off): the caller found fewer messages in the broker than such slices, so
        theirs were lost (a broker that lost its queue, a send that failed after a commit).
        Marked as rescue_expired does."""
        now = self.clock()
        return self._rescue(
            sweep_id,
            lambda piece: not piece.lease_owner and piece.retry_at <= now and now - piece.updated_at > idle_for_s,
            limit=limit,
        )

    def _rescue(
        self, sweep_id: str, needs_it: Callable[[Slice], bool], limit: int | None = None
    ) -> list[tuple[int, int]]:
        rescued: list[tuple[int, int]] = []
        for record_id, body, etag in self.records.list(SLICE, prefix=f"{sweep_id}/"):
            if limit is not None and len(rescued) >= limit:
                break
            piece = Slice.from_record(body)
            if piece.done or piece.rescued_fence == piece.fence or not needs_it(piece):
                continue
            try:
                self.records.replace(SLICE, record_id, piece.but(rescued_fence=piece.fence).to_record(), etag)
            except ConflictError:
                continue  # taken over or rescued by someone else meanwhile
            rescued.append((piece.index, piece.fence))
        return rescued

    def totals(self, sweep_id: str) -> Counts:
        return sum_counts(self.slices(sweep_id))

    def settle(self, sweep_id: str) -> Sweep | None:
        """Move the sweep to its final state when it has reached it; the sweep when this call
        made the transition (so exactly one caller audits it), else None.

        Cancelling becomes cancelled once no slice holds a live lease; running becomes completed
        (failed, with failures) once every slice is done. Cancelling wins over done: the
        operator asked for it, and the counts still show the work that was finished.
        """
        sweep = self.get_sweep(sweep_id)
        if sweep.status not in (RUNNING, CANCELLING):
            return None
        slices = self.slices(sweep_id)
        totals = sweep.totals
        if sweep.status == CANCELLING:
            if any(piece.lease_is_live(self.clock()) for piece in slices):
                return None
            target: Status = CANCELLED
        else:
            if not slices or not all(piece.done for piece in slices):
                return None
            totals = sum_counts(slices)
            target = FAILED if totals["failures"] else COMPLETED
        before = sweep.status
        after = self.update_sweep(
            sweep_id,
            lambda body: body.but(status=target, totals=totals, finished_at=utc_now()),
            only_if=lambda body: body.status == before,
        )
        return after if after.status == target else None

    def pause_for(self, sweep_id: str, reason: str) -> Sweep:
        """Pause a running sweep because of a problem only a person can fix; ``reason`` is shown
        by ``sweep status``, the exporter and an alert, and cleared by ``sweep resume``."""
        return self.update_sweep(
            sweep_id,
            lambda sweep: sweep.but(status=PAUSED, paused_reason=reason, last_error=reason),
            only_if=lambda sweep: sweep.status == RUNNING,
        )

    # -- failures --------------------------------------------------------------------------

    def record_failure(
        self,
        sweep_id: str,
        index: int,
        document_id: str,
        partition_key: str,
        field_path: str,
        reason: str,
        *,
        row: str = "",
        kid: str = "",
    ) -> None:
        """Record one field that could not be moved (``kid``: the version it is on). Idempotent:
        a redone batch adds nothing.

        A failure is the same failure when its document id, partition key and field path are.
        ``row`` is for documents those do not identify (no usable id, recorded as "?"): the
        store's key of the document's row, which a redone batch reads again unchanged. It joins
        the identity, and is recorded, only when given, so a failure recorded without it keeps
        its identity.
        """
        identity = f"{document_id}\0{partition_key}\0{field_path}" + (f"\0{row}" if row else "")
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        failure = Failure(
            sweep_id=sweep_id,
            slice=index,
            document_id=document_id,
            partition_key=partition_key,
            field_path=field_path,
            reason=reason,
            at=utc_now(),
            row=row or None,
            kid=kid,
        )
        try:
            self.records.create(FAILURE, f"{sweep_id}/{digest}", failure.to_record())
        except ConflictError:
            pass

    def failures(self, sweep_id: str) -> list[Failure]:
        self.get_sweep(sweep_id)
        return [Failure.from_record(body) for _, body, _ in self.records.list(FAILURE, prefix=f"{sweep_id}/")]
