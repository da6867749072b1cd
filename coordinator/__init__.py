"""The operator's side: the ``reencrypt`` command (keys, seed, sweep, verify, audit, demo)."""
