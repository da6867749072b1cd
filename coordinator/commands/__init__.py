"""The ``reencrypt`` commands, one module per group; ``coordinator.cli`` registers them on its root app.

``common`` holds what they share (the consoles, ``--json``, ``emit``); none of them imports ``coordinator.cli``.
"""
