#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.cpp) in build-fuzz with clang, then runs each
# for a while on a copy of its committed seed corpus and prints what it did.
# Usage: tools/fuzz.sh [seconds-per-target (default 30)] [target...]   (default: every target;
#        a target is named fuzz_<name> or <name>)
# Per target it prints executions, coverage (libFuzzer's cov: edges) and whether it crashed;
# a crash, sanitizer report, timeout or out-of-memory input is saved under
# build-fuzz/crashes/<target>/ (replay: build-fuzz/tests/fuzz/<target> <file>). Exit 1 if any
# target failed. The working corpora (build-fuzz/corpus/<target>/) start afresh from the seeds
# each run; tests/ is never written. Env: FACENET_FUZZ_CMAKE_ARGS (extra configure arguments),
# FACENET_FUZZ_ARGS (extra libFuzzer flags, e.g. -max_len=65536).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: seconds must be a positive integer, not '$seconds'" >&2; exit 2; }
shift $(($# > 0 ? 1 : 0))

build=build-fuzz
mkdir -p "$build"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# -O2 with line tables, so that reports name file:line; without -DNDEBUG, so assert() stays on.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS_RELEASE="-O2 -gline-tables-only" -DFACENET_FUZZ=ON -DFACENET_CUDA=OFF \
  "${launcher[@]}" ${FACENET_FUZZ_CMAKE_ARGS:-} >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log" >&2; exit 2; }

targets=()
if (($#)); then
  for t in "$@"; do targets+=("fuzz_${t#fuzz_}"); done
else
  for src in tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$src" .cpp)"); done
fi
# Targets with a finding not fixed yet run only when named, so that CI's short run tests the
# others: fuzz_dlib_dat finds in seconds that dlib's own reader (dlib/serialize.h, the tensor
# and string readers) allocates the sizes a .dat declares before reading them (1.7 GB from a
# 6 KB file); the converter still names such a file and exits 2. README: Fuzzing.
known_open=(fuzz_dlib_dat)
if (($# == 0)); then
  for k in "${known_open[@]}"; do
    targets=("${targets[@]/$k}")
    echo "fuzz.sh: $k skipped (a known open finding; run tools/fuzz.sh SECONDS ${k#fuzz_})" >&2
  done
  read -r -a targets <<<"${targets[*]}"
fi
cmake --build "$build" --target "${targets[@]}"

export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp"
export UBSAN_OPTIONS="print_stacktrace=1"
failed=0
printf '%-28s %12s %8s %8s  %s\n' target executions cov corpus result
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  corpus="$build/corpus/$t" crashes="$build/crashes/$t" log="$build/logs/$t.log"
  rm -rf "$corpus"
  mkdir -p "$corpus" "$crashes" "$build/logs"
  [ -d "tests/fuzz/corpus/$name" ] && cp -R "tests/fuzz/corpus/$name/." "$corpus/"
  before=$(find "$crashes" -type f | wc -l)
  rc=0
  # One process (no -jobs/-fork): it stops at its first finding, which is saved for replay.
  # -timeout: an input taking 10 s is a hang; -rss_limit_mb: libFuzzer's default, an
  # allocation beyond it (a size field believed) is a finding too.
  "$build/tests/fuzz/$t" "$corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$crashes/" ${FACENET_FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  cov=$(grep -o ' cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  units=$(find "$corpus" -type f | wc -l)
  found=$(($(find "$crashes" -type f | wc -l) - before))
  if ((rc == 0)); then
    result=ok
  else
    failed=1
    artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
    result="FAILED (exit $rc, $found new input(s) in $crashes/${artifact:+, e.g. $artifact}; log $log)"
  fi
  printf '%-28s %12s %8s %8s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "$units" "$result"
  if ((rc != 0)); then grep -m1 -A12 -E '^==[0-9]+==ERROR|runtime error|deadly signal|ERROR: libFuzzer' "$log" >&2 || tail -20 "$log" >&2; fi
done
exit "$failed"
