#!/usr/bin/env bash
# README command 1: install dependencies, build, and run the main job.
# Until the local cluster lands this validates the bundled DeepSeek-V4 configs and prints the
# layer kinds and KV cache sizes ds4 derives from them.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target ds4-config
./build/tools/ds4-config/ds4-config tests/fixtures/configs/v4-pro tests/fixtures/configs/v4-flash
