#!/usr/bin/env bash
# Builds kube-apiserver once from Debian's kubernetes source package and caches the binary outside the
# repository (never commit it). Also installs etcd, and Debian's kubectl where the machine has none.
# Idempotent: a second run only checks the cache.
set -euo pipefail

VERSION=1.20.2
CACHE=${KHAN_CACHE:-$HOME/.cache/khan}
BINARY=$CACHE/kube-apiserver-$VERSION

packages=()
command -v etcd >/dev/null 2>&1 || packages+=(etcd-server)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
if [ -x "$BINARY" ] && [ ${#packages[@]} -eq 0 ]; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ ! -x "$BINARY" ]; then
  packages+=(golang-go golang-github-modern-go-reflect2-dev rsync jq dpkg-dev)
  # The orig tarball vendors every Go dependency, so one deb-src entry is all the build needs.
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    cat > /etc/apt/sources.list.d/khan-deb-src.sources <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  fi
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}"
[ -x "$BINARY" ] && exit 0

echo "building kube-apiserver $VERSION from Debian's source package (about 7 minutes, once)"
work=$(mktemp -d "$CACHE/build.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE"; mktemp -d "$CACHE/build.XXXXXX"; })
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only kubernetes >/dev/null
tar xf kubernetes_*.orig.tar.*
src=$(find . -maxdepth 1 -mindepth 1 -type d | head -n1)
src=$(cd "$src" && pwd)

# The vendored reflect2 1.0.1 segfaults at run time under Go 1.19; Debian's 1.0.2 does not.
rm -rf "$src/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod"

# GOPATH mode, as Debian builds it.
mkdir -p "$work/.go/src/k8s.io"
ln -s "$src" "$work/.go/src/k8s.io/kubernetes"
cd "$work/.go/src/k8s.io/kubernetes"
GOPATH=$work/.go GO111MODULE=off CGO_ENABLED=0 GOFLAGS= make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log"; exit 1; }
install -m 0755 _output/bin/kube-apiserver "$BINARY.tmp"
mv "$BINARY.tmp" "$BINARY"
echo "cached $BINARY"
