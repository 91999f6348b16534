#!/usr/bin/env bash
# The main job on this machine today: synthesize every stack (1-, 4- and 8-GPU clusters side by
# side) exactly as `cdk deploy` would, judge them with cdk-nag, and print the idle bill.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CDK_DISABLE_CLI_TELEMETRY=true JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
bash scripts/setup.sh
exec .venv/bin/relion-spot estimate -c gpus=1,4,8 "$@"
