#!/usr/bin/env bash
# README command 1: install dependencies, build, and run the main job: write the embedded tiny
# V4 model, start a local cluster (router + prefill + decode on loopback), send one chat request
# with ds4-cli showing the streamed answer (reasoning, then content), stop the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target ds4-mkmodel ds4-cluster ds4-cli ds4-router \
    ds4-prefill ds4-decode
exec ./tools/ds4-cluster/demo.sh build
