#!/usr/bin/env bash
# The main job on a fresh machine: install dependencies, build, convert the nn4.small2
# weights, show the model, and encode the happy-house faces (JSONL on stdout, progress and
# a summary on stderr). Usage: tools/quickstart.sh [images or folders to encode...]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FACENET_SHARED:-../shared}

tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target facenet

model=weights/nn4.small2.v1.safetensors
[ -f "$model" ] || build/apps/facenet convert openface-csv \
  "$shared/weights/openface-nn4.small2.v1-csv-5-standins" --variant openface -o "$model"
build/apps/facenet info "$model" | tail -n 5

inputs=("$@")
[ ${#inputs[@]} -gt 0 ] || inputs=("$shared/data/happy-house/images")
build/apps/facenet encode --model "$model" -o build/embeddings.jsonl "${inputs[@]}"
echo "quickstart: $(wc -l < build/embeddings.jsonl) embeddings written to build/embeddings.jsonl" >&2
