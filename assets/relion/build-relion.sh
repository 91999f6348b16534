#!/usr/bin/env bash
# The one recipe for the project's RELION: RELION 5.0.1 from the upstream source, built on Debian
# trixie. The CPU build (embedded cloud, tests) and the CUDA build (GPU nodes) differ only by
# CUDA=OFF/ON; both use gcc-13/g++-13 (the newest gcc that nvcc 12.4 accepts), so the CPU build
# is compiled exactly like the host code of the CUDA build.
#
#   build-relion.sh build     install build deps, get + verify the source, cmake, make only the
#                             programs the product runs, install them in $RELION_PREFIX, write
#                             the list of runtime packages they need, purge the build deps
#   build-relion.sh runtime   install the runtime packages that list names (a slim image, or the
#                             same root after a build whose deps were purged) + Open MPI + tcmalloc
#
# Environment (all optional):
#   CUDA=OFF|ON                  default OFF
#   CUDA_ARCH="80;86;89;90"      compute capabilities for CUDA=ON (A100, A10G/A40, L4/L40S, H100)
#   RELION_SOURCE_TARBALL=FILE   a `git archive` tarball of the tag: its sha256 must equal
#                                RELION_SOURCE_SHA256 (and its embedded commit RELION_COMMIT).
#                                Unset: shallow git clone of tag $RELION_VERSION from
#                                $RELION_GIT_URL, HEAD verified against RELION_COMMIT.
#   RELION_PREFIX=/opt/relion    install prefix
#   RELION_PURGE_BUILD_DEPS=1    0 keeps the build deps (a throw-away builder stage)
#   JOBS=$(nproc)                make -j
set -euo pipefail

RELION_VERSION=${RELION_VERSION:-5.0.1}
RELION_COMMIT=${RELION_COMMIT:-d476e6f6a4f1f37627c06ace5227fc374c0c2b05}
RELION_SOURCE_SHA256=${RELION_SOURCE_SHA256:-114f867db89555377870d17f5ff3707bdb89c03bc9acdb1ad14581cb0ee01b81}
RELION_GIT_URL=${RELION_GIT_URL:-https://github.com/3dem/relion.git}
RELION_PREFIX=${RELION_PREFIX:-/opt/relion}
RELION_PURGE_BUILD_DEPS=${RELION_PURGE_BUILD_DEPS:-1}
CUDA=${CUDA:-OFF}
CUDA_ARCH=${CUDA_ARCH:-80;86;89;90}
JOBS=${JOBS:-$(nproc)}
WORK=${RELION_WORK_DIR:-/tmp/relion-build}

# The programs the product runs (make targets from src/apps/*.cpp; the binaries are relion_<t>).
TARGETS=(refine refine_mpi project preprocess reconstruct image_handler postprocess mask_create
    star_handler)
RUNTIME_LIST=share/relion-spot/runtime-packages.txt
# Runtime packages ldd cannot see: mpirun/orted for relion_refine_mpi, and the allocator the
# image preloads (RELION runs about twice as fast with tcmalloc than with glibc malloc).
RUNTIME_EXTRA=(openmpi-bin libtcmalloc-minimal4t64)

export DEBIAN_FRONTEND=noninteractive
log() { echo "build-relion: $*" >&2; }
die() {
    log "$*"
    exit 1
}

case ${CUDA^^} in
ON | 1 | TRUE | YES) CUDA=ON ;;
OFF | 0 | FALSE | NO) CUDA=OFF ;;
*) die "CUDA must be ON or OFF, not '$CUDA'" ;;
esac

apt_install() {
    apt-get install -y -q --no-install-recommends "$@"
}

enable_non_free() {
    # nvidia-cuda-toolkit is in trixie's non-free component; a minimal base lists only main.
    apt-cache policy nvidia-cuda-toolkit 2>/dev/null | grep -q 'Candidate: [0-9]' && return 0
    local uri suite
    uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -n 1 || true)
    suite=$(grep -hsE '^Suites:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -n 1 || true)
    if [[ -z $uri ]]; then
        read -r uri suite < <(grep -hsE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            grep -vE 'security|updates' | awk '{print $2, $3}' | head -n 1) || true
    fi
    [[ -n $uri && -n $suite ]] || die "no Debian mirror found in apt's sources"
    log "enabling contrib non-free on $uri $suite (nvidia-cuda-toolkit)"
    echo "deb $uri $suite contrib non-free" >/etc/apt/sources.list.d/relion-non-free.list
    apt-get update -q
}

build_deps() {
    local deps=(ca-certificates xz-utils cmake make gcc-13 g++-13 libfftw3-dev libtiff-dev
        libpng-dev libjpeg-dev zlib1g-dev libopenmpi-dev openmpi-bin)
    [[ -n ${RELION_SOURCE_TARBALL:-} ]] || deps+=(git)
    [[ $CUDA == OFF ]] || deps+=(nvidia-cuda-toolkit)
    echo "${deps[@]}"
}

get_source() {
    local src=$WORK/src
    rm -rf "$src"
    mkdir -p "$src"
    if [[ -n ${RELION_SOURCE_TARBALL:-} ]]; then
        [[ -f $RELION_SOURCE_TARBALL ]] || die "RELION_SOURCE_TARBALL=$RELION_SOURCE_TARBALL: no such file"
        local sum commit
        sum=$(sha256sum "$RELION_SOURCE_TARBALL" | awk '{print $1}')
        [[ $sum == "$RELION_SOURCE_SHA256" ]] ||
            die "$RELION_SOURCE_TARBALL: sha256 $sum, expected $RELION_SOURCE_SHA256"
        # `git archive` writes the commit into the tarball's pax header: check it too.
        commit=$({ xz -dc "$RELION_SOURCE_TARBALL" 2>/dev/null || true; } | head -c 4096 |
            tr -d '\0' | grep -a -o 'comment=[0-9a-f]\{40\}' | head -n 1 | cut -d= -f2 || true)
        if [[ -n $commit && $commit != "$RELION_COMMIT" ]]; then
            die "$RELION_SOURCE_TARBALL: archive of commit $commit, expected $RELION_COMMIT"
        fi
        tar -xJf "$RELION_SOURCE_TARBALL" -C "$src" --strip-components=1
        log "source: $(basename "$RELION_SOURCE_TARBALL") (sha256 ok, commit ${commit:-not recorded})"
    else
        git -c advice.detachedHead=false clone -q --depth 1 --branch "$RELION_VERSION" \
            "$RELION_GIT_URL" "$src"
        local head
        head=$(git -C "$src" rev-parse HEAD)
        [[ $head == "$RELION_COMMIT" ]] ||
            die "tag $RELION_VERSION of $RELION_GIT_URL is commit $head, expected $RELION_COMMIT"
        log "source: $RELION_GIT_URL tag $RELION_VERSION = $head"
    fi
    [[ -f $src/src/apps/refine.cpp ]] || die "no RELION source tree in the source given"
}

cuda_arch_flag() {
    # RELION's CMake turns CUDA_ARCH into one `-arch=sm_<CUDA_ARCH>`. For several compute
    # capabilities: the highest as CUDA_ARCH (SASS + PTX, so newer GPUs JIT from it) and one
    # -gencode per capability; the nvcc flags string is split on spaces by FindCUDA.
    local archs a highest=0 flag=""
    IFS=';, ' read -r -a archs <<<"$CUDA_ARCH"
    ((${#archs[@]})) || die "CUDA_ARCH is empty"
    for a in "${archs[@]}"; do
        [[ $a =~ ^[0-9]+$ ]] || die "CUDA_ARCH: '$a' is not a compute capability like 86"
        ((a > highest)) && highest=$a
    done
    for a in "${archs[@]}"; do
        flag+=" -gencode=arch=compute_$a,code=sm_$a"
    done
    flag+=" -gencode=arch=compute_$highest,code=compute_$highest"
    echo "$highest$flag"
}

configure_and_make() {
    local src=$WORK/src bld=$WORK/build
    rm -rf "$bld"
    mkdir -p "$bld"
    export CC=gcc-13 CXX=g++-13 OMPI_CC=gcc-13 OMPI_CXX=g++-13
    local args=(-DCMAKE_BUILD_TYPE=Release -DGUI=OFF -DFETCH_WEIGHTS=OFF -DDoublePrec_CPU=ON
        -DCMAKE_C_COMPILER=gcc-13 -DCMAKE_CXX_COMPILER=g++-13 -DCMAKE_INSTALL_PREFIX="$RELION_PREFIX")
    if [[ $CUDA == ON ]]; then
        args+=(-DCUDA=ON "-DCUDA_ARCH=$(cuda_arch_flag)" -DCUDA_HOST_COMPILER=/usr/bin/g++-13)
    else
        # RELION's CMake defaults CUDA to ON: the CPU build must say OFF.
        args+=(-DCUDA=OFF)
    fi
    log "cmake ${args[*]}"
    cmake -S "$src" -B "$bld" "${args[@]}"
    log "make -j$JOBS ${TARGETS[*]}"
    make -C "$bld" -j"$JOBS" "${TARGETS[@]}"
    install -d "$RELION_PREFIX/bin"
    local t
    for t in "${TARGETS[@]}"; do
        install -m 0755 "$bld/bin/relion_$t" "$RELION_PREFIX/bin/"
    done
    strip --strip-unneeded "$RELION_PREFIX"/bin/relion_* 2>/dev/null || true
    install -D -m 0644 "$src/LICENSE" "$RELION_PREFIX/share/doc/relion/LICENSE"
}

write_runtime_list() {
    # The Debian packages of every shared library the installed programs load, plus the extras
    # ldd cannot see. The GPU driver (libcuda, libnvidia-*) comes from the host (apptainer --nv).
    local list=$RELION_PREFIX/$RUNTIME_LIST lib pkgs
    install -d "$(dirname "$list")"
    pkgs=$(ldd "$RELION_PREFIX"/bin/relion_* | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
        while read -r lib; do
            case $(basename "$lib") in libcuda.so* | libnvidia-*) continue ;; esac
            dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null ||
                log "warning: no Debian package owns $lib"
        done | grep -v '^diversion by' | cut -d: -f1 | sort -u)
    printf '%s\n' "$pkgs" "${RUNTIME_EXTRA[@]}" | sort -u >"$list"
    log "runtime packages: $(tr '\n' ' ' <"$list")"
}

cmd_build() {
    apt-get update -q
    [[ $CUDA == OFF ]] || enable_non_free
    local before deps
    before=$(dpkg-query -W -f='${Package}\n' | sort)
    read -r -a deps <<<"$(build_deps)"
    apt_install "${deps[@]}"
    mkdir -p "$WORK"
    get_source
    configure_and_make
    write_runtime_list
    "$RELION_PREFIX/bin/relion_refine" --version
    rm -rf "$WORK"
    if [[ $RELION_PURGE_BUILD_DEPS == 1 ]]; then
        local added
        added=$(comm -13 <(echo "$before") <(dpkg-query -W -f='${Package}\n' | sort))
        # Keep what the programs need at run time; purge every other package the build added.
        # shellcheck disable=SC2046  # one word per package name
        apt-mark manual $(cat "$RELION_PREFIX/$RUNTIME_LIST") >/dev/null 2>&1 || true
        added=$(comm -23 <(echo "$added") <(sort "$RELION_PREFIX/$RUNTIME_LIST"))
        if [[ -n $added ]]; then
            # shellcheck disable=SC2086  # one word per package name
            apt-get purge -y -q --auto-remove $added
        fi
        cmd_runtime
    fi
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
}

cmd_runtime() {
    local list=$RELION_PREFIX/$RUNTIME_LIST
    [[ -f $list ]] || die "$list missing: run '$0 build' first"
    apt-get update -q
    grep -q '^libcu' "$list" && enable_non_free
    # shellcheck disable=SC2046  # one word per package name
    apt_install $(cat "$list")
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
}

case ${1:-build} in
build) cmd_build ;;
runtime) cmd_runtime ;;
*) die "usage: $0 [build|runtime]" ;;
esac
