"""The HTTP service a user builds today around the real face_recognition 1.3.0: FastAPI on
uvicorn, one worker process, the peer of `facenet serve` in tools/bench_serve.py (issue 14).
Runs in the venv tools/peer_face_recognition.sh makes (face_recognition, dlib-bin, FastAPI,
uvicorn with its httptools parser and uvloop, which it picks when they are installed).

  POST /v1/identify[?align=largest|all][&upsample=1]   body: one image (raw bytes, any type
      Pillow reads), like `facenet serve`'s single-image body
  -> {"faces": [{"box": [top, right, bottom, left], "name": NAME | "unknown", "distance": D}]}
  GET /healthz -> {"identities": N, "event_loop": "uvloop.Loop"}

Per request, exactly face_recognition's README recipe: load_image_file (from BytesIO) ->
face_locations (HOG, upsample 1: its defaults) -> face_encodings (5-point landmarks, no
jitter: its defaults) -> face_distance against the whole gallery -> the nearest, a match under
0.6 (its compare_faces tolerance). align=largest (what bench_serve sends, as to `facenet serve`)
encodes only the largest detected face; all encodes each. The endpoint is a plain `def`, so
FastAPI runs it in its threadpool (anyio's, 40 threads): the usual idiom for blocking work.

The gallery is a numpy array built once at start: --enroll PHOTO's largest face, named after
its folder (LFW's layout), then random unit vectors r00000... up to --gallery-size rows, like
bench_serve's gallery for `facenet serve` (the search cost is that of the real size).

  peer_serve_face_recognition.py --port 8000 --enroll lfw/AJ_Lamas/AJ_Lamas_0001.jpg \\
      --gallery-size 10000
"""

import argparse
import asyncio
import io
import os
from typing import Annotated

import face_recognition
import numpy as np
import uvicorn
from fastapi import Body, FastAPI, HTTPException

TOLERANCE = 0.6

app = FastAPI()
names: list = []
gallery = np.zeros((0, 128))


def build_gallery(enroll, size, seed):
    global names, gallery
    rows, names = [], []
    if enroll:
        img = face_recognition.load_image_file(enroll)
        boxes = face_recognition.face_locations(img)
        if not boxes:
            raise SystemExit(f"no face in {enroll}")
        largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        rows.append(face_recognition.face_encodings(img, [largest])[0])
        names.append(os.path.basename(os.path.dirname(os.path.abspath(enroll))))
    rng = np.random.default_rng(seed)
    fill = rng.standard_normal((max(0, size - len(rows)), 128))
    fill /= np.linalg.norm(fill, axis=1, keepdims=True)
    names += [f"r{i:05d}" for i in range(len(fill))]
    gallery = np.vstack(rows + [fill]) if rows else fill


@app.get("/healthz")
async def healthz():  # on the event loop, so it can tell which loop uvicorn picked
    loop = asyncio.get_running_loop()
    return {"identities": len(names),
            "event_loop": f"{type(loop).__module__}.{type(loop).__name__}"}


@app.post("/v1/identify")
def identify(image: Annotated[bytes, Body(media_type="image/jpeg")], align: str = "largest",
             upsample: int = 1):
    try:
        img = face_recognition.load_image_file(io.BytesIO(image))
    except Exception as e:  # Pillow's UnidentifiedImageError and truncated files
        raise HTTPException(400, f"cannot read the image: {e}")
    boxes = face_recognition.face_locations(img, number_of_times_to_upsample=upsample)
    if align == "largest" and boxes:
        boxes = [max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))]
    faces = []
    for box, encoding in zip(boxes, face_recognition.face_encodings(img, boxes)):
        if not names:
            faces.append({"box": list(box), "name": "unknown", "distance": None})
            continue
        distances = face_recognition.face_distance(gallery, encoding)
        best = int(np.argmin(distances))
        d = float(distances[best])
        faces.append({"box": list(box), "name": names[best] if d <= TOLERANCE else "unknown",
                      "distance": round(d, 6)})
    return {"faces": faces}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--enroll", help="a photo of the one real person in the gallery")
    ap.add_argument("--gallery-size", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    build_gallery(a.enroll, a.gallery_size, a.seed)
    # uvicorn's defaults but for the per-request access log lines (info level).
    uvicorn.run(app, host=a.host, port=a.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
