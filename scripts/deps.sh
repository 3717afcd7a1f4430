#!/usr/bin/env bash
# Installs the Debian packages reeld needs to build, run and test, and
# nothing when they are all present. Used by `make run` and `make test`;
# the Dockerfile installs the same lists.
set -euo pipefail
BUILD_PKGS="build-essential pkg-config clang libclang-rt-14-dev libevent-dev libpq-dev
  libcurl4-openssl-dev libjson-c-dev libmbedtls-dev node-llhttp libcmark-gfm-dev
  libcmark-gfm-extensions-dev libpocketsphinx-dev"
RUN_PKGS="postgresql-15 postgresql-client-15 ffmpeg pocketsphinx-en-us"
TEST_PKGS="python3 slowhttptest wrk nginx-light procps psmisc curl openssl jq libopenblas-dev flite"
missing=()
for p in $BUILD_PKGS $RUN_PKGS $TEST_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The end-to-end clients (tus-js-client) run on Node.js; any node/npm on
# PATH will do, else Debian's.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
