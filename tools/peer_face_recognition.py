"""The peer of the face_recognition drop-in: runs the REAL face_recognition 1.3.0 + dlib (in the
venv tools/peer_face_recognition.sh makes) and writes what it computes, for the drop-in's tests
and benchmark, which run in another process (the two must never share one).

  reference OUT.json IMAGE...   boxes, landmarks and encodings of each image (JSON)
  bench LIST.txt                photos/s of load_image_file + face_encodings over the files
                                LIST.txt names (JSON on stdout)
  phases LIST.txt               ms per photo of each step of that (JSON on stdout)
"""

import argparse
import json
import sys
import time

import dlib
import face_recognition
import numpy as np
from bench_steps import ms_per_item


def _locations(img, upsample, model):
    return [list(map(int, box)) for box in face_recognition.face_locations(img, upsample, model)]


def _encodings(img, known=None, model="small"):
    return [e.tolist() for e in face_recognition.face_encodings(img, known, 1, model)]


def reference(out, images, cnn):
    """Everything the drop-in's API returns for each image, through the real package."""
    records = []
    for path in images:
        img = face_recognition.load_image_file(path)
        hog = face_recognition.face_locations(img)
        # Boxes that are not detections, to test known locations: the first one shrunk, and
        # one a little larger than the image (face_recognition does not clip given boxes).
        height, width = img.shape[:2]
        known = [(t + 4, r - 4, b - 4, l + 4) for (t, r, b, l) in hog[:1]]
        known.append((-10, width + 10, height + 10, -10))
        raw = face_recognition.api._raw_face_locations(img)
        record = {
            "image": path,
            "shape": list(img.shape),
            "raw_hog": [[d.left(), d.top(), d.right(), d.bottom()] for d in raw],
            "hog_up0": _locations(img, 0, "hog"),
            "hog_up1": [list(map(int, b)) for b in hog],
            "landmarks_large": face_recognition.face_landmarks(img),
            "landmarks_small": face_recognition.face_landmarks(img, model="small"),
            "landmarks_known": face_recognition.face_landmarks(img, known),
            "encodings_small": _encodings(img),
            "encodings_large": _encodings(img, model="large"),
            "known": [list(k) for k in known],
            "encodings_known": _encodings(img, known),
        }
        if cnn:
            record["cnn_up0"] = _locations(img, 0, "cnn")
            record["cnn_confidence"] = [
                d.confidence for d in face_recognition.api._raw_face_locations(img, 0, "cnn")]
        records.append(record)
    with open(out, "w") as f:
        json.dump(records, f)


def bench(list_file):
    """Seconds and photos/s for load_image_file + face_encodings over the listed files."""
    with open(list_file) as f:
        paths = [line.strip() for line in f if line.strip()]

    def run(ps):
        return sum(len(face_recognition.face_encodings(face_recognition.load_image_file(p)))
                   for p in ps)

    run(paths[:5])  # warm-up, as the drop-in's worker does
    start = time.perf_counter()
    faces = run(paths)
    seconds = time.perf_counter() - start
    json.dump({"impl": "face_recognition", "photos": len(paths), "faces": faces,
               "seconds": seconds, "photos_per_s": len(paths) / seconds,
               "versions": {"face_recognition": "1.3.0", "dlib": dlib.__version__,
                            "numpy": np.__version__, "python": sys.version.split()[0]},
               "dlib_avx": bool(getattr(dlib, "USE_AVX_INSTRUCTIONS", False)),
               "dlib_cuda": bool(getattr(dlib, "DLIB_USE_CUDA", False))}, sys.stdout)
    print()


def phases(list_file):
    """ms per photo of each step of load_image_file + face_encodings in the real package:
    decode, HOG detection (face_locations), and the encode of known boxes (5-point landmarks +
    chip + ResNet)."""
    with open(list_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    images = [face_recognition.load_image_file(p) for p in paths]
    boxes = [face_recognition.api._raw_face_locations(i) for i in images]
    known = [[face_recognition.api._rect_to_css(b) for b in bs] for bs in boxes]
    steps = {
        "load_image_file": lambda i: face_recognition.load_image_file(paths[i]),
        "detect_hog_up1": lambda i: face_recognition.api._raw_face_locations(images[i]),
        "encode_known_boxes": lambda i: face_recognition.face_encodings(images[i], known[i]),
        "face_encodings": lambda i: face_recognition.face_encodings(images[i]),
    }
    out = ms_per_item(steps, len(paths))
    json.dump({"impl": "face_recognition", "photos": len(paths), "ms_per_photo": out}, sys.stdout)
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference")
    ref.add_argument("out")
    ref.add_argument("images", nargs="+")
    ref.add_argument("--cnn", action="store_true", help="also the CNN detector (slow)")
    b = sub.add_parser("bench")
    b.add_argument("list_file")
    ph = sub.add_parser("phases")
    ph.add_argument("list_file")
    args = parser.parse_args()
    if args.command == "reference":
        reference(args.out, args.images, args.cnn)
    elif args.command == "phases":
        phases(args.list_file)
    else:
        bench(args.list_file)


if __name__ == "__main__":
    main()
