"""The shared domain library of tracker-reencrypt.

Envelope format, key providers, document stores and sweep state live here; the
``worker`` and ``coordinator`` packages both build on it and never on each other.
"""
