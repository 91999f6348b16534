#!/bin/bash
# relion-image.sh [--name | --check [--cuda]] IMAGE CACHE_DIR
#
# Print the path of IMAGE's SIF in CACHE_DIR, making it there first if it is not there yet. Run
# as the job user: by every Class3D job before RELION, by the image job on the CPU partition
# (--check) before any GPU job that needs the image, and by the embedded cloud's data step.
#
# IMAGE is either
#   - any source `apptainer build` takes: docker://registry/name:tag, or
#     docker-archive:/path/image.tar (what the embedded cloud exports from the project's RELION
#     image), oci-archive:..., a SIF path; or
#   - def:DEFINITION[:ARGS], an Apptainer definition file built here with `apptainer build --fakeroot --ignore-subuid` (a root-mapped user namespace
#     without subordinate ids: what an unprivileged user may do on a CPU node), ARGS a file of
#     build arguments (--build-arg-file); relative paths are the project's assets (beside this
#     script's directory), e.g. def:relion/relion.def:relion/cuda12.args, the GPU image. Its SIF is named by the content digest of the
#     definition, the files its %files section copies in and the arguments, so a changed recipe
#     makes a new image and an unchanged one is never built twice.
#
# The SIF is made once per source: concurrent jobs wait on an exclusive lock for the first one
# instead of building again; the build writes a temporary file that is renamed into place, so no
# job ever sees a half-written image, and a build that died with its node (a spot reclaim) leaves
# only a temporary file, removed by the next attempt.
#
# --name    print only the SIF's file name and make nothing (how the intake finds a checked one).
# --check   also run the image's RELION (relion_refine --version) and, with --cuda, require CUDA
#           acceleration and cuFFT in it; the result is kept beside the SIF as SIF.checked, so
#           an image is checked once. A failure exits non-zero naming the image and what failed.
set -euo pipefail

usage="usage: relion-image.sh [--name | --check [--cuda]] IMAGE CACHE_DIR"
mode=path
cuda=
while [ $# -gt 0 ]; do
  case $1 in
    --name) mode=name ;;
    --check) mode=check ;;
    --cuda) cuda=1 ;;
    -*) echo "relion-image: unknown option $1; $usage" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[ $# -eq 2 ] || { echo "relion-image: $usage" >&2; exit 2; }
image=$1
cache=$2

fail() {
  echo "relion-image: $image: $*" >&2
  exit 1
}

# The files a definition copies in (%files: "SOURCE [DESTINATION]"), relative to its directory.
definition_files() {
  awk '/^%/ { inside = ($1 == "%files"); next } inside && NF { print $1 }' "$1"
}

definition=
build_args=
assets=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case $image in
  def:*)
    spec=${image#def:}
    definition=${spec%%:*}
    [ "$spec" = "$definition" ] || build_args=${spec#*:}
    [[ $definition == /* ]] || definition="$assets/$definition"
    [[ -z $build_args || $build_args == /* ]] || build_args="$assets/$build_args"
    [ -f "$definition" ] || fail "no definition file $definition"
    [ -z "$build_args" ] || [ -f "$build_args" ] || fail "no build-argument file $build_args"
    digest=$(
      cd "$(dirname "$definition")"
      definition_name=$(basename "$definition")
      {
        sha256sum "$definition_name"
        definition_files "$definition_name" | while read -r copied; do sha256sum "$copied"; done
        [ -z "$build_args" ] || sha256sum <"$build_args"
      } | sha256sum
    )
    stem=$(basename "$definition" .def)
    name="$stem-${digest:0:16}.sif"
    ;;
  *)
    name=${image#*://}
    name=${name//[^A-Za-z0-9._-]/_}
    name="${name##_}.sif"
    ;;
esac

if [ "$mode" = name ]; then
  echo "$name"
  exit 0
fi

sif="$cache/$name"
if [ ! -s "$sif" ] && [ ! -w "$cache" ]; then
  fail "no image $sif, and this node's cache is read-only: GPU nodes never build; the image job on the CPU partition makes it"
fi
if [ ! -s "$sif" ]; then
  exec 9>"$sif.lock"
  flock 9
  if [ ! -s "$sif" ]; then
    rm -f "$sif".partial.*
    tmp="$sif.partial.$$"
    echo "relion-image: building $sif from $image (once per image)" >&2
    if [ -n "$definition" ]; then
      (
        cd "$(dirname "$definition")"
        apptainer build --fakeroot --ignore-subuid ${build_args:+--build-arg-file "$build_args"} \
          "$tmp" "$(basename "$definition")"
      ) >&2 || fail "apptainer build from $definition failed"
    else
      apptainer build --disable-cache "$tmp" "$image" >&2 || fail "apptainer build failed"
    fi
    mv -f "$tmp" "$sif"
  fi
  flock -u 9
  exec 9>&-
fi

if [ "$mode" = check ] && [ ! -s "$sif.checked" ]; then
  version=$(apptainer --quiet exec "$sif" relion_refine --version 2>&1) ||
    fail "relion_refine --version failed in $sif: $(echo "$version" | tail -3)"
  grep -q '^RELION version: ' <<<"$version" ||
    fail "relion_refine --version does not name a RELION version: $(echo "$version" | head -3)"
  if [ -n "$cuda" ]; then
    grep -q 'CUDA-ACC=' <<<"$version" ||
      fail "RELION in $sif is not built with CUDA acceleration: $(echo "$version" | head -2)"
    # shellcheck disable=SC2016 # expanded by the shell inside the image
    linked=$(apptainer --quiet exec "$sif" sh -c 'ldd "$(command -v relion_refine)"' 2>&1) ||
      fail "ldd relion_refine failed in $sif"
    grep -q 'libcufft' <<<"$linked" || fail "relion_refine in $sif does not link cuFFT"
  fi
  echo "$version" >"$sif.checked.$$"
  mv -f "$sif.checked.$$" "$sif.checked"
  echo "relion-image: $sif checked: $(head -1 <<<"$version")" >&2
fi
echo "$sif"
