#!/usr/bin/env bash
# The agent image, built here without pulling a base image: mmdebstrap makes a minimal Debian bookworm root
# filesystem with python3, a venv /opt/khan inside it receives khan and its dependencies from wheels built outside,
# and `podman build` of deploy/image/Containerfile (FROM scratch, ADD rootfs.tar) plus deploy/Dockerfile's
# final-stage metadata lines makes the image. Run as root from anywhere; see deploy/image/README.md.
#
#   deploy/image/build.sh                        build (or reuse) the image; prints its reference on stdout
#   deploy/image/build.sh --print-containerfile  print the Containerfile it would build with, and stop
#   deploy/image/build.sh --dockerfile           build deploy/Dockerfile itself, as users do, against a stand-in
#                                                for debian:bookworm-slim made by mmdebstrap (needs the network)
#
# Podman uses a private store (CONTAINERS_STORAGE_CONF=$KHAN_IMAGE_CACHE/storage.conf), never the machine's own.
# The image is tagged localhost/khan:<version> and localhost/khan:inputs-<hash of its inputs>; when an image with
# that hash exists, nothing is rebuilt.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DOCKERFILE=$REPO/deploy/Dockerfile
CONTAINERFILE=$REPO/deploy/image/Containerfile
CACHE=${KHAN_IMAGE_CACHE:-$HOME/.cache/khan/image}
PYTHON=${PYTHON:-/usr/bin/python3}  # Debian's: the same Python minor version as the image's, for its wheels
SUITE=bookworm
# The instructions of the Dockerfile's final stage that make up the image's configuration (not its files).
METADATA_INSTRUCTIONS='USER|WORKDIR|ENV|EXPOSE|ENTRYPOINT|CMD|LABEL|STOPSIGNAL|VOLUME|HEALTHCHECK|SHELL'

log() { echo "build.sh: $*" >&2; }

# The final stage's metadata instructions, continuation lines joined, comments and file instructions left out.
final_stage_metadata() {
    awk -v keep="^(${METADATA_INSTRUCTIONS})[[:space:]]" '
        /^[[:space:]]*#/ { next }
        { text = $0; sub(/^[[:space:]]+/, "", text); line = (pending == "" ? text : pending " " text) }
        /\\[[:space:]]*$/ { sub(/[[:space:]]*\\[[:space:]]*$/, "", line); pending = line; next }
        { pending = "" }
        toupper(line) ~ /^FROM[[:space:]]/ { n = 0; next }
        toupper(line) ~ keep { stage[++n] = line }
        END { for (i = 1; i <= n; i++) print stage[i] }
    ' "$DOCKERFILE"
}

containerfile() {
    cat "$CONTAINERFILE"
    echo "# From deploy/Dockerfile's final stage:"
    final_stage_metadata
}

case "${1:-}" in
    --print-containerfile) containerfile; exit 0 ;;
    --dockerfile | "") mode=${1:---offline} ;;
    *) echo "usage: $0 [--print-containerfile | --dockerfile]" >&2; exit 2 ;;
esac

for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { log "$tool is missing: apt-get install mmdebstrap podman runc"; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { log "needs root (mmdebstrap's root mode, chroot)"; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9  # one build at a time per store

cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "$CACHE/run"
EOF
export CONTAINERS_STORAGE_CONF=$CACHE/storage.conf

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
# Everything that decides the image: khan's sources, its metadata, both build descriptions and this script.
inputs=$(
    cd "$REPO"
    {
        find khan -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        sha256sum pyproject.toml README.md deploy/Dockerfile deploy/image/Containerfile deploy/image/build.sh
    } | sha256sum | cut -c1-16
)
image=localhost/khan:inputs-$inputs
[[ $mode == --dockerfile ]] && image=localhost/khan-dockerfile:inputs-$inputs
if podman image exists "$image"; then
    log "cached: $image"
    echo "$image"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/khan-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS
# Doc, man pages, translations and info left out, as Debian's slim images do.
EXCLUDES=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')

# Only the newest build of each kind is kept: the store does not grow with every change of the sources.
keep_only() {
    podman images --format '{{.Repository}}:{{.Tag}}' | awk -v keep="$1" -v kind="${1%%:*}:inputs-" \
        'index($0, kind) == 1 && $0 != keep' | xargs -r podman rmi --force >/dev/null
    podman image prune --force >/dev/null
}

if [[ $mode == --dockerfile ]]; then
    # debian:bookworm-slim cannot be pulled here: a stand-in with its configuration (PATH, CMD bash) from
    # mmdebstrap's minbase variant, apt's downloaded packages cleaned as in the real one. Kept in the store.
    base=docker.io/library/debian:$SUITE-slim
    if ! podman image exists "$base"; then
        log "stand-in for $base: mmdebstrap --variant=minbase"
        cat >"$work/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
        mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr "${EXCLUDES[@]}" \
            --customize-hook="cp '$work/docker-clean' \"\$1/etc/apt/apt.conf.d/docker-clean\"" \
            "$SUITE" "$work/base.tar" >&2
        printf '%s\n' 'FROM scratch' 'ADD base.tar /' 'CMD ["bash"]' \
            'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' >"$work/Containerfile"
        podman build --quiet --pull=never --tag "$base" --file "$work/Containerfile" "$work" >/dev/null
    fi
    log "deploy/Dockerfile: podman build"
    # The RUN steps fetch from Debian and PyPI over the host's network; pip trusts what the host trusts (a proxy
    # the host trusts, too) through a pip.conf mounted for the build only (podman leaves the two mount points
    # behind, empty: /etc/pip.conf and /tmp/khan-build-ca.crt). Limits this VM allows (its defaults exceed them).
    printf '[global]\ncert = /tmp/khan-build-ca.crt\n' >"$work/pip.conf"
    podman build --pull=never --runtime runc --network host --volume "$work/pip.conf:/etc/pip.conf:ro" \
        --volume /etc/ssl/certs/ca-certificates.crt:/tmp/khan-build-ca.crt:ro \
        --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768 \
        --tag "$image" --file "$DOCKERFILE" "$REPO" >&2
    keep_only "$image"
    log "built $image in $((SECONDS - started)) s"
    echo "$image"
    exit 0
fi

# Wheels of khan and every dependency, made with Debian's own pip wheel (python3-venv brings it); pip goes in as a
# wheel too, to be run from the zip inside the root filesystem and leave nothing behind.
pip_wheel=$(echo /usr/share/python-wheels/pip-*.whl)
[[ -f $pip_wheel ]] || { log "no pip wheel in /usr/share/python-wheels: apt-get install python3-venv"; exit 1; }
log "wheels of khan $version and its dependencies"
"$PYTHON" "$pip_wheel/pip" wheel --quiet --no-cache-dir --wheel-dir "$work/wheels" "$REPO"
cp "$pip_wheel" "$work/wheels/"
minor='import sys; print(sys.version_info[1])'
host_minor=$("$PYTHON" -c "$minor")

# The root filesystem, straight to a tarball. Inside a chroot: the venv without pip, then khan from the wheels
# alone (no index), with a clean environment so the host's pip configuration does not leak in.
log "root filesystem: mmdebstrap $SUITE with python3"
in_chroot='chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
# The wheels' compiled parts are for the build machine's Python: the image's python3 must be the same 3.x.
same_python="image_minor=\$($in_chroot python3 -c '$minor'); [ \"\$image_minor\" = $host_minor ] || {
    echo \"build.sh: the image's python3 is 3.\$image_minor, $PYTHON is 3.$host_minor: set PYTHON\" >&2; exit 1; }"
mmdebstrap --quiet --variant=essential --include=python3 \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    "${EXCLUDES[@]}" --customize-hook="$same_python" \
    --customize-hook="cp -r '$work/wheels' \"\$1/tmp/wheels\"" \
    --customize-hook="$in_chroot python3 -m venv --without-pip /opt/khan" \
    --customize-hook="$in_chroot /opt/khan/bin/python /tmp/wheels/$(basename "$pip_wheel")/pip install --quiet \
        --no-cache-dir --no-index --find-links /tmp/wheels khan==$version" \
    --customize-hook='rm -rf "$1/tmp/wheels"' \
    "$SUITE" "$work/rootfs.tar" >&2  # stdout stays the image reference alone

log "image: podman build"
containerfile >"$work/Containerfile"
podman build --quiet --pull=never --tag "$image" --tag "localhost/khan:$version" \
    --file "$work/Containerfile" "$work" >/dev/null
keep_only "$image"
log "built $image in $((SECONDS - started)) s"
echo "$image"
