#!/usr/bin/env bash
# Makes (once) the venv with the real face_recognition 1.3.0 + dlib that the drop-in is compared
# with, and prints its python: ${FACENET_CACHE:-~/.cache/facenet}/venv-face-recognition, from
# Debian's /usr/bin/python3 without site packages, so neither facenet_engine nor Debian's numpy
# can leak in. face_recognition is installed --no-deps: its `dlib` requirement would build dlib
# from source, while dlib-bin ships the same module prebuilt. face_recognition_models (100 MB)
# comes from the sdist weights/fetch_dlib_models.sh caches, else from PyPI. FastAPI + uvicorn
# (with httptools and uvloop, which uvicorn picks when present) run the HTTP peer of
# `facenet serve`, tools/peer_serve_face_recognition.py. Exit 1: no venv.
set -euo pipefail
cache=${FACENET_CACHE:-$HOME/.cache/facenet}
venv=$cache/venv-face-recognition
py=$venv/bin/python
check() {
  "$py" -c "import face_recognition, dlib, face_recognition_models, fastapi, uvicorn" \
    >/dev/null 2>&1
}
if [ -x "$py" ] && check; then
  echo "$py"
  exit 0
fi
mkdir -p "$cache"
[ -x "$py" ] || /usr/bin/python3 -m venv "$venv" >&2
models=$cache/face_recognition_models-0.3.0.tar.gz
[ -f "$models" ] || models="face_recognition_models==0.3.0"
"$py" -m pip install -q "$models" >&2
"$py" -m pip install -q dlib-bin numpy Pillow click >&2
"$py" -m pip install -q --no-deps face_recognition==1.3.0 >&2
"$py" -m pip install -q fastapi==0.163.2 uvicorn==0.54.0 httptools==0.9.0 uvloop==0.23.0 >&2
check || {
  echo "peer_face_recognition: $venv cannot import face_recognition or fastapi" >&2
  exit 1
}
echo "$py"
