"""The rotation's audit trail: who did what, when, hash-chained so tampering shows.

Entry ``n`` stores ``hash = SHA-256(prev_hash || canonical JSON of the entry without hash)``.
Removing, reordering or altering an entry breaks the chain, and ``audit --check`` names the
first entry where it breaks. Entries are appended with a conditional create of the next
sequence number, so concurrent writers never fork the chain.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from typing import Any

from tracker_reencrypt.errors import ConflictError
from tracker_reencrypt.stores import RecordStore
from tracker_reencrypt.sweep.records import utc_now

AUDIT = "audit"
GENESIS = "0" * 64


def actor() -> str:
    """Who acts: $REENCRYPT_ACTOR (set by automation), else user@host."""
    return os.environ.get("REENCRYPT_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def _digest(prev_hash: str, entry: dict) -> str:
    canonical = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(prev_hash.encode("ascii") + canonical.encode("utf-8")).hexdigest()


class AuditTrail:
    def __init__(self, records: RecordStore) -> None:
        self.records = records

    def entries(self) -> list[dict]:
        return [body for _, body, _ in self.records.list(AUDIT)]

    def append(self, action: str, who: str | None = None, /, **details: Any) -> dict:
        """Append one entry; ``who`` is positional so any detail may be named freely."""
        while True:
            entries = self.entries()
            prev_hash = entries[-1]["hash"] if entries else GENESIS
            seq = entries[-1]["seq"] + 1 if entries else 1
            entry = {
                "seq": seq,
                "at": utc_now(),
                "who": who or actor(),
                "action": action,
                "details": details,
                "prev_hash": prev_hash,
            }
            entry["hash"] = _digest(prev_hash, entry)
            try:
                self.records.create(AUDIT, f"{seq:012d}", entry)
                return entry
            except ConflictError:
                continue  # someone appended seq first: chain onto theirs

    def check(self) -> list[str]:
        """Problems found in the chain; empty when it is intact."""
        problems = []
        prev_hash, expected_seq = GENESIS, 1
        for entry in self.entries():
            if entry.get("seq") != expected_seq:
                problems.append(f"entry {expected_seq} is missing (found {entry.get('seq')} in its place)")
            if entry.get("prev_hash") != prev_hash:
                problems.append(f"entry {entry.get('seq')} does not chain onto the entry before it")
            if entry.get("hash") != _digest(entry.get("prev_hash", ""), entry):
                problems.append(f"entry {entry.get('seq')} was altered (hash mismatch)")
            prev_hash, expected_seq = entry.get("hash", ""), (entry.get("seq") or expected_seq) + 1
        return problems
