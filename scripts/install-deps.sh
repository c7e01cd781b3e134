#!/usr/bin/env bash
# Installs everything ds4 needs on a fresh Debian 12 machine. Idempotent: when every package is
# already present it only runs dpkg-query (well under a second) and exits.
# Checked on a debootstrap'd Debian 12 root by scripts/fresh-machine-check.sh (run it after
# changing this list).
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

# sudo resets the environment, so DEBIAN_FRONTEND goes through env (no debconf prompts).
as_root=(env DEBIAN_FRONTEND=noninteractive)
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install-deps: missing ${missing[*]}; run this script as root (no sudo here)" >&2
        exit 1
    fi
    as_root=(sudo "${as_root[@]}")
fi
echo "install-deps: installing ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
