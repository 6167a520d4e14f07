#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, fetch and convert dlib's
# pretrained face ResNet, enrol four people from OpenFace's example photos and identify the
# faces in the other photos (expected: lennon-2 -> lennon, clapton-2 -> clapton, the two faces
# of longoria-cooper -> unknown: they are not enrolled).
# Usage: tools/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FACENET_SHARED:-../shared}
ex="$shared/data/openface-examples/images/examples"

tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target facenet

models=$(weights/fetch_dlib_models.sh)
model=weights/dlib_resnet_v1.safetensors
[ -f "$model" ] || build/apps/facenet convert dlib-resnet \
  "$models/dlib_face_recognition_resnet_model_v1.dat" -o "$model"
build/apps/facenet info "$model" | tail -n 5

build/apps/facenet identify --model "$model" \
  --enrol "$ex/lennon-1.jpg" "$ex/clapton-1.jpg" "$ex/adams.jpg" "$ex/carell.jpg" \
  -- "$ex/lennon-2.jpg" "$ex/clapton-2.jpg" "$ex/longoria-cooper.jpg"
