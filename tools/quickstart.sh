#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, fetch and convert dlib's
# pretrained face ResNet, enrol four people from OpenFace's example photos into a gallery, and
# identify every face in the other photos. Expected: lennon-2 -> lennon, clapton-2 -> clapton,
# the two faces of longoria-cooper -> unknown (they are not enrolled).
# Usage: tools/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FACENET_SHARED:-../shared}
ex="$shared/data/openface-examples/images/examples"

tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target facenet
facenet=build/apps/facenet

models=$(weights/fetch_dlib_models.sh)
model=weights/dlib_resnet_v1.safetensors
[ -f "$model" ] || $facenet convert dlib-resnet \
  "$models/dlib_face_recognition_resnet_model_v1.dat" -o "$model"
$facenet info "$model" | tail -n 5

gallery=build/openface-examples.gallery
rm -f "$gallery" "$gallery"-wal "$gallery"-shm
for person in lennon-1:lennon clapton-1:clapton adams:adams carell:carell; do
  $facenet enroll --create --gallery "$gallery" --model "$model" --align largest \
    --name "${person#*:}" "$ex/${person%%:*}.jpg"
done
$facenet verify --gallery "$gallery" --model "$model" --align largest --name lennon \
  "$ex/lennon-2.jpg"
$facenet identify --gallery "$gallery" --model "$model" --align all --k 2 \
  "$ex/lennon-2.jpg" "$ex/clapton-2.jpg" "$ex/longoria-cooper.jpg"
