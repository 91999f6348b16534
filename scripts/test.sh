#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (apt, pip, npm, a Docker
# engine and the Slurm images), runs the lint/type checks, then every test. Arguments go to
# pytest (e.g. scripts/test.sh tests/test_stacks.py -x).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CDK_DISABLE_CLI_TELEMETRY=true JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20

bash scripts/setup.sh
bash scripts/setup-docker.sh
bash scripts/lint.sh
# With arguments: one pytest run of what they name.
(($# == 0)) || exec .venv/bin/pytest "$@"
# The whole suite in two processes side by side: the container tests (Slurm, the embedded cloud,
# RELION; marked `containers` by tests/conftest.py) one after another, as ever, and everything
# else beside them. Their output follows the other's; the suite fails if either does.
mkdir -p .local
containers_log=.local/test-containers.log
.venv/bin/pytest -m containers >"$containers_log" 2>&1 &
containers_pid=$!
trap 'kill "$containers_pid" 2>/dev/null || true' EXIT
rest_status=0
.venv/bin/pytest -m "not containers" || rest_status=$?
containers_status=0
wait "$containers_pid" || containers_status=$?
echo "=== the container tests (pytest -m containers) ==="
cat "$containers_log"
echo "test.sh: container tests exit $containers_status, the others exit $rest_status"
((containers_status == 0 && rest_status == 0))
