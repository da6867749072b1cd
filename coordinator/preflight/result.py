"""What one preflight check found: a verdict, a one-line finding, and on failure the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS = "pass"
FAIL = "fail"
#: The check does not apply to this deployment (e.g. a Cosmos backup policy for a SQLite file):
#: never counted as passed, never as failed, and shown as such.
NOT_APPLICABLE = "n/a"
#: A fact worth knowing that gates nothing (a container's throughput, the request priority).
INFO = "info"


@dataclass(frozen=True)
class CheckResult:
    #: Which check: "key vault", "store", "backup", "broker", "fleet".
    check: str
    #: What it looked at: a key name, a container, an account...
    subject: str
    status: str
    #: One line: what was found (no secrets, no key material).
    detail: str
    #: On failure, one line saying what to do; empty otherwise.
    fix: str = ""
    #: Measured figures for --json (latencies in ms, counts...).
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "subject": self.subject,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
            "figures": self.figures,
        }
