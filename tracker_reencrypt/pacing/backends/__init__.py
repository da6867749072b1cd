"""Pacing backends: :mod:`.redis` for a fleet, :mod:`.memory` for one process (its test twin)."""
