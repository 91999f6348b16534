#!/usr/bin/env bash
# Installs what the RELION tests (tests/relion) need on a Debian host: the CPU build of RELION
# 3.1.3, Open MPI (relion_refine_mpi and mpirun) and tcmalloc (RELION runs ~2x faster with it
# preloaded than with glibc malloc). Idempotent: returns in well under a second when all is there.
set -euo pipefail

packages=(relion openmpi-bin libtcmalloc-minimal4)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup-relion: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup-relion: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for tool in relion_refine relion_project relion_preprocess relion_reconstruct \
    relion_image_handler mpirun; do
    if ! command -v "$tool" >/dev/null; then
        echo "setup-relion: $tool is not on PATH after installing ${packages[*]}" >&2
        exit 1
    fi
done

# awk reads to the end: exiting early would SIGPIPE ldconfig and fail the pipeline (pipefail).
tcmalloc=$(ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found = 1}')
if [[ -z $tcmalloc ]]; then
    echo "setup-relion: libtcmalloc_minimal.so.4 not found by ldconfig" >&2
    exit 1
fi
echo "setup-relion: ready (relion $(dpkg-query -W -f='${Version}' relion), tcmalloc $tcmalloc)"
