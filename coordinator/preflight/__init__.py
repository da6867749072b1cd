"""``reencrypt preflight``: the runbook's pre-rotation checklist as checks with verdicts.

Each check answers one question of the runbook (can this host use the keys, can it read the
container and write the sweep's state, is there a recent backup, is a fleet there to do the
work) with a :class:`~coordinator.preflight.result.CheckResult`; the command prints them and
exits 0 only when none failed. ``--baseline``/``--compare`` capture and compare the read path's
latency around a rotation (:mod:`coordinator.preflight.baseline`).
"""
