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
# The whole suite in three processes side by side: the container tests (Slurm, the embedded
# cloud, RELION; marked `containers` by tests/conftest.py) in two lanes of about equal length,
# each one test after another, and everything else beside them. Lanes: RELION's own runs and
# the campaign (its session fixtures stay in one process), and the rest of the cloud. Their
# output follows the others'; the suite fails if any process fails.
mkdir -p .local
relion_lane=(tests/relion tests/jobs tests/local/test_campaign.py tests/test_benchmarks.py)
relion_log=.local/test-containers-relion.log
cloud_log=.local/test-containers-cloud.log
.venv/bin/pytest -m containers "${relion_lane[@]}" >"$relion_log" 2>&1 &
relion_pid=$!
.venv/bin/pytest -m containers "${relion_lane[@]/#/--ignore=}" >"$cloud_log" 2>&1 &
cloud_pid=$!
trap 'kill "$relion_pid" "$cloud_pid" 2>/dev/null || true' EXIT
rest_status=0
.venv/bin/pytest -m "not containers" || rest_status=$?
relion_status=0 cloud_status=0
wait "$relion_pid" || relion_status=$?
wait "$cloud_pid" || cloud_status=$?
echo "=== the container tests, RELION's lane (pytest -m containers ${relion_lane[*]}) ==="
cat "$relion_log"
echo "=== the container tests, the cloud's lane ==="
cat "$cloud_log"
echo "test.sh: container lanes exit $relion_status (RELION) and $cloud_status (cloud)," \
    "the others exit $rest_status"
((relion_status == 0 && cloud_status == 0 && rest_status == 0))
