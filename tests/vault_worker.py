"""``celery -A vault_worker worker``: the project's worker app (worker.app, unchanged) with its
Key Vault client pointed at the loopback test vault (see tests/loopback_vault.py)."""

from __future__ import annotations

from worker.app import app  # noqa: E402

import loopback_vault  # noqa: F401 - first: worker.app reads the provider factory when imported

__all__ = ["app"]
