#!/bin/bash
# relion-image.sh IMAGE CACHE_DIR: print the path of IMAGE's SIF in CACHE_DIR, building it there
# first if it is not there yet. Run by every job before RELION (and by the embedded cloud's data
# step), as the job user, on GPU nodes and on the embedded cloud alike.
#
# IMAGE is any source `apptainer build` takes: docker://registry/name:tag, or
# docker-archive:/path/image.tar (what the embedded cloud exports from the project's RELION image).
# The SIF is made once per source: concurrent jobs wait on an exclusive lock for the first one
# instead of building again, and the build writes a temporary file that is renamed into place,
# so no job ever sees a half-written image.
set -euo pipefail

image=${1:?usage: relion-image.sh IMAGE CACHE_DIR}
cache=${2:?usage: relion-image.sh IMAGE CACHE_DIR}
name=${image#*://}
name=${name//[^A-Za-z0-9._-]/_}
sif="$cache/${name##_}.sif"

if [ ! -s "$sif" ]; then
  exec 9>"$sif.lock"
  flock 9
  if [ ! -s "$sif" ]; then
    tmp="$sif.partial.$$"
    rm -f "$tmp"
    echo "relion-image: building $sif from $image (once per image)" >&2
    apptainer build --disable-cache "$tmp" "$image" >&2
    mv -f "$tmp" "$sif"
  fi
  flock -u 9
  exec 9>&-
fi
echo "$sif"
