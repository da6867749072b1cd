#!/usr/bin/env bash
# The main job on embedded defaults: seed, rotate, sweep with two workers, verify, revoke.
source "$(dirname "$0")/setup.sh" run
exec .venv/bin/reencrypt demo "$@"
