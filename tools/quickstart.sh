#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, convert the nn4.small2
# weights, encode the happy-house faces, enrol the tutorial's 12 people in a gallery, and
# identify the camera images (JSON on stdout, progress and messages on stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FACENET_SHARED:-../shared}
images="$shared/data/happy-house/images"

tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target facenet
facenet=build/apps/facenet

model=weights/nn4.small2.v1.safetensors
[ -f "$model" ] || $facenet convert openface-csv \
  "$shared/weights/openface-nn4.small2.v1-csv-5-standins" --variant openface -o "$model"
$facenet info "$model" | tail -n 5

$facenet encode --model "$model" -o build/embeddings.jsonl "$images"
echo "quickstart: $(wc -l < build/embeddings.jsonl) embeddings in build/embeddings.jsonl" >&2

gallery=build/happy-house.gallery
rm -f "$gallery" "$gallery"-wal "$gallery"-shm
for f in "$images"/*; do
  name=$(basename "${f%.*}")
  case "$name" in camera_*) continue ;; esac
  $facenet enroll --create --gallery "$gallery" --model "$model" --name "$name" "$f" >/dev/null
done
$facenet gallery stats --gallery "$gallery"
$facenet verify --gallery "$gallery" --model "$model" --name younes "$images/camera_0.jpg"
$facenet identify --gallery "$gallery" --model "$model" --k 3 "$images"/camera_*.jpg
echo "quickstart: the stand-in nn4.small2 weights make these identities meaningless;" \
  "they show the pipeline (see weights/README.md for the complete weights)" >&2
