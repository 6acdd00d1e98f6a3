#!/usr/bin/env bash
# Build the mkt worker image from the Dockerfile on a machine that reaches no container
# registry.
#
# Usage: docker/build-image.sh [--variant cpu|gpu] [--if-changed] [--prepare-only]
#
#   1. Builds the base image (BASE_IMAGE, default mkt-base:bookworm) when it is missing:
#      debootstrap a minimal Debian bookworm with python3, then `docker import` it.
#      This step needs root and Debian's debootstrap.
#   2. Fills build/wheelhouse on this host with wheels of mkt's dependencies (with a CPU
#      build of torch) and of mkt itself, for the base image's Python version.
#   3. Runs `docker build` and tags the image mkt-worker:<variant>.
#
# Options:
#   --variant cpu|gpu  image variant (default cpu); see the Dockerfile for what differs
#   --if-changed       exit early when the image exists and carries the hash of the
#                      current Dockerfile, pyproject.toml and mkt sources
#   --prepare-only     run steps 1 and 2 only and print the source hash on stdout
#                      (prefect.yaml's build step passes it to build_docker_image)
#
# Environment:
#   BASE_IMAGE         base image name (default mkt-base:bookworm)
#   IMAGE              image to build (default mkt-worker:<variant>)
#   DEBIAN_MIRROR      mirror for debootstrap (default http://deb.debian.org/debian)
#   PYTHON             interpreter that fills the wheelhouse; its version must match the
#                      base image's (default .venv/bin/python, else python3)
#   TORCH_REQUIREMENT  torch wheel file or requirement (default the CPU wheel of torch
#                      2.13.0 in /opt/wheels)
#
# Messages go to stderr, so stdout carries only what --prepare-only prints.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "build-image: $*" >&2; }
fail() {
    echo "build-image: error: $*" >&2
    exit 1
}

VARIANT=cpu
IS_IF_CHANGED=0
IS_PREPARE_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
    --variant)
        VARIANT="${2:-}"
        shift 2 || fail "--variant needs a value: cpu or gpu"
        ;;
    --if-changed) IS_IF_CHANGED=1 && shift ;;
    --prepare-only) IS_PREPARE_ONLY=1 && shift ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) fail "unknown argument '$1'. See: docker/build-image.sh --help" ;;
    esac
done
case "$VARIANT" in
cpu | gpu) ;;
*) fail "unknown variant '$VARIANT'. Use --variant cpu or --variant gpu" ;;
esac

BASE_IMAGE="${BASE_IMAGE:-mkt-base:bookworm}"
IMAGE="${IMAGE:-mkt-worker:$VARIANT}"
STAGE_IMAGE="mkt-worker-stage"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WHEELHOUSE=build/wheelhouse
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# The hash of every input that changes the image; the image carries it as a label.
source_hash() {
    {
        sha256sum Dockerfile .dockerignore pyproject.toml docker/build-image.sh
        find mkt -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
        echo "torch: $(basename "${TORCH_REQUIREMENT:-default}")"
    } | sha256sum | cut -c1-16
}

image_label() {
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

require_docker() {
    docker info >/dev/null 2>&1 || fail "no Docker engine reachable ('docker info' failed). \
Start one, e.g.: dockerd --storage-driver=vfs --iptables=false --ip6tables=false \
--bridge=none --data-root /var/lib/mkt-docker &"
}

build_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return
    fi
    command -v debootstrap >/dev/null ||
        fail "base image '$BASE_IMAGE' is missing and debootstrap is not installed. \
Install it (apt-get install -y debootstrap) or load a base image with python3 as '$BASE_IMAGE'"
    [ "$(id -u)" = 0 ] ||
        fail "base image '$BASE_IMAGE' is missing and debootstrap needs root. Run this \
script as root once, or load a base image with python3 as '$BASE_IMAGE'"

    log "Building base image $BASE_IMAGE with debootstrap from $DEBIAN_MIRROR"
    BASE_ROOTFS="$(mktemp -d /var/tmp/mkt-base.XXXXXX)"
    trap 'rm -rf "$BASE_ROOTFS"' EXIT
    local rootfs="$BASE_ROOTFS"
    # mktemp creates the folder with mode 0700, and the folder becomes the image's `/`,
    # so a non-root user could open no file at all.
    chmod 0755 "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >&2

    # Package caches, package lists, manual pages and translations are not needed at run
    # time; `apt-get update` restores the lists. The copyright files stay.
    rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . |
        docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
            - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "Base image $BASE_IMAGE built"
}

# Check that the wheelhouse is filled for the Python version of the base image.
check_python_version() {
    local image_version host_version
    image_version="$(docker run --rm --network none "$BASE_IMAGE" \
        python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    host_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
        fail "PYTHON='$PYTHON' does not run. Set PYTHON to a python$image_version interpreter"
    [ "$image_version" = "$host_version" ] ||
        fail "base image '$BASE_IMAGE' has Python $image_version but PYTHON='$PYTHON' is \
Python $host_version, so its wheels would not install. Set PYTHON to a python$image_version"
    PYTHON_VERSION="$image_version"
}

find_torch_wheel() {
    if [ -n "${TORCH_REQUIREMENT:-}" ]; then
        return
    fi
    local wheel
    for wheel in /opt/wheels/torch-2.13.0+cpu-cp${PYTHON_VERSION/./}-*.whl; do
        [ -f "$wheel" ] && TORCH_REQUIREMENT="$wheel"
    done
    [ -n "${TORCH_REQUIREMENT:-}" ] ||
        fail "no CPU wheel of torch 2.13.0 in /opt/wheels. Set TORCH_REQUIREMENT to a CPU \
torch wheel file; plain 'torch' from PyPI is a CUDA build with gigabytes of nvidia wheels"
}

# The requirements the image installs: torch (the wheelhouse holds only the chosen build)
# and mkt's dependencies from pyproject.toml.
write_requirements() {
    echo torch
    "$PYTHON" -c 'import tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    print(requirement)'
}

# Add the wheels that only the image's Python needs. Host pip evaluates environment
# markers for the host's Python, so a dependency such as
# `async-timeout; python_full_version < "3.11.3"` is skipped on a 3.11.7 host but
# required by bookworm's 3.11.2. The image's own pip resolves against the wheelhouse
# offline; each requirement it cannot find is fetched here, until none is missing.
add_wheels_for_image() {
    local deps_dir="$1" attempt output missing
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if output="$(docker run --rm --network none --volume "$PWD/$deps_dir:/wheels:ro" \
            "$BASE_IMAGE" sh -c 'python3 -m venv /tmp/venv && /tmp/venv/bin/pip install \
                --dry-run --no-index --disable-pip-version-check --find-links /wheels \
                --requirement /wheels/requirements.txt' 2>&1)"; then
            return 0
        fi
        missing="$(echo "$output" |
            sed -n 's/^ERROR: No matching distribution found for \([^;]*\).*/\1/p' | head -1)"
        [ -n "$missing" ] || fail "pip in '$BASE_IMAGE' cannot install the wheelhouse:
$(echo "$output" | tail -20)"
        log "Adding '$missing', which the image's Python needs (pass $attempt)"
        "$PYTHON" -m pip wheel --progress-bar off --wheel-dir "$deps_dir" "$missing" >&2
    done
    fail "the wheelhouse still misses packages for '$BASE_IMAGE' after 10 passes; last: $missing"
}

fill_wheelhouse() {
    local deps_dir="$WHEELHOUSE/deps" mkt_dir="$WHEELHOUSE/mkt" deps_key
    # The key file sits beside deps/, because a file inside would change the layer that
    # copies deps/ and force a reinstall of every dependency.
    local key_file="$WHEELHOUSE/deps.key"
    deps_key="$(cat pyproject.toml docker/build-image.sh | sha256sum | cut -c1-16)"
    deps_key="$deps_key $(basename "$TORCH_REQUIREMENT")"
    if [ "$(cat "$key_file" 2>/dev/null)" = "$deps_key" ]; then
        log "Dependency wheels in $deps_dir are up to date"
    else
        log "Filling $deps_dir with the wheels of mkt's dependencies"
        rm -rf "$deps_dir"
        mkdir -p "$deps_dir"
        write_requirements >"$deps_dir/requirements.txt"
        "$PYTHON" -m pip wheel --progress-bar off --wheel-dir "$deps_dir" \
            "$TORCH_REQUIREMENT" --requirement "$deps_dir/requirements.txt" >&2
        add_wheels_for_image "$deps_dir"
        local cuda_wheels
        cuda_wheels="$(cd "$deps_dir" && ls | grep -E '^(nvidia_|triton-)' | tr '\n' ' ' || true)"
        [ -z "$cuda_wheels" ] ||
            fail "the wheelhouse got CUDA wheels (${cuda_wheels:0:200}). \
Set TORCH_REQUIREMENT to a CPU build of torch"
        echo "$deps_key" >"$key_file"
    fi

    # mkt's wheel is built from a clean copy of the sources, so stale files in a local
    # build/ folder cannot slip in. A fixed SOURCE_DATE_EPOCH makes equal sources give
    # an equal wheel, which keeps Docker's layer cache valid.
    log "Building the mkt wheel into $mkt_dir"
    local sources
    sources="$(mktemp -d)"
    tar -c --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md LICENSE mkt |
        tar -x -C "$sources"
    rm -rf "$mkt_dir"
    mkdir -p "$mkt_dir"
    SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel --progress-bar off --no-deps \
        --wheel-dir "$mkt_dir" "$sources" >&2
    rm -rf "$sources"
}

# Build (or rebuild) an image and delete the image the tag pointed at before, so that
# rebuilds do not pile up untagged images (each a full copy with the vfs storage driver).
build_and_replace() {
    local tag="$1" previous_id started_s=$SECONDS
    shift
    previous_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
    DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build --tag "$tag" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "WHEELHOUSE=$WHEELHOUSE" "$@" . >&2
    log "Built $tag in $((SECONDS - started_s)) s"
    if [ -n "$previous_id" ] &&
        [ "$previous_id" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
        docker rmi "$previous_id" >/dev/null 2>&1 ||
            log "Kept the previous $tag image $previous_id, which is still in use"
    fi
}

# Two runs at once (two test sessions, say) would fill the same wheelhouse.
mkdir -p build
exec 9>build/build-image.lock
if ! flock --nonblock 9; then
    log "Waiting for another build-image.sh run to finish"
    flock 9
fi

require_docker
hash="$(source_hash)"
if [ "$IS_IF_CHANGED" = 1 ] && [ "$IS_PREPARE_ONLY" = 0 ] &&
    [ "$(image_label "$IMAGE" org.mkt.source-hash)" = "$hash" ]; then
    log "Image $IMAGE is up to date (source hash $hash)"
    exit 0
fi

started_s=$SECONDS
build_base_image
check_python_version
find_torch_wheel
fill_wheelhouse
if [ "$IS_PREPARE_ONLY" = 1 ]; then
    echo "$hash"
    exit 0
fi

# NOTE: both variants install the CPU wheelhouse. The gpu variant differs only in its
# label until a CUDA wheelhouse is built on a machine that has GPUs.
log "Building $IMAGE (variant $VARIANT) on $BASE_IMAGE"
# The stages get tags too, so their layers stay cached and the ones they replace go.
build_and_replace "$STAGE_IMAGE:deps" --target deps
build_and_replace "$STAGE_IMAGE:mkt" --target mkt
build_and_replace "$IMAGE" --build-arg "VARIANT=$VARIANT" --build-arg "SOURCE_HASH=$hash"
size="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
log "Built $IMAGE ($((size / 1000000)) MB, source hash $hash) in $((SECONDS - started_s)) s"
