#!/usr/bin/env bash
# Builds everything and runs the whole test suite: the C++ tests (GPU tests skip without a
# GPU), then the Python package, installed with `pip install .` into build/venv, under pytest.
# Fetches dlib's pretrained models first (cached) so the dlib tests run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
weights/fetch_dlib_models.sh >/dev/null
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${FACENET_CMAKE_ARGS:-}
cmake --build build
ctest --test-dir build --output-on-failure -j "$(nproc)"
py=$(tools/python_env.sh)
FACENET_CLI=build/apps/facenet "$py" -m pytest tests/python -q -p no:cacheprovider
