"""The front door from Python: images (paths, encoded bytes, numpy pixel arrays) -> detect ->
landmarks -> align -> encode -> identify, batched across calls and threads by the engine."""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._core import EngineError, FaceResult, ImageResult

__all__ = ["Pipeline", "ImageResult", "FaceResult", "InputError"]

Image = Union[str, "os.PathLike[str]", bytes, np.ndarray]
Box = Tuple[int, int, int, int]
Progress = Union[bool, Callable[[int, int], Any], None]


class InputError(EngineError):
    """Raised (with errors="raise") when an input failed: the message names the first failed
    input; ``results`` holds every ImageResult of the call, the good ones included."""

    def __init__(self, message: str, results: List[ImageResult]):
        super().__init__(message)
        self.results = results

    def __reduce__(self):  # raised in a worker process, re-raised in the parent
        return (InputError, (str(self), self.results))


_CALL_OPTIONS = ("detector", "align", "upsample", "jitter", "mirror", "alignment", "color", "k",
                 "threshold")


def _array_like(x: Any) -> bool:
    """A pixel array: numpy, or anything numpy reads (a CPU torch tensor, a PIL image...)."""
    return isinstance(x, np.ndarray) or hasattr(x, "__array_interface__") or \
        hasattr(x, "__array__") or hasattr(x, "__dlpack__")


def _numpy(x: Any, index: int) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and hasattr(x, "device") and getattr(x.device, "type", "cpu") != "cpu":
        raise TypeError(f"image {index}: pixel tensors must be on the CPU, got device {x.device}")
    if hasattr(x, "detach"):  # a torch tensor, possibly one that requires grad
        x = x.detach()
    return np.asarray(x)


def _pixels(a: np.ndarray, index: int) -> np.ndarray:
    """An H x W x 3 uint8 view (or copy) of a pixel array: gray is repeated, alpha dropped."""
    if a.dtype != np.uint8:
        raise TypeError(f"image {index}: pixel arrays must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image {index}: expected (height, width[, 3 or 4]) pixels, got shape "
                         f"{a.shape}")
    if a.strides[2] != 1 or a.strides[1] != 3 or a.strides[0] < 3 * a.shape[1]:
        a = np.ascontiguousarray(a)  # e.g. a flipped view (negative row stride)
    return a


def _as_list(images: Any) -> Tuple[List[Any], bool]:
    """The images as a list, and whether one image (not a sequence) was given."""
    if isinstance(images, (str, bytes, os.PathLike)):
        return [images], True
    if _array_like(images):
        a = _numpy(images, 0)
        if a.ndim == 4:
            return [_pixels(x, i) for i, x in enumerate(a)], False
        return [_pixels(a, 0)], True
    out = list(images)
    return [_pixels(_numpy(a, i), i) if _array_like(a) and not isinstance(a, (str, bytes)) else a
            for i, a in enumerate(out)], False


def _progress_callback(progress: Progress, total: int) -> Optional[Callable[[int, int], Any]]:
    if not progress:
        return None
    if callable(progress):
        return progress
    try:
        from tqdm import tqdm
    except ImportError:  # no tqdm: a plain counter on stderr
        import sys

        def plain(done: int, n: int) -> None:
            if done == n or done % 100 == 0:
                print(f"\r{done}/{n} images", end="\n" if done == n else "", file=sys.stderr)
        return plain
    bar = tqdm(total=total, unit="img")

    def update(done: int, n: int) -> None:
        bar.update(done - bar.n)
        if done == n:
            bar.close()
    return update


class Pipeline:
    """The engine's front door: one model, one backend, a dynamic batcher shared by every
    call and thread.

    Args:
        model: a model file (.safetensors; see :func:`facenet_engine.dlib_resnet_model` and
            the converters), or None for a detection-only pipeline (detect / landmarks).
        device: "cpu" (oneDNN), "cpu-reference" (the test oracle) or "cuda".
        precision: "fp32", "bf16" (CPU, CUDA) or "fp16" (CUDA).
        threads: CPU threads of the backend; 0 = every core.
        batch: face chips per forward pass.
        max_delay_ms: how long a chip may wait for a fuller batch (None: 10 ms CPU, 2 ms CUDA).
        max_queue: requests in flight at once (a call waits for room; it never fails busy).
        workers: threads that decode, detect and align; 0 = one per core.
        dlib_models: the folder of dlib's .dat files (None: the default folder).
        detector, align, upsample, jitter, mirror, alignment, color: defaults of every call
            (see :meth:`process`).

    Calls release the GIL, so threads calling at once share the batcher (bigger batches).
    A Pipeline pickles: a worker process re-creates it from the model path and options.
    """

    def __init__(self, model: Union[str, "os.PathLike[str]", None] = None, *, device: str = "cpu",
                 precision: str = "fp32", threads: int = 0, batch: int = 64,
                 max_delay_ms: Optional[float] = None, max_queue: int = 1024, workers: int = 0,
                 dlib_models: Union[str, "os.PathLike[str]", None] = None,
                 detector: str = "hog", align: str = "largest", upsample: int = 0, jitter: int = 0,
                 mirror: bool = False, alignment: Optional[str] = None, color: str = "rgb"):
        absolute = lambda p: None if p is None else os.path.abspath(os.fspath(p))  # noqa: E731
        self._init_args = dict(model=absolute(model), device=device, precision=precision,
                               threads=threads, batch=batch, max_delay_ms=max_delay_ms,
                               max_queue=max_queue, workers=workers,
                               dlib_models=absolute(dlib_models), detector=detector,
                               align=align, upsample=upsample, jitter=jitter, mirror=mirror,
                               alignment=alignment, color=color)
        self._defaults = dict(detector=detector, align=align, upsample=upsample, jitter=jitter,
                              mirror=mirror, alignment=alignment, color=color, k=5, threshold=None)
        self._impl = _core._Pipeline(
            None if model is None else os.fspath(model), device, precision, threads, batch,
            -1.0 if max_delay_ms is None else float(max_delay_ms), max_queue, workers,
            None if dlib_models is None else os.fspath(dlib_models))
        self._model = self._init_args["model"]
        self._gallery_lock = threading.Lock()
        self._gallery: Optional[str] = None

    def __reduce__(self):
        return (_restore, (self._init_args, self._gallery))

    def __repr__(self) -> str:
        return f"Pipeline(model={self._model!r}, backend={self.backend_name!r})"

    # ---- what the pipeline is -------------------------------------------------------------
    @property
    def model(self) -> Optional[str]:
        """The model file, or None (detection only)."""
        return self._model

    @property
    def dim(self) -> int:
        """Embedding size (0 without a model)."""
        return self._impl.dim

    @property
    def embedding_spec(self) -> str:
        """The model's identity as galleries record it (graph name, variant, weight hash)."""
        return self._impl.embedding_spec

    @property
    def backend_name(self) -> str:
        return self._impl.backend_name

    @property
    def default_threshold(self) -> float:
        """The model's own match threshold on plain L2 distance."""
        return self._impl.default_threshold

    def stats(self) -> dict:
        """Requests, busy answers, batches, chips, in flight, and batches run by size."""
        return self._impl.stats()

    # ---- the work ---------------------------------------------------------------------------
    def process(self, images: Union[Image, Sequence[Image]], task: str = "encode", *,
                boxes: Optional[Sequence[Optional[Sequence[Box]]]] = None,
                progress: Progress = False, errors: str = "raise",
                **options: Any) -> Union[ImageResult, List[ImageResult]]:
        """Runs images through the front door and returns their results.

        Args:
            images: one image or a sequence of them: a path, encoded bytes (JPEG, PNG, ...),
                or a uint8 array (H, W, 3) in ``color`` order (also (H, W) gray or (H, W, 4)
                with alpha dropped); a stacked (N, H, W, 3) array is N images.
            task: "detect" (boxes + landmarks), "align" (+ chips), "encode" (+ embeddings)
                or "identify" (+ gallery matches; see :meth:`set_gallery`).
            boxes: known face boxes instead of detection, (left, top, right, bottom) dlib
                inclusive corners: for one image a list of boxes, for a sequence one list
                (or None: detect) per image.
            progress: True for a progress bar (tqdm when installed), or a callable
                ``(done, total)``.
            errors: "raise": an :class:`InputError` naming the first failed input, raised
                after every input ran (``.results`` keeps them all); "return": failed
                inputs are results with status and error.
            detector: "hog", "cnn", "hog+cnn-retry" or "none" (the inputs are aligned crops,
                encoded whole).
            align: which faces: "largest", "all" (largest first), "all-as-detected" (the
                detector's order) or "centre".
            upsample: detector upsampling 0-3 (1 finds faces of ~40 px).
            jitter: > 0 averages that many jittered chips; mirror: also the mirrored chip.
            alignment: None (the model's), "dlib-chip-150-0.25", "dlib-chip-150-0.25-68" or
                "openface-outer-eyes-and-nose-96".
            color: "rgb" or "bgr", of pixel arrays in and chips out.
            k, threshold: task identify: identities per face, "unknown" above this L2
                distance (None: the model's threshold).
        """
        unknown = set(options) - set(_CALL_OPTIONS)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; expected {list(_CALL_OPTIONS)}")
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        o = {**self._defaults, **options}
        items, single = _as_list(images)
        if boxes is not None and single:
            boxes = [boxes]
        call = _core._CallOptions()
        call.task = task
        call.detector = o["detector"]
        call.pick = o["align"] if o["align"] != "none" else "largest"
        if o["align"] == "none":
            call.detector = "none"
        call.upsample = int(o["upsample"])
        call.jitter = int(o["jitter"])
        call.mirror = bool(o["mirror"])
        call.alignment = o["alignment"]
        call.color = o["color"]
        call.k = int(o["k"])
        if o["threshold"] is None:
            call.threshold = -1.0
        else:
            call.threshold = float(o["threshold"])
            if not math.isfinite(call.threshold) or call.threshold < 0:
                raise EngineError(f"threshold {o['threshold']!r} must be a finite distance >= 0 "
                                  "(None: the model's own)")
        if task == "identify" and self._gallery is None:
            raise EngineError("task identify needs a gallery: call set_gallery(path) first")
        results = self._impl.run(items, None if boxes is None else list(boxes), call,
                                 _progress_callback(progress, len(items)))
        if errors == "raise":
            bad = [r for r in results if not r.ok]
            if bad:
                more = f" (and {len(bad) - 1} more failed)" if len(bad) > 1 else ""
                raise InputError(bad[0].error + more, results)
        return results[0] if single else results

    def detect(self, images: Union[Image, Sequence[Image]], **kw: Any):
        """Faces with boxes, scores and landmarks (align defaults to "all" here)."""
        kw.setdefault("align", "all" if self._defaults["align"] == "largest" else
                      self._defaults["align"])
        return self.process(images, "detect", **kw)

    landmarks = detect  # the landmarks come with every detection

    def align(self, images: Union[Image, Sequence[Image]], **kw: Any):
        """Faces with their aligned chips (FaceResult.chips)."""
        return self.process(images, "align", **kw)

    def encode(self, images: Union[Image, Sequence[Image]], **kw: Any
               ) -> Union[np.ndarray, List[np.ndarray]]:
        """Embeddings as float32 arrays.

        With align "largest"/"centre" or detector "none" (crops): an (N, D) array, one row
        per image, NaN for an image without a face (a (D,) row for one image). With align
        "all"/"all-as-detected": one (faces, D) array per image. Options as in
        :meth:`process`.
        """
        results = self.process(images, "encode", **kw)
        single = isinstance(results, ImageResult)
        if single:
            results = [results]
        align = kw.get("align", self._defaults["align"])
        crops = kw.get("detector", self._defaults["detector"]) == "none" or align == "none"
        d = self.dim
        if align in ("all", "all-as-detected") and not crops:
            out = [np.stack([f.embedding for f in r.faces]) if r.faces else
                   np.zeros((0, d), np.float32) for r in results]
            return out[0] if single else out
        rows = np.full((len(results), d), np.nan, dtype=np.float32)
        for i, r in enumerate(results):
            if r.faces and r.faces[0].embedding is not None:
                rows[i] = r.faces[0].embedding
        return rows[0] if single else rows

    # ---- galleries --------------------------------------------------------------------------
    def set_gallery(self, gallery: Union[str, "os.PathLike[str]", Any]) -> int:
        """Loads a gallery file (or a :class:`facenet_engine.Gallery`'s file) for task
        identify, replacing the previous one; returns its number of embeddings."""
        path = os.fspath(getattr(gallery, "path", gallery))
        with self._gallery_lock:
            rows = self._impl.set_gallery(path)
            self._gallery = path
        return rows

    def identify(self, images: Union[Image, Sequence[Image]], gallery: Any = None,
                 **kw: Any):
        """Task identify: each face's nearest identities (FaceResult.match). ``gallery``
        (path or Gallery) is loaded first when given."""
        if gallery is not None:
            self.set_gallery(gallery)
        kw.setdefault("align", "all" if self._defaults["align"] == "largest" else
                      self._defaults["align"])
        return self.process(images, "identify", **kw)

    def enroll(self, gallery: Any, name: str, images: Union[Image, Sequence[Image]], *,
               metadata: Optional[dict] = None, **kw: Any):
        """One-shot enrolment: encodes the largest face of each image and adds the embeddings
        to ``gallery`` (a :class:`facenet_engine.Gallery` opened for writing) under ``name``
        in one transaction. Images without a face are skipped; none at all raises."""
        results = self.process(images, "encode", **kw)
        if isinstance(results, ImageResult):
            results = [results]
        rows, sources = [], []
        for r in results:
            for i, f in enumerate(r.faces):
                if f.embedding is not None:
                    rows.append(f.embedding)
                    sources.append(r.name if len(r.faces) == 1 else f"{r.name}#{i}")
        if not rows:
            raise EngineError(f"enroll {name!r}: no face found in any of {len(results)} image(s)")
        return gallery.enroll(name, np.stack(rows), model=self.embedding_spec, sources=sources,
                              metadata=metadata)


def _restore(args: dict, gallery: Optional[str] = None) -> Pipeline:
    p = Pipeline(**args)
    if gallery is not None:
        p.set_gallery(gallery)
    return p
