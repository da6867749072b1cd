"""The two Grafana dashboards of a rotation, as code: ``python ops/grafana/dashboards.py``.

Writes ``ops/grafana/dashboards/*.json`` (committed; Grafana provisions them from there).
Built with Grafana's own ``grafana-foundation-sdk`` (typed builders generated from Grafana's
schemas, pinned in pyproject's test extra): panels are short, uniform, and reviewed as Python,
not as 2,000 lines of JSON. ``tests/e2e/test_ops.py`` regenerates them and fails on drift, and lints
every query against the metric names the code exports.

- ``rotation.py``: Rotation overview (uid ``reencrypt-rotation``): one sweep, from the exporter's
  durable totals: status, progress, ETA, throughput, fields moved, failures, conflicts, slices,
  throttling and budgets.
- ``fleet.py``: Fleet view (uid ``reencrypt-fleet``): the workers' own metrics: per-worker rates,
  batch latency and outcomes, Key Vault latency and errors, DEK cache hit ratio, queue depth.
- ``panels.py``: what both share: stat and time-series panels, variables, common settings.

The sibling modules are imported by name: run as a script, this file's directory is on
``sys.path``; the test puts it there. Panel titles are what the runbook
(ops/runbooks/MEK_ROTATION.md) tells an operator to watch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fleet import fleet_view
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from rotation import rotation_overview

OUT = Path(__file__).resolve().parent / "dashboards"

DASHBOARDS = {"reencrypt-rotation.json": rotation_overview, "reencrypt-fleet.json": fleet_view}


def render(build) -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (out / name).write_text(render(build))
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
