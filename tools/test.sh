#!/usr/bin/env bash
# Builds everything and runs the whole test suite (GPU tests skip without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${FACENET_CMAKE_ARGS:-}
cmake --build build
ctest --test-dir build --output-on-failure -j "$(nproc)"
