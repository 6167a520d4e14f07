#!/usr/bin/env bash
# Installs the Python package from this checkout into a virtual environment for the tests:
# build/venv, made from Debian's /usr/bin/python3 with its site packages (numpy, torch), plus
# the build and test requirements from PyPI, then `pip install .` with a kept build folder
# (build/python) so a second run rebuilds only what changed. Prints the venv's python.
# Env: FACENET_PY_VENV (venv path), FACENET_PY_BUILD (build folder), FACENET_PY_CUDA=OFF
# (skip the CUDA build: faster), FACENET_PY_RAY=0 (no Ray).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FACENET_PY_VENV:-build/venv}
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/python" -m pip install -q -U pip >&2
fi
"$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" "nanobind>=2.4" "pytest>=7" tqdm \
  "Pillow>=8" "click>=6" >&2
# Ray for facenet_engine.distributed and its tests (FACENET_PY_RAY=0 skips it: those tests
# then skip). numpy stays Debian's (torch and faiss are built against it); pyarrow 20 and
# later need numpy 2.
if [ "${FACENET_PY_RAY:-1}" != 0 ] && ! "$venv/bin/python" -c "import ray.data" 2>/dev/null; then
  np=$(/usr/bin/python3 -c "import numpy; print(numpy.__version__)")
  "$venv/bin/python" -m pip install -q "ray[data]>=2.40" "numpy==$np" "pyarrow<20" >&2
fi
# CUDA on or off explicitly every time: the kept build folder would otherwise remember the
# last choice.
cuda=${FACENET_PY_CUDA:-}
if [ -z "$cuda" ]; then
  if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then cuda=ON; else cuda=OFF; fi
fi
args=(--no-build-isolation "-Cbuild-dir=${FACENET_PY_BUILD:-build/python}" "-Ccmake.define.FACENET_CUDA=$cuda")
"$venv/bin/python" -m pip install -q "${args[@]}" . >&2
echo "$venv/bin/python"
