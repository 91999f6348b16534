#!/usr/bin/env bash
# Lint, format and type checks; run by scripts/test.sh before the tests.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy relion_spot app.py
bash -n scripts/*.sh
