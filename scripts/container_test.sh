#!/usr/bin/env bash
# Builds the gateway's image from the Containerfile and runs it for real (tests/test_container.py): non-root, with a
# read-only root filesystem, the default command and the helm chart's StatefulSet (its args, user, mounts, init
# container and drain script), an openai SDK request intercepted and audited, other TLS tunnelled.
#
# Usage: scripts/container_test.sh [--build-only] [--remove-images]
#   --build-only      build the base (if missing) and the image, print the settings the test reads, run nothing
#   --remove-images   remove the gateway image (and the base) at the end; kept by default, as the build cache
# Environment:
#   ENGINE        podman (default when installed) or docker
#   PYTHON_IMAGE  the base to build on, e.g. docker.io/library/python:3.13-slim-bookworm where that registry is
#                 reachable; unset: a minimal Debian trixie made here with debootstrap (python3.13 from Debian,
#                 no registry needed), built once and kept as BASE_IMAGE
#   BASE_IMAGE    name of that debootstrap base (default localhost/ai-egress-gateway-base:trixie)
#   IMAGE         the image built and tested (default localhost/ai-egress-gateway:container-test)
#   DEBIAN_MIRROR debootstrap's mirror (default http://deb.debian.org/debian)
#   BUILD_CA_BUNDLE  a CA bundle mounted over the base's during the build only (pip behind an intercepting
#                 proxy); default the host's /etc/ssl/certs/ca-certificates.crt with podman; empty: none
# Needs root (debootstrap, rootful podman). Exits non-zero when a step or a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=0 remove_images=0
for arg in "$@"; do
    case "$arg" in
        --build-only) build_only=1 ;;
        --remove-images) remove_images=1 ;;
        *) echo "usage: $0 [--build-only] [--remove-images]" >&2; exit 2 ;;
    esac
done

log() { echo "container_test: $*" >&2; }
ENGINE="${ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}"
BASE_IMAGE="${BASE_IMAGE:-localhost/ai-egress-gateway-base:trixie}"
IMAGE="${IMAGE:-localhost/ai-egress-gateway:container-test}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
command -v "$ENGINE" >/dev/null 2>&1 || { log "no $ENGINE (apt-get install podman)"; exit 1; }

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# --- the base: a minimal Debian trixie (python3.13) made with debootstrap, imported as an image ---------------------
if [ -z "${PYTHON_IMAGE:-}" ]; then
    PYTHON_IMAGE="$BASE_IMAGE"
    if image_exists "$BASE_IMAGE"; then
        log "base $BASE_IMAGE exists"
    else
        command -v debootstrap >/dev/null 2>&1 || { log "no debootstrap (apt-get install debootstrap)"; exit 1; }
        rootfs="$(mktemp -d /tmp/gateway-base.XXXXXX)"
        trap 'rm -rf "$rootfs"' EXIT
        log "debootstrap trixie into $rootfs"
        start=$SECONDS
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            trixie "$rootfs/root" "$DEBIAN_MIRROR" >"$rootfs/debootstrap.log" 2>&1 \
            || { tail -20 "$rootfs/debootstrap.log" >&2; exit 1; }
        rm -rf "$rootfs"/root/var/cache/apt/archives/*.deb "$rootfs"/root/var/lib/apt/lists/*
        # an imported tarball has no configuration: give it the PATH and locale an official image has
        tar -C "$rootfs/root" --numeric-owner -c . | "$ENGINE" import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
        rm -rf "$rootfs"
        trap - EXIT
        log "base $BASE_IMAGE made in $((SECONDS - start)) s"
    fi
fi

# --- how containers start here ------------------------------------------------------------------------------------
# Probed on the base: some hosts need another OCI runtime (crun refuses a cgroup v1/v2 hybrid: runc does not) or
# lower rlimits than podman's defaults (a root without CAP_SYS_RESOURCE cannot raise them).
probe_image="$PYTHON_IMAGE"
image_exists "$probe_image" || "$ENGINE" pull "$probe_image" >&2
nofile="$(ulimit -Hn)"; [ "$nofile" = unlimited ] && nofile=1048576
ulimits="--ulimit nofile=$nofile:$nofile --ulimit nproc=16384:16384"
engine_cmd="" run_flags=""
candidates=("|" "|$ulimits")
[ "$ENGINE" = podman ] && command -v runc >/dev/null 2>&1 && candidates+=("--runtime runc|$ulimits")
for c in "${candidates[@]}"; do
    # shellcheck disable=SC2086
    if "$ENGINE" ${c%%|*} run --rm ${c#*|} "$probe_image" python3 -c 'import sys; assert sys.version_info >= (3, 12)' \
        >/dev/null 2>"/tmp/container_test_probe.err"; then
        engine_cmd="$ENGINE ${c%%|*}" run_flags="${c#*|}"
        break
    fi
    log "containers do not start with '${c%%|*}' '${c#*|}': $(tail -1 /tmp/container_test_probe.err)"
done
rm -f /tmp/container_test_probe.err
[ -n "$engine_cmd" ] || { log "no way to run a container here"; exit 1; }
engine_cmd="${engine_cmd% }"
log "containers run with: $engine_cmd run $run_flags"

# --- the image ------------------------------------------------------------------------------------------------------
build_flags=()
if [ "$ENGINE" = podman ]; then
    ca_bundle="${BUILD_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
    [ -n "$ca_bundle" ] && [ -f "$ca_bundle" ] && build_flags+=(-v "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")
fi
log "building $IMAGE on $PYTHON_IMAGE"
previous="$($ENGINE image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)"
start=$SECONDS
# shellcheck disable=SC2086
$engine_cmd build $run_flags --network host "${build_flags[@]}" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
    -t "$IMAGE" -f Containerfile . >&2
log "built $IMAGE in $((SECONDS - start)) s ($($ENGINE image inspect "$IMAGE" --format '{{.Size}}') bytes)"
# the image this tag named before, if a rebuild changed it (only that one: other images on the host are not ours)
if [ -n "$previous" ] && [ "$previous" != "$($ENGINE image inspect "$IMAGE" --format '{{.Id}}')" ]; then
    $ENGINE rmi "$previous" >/dev/null 2>&1 || true
fi

settings() {
    echo "GATEWAY_CONTAINER_IMAGE=$IMAGE"
    echo "GATEWAY_CONTAINER_ENGINE=$engine_cmd"
    echo "GATEWAY_CONTAINER_RUN_FLAGS=$run_flags"
}
if [ "$build_only" = 1 ]; then
    settings
    exit 0
fi

# --- the checks -----------------------------------------------------------------------------------------------------
python=.venv/bin/python
[ -x "$python" ] || python=python3
status=0
env GATEWAY_CONTAINER_TEST=1 GATEWAY_CONTAINER_IMAGE="$IMAGE" GATEWAY_CONTAINER_ENGINE="$engine_cmd" \
    GATEWAY_CONTAINER_RUN_FLAGS="$run_flags" \
    "$python" -m pytest -p no:xdist -p no:cacheprovider tests/test_container.py -v || status=$?

# --- clean up: the tests remove their containers and volumes; anything left by a killed run goes here --------------
for c in $($ENGINE ps -a --filter label=ai-egress-gateway.container-test --format '{{.ID}}'); do
    $ENGINE rm -f "$c" >/dev/null || true
done
for v in $($ENGINE volume ls --filter label=ai-egress-gateway.container-test --format '{{.Name}}'); do
    $ENGINE volume rm -f "$v" >/dev/null || true
done
if [ "$remove_images" = 1 ]; then
    $ENGINE rmi -f "$IMAGE" >/dev/null || true
    [ "$PYTHON_IMAGE" = "$BASE_IMAGE" ] && { $ENGINE rmi -f "$BASE_IMAGE" >/dev/null || true; }
fi
[ "$status" = 0 ] && log "all checks passed" || log "checks FAILED (pytest exit $status)"
exit "$status"
