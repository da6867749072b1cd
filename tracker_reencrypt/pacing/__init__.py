"""Pacing a sweep to the fleet-wide limits it shares with the live tracker.

One module per idea, as dramatiq's ``rate_limits``:

- :mod:`.limits`: the three limits a sweep may set (documents/s, Key Vault calls/s, request
  units/s), each named once;
- :mod:`.backend`: the interface the fleet's shared pacing state lives behind, with
  :mod:`.backends.redis` (every worker process of the fleet) and :mod:`.backends.memory`
  (one process, on an injected clock: its twin for fast tests);
- :mod:`.bucket`: the token bucket; :mod:`.share`: the share of a limit the fleet uses, cut
  after 429s and restored while the service is calm; both written once, over any backend;
- :mod:`.pacer`: one batch paced to its sweep's limits, at the edges of the batch loop.
"""
