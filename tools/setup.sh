#!/usr/bin/env bash
# Installs the Debian packages facenet-engine builds and tests with (idempotent; needs root).
# CUDA 13 + cuDNN 9 + cuBLAS are expected in /usr/local/cuda (or nvcc on PATH); without them
# the CPU-only engine is built.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config git
  libopencv-dev libcli11-dev nlohmann-json3-dev libsqlite3-dev
  libopenblas-dev libopenblas0-pthread libgtest-dev libbenchmark-dev
  libfaiss-dev python3-numpy python3-torch python3-faiss python3-opencv
  libdlib-dev libdnnl-dev curl python3-pip python3-dev python3-venv libcpp-httplib-dev
  clang libclang-rt-dev libomp-dev  # tools/fuzz.sh: libFuzzer, clang's sanitizers, its OpenMP
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The system BLAS must be OpenBLAS, not the slow reference BLAS (peer figures assume it).
if command -v update-alternatives >/dev/null; then
  ob=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
  [ -e "$ob" ] && update-alternatives --set libblas.so.3-x86_64-linux-gnu "$ob" >/dev/null 2>&1 || true
fi
# ONNX Runtime and OpenVINO, which Debian does not package, from PyPI into Debian's python3
# next to its numpy/torch: the ONNX export test runs our exported models with them and
# `facenet bench encode` times them as peers. Pinned so every machine runs the same peers;
# their numpy requirement is met by Debian's, which pip must leave in place.
py=/usr/bin/python3
if ! $py -c "import onnxruntime, openvino" 2>/dev/null; then
  echo "setup: installing onnxruntime and openvino for $py (pip)" >&2
  $py -m pip install -q --break-system-packages onnxruntime==1.32.0 openvino==2026.4.1
fi
$py -c "import numpy, sys; sys.exit(not numpy.__file__.startswith('/usr/lib/python3/'))" ||
  { echo "setup: numpy no longer comes from Debian's python3-numpy" >&2; exit 1; }

# ---- faiss-cpu (PyPI) for the search benchmark's peer (tools/peer_search_faiss.py) ----
# Its own venv, so that `import faiss` there is the wheel (with its own OpenBLAS and SIMD
# dispatch) while /usr/bin/python3 keeps importing Debian's python3-faiss. Skipped when present.
faiss_venv=${FACENET_FAISS_CPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/facenet/venv-faiss-cpu}
faiss_cpu_version=1.15.1
if ! "$faiss_venv/bin/python" -c "import faiss; assert faiss.__version__ == '$faiss_cpu_version'" \
    2>/dev/null; then
  dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv; }
  echo "setup: installing faiss-cpu $faiss_cpu_version into $faiss_venv" >&2
  /usr/bin/python3 -m venv "$faiss_venv"
  "$faiss_venv/bin/pip" install -q "faiss-cpu==$faiss_cpu_version"
fi
# ---- end faiss-cpu ----

echo "setup: dependencies present" >&2
