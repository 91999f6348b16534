#!/usr/bin/env bash
# Builds the project's RELION image from assets/relion (RELION 5.0.1 from the upstream source) and
# checks it:
#   scripts/build-relion-image.sh            relion-spot/relion:5.0.1-cpu
#   scripts/build-relion-image.sh --cuda     relion-spot/relion:5.0.1-cuda12 (CUDA 12.4, no GPU
#                                            needed to build or to run --version)
# Prints the build time and the image size, then verifies that `relion_refine --version` runs in
# the image and reports RELION 5.0.1 (with CUDA-ACC for --cuda, whose relion_refine must also link
# libcufft).
#
# The source: RELION_SOURCE_TARBALL if set, else ../shared/sources/relion-5.0.1.tar.xz beside the
# repository if present (both checked against the pinned sha256 and commit in the build), else the
# build clones the pinned upstream tag and checks its commit. The tarball is staged in a build
# context under .local/ (ignored by git) and never enters the repository.
#
# Environment (all optional):
#   RELION_SPOT_BASE_IMAGE   base image (default relion-spot/debian-base:trixie if it exists,
#                            else debian:trixie-slim)
#   RELION_IMAGE             tag to build (default relion-spot/relion:5.0.1-cpu / -cuda12)
#   CUDA_ARCH                compute capabilities for --cuda (default "80;86;89;90")
#   JOBS                     make -j inside the build (default: the build container's CPUs)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=5.0.1
cuda=OFF
for arg in "$@"; do
    case $arg in
    --cuda) cuda=ON ;;
    -h | --help)
        sed -n '2,22p' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--cuda]" >&2
        exit 2
        ;;
    esac
done

log() { echo "build-relion-image: $*" >&2; }
die() {
    log "$*"
    exit 1
}

if [[ $cuda == ON ]]; then
    flavour=cuda12
    cuda_arch=${CUDA_ARCH:-80;86;89;90}
else
    flavour=cpu
    cuda_arch=
fi
image=${RELION_IMAGE:-relion-spot/relion:$version-$flavour}
base_image=${RELION_SPOT_BASE_IMAGE:-}
if [[ -z $base_image ]]; then
    base_image=debian:trixie-slim
    docker image inspect relion-spot/debian-base:trixie >/dev/null 2>&1 &&
        base_image=relion-spot/debian-base:trixie
fi

# The build context: the recipe and, when there is one, the source tarball.
context="$repo/.local/relion-context-$flavour"
rm -rf "$context"
mkdir -p "$context"
cp "$repo/assets/relion/build-relion.sh" "$context/"
tarball=${RELION_SOURCE_TARBALL:-}
if [[ -z $tarball && -f "$repo/../shared/sources/relion-$version.tar.xz" ]]; then
    tarball="$repo/../shared/sources/relion-$version.tar.xz"
fi
if [[ -n $tarball ]]; then
    [[ -f $tarball ]] || die "RELION_SOURCE_TARBALL=$tarball: no such file"
    cp "$tarball" "$context/relion-$version.tar.xz"
    log "source: $tarball"
else
    log "source: no tarball; the build clones the pinned upstream tag"
fi

build_log="$repo/.local/build-relion-$flavour.log"
log "building $image (CUDA=$cuda${cuda_arch:+, CUDA_ARCH=$cuda_arch}) from $base_image; log: $build_log"
start=$(date +%s)
# The legacy builder (this engine's CLI may lack buildx) with host networking, so apt inside the
# build reaches the mirror the host reaches.
if ! DOCKER_BUILDKIT=0 docker build --network host \
    --build-arg "BASE_IMAGE=$base_image" --build-arg "CUDA=$cuda" \
    --build-arg "CUDA_ARCH=$cuda_arch" --build-arg "JOBS=${JOBS:-}" \
    -f "$repo/assets/relion/Dockerfile" -t "$image" "$context" >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2 || true
    die "building $image failed; see $build_log"
fi
elapsed=$(($(date +%s) - start))
rm -rf "$context"
size=$(docker image inspect -f '{{.Size}}' "$image")
log "built $image in $((elapsed / 60)) min $((elapsed % 60)) s; size $((size / 1000000)) MB"
# The runtime image this tag pointed at before a rebuild: untagged now, and only ever ours (the
# builder stage carries no label, so its cache stays for the next build).
docker image prune -f --filter "label=org.relion-spot.image=relion" >/dev/null || true

# Checks: the version, and for CUDA the accelerated build and its cuFFT.
out=$(docker run --rm "$image" relion_refine --version 2>&1) || die "relion_refine --version failed: $out"
echo "$out"
grep -q "RELION version: $version" <<<"$out" || die "expected 'RELION version: $version'"
if [[ $cuda == ON ]]; then
    grep -q "CUDA-ACC" <<<"$out" || die "expected a CUDA-ACC build"
    links=$(docker run --rm "$image" sh -c 'ldd /opt/relion/bin/relion_refine')
    grep -q 'libcufft' <<<"$links" || die "relion_refine does not link libcufft"
    grep 'libcufft\|libcudart' <<<"$links"
fi
log "ok: $image"
