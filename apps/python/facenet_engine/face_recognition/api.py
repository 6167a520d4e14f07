"""face_recognition 1.3.0's API (``face_recognition.api``) on the engine's front door.

Every function keeps face_recognition's name, arguments, defaults, return types and units:
boxes are ``(top, right, bottom, left)`` tuples of ints ("css" order), landmarks are lists of
``(x, y)`` int tuples, encodings are 128-d float64 numpy arrays of dlib's face ResNet, and the
private helpers return objects with the methods of dlib's ``rectangle``, ``mmod_rectangle``,
``full_object_detection`` and ``point``. The work is done by one lazily created
:class:`facenet_engine.Pipeline` per process (dlib's HOG and CNN detectors, dlib's 5- and
68-point shape predictors, dlib's ResNet run by the engine); neither dlib nor a second
pipeline is imported here.

How a call maps onto the pipeline:

- ``model="hog"`` -> ``detector="hog"``, ``model="cnn"`` -> ``detector="cnn"``;
  ``number_of_times_to_upsample`` -> ``upsample``; faces are kept in the detector's order
  (``align="all-as-detected"``), as dlib returns them.
- ``known_face_locations`` / ``face_locations`` -> ``boxes=`` (dlib's inclusive corners, what
  ``_css_to_rect`` makes): landmarks are placed in those boxes, no detection runs.
- ``face_encodings(model="small")`` aligns with dlib's 5-point chip (``"dlib-chip-150-0.25"``),
  any other model with the chip from the 68 points (``"dlib-chip-150-0.25-68"``), as dlib's
  ``compute_face_descriptor`` does for the shape it is given.
- ``num_jitters`` <= 1 encodes the chip once (dlib: no jitter); ``n > 1`` encodes n jittered
  copies and averages them (``jitter=n``).
- Images are RGB (or gray) uint8 arrays (``color="rgb"``).
- The pipeline runs the network on one thread (one chip per call; see ``_FORWARD_THREADS``);
  calls from several threads at once share it and overlap.

Where the drop-in differs from face_recognition + dlib, unavoidably or on purpose:

- ``num_jitters > 1``: the engine's jittered copies are dlib's ``jitter_image`` transforms, but
  drawn from the engine's own random stream (seeded per input, so a rerun repeats itself);
  dlib draws from a global stream. The encodings differ slightly from dlib's (both are noisy
  averages of the same distribution); with ``num_jitters=1`` they match to float rounding.
- ``batch_size`` of ``batch_face_locations``/``_raw_face_locations_batched`` is accepted and
  not used: the pipeline batches by itself.
- Non-contiguous arrays (e.g. ``frame[:, :, ::-1]``) are accepted (copied first). Images
  must be uint8, as dlib requires; another dtype is reported by the pipeline's error.
- The module-level dlib objects of face_recognition (``face_detector``, ``pose_predictor_*``,
  ``cnn_face_detector``, ``face_encoder``) do not exist: their work is the pipeline's.
- As in face_recognition, importing this module sets PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES``
  so that truncated files still load.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
from PIL import ImageFile

import facenet_engine as _fe

ImageFile.LOAD_TRUNCATED_IMAGES = True  # face_recognition does this on import too

Css = Tuple[int, int, int, int]  # (top, right, bottom, left)

__all__ = [
    "load_image_file",
    "face_locations",
    "batch_face_locations",
    "face_landmarks",
    "face_encodings",
    "compare_faces",
    "face_distance",
]


# --- dlib-shaped result objects ------------------------------------------------------------


class point:  # noqa: N801  (dlib's name)
    """dlib.point: integer pixel coordinates ``x``, ``y``."""

    __slots__ = ("x", "y")

    def __init__(self, x: int, y: int) -> None:
        self.x = int(x)
        self.y = int(y)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"({self.x}, {self.y})"


class rectangle:  # noqa: N801  (dlib's name)
    """dlib.rectangle: inclusive corners, so ``width() == right() - left() + 1``."""

    __slots__ = ("_l", "_t", "_r", "_b")

    def __init__(self, left: int = 0, top: int = 0, right: int = -1, bottom: int = -1) -> None:
        self._l, self._t, self._r, self._b = int(left), int(top), int(right), int(bottom)

    def left(self) -> int:
        return self._l

    def top(self) -> int:
        return self._t

    def right(self) -> int:
        return self._r

    def bottom(self) -> int:
        return self._b

    def width(self) -> int:
        return self._r - self._l + 1

    def height(self) -> int:
        return self._b - self._t + 1

    def area(self) -> int:
        return 0 if self.is_empty() else self.width() * self.height()

    def is_empty(self) -> bool:
        return self._l > self._r or self._t > self._b

    def tl_corner(self) -> point:
        return point(self._l, self._t)

    def br_corner(self) -> point:
        return point(self._r, self._b)

    def center(self) -> point:
        # dlib's center(): the midpoint rounded half up (integer division of the sums + 1).
        return point((self._l + self._r + 1) // 2, (self._t + self._b + 1) // 2)

    def contains(self, p: Union[point, Tuple[int, int]]) -> bool:
        x, y = (p.x, p.y) if isinstance(p, point) else p
        return self._l <= x <= self._r and self._t <= y <= self._b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, rectangle) and self._ltrb() == other._ltrb()

    def __hash__(self) -> int:
        return hash(self._ltrb())

    def _ltrb(self) -> Tuple[int, int, int, int]:
        return (self._l, self._t, self._r, self._b)

    def __repr__(self) -> str:
        return f"[({self._l}, {self._t}) ({self._r}, {self._b})]"


class mmod_rectangle:  # noqa: N801  (dlib's name)
    """dlib.mmod_rectangle, a CNN detection: ``rect`` (a :class:`rectangle`), ``confidence``."""

    __slots__ = ("rect", "confidence")

    def __init__(self, rect: rectangle, confidence: float) -> None:
        self.rect = rect
        self.confidence = float(confidence)

    def __repr__(self) -> str:
        return f"mmod_rectangle({self.rect!r}, confidence={self.confidence})"


class full_object_detection:  # noqa: N801  (dlib's name)
    """dlib.full_object_detection: a box and the landmark points placed in it."""

    __slots__ = ("_rect", "_parts")

    def __init__(self, rect: rectangle, parts: Sequence[point]) -> None:
        self._rect = rect
        self._parts = list(parts)

    @property
    def rect(self) -> rectangle:
        return self._rect

    @property
    def num_parts(self) -> int:
        return len(self._parts)

    def part(self, idx: int) -> point:
        if not 0 <= idx < len(self._parts):
            raise IndexError(f"part index {idx} out of range (num_parts {len(self._parts)})")
        return self._parts[idx]

    def parts(self) -> List[point]:
        return list(self._parts)

    def __repr__(self) -> str:
        return f"full_object_detection(rect={self._rect!r}, num_parts={len(self._parts)})"


# --- the one pipeline ----------------------------------------------------------------------

# Every face_recognition call is one image, so the ResNet runs one chip at a time: a second
# OpenMP thread in that forward saves ~nothing on a quiet machine (27.8 vs 27.3 photos/s), and
# on a busy one its barriers wait for a descheduled thread (next to one compile: 2.8 against
# 20.0 photos/s; bench/results/face-recognition-cpu-2026-12-01). Callers overlapping calls from
# several threads still use every core: the pipeline prepares photos on one worker per core.
_FORWARD_THREADS = 1

_pipeline: Optional[Any] = None
_pipeline_lock = threading.Lock()
# Constructor options of the pipeline made next (threads, device, ...): _set_pipeline_options.
_pipeline_options: Dict[str, Any] = {}


def _get_pipeline() -> Any:
    """The process's pipeline with dlib's ResNet, made on first use (once, thread-safe)."""
    global _pipeline
    pipeline = _pipeline
    if pipeline is None:
        with _pipeline_lock:
            if _pipeline is None:
                options = dict(color="rgb", detector="hog", align="all-as-detected",
                               threads=_FORWARD_THREADS)
                options.update(_pipeline_options)
                _pipeline = _fe.Pipeline(_fe.dlib_resnet_model(), **options)
            pipeline = _pipeline
    return pipeline


def _set_pipeline_options(**options: Any) -> None:
    """Options for ``facenet_engine.Pipeline(...)`` (e.g. ``threads=1``); the next call makes a
    new pipeline with them. Not part of face_recognition: for the CLIs' worker processes and
    benchmarks."""
    global _pipeline
    with _pipeline_lock:
        _pipeline_options.clear()
        _pipeline_options.update(options)
        _pipeline = None


def _as_pixels(img: Any) -> np.ndarray:
    """A C-contiguous array the pipeline takes (uint8 HxW gray, HxWx3 RGB, HxWx4 RGBA)."""
    return np.ascontiguousarray(img)


def _detect(images: List[np.ndarray], **options: Any) -> List[Any]:
    """Pipeline detect for a list of images (always a list: one ImageResult per image)."""
    return _get_pipeline().detect([_as_pixels(i) for i in images], align="all-as-detected",
                                  **options)


def _box_to_rect(box: Sequence[int]) -> rectangle:
    left, top, right, bottom = (int(v) for v in box)
    return rectangle(left, top, right, bottom)


# --- box conversions -----------------------------------------------------------------------


def _rect_to_css(rect: rectangle) -> Css:
    """A dlib-style rectangle as a ``(top, right, bottom, left)`` tuple."""
    return rect.top(), rect.right(), rect.bottom(), rect.left()


def _css_to_rect(css: Sequence[int]) -> rectangle:
    """A ``(top, right, bottom, left)`` tuple as a dlib-style rectangle."""
    top, right, bottom, left = css[0], css[1], css[2], css[3]
    return rectangle(left, top, right, bottom)


def _trim_css_to_bounds(css: Sequence[int], image_shape: Sequence[int]) -> Css:
    """Clips a ``(top, right, bottom, left)`` box to an image of ``image_shape`` (numpy shape).

    As in face_recognition, right and bottom are clipped to the width and height themselves
    (one past the last pixel), top and left to 0.
    """
    height, width = image_shape[0], image_shape[1]
    return max(css[0], 0), min(css[1], width), min(css[2], height), max(css[3], 0)


# --- detection -----------------------------------------------------------------------------


def _raw_face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1,
                        model: str = "hog") -> Union[List[rectangle], List[mmod_rectangle]]:
    """The faces in an image as dlib-style objects, in the detector's order.

    :param img: an image (numpy array, RGB or gray)
    :param number_of_times_to_upsample: how often to double the image first; more finds
        smaller faces
    :param model: "cnn" for dlib's CNN detector (returns mmod_rectangle objects with ``.rect``
        and ``.confidence``); anything else for dlib's HOG detector (returns rectangles)
    """
    if model == "cnn":
        (result,) = _detect([img], detector="cnn", upsample=number_of_times_to_upsample)
        return [mmod_rectangle(_box_to_rect(f.box), f.score) for f in result.faces]
    (result,) = _detect([img], detector="hog", upsample=number_of_times_to_upsample)
    return [_box_to_rect(f.box) for f in result.faces]


def face_locations(img: np.ndarray, number_of_times_to_upsample: int = 1,
                   model: str = "hog") -> List[Css]:
    """The faces in an image as ``(top, right, bottom, left)`` tuples clipped to the image.

    :param img: an image (numpy array)
    :param number_of_times_to_upsample: how often to upsample the image looking for faces;
        higher numbers find smaller faces
    :param model: "hog" (default; faster on CPUs) or "cnn" (dlib's more accurate CNN detector)
    :return: a list of (top, right, bottom, left) tuples, in the detector's order
    """
    raw = _raw_face_locations(img, number_of_times_to_upsample, model)
    rects = [d.rect for d in raw] if model == "cnn" else raw
    return [_trim_css_to_bounds(_rect_to_css(r), img.shape) for r in rects]


def _raw_face_locations_batched(images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1,
                                batch_size: int = 128) -> List[List[mmod_rectangle]]:
    """dlib's CNN detector on a list of images: one list of mmod_rectangle per image.

    ``batch_size`` is accepted for compatibility; the pipeline batches by itself.
    """
    results = _detect(list(images), detector="cnn", upsample=number_of_times_to_upsample)
    return [[mmod_rectangle(_box_to_rect(f.box), f.score) for f in r.faces] for r in results]


def batch_face_locations(images: Sequence[np.ndarray], number_of_times_to_upsample: int = 1,
                         batch_size: int = 128) -> List[List[Css]]:
    """The CNN detector's faces for each image of a list, as (top, right, bottom, left) tuples.

    As in face_recognition, every image's boxes are clipped to the shape of the FIRST image
    (the images are expected to be video frames of one size).

    :param images: a list of images (numpy arrays)
    :param number_of_times_to_upsample: how often to upsample each image looking for faces
    :param batch_size: accepted for compatibility; the pipeline batches by itself
    :return: one list of (top, right, bottom, left) tuples per image
    """
    raw = _raw_face_locations_batched(images, number_of_times_to_upsample, batch_size)
    shape = images[0].shape if len(raw) else None
    return [[_trim_css_to_bounds(_rect_to_css(d.rect), shape) for d in dets] for dets in raw]


# --- landmarks and encodings ---------------------------------------------------------------


def _known_boxes(locations: Iterable[Sequence[int]]) -> List[Tuple[int, int, int, int]]:
    """(top, right, bottom, left) tuples as the pipeline's (left, top, right, bottom) boxes."""
    boxes = []
    for css in locations:
        r = _css_to_rect(css)
        boxes.append((r.left(), r.top(), r.right(), r.bottom()))
    return boxes


def _located_faces(face_image: np.ndarray, face_locations: Optional[Iterable[Sequence[int]]]):
    """The pipeline's faces (box + 68 and 5 landmarks): detected (HOG, one upsampling) when no
    locations are given, else placed in the given boxes in their order."""
    if face_locations is None:
        (result,) = _detect([face_image], detector="hog", upsample=1)
        return result.faces
    boxes = _known_boxes(face_locations)
    if not boxes:
        return []
    (result,) = _detect([face_image], boxes=[boxes])
    return result.faces


def _points(landmarks: np.ndarray) -> List[point]:
    # dlib's shape predictor gives integer points; the engine carries them as floats.
    return [point(int(round(float(x))), int(round(float(y)))) for x, y in landmarks]


def _raw_face_landmarks(face_image: np.ndarray,
                        face_locations: Optional[Iterable[Sequence[int]]] = None,
                        model: str = "large") -> List[full_object_detection]:
    """dlib-style shapes (``.parts()``, ``.rect``) of the faces: 5 points for ``model="small"``,
    68 otherwise; faces found with HOG (one upsampling) unless ``face_locations`` are given."""
    shapes = []
    for f in _located_faces(face_image, face_locations):
        marks = f.landmarks5 if model == "small" else f.landmarks
        shapes.append(full_object_detection(_box_to_rect(f.box), _points(marks)))
    return shapes


def _landmark_dict_68(p: List[Tuple[int, int]]) -> Dict[str, List[Tuple[int, int]]]:
    # iBUG 300-W indices; the lips run around the outer contour then back along the inner one,
    # exactly as face_recognition lists them.
    return {
        "chin": p[0:17],
        "left_eyebrow": p[17:22],
        "right_eyebrow": p[22:27],
        "nose_bridge": p[27:31],
        "nose_tip": p[31:36],
        "left_eye": p[36:42],
        "right_eye": p[42:48],
        "top_lip": p[48:55] + [p[i] for i in (64, 63, 62, 61, 60)],
        "bottom_lip": p[54:60] + [p[i] for i in (48, 60, 67, 66, 65, 64)],
    }


def _landmark_dict_5(p: List[Tuple[int, int]]) -> Dict[str, List[Tuple[int, int]]]:
    # dlib's 5-point model: 0-1 one eye's corners, 2-3 the other's, 4 below the nose.
    return {"nose_tip": [p[4]], "left_eye": p[2:4], "right_eye": p[0:2]}


def face_landmarks(face_image: np.ndarray,
                   face_locations: Optional[Iterable[Sequence[int]]] = None,
                   model: str = "large") -> List[Dict[str, List[Tuple[int, int]]]]:
    """The facial features of each face (eyes, nose, lips, ...) as lists of (x, y) points.

    :param face_image: image to search
    :param face_locations: optionally, the (top, right, bottom, left) boxes to place landmarks
        in (no detection then)
    :param model: "large" (default, 68 points: chin, left_eyebrow, right_eyebrow, nose_bridge,
        nose_tip, left_eye, right_eye, top_lip, bottom_lip) or "small" (5 points: nose_tip,
        left_eye, right_eye)
    :return: one dict per face
    :raises ValueError: for another model (after the faces were located, as face_recognition)
    """
    shapes = _raw_face_landmarks(face_image, face_locations, model)
    as_tuples = [[(p.x, p.y) for p in s.parts()] for s in shapes]
    if model == "large":
        return [_landmark_dict_68(p) for p in as_tuples]
    if model == "small":
        return [_landmark_dict_5(p) for p in as_tuples]
    raise ValueError("Invalid landmarks model type. Supported models are ['small', 'large'].")


def face_encodings(face_image: np.ndarray,
                   known_face_locations: Optional[Iterable[Sequence[int]]] = None,
                   num_jitters: int = 1, model: str = "small") -> List[np.ndarray]:
    """The 128-d dlib ResNet encoding of each face in the image.

    :param face_image: the image that contains one or more faces
    :param known_face_locations: optionally, the (top, right, bottom, left) boxes of the faces
    :param num_jitters: how many times to re-sample each face (random jitter) and average;
        1 (default) encodes the face once
    :param model: "small" (default: the chip from 5 landmarks, faster) or "large" (from 68)
    :return: a list of float64 arrays of shape (128,), one per face, in detection (or the
        given boxes') order
    """
    options: Dict[str, Any] = dict(
        align="all-as-detected",
        alignment="dlib-chip-150-0.25" if model == "small" else "dlib-chip-150-0.25-68",
        jitter=int(num_jitters) if num_jitters > 1 else 0,
    )
    if known_face_locations is None:
        options.update(detector="hog", upsample=1)
    else:
        boxes = _known_boxes(known_face_locations)
        if not boxes:
            return []
        options["boxes"] = [boxes]
    pipeline = _get_pipeline()
    (rows,) = pipeline.encode([_as_pixels(face_image)], **options)
    # float64 like np.array(dlib.vector); dlib's ResNet computes in float32 as the engine does.
    return [row.astype(np.float64) for row in np.asarray(rows).reshape(-1, pipeline.dim)]


# --- comparison ----------------------------------------------------------------------------


def face_distance(face_encodings: Union[Sequence[np.ndarray], np.ndarray],
                  face_to_compare: np.ndarray) -> np.ndarray:
    """The euclidean distance of each known encoding to ``face_to_compare``.

    :param face_encodings: a list (or array) of face encodings
    :param face_to_compare: one face encoding
    :return: a numpy array of distances in the order of ``face_encodings`` (empty for none)
    """
    if len(face_encodings) == 0:
        return np.empty((0,))
    return np.linalg.norm(np.asarray(face_encodings) - face_to_compare, axis=1)


def compare_faces(known_face_encodings: Union[Sequence[np.ndarray], np.ndarray],
                  face_encoding_to_check: np.ndarray, tolerance: float = 0.6) -> list:
    """Whether each known encoding matches the one to check (distance <= ``tolerance``).

    :param known_face_encodings: a list of known face encodings
    :param face_encoding_to_check: one face encoding
    :param tolerance: the largest distance that is a match; lower is stricter, 0.6 is typical
    :return: a list of True/False values, one per known encoding
    """
    return list(face_distance(known_face_encodings, face_encoding_to_check) <= tolerance)


def load_image_file(file: Any, mode: str = "RGB") -> np.ndarray:
    """Loads an image file (.jpg, .png, ...) into a numpy array.

    :param file: a file name or file object
    :param mode: the PIL mode to convert to: "RGB" (default, 8-bit RGB) or "L" (gray);
        a false value keeps the file's own mode
    :return: the pixels as a numpy array
    """
    image = PIL.Image.open(file)
    if mode:
        image = image.convert(mode)
    return np.array(image)
