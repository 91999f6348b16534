#!/usr/bin/env bash
# Installs what the CDK app, the CLI and the unit/template tests need, inside the repo:
#   .venv/          the Python environment (pinned requirements + this package, editable)
#   node_modules/   the pinned CDK CLI (aws-cdk 2.1148.x; npm's `latest` is an older 3.x)
# Idempotent and quick when nothing changed (stamps hash the requirement files).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
log() { echo "setup: $*" >&2; }

apt_missing=()
command -v node >/dev/null || apt_missing+=(nodejs)
command -v npm >/dev/null || apt_missing+=(npm)
command -v shellcheck >/dev/null || apt_missing+=(shellcheck)
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_missing+=(python3-venv)
if ((${#apt_missing[@]})); then
    log "installing ${apt_missing[*]} from apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { log "Python 3.11 or newer is needed (found $(python3 --version))"; exit 1; }

stamp=.venv/.requirements.sha256
wanted=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$wanted" ]]; then
    log "creating the Python environment in .venv"
    python3 -m venv .venv
    mkdir -p .local
    pip_log=.local/pip.log
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
        .venv/bin/python -m pip install -q -r requirements-dev.txt &&
        .venv/bin/python -m pip install -q --no-deps -e .; } >"$pip_log" 2>&1; then
        grep -v "is ignored" "$pip_log" | tail -n 30 >&2
        log "pip failed; full log in $pip_log"
        exit 1
    fi
    echo "$wanted" >"$stamp"
fi

lock_stamp=node_modules/.package-lock.sha256
wanted_lock=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -x node_modules/.bin/cdk || ! -f $lock_stamp || $(cat "$lock_stamp") != "$wanted_lock" ]]; then
    log "installing the pinned CDK CLI into node_modules"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    echo "$wanted_lock" >"$lock_stamp"
fi
log "ready: $(.venv/bin/python --version), CDK CLI $(node_modules/.bin/cdk --version 2>/dev/null | cut -d' ' -f1)"
