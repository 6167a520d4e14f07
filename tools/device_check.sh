#!/usr/bin/env bash
# The one script to run on a lent NVIDIA GPU machine (H100/H200): inventory, build, every GPU
# test, compute-sanitizer memcheck on the kernel tests, the GPU benchmarks (ours + PyTorch
# peers), a report. It must succeed in ONE call: the session has 15 device minutes in all (the
# machine's start included) and a command at most 600 s, so it stops itself after
# DEADLINE_S (default 540 s), skipping what no longer fits and always writing the report.
#
# THE CALL TO MAKE
#   1. here, on the dev machine:   cmake -S . -B build -G Ninja && tools/device_prepare.sh
#      (fills the git-ignored .devroot/: dependency headers + static libs, the two converted
#      models, golden/ + test images; it prints the size, which must stay well under 64 MiB)
#   2. the device tool (the working tree travels by itself; .devroot is ignored, so carry it):
#        run(command="bash tools/device_check.sh", carry=[".devroot"], timeout_s=600)
#      Files come back in files_at: RESULTS.md, results.json, summary.log, steps.tsv,
#      logs.tar.gz (every step log and raw JSON). Commit what is worth keeping.
#
# Usage:  tools/device_check.sh [OUT_DIR]   (default: $OUT, else ./out/device-check)
# Env:    FACENET_SHARED       shared data (golden/, data/); default: the first of <repo>/shared,
#                              <repo>/../shared, <repo>/.devroot/shared holding golden/
#         FACENET_TEST_MODELS  converted models; default <repo>/.devroot/models when the CSV
#                              weights are not in FACENET_SHARED
#         FACENET_DLIB_MODEL   converted dlib ResNet (GPU-vs-CPU test, dlib encode bench); default:
#                              .devroot/dlib/*.safetensors.xz unpacked into WORK
#         FACENET_DLIB_CHIPS   aligned 150x150 chips for that test; default .devroot/dlib/chips-*.raw
#         FACENET_MMOD_DIR     the CNN face detector model and photos with their CPU score maps
#                              (GPU pyramid test); default .devroot/mmod
#         FACENET_PYTHON       interpreter with CUDA PyTorch (default: the first python3 whose
#                              torch sees a GPU)
#         DEADLINE_S=540       whole-script budget in seconds; PEER_COMPILE=1 adds torch.compile
#         WORK                 scratch (build, logs, JSON, model copies); default /tmp/facenet-device
#         REUSE_BUILD=1        skip configuring when WORK/build is configured (dry runs here)
#
# Dependencies: the device image has nvcc, CMake, ninja and PyTorch's pip cuDNN/cuBLAS but
# none of the Debian dev packages. Configure tries the system first; if that fails it uses
# the carried prefix .devroot/root/usr (static libraries: nothing carried is needed at run
# time) with FACENET_IMAGE_IO=libjpeg. cuDNN (and cuBLAS, if the toolkit lacks it) come from
# the pip wheels when /usr/local/cuda has none.
#
# OUT holds at most 5 files (the device returns at most 8, no folders needed): RESULTS.md,
# results.json, summary.log, steps.tsv, logs.tar.gz. Every step logs to WORK/logs/<step>.log
# and appends "step rc seconds" to steps.tsv (rc "skip" = no time left); a failing step never
# stops later independent steps.
set -uo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-${OUT:-$repo/out/device-check}}"
work="${WORK:-/tmp/facenet-device}"
mkdir -p "$out" "$work/logs" "$work/json"
out="$(cd "$out" && pwd)"
: >"$out/steps.tsv"
: >"$out/summary.log"
script_start=$(date +%s)
deadline=$((script_start + ${DEADLINE_S:-540}))
report_reserve=25 # seconds kept for the report and the archive

say() { echo "$*" | tee -a "$out/summary.log"; }

# run_step NAME LIMIT_S MIN_S COMMAND: runs COMMAND (a bash string) with a timeout of LIMIT_S,
# cut to the time left before the deadline; skipped when less than MIN_S would be left.
# Logs to WORK/logs/NAME.log, records "NAME rc seconds" in steps.tsv; returns the rc.
run_step() {
  local name="$1" limit="$2" min="$3" cmd="$4"
  local left=$((deadline - report_reserve - $(date +%s)))
  if [ "$left" -lt "$min" ]; then
    printf '%s\tskip\t0\n' "$name" >>"$out/steps.tsv"
    say "== $name: skipped, ${left}s left"
    return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "== $name (timeout ${limit}s)"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" bash -c "$cmd" >"$work/logs/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$out/steps.tsv"
  say "   rc=$rc after $(($(date +%s) - t0))s"
  tail -n 4 "$work/logs/$name.log" | cut -c1-200 | sed 's/^/   | /' | tee -a "$out/summary.log" >/dev/null
  return $rc
}

# ---- shared data, models, python, CUDA libraries --------------------------------------------
shared="${FACENET_SHARED:-}"
for cand in "$repo/shared" "$repo/../shared" "$repo/.devroot/shared"; do
  [ -z "$shared" ] && [ -d "$cand/golden" ] && shared="$(cd "$cand" && pwd)"
done
export FACENET_SHARED="$shared"
csv="$shared/weights/openface-nn4.small2.v1-csv-5-standins"
if [ -z "${FACENET_TEST_MODELS:-}" ] && [ ! -d "$csv" ] && [ -d "$repo/.devroot/models" ]; then
  export FACENET_TEST_MODELS="$repo/.devroot/models"
fi
dlib_carried="$repo/.devroot/dlib"
if [ -z "${FACENET_DLIB_MODEL:-}" ] && [ -f "$dlib_carried/dlib_resnet_v1-bf16w.safetensors.xz" ]; then
  FACENET_DLIB_MODEL="$work/dlib_resnet_v1-bf16w.safetensors"
  xz -dc "$dlib_carried/dlib_resnet_v1-bf16w.safetensors.xz" >"$FACENET_DLIB_MODEL" 2>/dev/null ||
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$dlib_carried/dlib_resnet_v1-bf16w.safetensors.xz" "$FACENET_DLIB_MODEL"
  export FACENET_DLIB_MODEL
fi
if [ -z "${FACENET_DLIB_CHIPS:-}" ] && [ -f "$dlib_carried/chips-150x150-bgr8.raw" ]; then
  export FACENET_DLIB_CHIPS="$dlib_carried/chips-150x150-bgr8.raw"
fi
if [ -z "${FACENET_MMOD_DIR:-}" ] && [ -f "$repo/.devroot/mmod/cases.raw" ]; then
  export FACENET_MMOD_DIR="$repo/.devroot/mmod"
fi
if [ -z "${FACENET_PYTHON:-}" ]; then
  for py in python3 /usr/bin/python3; do
    if "$py" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      FACENET_PYTHON="$(command -v "$py")"
      break
    fi
  done
fi
export FACENET_PYTHON="${FACENET_PYTHON:-python3}"
export FACENET_PEER_COMPILE="${PEER_COMPILE:-0}"
export PATH="$PATH:/usr/local/cuda/bin"

# First file named $1 under the pip nvidia/ package folders (PyTorch's CUDA wheels).
pip_find() {
  local sp
  sp="$("$FACENET_PYTHON" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
  for d in $sp; do
    [ -d "$d/nvidia" ] && find "$d/nvidia" -name "$1" 2>/dev/null | sort | head -1
  done | head -1
}
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DFACENET_CUDA=ON "-DFACENET_SHARED_DIR=$shared")
cuda_lib=/usr/local/cuda/lib64
if ! ls $cuda_lib/libcudnn.so* /usr/lib/x86_64-linux-gnu/libcudnn.so* >/dev/null 2>&1; then
  cudnn_lib="$(pip_find 'libcudnn.so.[0-9]*')"
  cudnn_h="$(pip_find cudnn.h)"
  if [ -n "$cudnn_lib" ] && [ -n "$cudnn_h" ]; then
    cmake_args+=("-DCUDNN_LIBRARY=$cudnn_lib" "-DCUDNN_INCLUDE_DIR=$(dirname "$cudnn_h")")
    LD_LIBRARY_PATH="$(dirname "$cudnn_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
if ! ls $cuda_lib/libcublas.so >/dev/null 2>&1; then
  cublas="$(pip_find 'libcublas.so.[0-9]*')"
  cublaslt="$(pip_find 'libcublasLt.so.[0-9]*')"
  if [ -n "$cublas" ]; then
    cmake_args+=("-DCUDA_cublas_LIBRARY=$cublas" "-DCUDA_cublasLt_LIBRARY=$cublaslt")
    LD_LIBRARY_PATH="$(dirname "$cublas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
# oneDNN (the CPU backend): the system's, else the carried one unpacked here.
if [ ! -f /usr/include/oneapi/dnnl/dnnl.hpp ] && [ -f "$repo/.devroot/dnnl.tar.xz" ]; then
  dnnl_root="$work/dnnl"
  rm -rf "$dnnl_root" && mkdir -p "$dnnl_root" && tar -C "$dnnl_root" -xJf "$repo/.devroot/dnnl.tar.xz"
  dnnl_so="$(find "$dnnl_root" -name 'libdnnl.so' | head -1)"
  cmake_args+=("-DDNNL_INCLUDE_DIR=$dnnl_root/usr/include" "-DDNNL_LIBRARY=$dnnl_so")
  LD_LIBRARY_PATH="$(dirname "$dnnl_so"):$(dirname "$(find "$dnnl_root" -name 'libOpenCL.so.1' | head -1)")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

# ---- 1. inventory ----------------------------------------------------------------------------
run_step 01-inventory 40 10 "
  echo '## date'; date -u; echo '## nvidia-smi'; nvidia-smi || true
  echo '## nvcc'; command -v nvcc && nvcc --version | tail -2
  echo '## host compiler'; c++ --version | head -1; ldconfig -p | grep -E 'libgomp|libstdc' | head
  echo '## cmake, ninja'; cmake --version | head -1; ninja --version
  echo '## compute-sanitizer'; command -v compute-sanitizer
  echo '## python + torch: $FACENET_PYTHON'
  '$FACENET_PYTHON' -c 'import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), torch.cuda.is_available())'
  echo '## cmake args: ${cmake_args[*]}'; echo 'LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}'
  echo '## toolkit libraries'; ls $cuda_lib | grep -E 'cudnn|cublas' | head
  echo '## dpkg'; dpkg -l 2>/dev/null | grep -Ei 'opencv|openblas|libblas|cli11|nlohmann|gtest|sqlite3|jpeg|png' | cut -c1-80
  echo '## shared data: $FACENET_SHARED, models: ${FACENET_TEST_MODELS:-converted from CSV}'
  echo '## dlib ResNet: ${FACENET_DLIB_MODEL:-none}, chips: ${FACENET_DLIB_CHIPS:-none}'
  echo '## CNN detector cases: ${FACENET_MMOD_DIR:-none}'
  ls '$FACENET_SHARED' '${FACENET_TEST_MODELS:-$csv}' | head
  echo '## carried prefix'; du -sh '$repo/.devroot'/* 2>&1
"

# ---- 2. build --------------------------------------------------------------------------------
build="$work/build"
built=0
devroot_args=("-DCMAKE_PREFIX_PATH=$repo/.devroot/root/usr" -DFACENET_IMAGE_IO=libjpeg)
if [ "${REUSE_BUILD:-0}" = 1 ] && [ -f "$build/CMakeCache.txt" ]; then
  say "== reusing the configured $build (REUSE_BUILD=1)"
  run_step 03-build 300 60 "cmake --build '$build' -j \$(nproc)" && built=1
elif run_step 02-configure-system 90 30 "rm -rf '$build'; cmake -S '$repo' -B '$build' ${cmake_args[*]@Q}" ||
  run_step 02-configure-devroot 90 30 \
    "rm -rf '$build'; cmake -S '$repo' -B '$build' ${cmake_args[*]@Q} ${devroot_args[*]@Q}"; then
  run_step 03-build 300 60 "cmake --build '$build' -j \$(nproc)" && built=1
fi
run_step 04-ldd 20 5 "for f in '$build'/apps/facenet '$build'/tests/test_cuda_backend; do echo \"## \$f\"; ldd \"\$f\"; done"

# ---- 3. tests --------------------------------------------------------------------------------
json="$work/json"
model="${FACENET_TEST_MODELS:-$work}/nn4-openface.safetensors"
if [ $built = 1 ]; then
  run_step 05-gpu-tests 180 30 "rc=0
    for t in '$build/tests/test_cuda_backend' '$build/tests/test_gpu'; do \"\$t\" --gtest_color=no || rc=1; done
    '$build/tests/test_knn' --gtest_color=no --gtest_filter='GpuFlatIndex.*' || rc=1
    '$build/tests/test_triplet' --gtest_color=no --gtest_filter='TripletGpu.*' || rc=1
    exit \$rc"
  # The CPU suites (CI runs them too) in the background while memcheck holds the GPU; GPU
  # tests ran above, converter tests need the CSV weights (absent on the device).
  exclude='Gpu|Kernel|^(Converter|CorruptedWeights)\.|^ModelFile\.RoundTrip'
  [ -d "$csv" ] && exclude='Gpu|Kernel'
  run_step 06-cpu-tests 150 30 "cd '$build' && ctest --output-on-failure -j 8 --timeout 120 -E '$exclude'" &
  cpu_tests=$!
  # memcheck: kernel-level tests only (whole-model runs through cuDNN take minutes under it).
  memcheck="compute-sanitizer --tool memcheck --error-exitcode 9"
  run_step 07-memcheck-kernels 100 30 "$memcheck '$build/tests/test_cuda_backend' --gtest_color=no \
    --gtest_filter='Layouts/*:Types/*:KernelValidation.*'"
  run_step 07-memcheck-knn 60 20 "$memcheck '$build/tests/test_knn' --gtest_color=no \
    --gtest_filter='GpuFlatIndex.*'"
  run_step 07-memcheck-triplet 60 20 "$memcheck '$build/tests/test_triplet' --gtest_color=no \
    --gtest_filter='TripletGpu.*'"
  wait $cpu_tests
fi

# ---- 4. benchmarks -----------------------------------------------------------------------------
if [ $built = 1 ]; then
  [ -f "$model" ] || run_step 08-convert 60 10 "'$build/apps/facenet' convert openface-csv '$csv' -o '$model'"
  # The peer (all its GPU configurations) runs once, with fp16; fp32 and bf16 skip it.
  for prec in fp16 fp32 bf16; do
    peer=--no-peer limit=60
    [ $prec = fp16 ] && peer="" limit=150
    run_step "09-bench-encode-$prec" $limit 30 "'$build/apps/facenet' bench encode --device cuda \
      --precision $prec --model '$model' --batch 1,64,256,1024,4096 --warmup 3 --repeats 10 \
      $peer > '$json/encode-$prec.json'"
  done
  # dlib's ResNet (150x150, residual adds), with its peer at fp16 as for nn4.small2.
  if [ -f "${FACENET_DLIB_MODEL:-}" ]; then
    for prec in fp16 fp32; do
      peer=--no-peer limit=60
      [ $prec = fp16 ] && peer="" limit=90
      run_step "09-bench-encode-dlib-$prec" $limit 30 "'$build/apps/facenet' bench encode \
        --device cuda --precision $prec --model '$FACENET_DLIB_MODEL' \
        --batch 1,64,256 --warmup 3 --repeats 10 $peer > '$json/encode-dlib-$prec.json'"
    done
  fi
  run_step 10-bench-triplet 90 30 "'$build/apps/facenet' bench triplet --device cuda \
    --batch 1024,4096,8192 --modes batch_hard,batch_all,semi_hard --warmup 2 --repeats 10 --check \
    > '$json/triplet.json'"
  # Search: N=1e6 checked against the CPU index; N=1e7 (a 5 GB host gallery) unchecked.
  for n in 1e6 1e7; do
    for dtype in fp16 fp32; do
      check=--check limit=60
      [ $n = 1e7 ] && check="" limit=120
      run_step "11-bench-search-$n-$dtype" $limit 30 "'$build/tools/facenet_bench_search' \
        --device cuda --n $n --q 1,1024 --k 10 --dtype $dtype --algo all --warmup 2 --repeats 10 \
        $check > '$json/search-$n-$dtype.json'"
    done
  done
fi

# ---- 5. report -----------------------------------------------------------------------------------
report_reserve=0
run_step 13-report 20 1 "'$FACENET_PYTHON' '$repo/tools/device_report.py' '$work' '$out'"
say "device_check: done in $(($(date +%s) - script_start))s; results in $out"
tar -czf "$out/logs.tar.gz" -C "$work" logs json 2>/dev/null || say "device_check: could not archive logs"
