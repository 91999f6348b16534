#!/usr/bin/env bash
# Lint, format and type checks; run by scripts/test.sh before the tests.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy relion_spot app.py
# Every shell file the project ships or runs; the rendered templates (node bootstrap, sbatch
# scripts) are checked by their tests after rendering.
mapfile -t shell_files < <(
    {
        ls scripts/*.sh assets/slurm/entrypoint.sh assets/slurm/bin/*
        find assets -name '*.sh' -not -name 'node-bootstrap.sh'
    } | sort -u
)
bash -n scripts/*.sh
shellcheck --severity=style "${shell_files[@]}"
