#!/usr/bin/env bash
# The main job on the embedded local cloud: installs what it needs (a .venv with the project, the
# Docker engine and the Slurm images), then runs `relion-spot demo` - RELION Class3D on a
# ground-truthed particle set, submitted through the job intake to the containerized Slurm
# cluster, with a spot reclaim in the middle, resumed, scored and priced. Arguments go to the
# demo (e.g. --json, --iterations 16).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CDK_DISABLE_CLI_TELEMETRY=true JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
bash scripts/setup.sh
bash scripts/setup-docker.sh
exec .venv/bin/relion-spot demo "$@"
