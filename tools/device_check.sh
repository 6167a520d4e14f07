#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU (H100/H200): inventory, build for the
# GPU, GPU test suite, compute-sanitizer memcheck, benchmarks (ours + PyTorch peer), results
# as JSON + a markdown table in the output folder (commit it under bench/results/).
#
# Usage:  tools/device_check.sh [OUT_DIR]        (default: $OUT, else ./out/device-check)
# Env:    FACENET_SHARED  shared data (weights CSVs, golden/, data/happy-house); default: the
#                         first of <repo>/shared, <repo>/../shared that exists.
#         FACENET_PYTHON  interpreter with CUDA PyTorch for the peer (default: the first of
#                         python3 / /usr/bin/python3 that imports torch with CUDA).
#         QUICK=1         benchmarks with fewer repeats and no torch.compile peer.
#
# Dependencies — the choice made: the GPU machine has nvcc, CMake, ninja and PyTorch's pip
# cuDNN/cuBLAS, but maybe not the Debian dev packages (OpenCV, CLI11, nlohmann-json,
# OpenBLAS, GTest, SQLite). Step 1 logs what exists. Step 2 builds from source into
# build-gpu/ (CUDA arch = the visible GPU, cuDNN taken from the pip package when the toolkit
# has none). If that configure fails for want of a host package, the script falls back to a
# build carried along from the dev machine: build-carry/ (made there with
#   cmake -S . -B build-carry -G Ninja -DFACENET_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=90
#   -DFACENET_SHARED_DIR=/nonexistent && cmake --build build-carry
# and passed in `carry`), run with the pip cuDNN/cuBLAS on LD_LIBRARY_PATH; `ldd` of every
# binary is logged so a missing shared library is named, not guessed.
#
# Robustness: every step logs to OUT/logs/<step>.log and appends "step rc seconds" to
# OUT/steps.tsv; a failing step never stops later independent steps; each step has a timeout
# and the whole script stays under ~12 minutes on a bare machine.
set -uo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-${OUT:-$repo/out/device-check}}"
mkdir -p "$out/logs"
out="$(cd "$out" && pwd)"
: >"$out/steps.tsv"
quick="${QUICK:-0}"
script_start=$(date +%s)

# run_step NAME TIMEOUT_S COMMAND...: runs with a timeout, logs, records rc; never exits.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local t0=$(date +%s)
  echo "== $name (timeout ${limit}s)" | tee -a "$out/summary.log"
  timeout --kill-after=10 "$limit" bash -c "$*" >"$out/logs/$name.log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >>"$out/steps.tsv"
  echo "   rc=$rc after ${dt}s (log: logs/$name.log)" | tee -a "$out/summary.log"
  tail -n 5 "$out/logs/$name.log" | sed 's/^/   | /' | tee -a "$out/summary.log"
  return $rc
}

# ---- shared data and python ----------------------------------------------------------------
shared="${FACENET_SHARED:-}"
for cand in "$repo/shared" "$repo/../shared"; do
  [ -z "$shared" ] && [ -d "$cand/golden" ] && shared="$(cd "$cand" && pwd)"
done
export FACENET_SHARED="$shared"
if [ -z "${FACENET_PYTHON:-}" ]; then
  for py in python3 /usr/bin/python3; do
    if "$py" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      FACENET_PYTHON="$(command -v "$py")"
      break
    fi
  done
fi
export FACENET_PYTHON="${FACENET_PYTHON:-python3}"

# pip cuDNN / cuBLAS locations (PyTorch's nvidia-* wheels).
pip_nvidia_dir() {
  "$FACENET_PYTHON" -c "import nvidia.$1, os; print(os.path.dirname(nvidia.$1.__file__))" 2>/dev/null ||
    "$FACENET_PYTHON" -c "import nvidia.$1, os; print(list(nvidia.$1.__path__)[0])" 2>/dev/null
}
cudnn_dir="$(pip_nvidia_dir cudnn)"
cublas_dir="$(pip_nvidia_dir cublas)"
for d in "$cudnn_dir/lib" "$cublas_dir/lib"; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done

# ---- 1. inventory ----------------------------------------------------------------------------
run_step 01-inventory 60 "
  echo '## nvidia-smi'; nvidia-smi || true
  echo '## nvcc'; (command -v nvcc && nvcc --version) || (ls /usr/local/cuda*/bin/nvcc 2>/dev/null; echo 'nvcc not on PATH')
  echo '## cmake'; cmake --version || true; ninja --version || true
  echo '## compute-sanitizer / ncu'; command -v compute-sanitizer ncu || true
  echo '## python + torch'; echo FACENET_PYTHON=$FACENET_PYTHON
  $FACENET_PYTHON -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.is_available())' || true
  echo '## pip cuDNN dir: $cudnn_dir'; ls '$cudnn_dir/include' '$cudnn_dir/lib' 2>/dev/null | head -40
  echo '## pip cuBLAS dir: $cublas_dir'; ls '$cublas_dir/lib' 2>/dev/null | head
  echo '## system libcudnn / libcublas / cudnn.h'
  ls /usr/local/cuda*/lib64/libcudnn* /usr/local/cuda*/lib64/libcublas.so* /usr/lib/x86_64-linux-gnu/libcudnn* 2>/dev/null | head
  find / -xdev \\( -name 'cudnn.h' -o -name 'cudnn_version.h' \\) 2>/dev/null | head
  echo '## dpkg'; dpkg -l 2>/dev/null | grep -Ei 'opencv|openblas|cli11|nlohmann|gtest|googletest|sqlite3|ninja|cmake' || echo 'dpkg: none'
  echo '## shared data: $FACENET_SHARED'; ls '$FACENET_SHARED' '$FACENET_SHARED/golden' 2>&1 | head
  echo '## carried build'; ls -la '$repo/build-carry/apps' '$repo/build-carry/tests' 2>&1 | head -20
"

# ---- 2. build --------------------------------------------------------------------------------
export PATH="$PATH:/usr/local/cuda/bin"
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DFACENET_NATIVE=ON -DFACENET_CUDA=ON
  "-DFACENET_SHARED_DIR=${FACENET_SHARED:-$repo/../shared}")
if [ -n "$cudnn_dir" ] && [ -f "$cudnn_dir/include/cudnn.h" ]; then
  lib="$(ls "$cudnn_dir"/lib/libcudnn.so* 2>/dev/null | head -1)"
  [ -n "$lib" ] && cmake_args+=("-DCUDNN_LIBRARY=$lib" "-DCUDNN_INCLUDE_DIR=$cudnn_dir/include")
fi
bin=""
if run_step 02-configure 180 "cmake -S '$repo' -B '$repo/build-gpu' ${cmake_args[*]@Q}"; then
  run_step 03-build 420 "cmake --build '$repo/build-gpu' -j \$(nproc)" && bin="$repo/build-gpu"
fi
if [ -z "$bin" ] && [ -x "$repo/build-carry/apps/facenet" ]; then
  echo "   using the carried build: build-carry/" | tee -a "$out/summary.log"
  bin="$repo/build-carry"
fi
run_step 04-ldd 30 "for f in '$bin'/apps/facenet '$bin'/tests/test_*; do [ -x \"\$f\" ] && echo \"## \$f\" && ldd \"\$f\" | grep -E 'not found|cudnn|cublas|cudart|opencv|openblas'; done"

# ---- 3. tests ----------------------------------------------------------------------------------
if [ -n "$bin" ]; then
  run_step 05-gpu-tests 300 "'$bin/tests/test_cuda_backend' --gtest_color=no; '$bin/tests/test_gpu' --gtest_color=no"
  run_step 06-all-tests 300 "cd '$bin' && ctest --output-on-failure -j 8 --timeout 240"
  # memcheck on the kernel tests and one whole-model configuration (fp32, eager and graph).
  run_step 07-memcheck 240 "compute-sanitizer --tool memcheck --error-exitcode 9 \
    '$bin/tests/test_cuda_backend' --gtest_color=no \
    --gtest_filter='Layouts/*:KernelValidation.*:Configs/GpuGolden.ReproducesEveryImage/openface_fp32_nchw_*'"
fi

# ---- 4. benchmarks ------------------------------------------------------------------------------
model="$out/nn4-openface.safetensors"
if [ -n "$bin" ]; then
  run_step 08-convert 60 "'$bin/apps/facenet' convert openface-csv \
    '$FACENET_SHARED/weights/openface-nn4.small2.v1-csv-5-standins' -o '$model'"
  repeats=20
  [ "$quick" = 1 ] && repeats=7 && export FACENET_PEER_COMPILE=0
  # The peer (all its configurations) runs once, with the fp16 run; the others skip it.
  for prec in fp16 fp32 bf16; do
    peer=--no-peer
    [ "$prec" = fp16 ] && peer=""
    limit=150
    [ -z "$peer" ] && limit=400
    elapsed=$(($(date +%s) - script_start))
    if [ $elapsed -gt 660 ]; then
      echo "   skipping bench-$prec: ${elapsed}s used" | tee -a "$out/summary.log"
      continue
    fi
    run_step "09-bench-$prec" $limit "'$bin/apps/facenet' bench encode --device cuda \
      --precision $prec --model '$model' --batch 1,64,256,1024,4096 --warmup 3 \
      --repeats $repeats $peer > '$out/bench-encode-cuda-$prec.json'"
  done
fi

# ---- 5. report -----------------------------------------------------------------------------------
run_step 10-report 60 "'$FACENET_PYTHON' - '$out' <<'EOF'
import json, glob, os, sys
out = sys.argv[1]
rows = ['| precision | batch | model-only img/s | latency ms | e2e img/s | best PyTorch img/s (config) | ratio | GPU mem (backend) |',
        '|---|---|---|---|---|---|---|---|']
gpu = ''
for f in sorted(glob.glob(os.path.join(out, 'bench-encode-cuda-*.json'))):
    try:
        j = json.load(open(f))
    except Exception as e:
        rows.append(f'| {os.path.basename(f)} | unreadable: {e} |'); continue
    gpu = j.get('gpu', gpu)
    peer = {}
    for p in j.get('peer', {}).get('results', []):
        if p['img_per_s'] > peer.get(p['batch'], (0, ''))[0]:
            peer[p['batch']] = (p['img_per_s'], p['config'])
    for r in j['results']:
        e2e = r.get('end_to_end', {}).get('img_per_s', float('nan'))
        pb = peer.get(r['batch'], (float('nan'), '-'))
        ratio = r['img_per_s'] / pb[0] if pb[0] == pb[0] and pb[0] > 0 else float('nan')
        rows.append(f\"| {j['dtype']} | {r['batch']} | {r['img_per_s']:,.0f} | {r['latency_ms']:.3f} | {e2e:,.0f} | {pb[0]:,.0f} ({pb[1]}) | {ratio:.2f} | {r['backend_device_bytes']/2**30:.2f} GiB |\")
steps = open(os.path.join(out, 'steps.tsv')).read().strip().splitlines()
md = ['# device_check results', '', f'GPU: {gpu}', '', '## steps (name, rc, seconds)', '']
md += ['    ' + s for s in steps] + ['', '## encode benchmark', ''] + rows
open(os.path.join(out, 'RESULTS.md'), 'w').write('\n'.join(md) + '\n')
print('\n'.join(md))
EOF"
echo "device_check: done in $(($(date +%s) - script_start))s; results in $out" | tee -a "$out/summary.log"
