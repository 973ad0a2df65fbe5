#!/usr/bin/env bash
# Build the sandbox's base image without any container registry.
#
#   1. debootstrap a minimal Debian rootfs (minbase + python3), cached as a tarball;
#   2. download torch (CPU) + numpy wheels on the host, cached;
#   3. install the wheels into ROOTFS/opt/sandbox/site, precompile them with the rootfs's own
#      python3, strip apt caches and docs, cache the result as a tarball;
#   4. `docker import` that tarball as orchestrator-base:offline (PYTHONPATH=/opt/sandbox/site).
#
# Every step is skipped when its cached output exists, so a rebuild is only step 4.
#
# Usage: sandbox-image/offline-base.sh [CACHE_DIR]
#   CACHE_DIR   default: $ORCHESTRATOR_SANDBOX_CACHE or ~/.cache/orchestrator/sandbox-build
# Environment (all optional):
#   TAG=orchestrator-base:offline  SUITE=bookworm  MIRROR=<from /etc/apt sources>
#   TORCH_SPEC=torch==2.13.0  NUMPY_SPEC='numpy<3'  PYTHON=python3 (host python with pip)
#   FORCE=1 (ignore every cached step)
# Needs root (debootstrap, chroot), debootstrap, a Debian mirror, PyPI (or pip find-links), and a
# running Docker engine.
set -euo pipefail
umask 022

CACHE=${1:-${ORCHESTRATOR_SANDBOX_CACHE:-$HOME/.cache/orchestrator/sandbox-build}}
TAG=${TAG:-orchestrator-base:offline}
SUITE=${SUITE:-bookworm}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
NUMPY_SPEC=${NUMPY_SPEC:-numpy<3}
PYTHON=${PYTHON:-python3}
FORCE=${FORCE:-0}
# What the rootfs needs besides minbase: the interpreter, and the C++ runtime torch links to.
INCLUDE=python3,libstdc++6,libgomp1
# The wheels' target: Debian bookworm's CPython 3.11, glibc 2.36.
PY_VERSION=3.11
PLATFORM=manylinux_2_28_x86_64
WHEEL_TARGET=(--only-binary=:all: --implementation cp --python-version "$PY_VERSION"
              --abi "cp${PY_VERSION/./}" --platform "$PLATFORM")

log() { printf '[offline-base] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
hash8() { sha256sum | cut -c1-12; }

detect_mirror() {
    # The first plain Debian archive URI in the host's apt sources (one-line or deb822 format).
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
    do
        [ -r "$f" ] || continue
        grep -hE '^[[:space:]]*(deb[[:space:]]|URIs:)' "$f" \
            | grep -oE 'https?://[^][:space:]]+' \
            | grep -E '/debian/?$' | head -n1 && return 0
    done
    echo http://deb.debian.org/debian
}

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
command -v docker >/dev/null || die "the docker CLI is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is dockerd running?)"
MIRROR=${MIRROR:-$(detect_mirror)}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
WORK=$(mktemp -d "$CACHE/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
T_ALL=$(now)

# 1. debootstrap rootfs --------------------------------------------------------------------------
ROOTFS_KEY=$(printf '%s %s %s' "$SUITE" "$INCLUDE" "$MIRROR" | hash8)
ROOTFS_TAR="$CACHE/rootfs-$SUITE-minbase-$ROOTFS_KEY.tar"
T=$(now)
if [ "$FORCE" = 1 ] || [ ! -s "$ROOTFS_TAR" ]; then
    log "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR"
    debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$WORK/debootstrap" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    tar --numeric-owner -C "$WORK/debootstrap" -cf "$ROOTFS_TAR.part" .
    mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$WORK/debootstrap"
    log "timing debootstrap: $(elapsed "$T")s"
else
    log "timing debootstrap: cached ($ROOTFS_TAR)"
fi

# 2. wheels ---------------------------------------------------------------------------------------
WHEELS_KEY=$(printf '%s %s %s %s' "$TORCH_SPEC" "$NUMPY_SPEC" "$PY_VERSION" "$PLATFORM" | hash8)
WHEELS="$CACHE/wheels-$WHEELS_KEY"
T=$(now)
if [ "$FORCE" = 1 ] || [ ! -e "$WHEELS/.complete" ]; then
    log "pip download $TORCH_SPEC $NUMPY_SPEC (+ dependencies) for cp${PY_VERSION/./} $PLATFORM"
    rm -rf "$WHEELS"
    "$PYTHON" -m pip download --quiet --dest "$WHEELS" "${WHEEL_TARGET[@]}" \
        "$TORCH_SPEC" "$NUMPY_SPEC"
    touch "$WHEELS/.complete"
    log "timing wheels: $(elapsed "$T")s"
else
    log "timing wheels: cached ($WHEELS)"
fi

# 3. assemble rootfs + site-packages -------------------------------------------------------------
BASE_KEY=$( (echo "$ROOTFS_KEY"; ls "$WHEELS"; sha256sum "$0" | cut -c1-64) | hash8)
BASE_TAR="$CACHE/orchestrator-base-$BASE_KEY.tar"
T=$(now)
if [ "$FORCE" = 1 ] || [ ! -s "$BASE_TAR" ]; then
    R="$WORK/rootfs"
    mkdir -p "$R"
    tar --numeric-owner -C "$R" -xf "$ROOTFS_TAR"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile \
        --no-warn-script-location --root-user-action=ignore \
        --target "$R/opt/sandbox/site" "${WHEEL_TARGET[@]}" "$WHEELS"/*.whl
    rm -rf "$R/opt/sandbox/site/bin"  # console scripts with the host's shebang
    # Precompile with the image's own interpreter: the container's root filesystem is read-only,
    # so without this every `import torch` would recompile thousands of modules in memory.
    # (A few torch test helpers are Python 3.12-only syntax and fail to compile: harmless.)
    chroot "$R" /usr/bin/python3 -m compileall -q -j0 /opt/sandbox/site >/dev/null 2>&1 \
        || log "compileall: some files are not Python $PY_VERSION (torch's py312 test helpers)"
    chroot "$R" /usr/bin/python3 -c "import sys; sys.path.insert(0, '/opt/sandbox/site'); \
import numpy, torch; print('[offline-base] rootfs check: torch', torch.__version__, \
'numpy', numpy.__version__)" >&2
    rm -rf "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* "$R"/var/log/* \
        "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/locale/* \
        "$R"/root/.cache "$R"/tmp/*
    tar --numeric-owner -C "$R" -cf "$BASE_TAR.part" .
    mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$R"
    # Older assembled tarballs are superseded by this one.
    find "$CACHE" -maxdepth 1 -name 'orchestrator-base-*.tar' ! -name "$(basename "$BASE_TAR")" \
        -delete
    log "timing assemble: $(elapsed "$T")s ($(du -h "$BASE_TAR" | cut -f1))"
else
    log "timing assemble: cached ($BASE_TAR)"
fi

# 4. docker import --------------------------------------------------------------------------------
T=$(now)
docker import \
    --change 'ENV PYTHONPATH=/opt/sandbox/site' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL org.orchestrator.offline-base=$BASE_KEY" \
    --change 'CMD ["python3"]' \
    "$BASE_TAR" "$TAG" >/dev/null
log "timing import: $(elapsed "$T")s"
log "built $TAG in $(elapsed "$T_ALL")s"
