"""``celery -A vault_worker worker``: the project's worker app (worker.app, unchanged) with its
Key Vault client pointed at the loopback test vault (see tests/loopback_vault.py)."""

from __future__ import annotations

# isort: off
# loopback_vault first: worker.app binds the provider factory when it is imported.
import loopback_vault  # noqa: F401
from worker.app import app

# isort: on

__all__ = ["app"]
