"""``reencrypt bench``: how fast a sweep is, against what, and how it scales.

docs/BENCHMARK.md says what each run measures, where the figures come from and what they were.
The modules, by job:

- ``run``: one invocation, start to report (``run_bench``); ``options``: what it is asked to do.
- ``containers``: the seeded container (cached on SQLite) and the working copies runs start from.
- ``fleet``: W worker processes sweeping it, polled to the end; ``scrape``: their metrics, memory, CPU.
- ``references``: the in-process runs the fleets are compared with (naive, bound, warm, store only).
- ``measure``: the one stopwatch every timed span goes through, and the CPU others took meanwhile.
- ``results``: what is measured; ``report``, ``targets``, ``notes``: the JSON report and its human form.
- The remote-vault mode (``--vault-latency-ms``): ``vault`` (the tests' loopback Key Vault and the
  workers that reach it), ``vault_run`` (its invocation) and ``vault_report`` (its report).
"""

from coordinator.bench.options import BenchOptions
from coordinator.bench.report import render_report
from coordinator.bench.run import run_bench

__all__ = ["BenchOptions", "render_report", "run_bench"]
