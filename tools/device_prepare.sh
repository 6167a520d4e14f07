#!/usr/bin/env bash
# Run HERE (the dev machine) before tools/device_check.sh runs on a lent GPU machine: puts in
# .devroot/ (git-ignored, passed to the device with carry=[".devroot"]) what that bare machine
# lacks and cannot fetch (it has no network):
#   .devroot/root/usr   headers + static libraries of the host dependencies, extracted from
#                       Debian .debs (apt-get download + dpkg -x; nothing is installed here):
#                       SQLite, GoogleTest, CLI11, nlohmann-json, libjpeg-turbo, libpng, zlib and
#                       the reference CBLAS. Shared objects are removed so the build links the
#                       .a files and the binaries need no carried library at run time.
#   .devroot/dnnl.tar.xz  oneDNN (shared only in Debian): headers, libdnnl.so*, libOpenCL.so.1*
#   .devroot/models     nn4-openface.safetensors, nn4-coursera.safetensors (for
#                       FACENET_TEST_MODELS; the 60 MB CSV weights stay here)
#   .devroot/shared     golden/ and data/{happy-house,krasserm-lfw10} (for FACENET_SHARED)
#   .devroot/dlib       dlib's ResNet for the GPU-vs-CPU test (FACENET_DLIB_MODEL) and the
#                       encode benchmark: converted, its weights rounded to bf16 values (still
#                       stored as F32) and xz-compressed, 7.8 MiB instead of 21.4 MiB, which
#                       would not fit the transfer; both backends run the same rounded weights,
#                       so the comparison is unaffected. Plus 8 dlib-aligned LFW chips as raw
#                       150x150 BGR bytes (FACENET_DLIB_CHIPS; the device has no dlib to align).
#                       Skipped, with a note, when the build lacks dlib or the .dat is not fetched.
#   .devroot/mmod       dlib's CNN face detector converted (0.7 MiB) and 5 photos with their
#                       pyramid layout and the CPU backend's score map (FACENET_MMOD_DIR: the
#                       GPU pyramid test); same conditions.
# OpenMP's libgomp comes with the device's g++ (the compiler cannot link -fopenmp without it),
# so it is not carried.
#
# Usage: tools/device_prepare.sh [BUILD_DIR]   (a configured build here, default build/; its
#        `facenet` CLI converts the weights)   Env: FACENET_SHARED (default ../shared)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$repo/build}"
shared="${FACENET_SHARED:-$repo/../shared}"
dest="$repo/.devroot"
pkgs=(libsqlite3-dev libgtest-dev libcli11-dev nlohmann-json3-dev libjpeg62-turbo-dev
  libpng-dev zlib1g-dev libblas-dev)

[ -d "$shared/golden" ] || { echo "device_prepare: no shared data at $shared" >&2; exit 1; }
[ -f "$build/CMakeCache.txt" ] || { echo "device_prepare: configure $build first" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$dest/root" "$dest/models" "$dest/shared/data"
debs="$(mktemp -d)"
trap 'rm -rf "$debs"' EXIT

# ---- host dependencies ------------------------------------------------------------------------
(cd "$debs" && apt-get download "${pkgs[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed')
for deb in "$debs"/*.deb; do
  dpkg -x "$deb" "$dest/root"
  echo "device_prepare: $(basename "$deb")"
done
usr="$dest/root/usr"
lib="$usr/lib/x86_64-linux-gnu"
rm -rf "${usr:?}"/{share/doc,share/man,share/lintian,bin}
# Static linking only: drop shared objects and their dev links (dangling here anyway, since
# the runtime packages are not extracted).
find "$usr/lib" \( -name '*.so' -o -name '*.so.*' \) -exec rm -f {} +
# Multiarch headers (jconfig.h, cblas_mangling.h) also at include/: the compiler searches
# /usr/include/x86_64-linux-gnu by itself, but not that folder under a prefix.
for h in "$usr/include/x86_64-linux-gnu"/*; do ln -s "x86_64-linux-gnu/${h##*/}" "$usr/include/"; done
# What Debian's alternatives system would have linked: cblas.h and libblas.a at their usual
# names (the reference BLAS holds the cblas_* functions too).
ln -s x86_64-linux-gnu/cblas-netlib.h "$usr/include/cblas.h"
ln -s blas/libblas.a "$lib/libblas.a"
rm -f "$lib/pkgconfig/blas-netlib.pc"

# ---- oneDNN: a shared library (Debian ships no static one) ---------------------------------------
# Its headers, libdnnl.so* and libOpenCL.so.1* (linked for its unused GPU runtime) as one
# tar.xz, about 7 MiB; device_check.sh unpacks it into WORK and points the build and
# LD_LIBRARY_PATH at it.
mkdir -p "$debs/dnnl/root"
(cd "$debs/dnnl" && apt-get download libdnnl2 libdnnl-dev ocl-icd-libopencl1 2>&1 |
  grep -v '^W: Download is performed unsandboxed')
for deb in "$debs"/dnnl/*.deb; do dpkg -x "$deb" "$debs/dnnl/root"; done
(cd "$debs/dnnl/root" && find . -path '*/include/oneapi/*' -o -name 'libdnnl.so*' \
  -o -name 'libOpenCL.so.1*' | tar -cJf "$dest/dnnl.tar.xz" --no-recursion -T -)
echo "device_prepare: oneDNN $(tar -tJf "$dest/dnnl.tar.xz" | grep -c .) files"

# ---- models and test data ---------------------------------------------------------------------
cmake --build "$build" --target facenet >/dev/null
for variant in openface coursera; do
  "$build/apps/facenet" convert openface-csv "$shared/weights/openface-nn4.small2.v1-csv-5-standins" \
    --variant "$variant" -o "$dest/models/nn4-$variant.safetensors"
done
# dlib ResNet: round every F32 to the nearest bf16 value (ties to even) so that xz halves it.
dat="$("$repo/weights/fetch_dlib_models.sh")/dlib_face_recognition_resnet_model_v1.dat"
if [ -f "$dat" ] && grep -q '^FACENET_DLIB:BOOL=ON' "$build/CMakeCache.txt"; then
  mkdir -p "$dest/dlib"
  cmake --build "$build" --target test_dlib_resnet >/dev/null
  "$build/apps/facenet" convert dlib-resnet "$dat" -o "$debs/dlib.safetensors"
  python3 - "$debs/dlib.safetensors" "$debs/dlib-bf16w.safetensors" <<'PY'
import array, struct, sys
raw = open(sys.argv[1], "rb").read()
head = 8 + struct.unpack("<Q", raw[:8])[0]  # safetensors: u64 header size, JSON header, data
assert b'"F32"' in raw[:head] and b'"F16"' not in raw[:head] and (len(raw) - head) % 4 == 0
words = array.array("I")
words.frombytes(raw[head:])
assert words.itemsize == 4 and sys.byteorder == "little"
rounded = array.array("I", ((w + 0x7FFF + ((w >> 16) & 1)) & 0xFFFF0000 for w in words))
open(sys.argv[2], "wb").write(raw[:head] + rounded.tobytes())
PY
  xz -T2 -6 -c "$debs/dlib-bf16w.safetensors" >"$dest/dlib/dlib_resnet_v1-bf16w.safetensors.xz"
  FACENET_SHARED="$shared" FACENET_EXPORT_DLIB_CHIPS="$dest/dlib/chips-150x150-bgr8.raw" \
    "$build/tests/test_dlib_resnet" --gtest_filter=DlibResnet.ExportChipsForDevice --gtest_brief=1
  [ -s "$dest/dlib/chips-150x150-bgr8.raw" ] || { echo "device_prepare: no chips written" >&2; exit 1; }
  if [ -f "$(dirname "$dat")/mmod_human_face_detector.dat" ]; then
    cmake --build "$build" --target test_cnn_detector >/dev/null
    FACENET_SHARED="$shared" FACENET_EXPORT_MMOD="$dest/mmod" \
      "$build/tests/test_cnn_detector" --gtest_filter=CnnDetector.ExportCasesForDevice --gtest_brief=1
    [ -s "$dest/mmod/cases.raw" ] || { echo "device_prepare: no detector cases written" >&2; exit 1; }
  fi
else
  echo "device_prepare: no dlib ResNet for the device (needs $dat and a FACENET_DLIB build)" >&2
fi
cp -r "$shared/golden" "$dest/shared/"
cp -r "$shared/data/happy-house" "$shared/data/krasserm-lfw10" "$dest/shared/data/"
chmod -R u+w "$dest/shared"

# ---- size: the working tree and every carried path share 64 MiB ----------------------------------
du -sh "$dest"/* | sed 's/^/device_prepare: /'
total_kib=$(du -sk "$dest" | cut -f1)
tree_kib=$(cd "$repo" && git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
awk -v d="$total_kib" -v t="$tree_kib" 'BEGIN { printf "device_prepare: .devroot %.1f MiB + working tree %.1f MiB = %.1f MiB (limit 64, aim < 60)\n", d / 1024, t / 1024, (d + t) / 1024 }'
if [ $((total_kib + tree_kib)) -gt $((60 * 1024)) ]; then
  echo "device_prepare: over the 60 MiB aim; the transfer may be refused" >&2
  exit 1
fi
