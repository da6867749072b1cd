"""The notes printed under the report: warnings about a busy machine, and what each figure is."""

from __future__ import annotations

from coordinator.bench.results import FleetRun, ReferenceRuns

#: Other processes using more CPU than this (in cores) during a measurement disturb it.
BUSY_CORES = 0.15


def busy_notes(fleets: dict[int, FleetRun], refs: ReferenceRuns) -> list[str]:
    """A warning for every measurement during which other processes took real CPU."""
    phases = [(f"fleet W={w}", run.other_cores) for w, run in sorted(fleets.items())]
    phases += [
        (label, run.other_cores)
        for label, run in (
            ("naive", refs.naive),
            ("bound", refs.bound),
            ("warm re-keying", refs.warm),
            ("store only", refs.store_only),
        )
    ]
    return busy_notes_of(phases)


def busy_notes_of(phases: list[tuple[str, float]]) -> list[str]:
    """A warning naming every (measurement, other processes' cores) above :data:`BUSY_CORES`."""
    busy = [f"{name} {cores:.2f}" for name, cores in phases if cores > BUSY_CORES]
    if not busy:
        return []
    return [
        f"WARNING: other processes used CPU while measuring (cores: {', '.join(busy)}); on a shared machine "
        "these figures are disturbed: rerun when it is idle"
    ]


def standing_notes(remote_store: bool, sample: int, container_documents: int, documents: int) -> list[str]:
    """What every report says about how its figures were made (docs/BENCHMARK.md says it at length)."""
    notes = [
        f"naive and warm re-keying are measured on a sample: the first {sample:,} of {documents:,} documents in scan "
        f"order; the bound and store only on the first {container_documents:,}; the fleet sweeps all of them",
        "on SQLite the references run in spans before, between and after the fleets (the bound and store only each on "
        "the next third of the container, naive on the next third of the sample) and each rate is the total over its "
        "spans: the machine's speed drifts, and the references then see it as the fleets did",
        "naive: one process, one document at a time, an MEK unwrap for every field (no cache), a fresh data key per "
        "field, store.replace per document",
        "bound: rekey_document over the documents already loaded (scanning and parsing untimed), with a keyring "
        "that starts cold as a worker's does: each distinct source DEK unwrapped once, the least any sweep of this "
        "data can do; rekey_warm: the same over the sample with every DEK already unwrapped, re-keying's CPU alone",
        "fleet time runs from 'sweep start' (plan, records, enqueue) until the sweep record is completed; workers "
        "are started and ready before the clock starts",
        "peak RSS is the sum over each worker's process tree (Celery main process + pool child)",
        "store only: the documents scanned and written back unchanged a page at a time with conditional writes "
        "(replace_many, as the sweep writes), one process: the store's own cost per document",
        "time shares: in_batches and key_provider are measured (the workers' histograms); rekey_cpu_estimate = "
        "documents / warm re-keying rate (on the sample) and store_estimate = documents / store-only rate "
        "(single-process costs); batch_rest = what is left of batch time (contention: SQLite write-lock waits, CPU "
        "shared with Redis and the Celery main processes; checkpoint commits); outside_batches = Celery/Redis "
        "dispatch, slice claims and idle tail; Redis alone is not measurable here",
    ]
    if not remote_store:
        notes.append(
            "request units on SQLite are the store's estimate (1 KB read ~1 RU, 1 KB replace ~10 RU), not billing"
        )
    return notes


def vault_notes(latency_ms: float, budget: float | None, unwrap_rate: float) -> list[str]:
    """What the remote-vault mode's figures are (docs/BENCHMARK.md says it at length)."""
    return [
        f"the vault is tests/keyvault_server.py on threads of the bench's own process (its CPU is 'vault cores'): "
        f"real HTTPS, real RSA-2048 unwraps, and {latency_ms:g} ms added to every call (all operations)",
        "workers: celery -A vault_worker (tests/vault_worker.py: the project's worker app, its Azure provider given a "
        "static token and the vault's CA); every call goes through the real SDK pipeline and connection pool",
        "unwraps/s sweep: the workers' unwraps over the sweep's time (start to completed: planning, the first page "
        "read and the last writes included); steady: unwraps the vault saw start from 2 s after the first to the "
        "last, per second (leaves out the first window, where a token bucket that starts full spends its burst)",
        "W/L: the sequential bound, W processes with one call in flight each at L per call; 'x W/L' is the steady "
        "rate over it",
        "busiest window: the most calls (any operation, the bench's own few planning calls included) the vault saw "
        "start in any 2 s, per second",
        "ms/unwrap: the mean time of an unwrap as the worker timed it (SDK, TLS, the vault's wait and its RSA "
        "decryption), the pacing wait before it left out",
        (
            f"budget: the sweeps ran with --kv-ops-per-s {budget:g}, one token bucket in Redis for the fleet"
            if budget
            else f"no budget: each process keeps to its own ceiling, REENCRYPT_UNWRAP_RATE ({unwrap_rate:g}/s)"
        ),
    ]
