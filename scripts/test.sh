#!/usr/bin/env bash
# The whole test suite, with what it needs installed: the venv, Prometheus/promtool (Debian
# package), Node.js for the Cosmos-protocol server (its npm package is installed by the
# test fixture). Redis: a private redis-server the tests start, or $REDIS_URL (never flushed).
source "$(dirname "$0")/setup.sh" test
need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need_apt[*]} (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "note: ${need_apt[*]} missing and not installable here; the tests needing them will say so" >&2
  fi
fi
# Lint, format and types first (configured in pyproject.toml): a failure there fails the suite.
echo "ruff, mypy"
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
# Two test processes (pytest-xdist), one per core: most e2e tests wait on real workers and
# servers, so two side by side take about 60% of one's time. "-n 0" after it runs them in one.
exec .venv/bin/python -m pytest -n 2 "$@"
