#!/usr/bin/env bash
# Brings up what the container tests and the embedded cloud need on a Debian host without systemd
# and without access to any container registry:
#   1. docker.io and debootstrap from apt (only if missing),
#   2. a running Docker engine (dockerd started in the background if none answers; log under
#      .local/docker/),
#   3. a Debian trixie minbase base image made with debootstrap + `docker import` (only if absent),
#   4. the project's Slurm images from assets/slurm/Dockerfile and its RELION 5 CPU image from
#      assets/relion (scripts/build-relion-image.sh), exported into .local/containers for the
#      embedded cloud's nodes (the build cache makes all this a few seconds when nothing changed;
#      the first RELION build compiles for 20-45 minutes on 2 cores).
# Idempotent and quiet when everything is already there.
#
# Environment (all optional):
#   DEBIAN_MIRROR        Debian mirror for debootstrap (default: the first one apt uses here)
#   RELION_SPOT_BASE_IMAGE, RELION_SPOT_SLURM_IMAGE, RELION_SPOT_LOCAL_NODE_IMAGE,
#   RELION_SPOT_RELION_IMAGE                                                      image tags
#   SKIP_IMAGE_BUILD=1   stop after the engine and the base image
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state_dir="$repo/.local/docker"
base_image=${RELION_SPOT_BASE_IMAGE:-relion-spot/debian-base:trixie}
slurm_image=${RELION_SPOT_SLURM_IMAGE:-relion-spot/slurm:dev}
local_node_image=${RELION_SPOT_LOCAL_NODE_IMAGE:-relion-spot/slurm-local-node:dev}
relion_image=${RELION_SPOT_RELION_IMAGE:-relion-spot/relion:5.0.1-cpu}

log() { echo "setup-docker: $*" >&2; }
die() {
    log "$*"
    exit 1
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "need root to $1"
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
    ((${#missing[@]})) || return 0
    need_root "install ${missing[*]}"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

engine_answers() {
    docker info >/dev/null 2>&1
}

start_engine() {
    engine_answers && return 0
    need_root "start dockerd"
    mkdir -p "$state_dir"
    log "starting dockerd (log: $state_dir/dockerd.log)"
    # setsid: the engine must outlive this script and the shell that ran it.
    # 9>&-: the engine outlives this run and must not hold its lock.
    setsid dockerd >>"$state_dir/dockerd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$state_dir/dockerd.pid"
    local waited=0
    until engine_answers; do
        if ! kill -0 "$(cat "$state_dir/dockerd.pid")" 2>/dev/null; then
            tail -n 20 "$state_dir/dockerd.log" >&2 || true
            die "dockerd exited during start-up; see $state_dir/dockerd.log"
        fi
        ((waited++ < 300)) || die "dockerd did not answer within 30 s; see $state_dir/dockerd.log"
        sleep 0.1
    done
}

debian_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    # The mirror apt already uses on this host: deb822 sources first, then one-line sources.
    local uri
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources |
        awk '{print $2}' | grep -vE 'security|updates' | head -n 1 || true)
    if [[ -z $uri ]]; then
        uri=$(grep -hsE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            awk '{print $2}' | grep -vE 'security|updates' | head -n 1 || true)
    fi
    [[ -n $uri ]] || die "no Debian mirror found in apt's sources; set DEBIAN_MIRROR"
    echo "$uri"
}

ensure_base_image() {
    docker image inspect "$base_image" >/dev/null 2>&1 && return 0
    need_root "debootstrap a base image"
    local mirror root
    mirror=$(debian_mirror)
    root="$state_dir/rootfs-trixie"
    rm -rf "$root"
    mkdir -p "$root"
    log "debootstrap trixie (minbase) from $mirror"
    if ! /usr/sbin/debootstrap --variant=minbase trixie "$root" "$mirror" \
        >"$state_dir/debootstrap.log" 2>&1; then
        tail -n 20 "$state_dir/debootstrap.log" >&2 || true
        die "debootstrap failed; see $state_dir/debootstrap.log"
    fi
    # What the public debian:*-slim images also leave out: package caches and lists.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
    log "importing $base_image"
    tar -C "$root" --numeric-owner -c . |
        docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$base_image" >/dev/null
    rm -rf "$root"
}

build_one() {
    local target=$1 tag=$2 build_log="$state_dir/build-$1.log"
    log "building $tag (target $target)"
    # The legacy builder: this engine's CLI may lack the buildx plugin that BuildKit needs, and
    # the Dockerfile uses nothing BuildKit-only. Host networking: apt and pip inside the build
    # reach the same mirrors the host does, whatever the engine's bridge can route.
    if ! DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE_IMAGE=$base_image" \
        --target "$target" -t "$tag" -f "$repo/assets/slurm/Dockerfile" "$repo" \
        >"$build_log" 2>&1; then
        tail -n 30 "$build_log" >&2 || true
        die "building $tag failed; see $build_log"
    fi
}

image_pins() {
    # The pinned lines of requirements.txt for the packages assets/slurm/image-requirements.txt
    # names: what the image's pip installs.
    local names
    names=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$repo/assets/slurm/image-requirements.txt")
    local name line
    for name in $names; do
        line=$(grep -E "^$name==" "$repo/requirements.txt") || die "no $name pin in requirements.txt"
        echo "$line"
    done
}

stage_wheels() {
    # The image's pip installs the runtime pins from here: this host's own pip reaches PyPI
    # (with whatever CA bundle and mirrors it is configured for) where a build container may not.
    # Wheels for the image's interpreter (Debian trixie: CPython 3.13 on x86_64 glibc).
    local wheels="$repo/.local/wheels" pins
    pins=$(image_pins) || exit 1
    if [[ -f "$wheels/.pin" && $(cat "$wheels/.pin") == "$pins" ]]; then
        return 0
    fi
    log "staging wheels for the image in $wheels"
    rm -rf "$wheels"
    mkdir -p "$wheels"
    # Pure-Python packages published as source archives only (python-hostlist) are built into
    # wheels here; the others are downloaded as the image's interpreter needs them.
    local source_pins binary_pins
    source_pins=$(grep -E '^python-hostlist==' <<<"$pins" || true)
    binary_pins=$(grep -vE '^python-hostlist==' <<<"$pins")
    # shellcheck disable=SC2086  # one word per pin
    python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
        --python-version 3.13 --implementation cp --abi cp313 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any \
        -d "$wheels" $binary_pins >"$state_dir/wheels.log" 2>&1 ||
        die "could not download the image's wheels (${pins//$'\n'/ }); see $state_dir/wheels.log"
    if [[ -n $source_pins ]]; then
        # shellcheck disable=SC2086  # one word per pin
        python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$wheels" \
            $source_pins >>"$state_dir/wheels.log" 2>&1 ||
            die "could not build the image's wheels ($source_pins); see $state_dir/wheels.log"
    fi
    echo "$pins" >"$wheels/.pin"
}

export_relion_image() {
    # The embedded cloud's nodes run RELION as a GPU node does: `apptainer exec` of a SIF in
    # their /containers cache. The project's CPU build of assets/relion goes there as a
    # docker-archive; the first job (or the demo's data step) makes the SIF from it, once.
    local cache="$repo/.local/containers" id tar
    tar="$cache/relion-5.0.1-cpu.tar"
    mkdir -p "$cache"
    # The job user makes the SIF here (relion-image.sh), as on EFS; sticky like /tmp.
    chmod 1777 "$cache"
    id=$(docker image inspect -f '{{.Id}}' "$relion_image")
    if [[ -f $tar && -f "$tar.id" && $(cat "$tar.id") == "$id" ]]; then
        return 0
    fi
    log "exporting $relion_image to $tar"
    docker save "$relion_image" -o "$tar.partial"
    chmod 0644 "$tar.partial"
    mv -f "$tar.partial" "$tar"
    # A SIF made from the previous export is stale now.
    rm -f "$cache"/*relion-5.0.1-cpu.tar.sif
    echo "$id" >"$tar.id"
}

build_images() {
    mkdir -p "$state_dir"
    stage_wheels
    build_one slurm "$slurm_image"
    build_one local-node "$local_node_image"
    # RELION 5 from its upstream source, the recipe the GPU image shares (the first build is
    # long: the compile of RELION's library; later ones come from the build cache).
    if ! RELION_IMAGE=$relion_image RELION_SPOT_BASE_IMAGE=$base_image \
        bash "$repo/scripts/build-relion-image.sh" >"$state_dir/relion-image.log" 2>&1; then
        tail -n 20 "$state_dir/relion-image.log" >&2 || true
        die "building $relion_image failed; see $state_dir/relion-image.log"
    fi
    export_relion_image
    # Images these tags pointed at before a rebuild: untagged now, and only ever ours.
    docker image prune -f --filter "label=org.relion-spot.image=slurm" >/dev/null
}

# One run at a time per checkout: another (a test fixture while the suite's own run builds) waits
# here and then finds everything built, instead of compiling RELION beside it.
mkdir -p "$state_dir"
exec 9>"$state_dir/setup.lock"
flock 9
install_packages
start_engine
ensure_base_image
[[ ${SKIP_IMAGE_BUILD:-0} == 1 ]] || build_images
log "ready: $base_image, $slurm_image, $local_node_image, $relion_image"
