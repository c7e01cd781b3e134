#!/usr/bin/env bash
# Installs everything ds4 needs on a fresh Debian 12 machine. Idempotent: when every package is
# already present it only runs dpkg-query (well under a second) and exits.
set -euo pipefail

PKGS=(
    build-essential cmake ninja-build pkg-config git ca-certificates
    libucx-dev ucx-utils
    libgrpc-dev
    protobuf-c-compiler libprotobuf-c-dev
    libuv1-dev libhttp-parser-dev
    libopenblas-dev
    libpcre2-dev
    libjansson-dev
)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
