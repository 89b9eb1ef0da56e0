#!/usr/bin/env bash
# `make images`: build the triton-cpu and gateway images with buildah (vfs storage, chroot
# isolation) on a Debian base debootstrapped from the mirror, then run both and predict one digit
# through gateway -> triton (docker/smoke_images.py). Needs root, apt-get and a few minutes.
# Sizes, build times and the smoke result go to build/images/report.txt (docs/images.md).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=build/images
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=.venv/bin/python
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
BASE=localhost/triton-mlapi/debian:$SUITE
# Arguments: only these images are rebuilt (the smoke run always uses both).
if [ $# -gt 0 ]; then IMAGES=("$@"); else IMAGES=(triton-cpu gateway); fi
# vfs storage and chroot isolation: what works here without a container runtime (the default
# isolation fails). buildah 1.28 reads BUILDAH_ISOLATION but not a storage-driver variable.
export BUILDAH_ISOLATION=chroot
buildah() { command buildah --storage-driver vfs "$@"; }

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
report() { printf '%s\n' "$*" | tee -a "$OUT/report.txt"; }

if [ "$(id -u)" != 0 ]; then
    echo "make images needs root (buildah with vfs storage, debootstrap)" >&2
    exit 1
fi
missing=""
for tool in buildah debootstrap; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
    step "installing$missing (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
mkdir -p "$OUT"
: >"$OUT/report.txt"
report "triton-mlapi images $VERSION ($REVISION), buildah $(buildah --version | awk '{print $3}'), $(date -u +%FT%TZ)"

# --- base: Debian minbase from the mirror, as an image FROM scratch ---------------------------
if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    step "base $BASE exists (buildah rmi it to rebuild)"
else
    step "debootstrap $SUITE (minbase) from $MIRROR"
    start=$SECONDS
    rm -rf "$OUT/rootfs"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$OUT/rootfs" "$MIRROR" \
        | grep --line-buffered -E '^I: (Retrieving|Validating|Installing|Configuring|Base)' \
        | awk '{ n++; if ($2 != last || n % 25 == 0) { print; fflush(); last = $2 } } END { print "   " n " steps" }'
    cat >"$OUT/rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
    # Like Debian's slim images: no manuals, translations or docs (copyright files stay), now
    # and for every package installed later.
    cat >"$OUT/rootfs/etc/dpkg/dpkg.cfg.d/triton-mlapi-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
SLIM
    find "$OUT/rootfs/usr/share/doc" -type f ! -name copyright -delete
    find "$OUT/rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "$OUT/rootfs/usr/share/man/"* "$OUT/rootfs/usr/share/info/"*
    rm -rf "$OUT/rootfs/var/cache/apt/archives/"*.deb "$OUT/rootfs/var/cache/apt/"*.bin \
        "$OUT/rootfs/var/lib/apt/lists/"* \
        "$OUT/rootfs/var/log/"*.log "$OUT/rootfs/var/cache/debconf/"*-old
    tar -C "$OUT/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$OUT/rootfs.tar" .
    step "base image $BASE"
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$OUT/rootfs.tar" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash \
        --label org.opencontainers.image.title="Debian $SUITE minbase (debootstrap)" \
        --label org.opencontainers.image.created="$(date -u +%FT%TZ)" "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
    rm -rf "$OUT/rootfs" "$OUT/rootfs.tar"
    report "base   built in $((SECONDS - start)) s"
fi

# --- wheels: downloaded here, where the package index and its TLS settings are configured ------
step "wheels (pinned; their dependencies pinned to the test environment)"
"$PY" -m pip freeze --exclude-editable | grep -v ' @ ' >"$OUT/constraints.txt"
download() {
    local dest=$1
    shift
    mkdir -p "$dest"
    # The host's pip configuration may name extra local indexes; their "ignored" notes are noise.
    "$PY" -m pip download --quiet --only-binary=:all: --progress-bar off --dest "$dest" "$@" \
        2> >(grep -v "^WARNING: Location '" >&2)
    echo "   $dest: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1)"
}
download "$OUT/wheels/triton-cpu" -c "$OUT/constraints.txt" -r docker/triton-cpu/requirements.txt
download "$OUT/wheels/triton-cpu" --no-deps -r docker/triton-cpu/pytriton.txt
download "$OUT/wheels/gateway" -c "$OUT/constraints.txt" -r docker/gateway/requirements.txt

# The NGC-based triton image is not built here (its base cannot be pulled); what can be checked
# of its pip step is that its pins resolve to wheels for that container's Python (3.10).
step "triton (NGC 24.10): its pins resolve to binary wheels for Python 3.10"
rm -rf "$OUT/wheels/triton-ngc-check"
download "$OUT/wheels/triton-ngc-check" --python-version 3.10 -r docker/triton/requirements.txt
report "triton (NGC) pins: $(find "$OUT/wheels/triton-ngc-check" -name '*.whl' | wc -l) wheels resolve for cp310"

# --- the images -------------------------------------------------------------------------------
test -n "$(find model_repository -name '*.onnx')" || { echo "run make models first" >&2; exit 1; }
for image in "${IMAGES[@]}"; do
    tag=localhost/triton-mlapi/$image:$VERSION
    step "build $tag (buildah prints each STEP)"
    start=$SECONDS
    # Docker format: the OCI image format has no HEALTHCHECK (buildah would drop it).
    # Progress: each Dockerfile STEP, package installs and wheels as they happen (full log kept).
    if ! buildah build --pull=never --layers=false --format docker \
        --build-arg BASE_IMAGE="$BASE" --build-arg PIP_NO_INDEX=1 \
        --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
        -f "docker/$image/Dockerfile" -t "$tag" . 2>&1 \
        | tee "$OUT/$image.build.log" \
        | grep --line-buffered -E '^(\[[0-9]+/[0-9]+] )?(STEP|COMMIT)|^(Setting up python3|Processing /tmp/wheels|Successfully)' \
        | while IFS= read -r line; do printf '   %s %s\n' "$(date +%H:%M:%S)" "${line:0:110}"; done; then
        tail -n 30 "$OUT/$image.build.log" >&2
        echo "building $image failed (log: $OUT/$image.build.log)" >&2
        exit 1
    fi
    report "$image build $((SECONDS - start)) s"
done
buildah images --filter reference='localhost/triton-mlapi/*' \
    --format '{{.Name}}:{{.Tag}} {{.Size}}' | tee -a "$OUT/report.txt"

# --- run both and predict one digit through them ----------------------------------------------
step "smoke: run triton-cpu and gateway (buildah run, free ports) and predict one digit"
"$PY" docker/smoke_images.py --version "$VERSION" | tee -a "$OUT/report.txt"
step "done: $OUT/report.txt"
