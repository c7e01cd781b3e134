#!/usr/bin/env bash
# README command 2: install dependencies, build, run the test suite, then rebuild with
# AddressSanitizer + UndefinedBehaviorSanitizer and run the `unit` tests again under them.
# Tests labelled `slow` are left out (run them with: ctest --test-dir build -L slow).
# GPU tests skip (exit 77) where no device is present.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -LE slow -j "$jobs" --timeout 600

cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDS4_SANITIZE=ON -DDS4_CUDA=OFF
cmake --build build-asan -j "$jobs"
ctest --test-dir build-asan --output-on-failure -L unit -LE slow -j "$jobs" --timeout 600
