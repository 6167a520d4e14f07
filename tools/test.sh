#!/usr/bin/env bash
# Builds everything and runs the whole test suite (GPU tests skip without a GPU). Fetches
# dlib's pretrained models first (cached) so the dlib ResNet tests run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
weights/fetch_dlib_models.sh >/dev/null
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${FACENET_CMAKE_ARGS:-}
cmake --build build
ctest --test-dir build --output-on-failure -j "$(nproc)"
