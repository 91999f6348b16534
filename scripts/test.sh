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
# Two workers: one runs every container test (Slurm, the embedded cloud, RELION) in turn, the other
# everything else beside it (tests/conftest.py groups them). RELION_SPOT_TEST_WORKERS=0: one process.
exec .venv/bin/pytest -n "${RELION_SPOT_TEST_WORKERS:-2}" --dist loadgroup "$@"
