"""facenet-engine from Python: the C++/CUDA face-recognition engine on numpy arrays and PyTorch
tensors.

- Models: :func:`model_info`, :func:`convert_openface_csv`, :func:`convert_dlib_resnet`,
  :func:`export_onnx`, :func:`fetch_dlib_models`, :func:`dlib_resnet_model`.
- The front door (:class:`Pipeline`): detect, landmarks, align, encode, identify, for image
  files, encoded bytes or pixel arrays, batched across calls and threads.
- The gallery (:class:`Gallery`): enrol, remove, list, verify, identify.
- Exact k-NN search (:class:`FlatIndex`) and the triplet loss (:func:`triplet_loss`; PyTorch:
  :mod:`facenet_engine.torch`).
- :mod:`facenet_engine.face_recognition`: a drop-in for the face_recognition package.

Engine errors are raised as :class:`EngineError` with the engine's message, which names the
file, tensor or argument at fault.
"""

import os as _os


def _shorten_openmp_spin() -> None:
    """libgomp's idle threads spin 300,000 iterations after each parallel region before they
    sleep: between the front door's batches that spinning takes a core from the threads
    decoding and detecting the next photos. The CLI runs its image commands with
    GOMP_SPINCOUNT=20000 for that reason; here the variable is set the same way, before the
    extension loads libgomp (it reads it once, when it loads), unless the caller set it or
    libgomp is already loaded (e.g. by torch). 200 raw LFW photos through Pipeline.encode
    (upsample 1, threads=2) on this project's 2-core EPYC, 7 alternating pairs of runs:
    median 51.2 photos/s with 20000 against 46.1 with the default (or 300000), faster in 6
    of the 7 pairs. Set GOMP_SPINCOUNT yourself to choose otherwise."""
    if "GOMP_SPINCOUNT" in _os.environ:
        return
    try:
        with open("/proc/self/maps") as maps:
            if "libgomp" in maps.read():
                return
    except OSError:
        return
    _os.environ["GOMP_SPINCOUNT"] = "20000"


_shorten_openmp_spin()

from ._core import (  # noqa: E402
    EngineError,
    convert_dlib_resnet,
    convert_openface_csv,
    default_dlib_models_dir,
    export_onnx,
    has_cuda,
    has_dlib,
    model_info,
)
from ._models import dlib_resnet_model, fetch_dlib_models
from .pipeline import *  # noqa: F401,F403  (Pipeline, ImageResult, FaceResult)
from .pipeline import __all__ as _pipeline_all
from .gallery import *  # noqa: F401,F403  (Gallery)
from .gallery import __all__ as _gallery_all
from .search import *  # noqa: F401,F403  (FlatIndex)
from .search import __all__ as _search_all
from .train import *  # noqa: F401,F403  (triplet_loss)
from .train import __all__ as _train_all

__version__ = "0.1.0"

__all__ = [
    "EngineError",
    "convert_dlib_resnet",
    "convert_openface_csv",
    "default_dlib_models_dir",
    "dlib_resnet_model",
    "export_onnx",
    "fetch_dlib_models",
    "has_cuda",
    "has_dlib",
    "model_info",
    *_pipeline_all,
    *_gallery_all,
    *_search_all,
    *_train_all,
]
