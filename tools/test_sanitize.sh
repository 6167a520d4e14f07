#!/usr/bin/env bash
# The CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer: builds the C++ suites
# and the CLI they run with -fsanitize=address,undefined -fno-sanitize-recover=undefined
# (GCC, CUDA off) in build-asan and runs ctest. Every process writes its ASan/LSan reports to
# build-asan/sanitizer/, so a report from a CLI child whose exit code a test did not look at
# still fails the run. UBSan reports (GCC's runtime ignores log_path when combined with ASan)
# go to stderr and end the process with exit 66, which no CLI test accepts as the CLI's own.
# Measured on the 2-core AMD EPYC VM, shared with three other builds: 47 min from nothing
# (37 CPU-min of building), of which ctest 9 min; 167 tests, 7 GPU-only ones skipped.
# Usage: tools/test_sanitize.sh [ctest arguments, e.g. -R Gallery]
# Not run here: the Python package (its extension would need the ASan runtime preloaded into
# python3) and the GPU suites (CUDA is off; ASan and the CUDA driver do not mix).
# Env: FACENET_SANITIZE_CMAKE_ARGS (extra configure arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
weights/fetch_dlib_models.sh >/dev/null

build=build-asan
mkdir -p "$build"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# -O2 with line tables (reports name file:line) and without -DNDEBUG, so assert() stays on.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -g1" \
  -DFACENET_CUDA=OFF -DFACENET_SANITIZE="address;undefined" "${launcher[@]}" \
  ${FACENET_SANITIZE_CMAKE_ARGS:-} >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log" >&2; exit 2; }
cmake --build "$build" --target facenet_tests

reports="$PWD/$build/sanitizer"
rm -rf "$reports"
mkdir -p "$reports"
# exitcode 66: a sanitizer report is never mistaken for one of the CLI's own exit codes (0/1/2).
common="log_path=$reports/report:exitcode=66:print_stacktrace=1"
export ASAN_OPTIONS="$common:detect_leaks=1:check_initialization_order=1:strict_init_order=1"
export UBSAN_OPTIONS="$common"
export LSAN_OPTIONS="$common:suppressions=$PWD/tests/lsan.supp"

# Excluded, each with its reason: none, every CPU test runs under the sanitizers.
exclude=()
rc=0
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" \
  ${exclude[@]:+-E "$(IFS='|'; echo "${exclude[*]}")"} "$@" || rc=$?
if compgen -G "$reports/report*" >/dev/null; then
  echo "test_sanitize: sanitizer reports ($reports):" >&2
  for f in "$reports"/report*; do echo "== $f" >&2; head -60 "$f" >&2; done
  rc=1
fi
exit "$rc"
