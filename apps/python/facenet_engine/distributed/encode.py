"""Batch encoding on a Ray cluster: :func:`encode_dataset` and :func:`enroll_dataset`.

Ray Data reads the image files (read tasks spread over the cluster; the files must be visible
to every node, e.g. on shared storage or object storage Ray Data reads) and streams their
bytes to a pool of actors. Each actor holds one front-door :class:`facenet_engine.Pipeline`
(decode, detect, align, encode, batched by the engine) and turns a batch of images into rows:

======== ============================== ==============================================
column   type                           meaning
======== ============================== ==============================================
path     string                         the input file (or the Dataset's ``path``)
face     int32                          the face's index in the image; -1: no face or
                                        the image failed
box      list<int32> (4)                (left, top, right, bottom), dlib's inclusive
                                        corners; null when face is -1
score    float32                        the detector's score; null when face is -1
embedding list<float32> (D)             the embedding; null when face is -1
model    string                         the model's embedding spec (graph, variant,
                                        weight hash), as galleries record it
error    string                         why the image failed, naming it; '' when ok
======== ============================== ==============================================

Every input gives at least one row, so a run's output accounts for every input. A worker
that dies is restarted by Ray and its batch run again; a batch's rows are only emitted when
the whole batch is done, so the output holds every input exactly once. Rows come in no
particular order (sort by path, face when order matters).
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import ray

from .. import _core
from .._core import EngineError
from ..gallery import Gallery
from ..pipeline import Pipeline

__all__ = ["encode_dataset", "enroll_dataset", "list_images"]

PathLike = Union[str, "os.PathLike[str]"]

# Tests only: a file path; the first encoder actor that finds the file there deletes it and
# kills itself (SIGKILL) after encoding a batch, before returning it. Deleting is atomic, so
# exactly one actor dies once, mid-run.
KILL_ONCE_ENV = "FACENET_TEST_KILL_ENCODER_ONCE"

def list_images(inputs: Union[PathLike, Sequence[PathLike]],
                on_error: Optional[Callable[[str], Any]] = None) -> List[str]:
    """Files and directories expanded as the CLI does: directories recursively (sorted, image
    extensions), files as given (URIs such as s3://... too), local paths made absolute. An
    entry that cannot be read, or a local file that is missing or unreadable, is passed to
    `on_error` (default: printed to stderr) and skipped."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    report = on_error or (lambda msg: print(f"skipped: {msg}", file=sys.stderr))
    out = []
    for path, error in _core._expand_inputs([os.fsencode(p) for p in inputs]):
        name = _absolute(os.fsdecode(path))
        if not error and "://" not in name and not os.access(path, os.R_OK):
            # Ray Data's reader would fail the whole run on it: name it and go on.
            why = "no such file" if not os.path.lexists(path) else "cannot be read"
            error = os.fsencode(f"{name}: {why}")
        if error:
            report(os.fsdecode(error))
        else:
            out.append(name)
    return out


def _schema() -> pa.Schema:
    # Variable-size lists, not fixed-size: Parquet writers refuse a null fixed-size list.
    return pa.schema([
        ("path", pa.string()),
        ("face", pa.int32()),
        ("box", pa.list_(pa.int32())),
        ("score", pa.float32()),
        ("embedding", pa.list_(pa.float32())),
        ("model", pa.string()),
        ("error", pa.string()),
    ])


def _lists(rows: List[Optional[np.ndarray]], dtype: Any) -> pa.Array:
    """A list array of `rows`, None as a null (zero-length) entry."""
    lengths = np.array([0 if r is None else len(r) for r in rows], np.int32)
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [r for r in rows if r is not None]
    values = np.concatenate(present).astype(dtype, copy=False) if present else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values),
                                    mask=pa.array([r is None for r in rows], pa.bool_()))


def _rows(paths: Sequence[str], results: Sequence[Any], model: str) -> pa.Table:
    """One row per face of each result, one row (face -1) for an image with none or failed."""
    out_path: List[str] = []
    face: List[int] = []
    boxes: List[Optional[np.ndarray]] = []
    scores: List[Optional[float]] = []
    vectors: List[Optional[np.ndarray]] = []
    errors: List[str] = []
    for path, r in zip(paths, results):
        faces = [f for f in r.faces if f.embedding is not None] if r.ok else []
        if not faces:
            out_path.append(path)
            face.append(-1)
            boxes.append(None)
            scores.append(None)
            vectors.append(None)
            # The engine names a bytes input "bytes[i]": name the file instead.
            errors.append(r.error.replace(r.name, path, 1) if r.error else "")
            continue
        for i, f in enumerate(faces):
            out_path.append(path)
            face.append(i)
            boxes.append(np.asarray(f.box, np.int32))
            scores.append(f.score)
            vectors.append(f.embedding)
            errors.append("")
    return pa.Table.from_arrays([
        pa.array(out_path, pa.string()),
        pa.array(face, pa.int32()),
        _lists(boxes, np.int32),
        pa.array(scores, pa.float32()),
        _lists(vectors, np.float32),
        pa.array([model] * len(out_path), pa.string()),
        pa.array(errors, pa.string()),
    ], schema=_schema())


class _Encoder:
    """A Ray Data worker: one Pipeline, batches of (path, bytes) -> rows (see the module)."""

    def __init__(self, pipeline_args: Dict[str, Any], options: Dict[str, Any]) -> None:
        self._pipeline = Pipeline(**pipeline_args)
        self._options = options
        self._model = self._pipeline.embedding_spec

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = [str(p) for p in batch.column("path").to_pylist()]
        data = batch.column("bytes").to_pylist()
        results = self._pipeline.process(data, "encode", errors="return", **self._options)
        table = _rows(paths, results, self._model)
        _maybe_die()
        return table


def _maybe_die() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker:
        return
    try:
        os.unlink(marker)
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _actor_pool(size: int) -> "ray.data.ActorPoolStrategy":
    """`size` actors, each running two batches at once where this Ray can: one Pipeline's
    batcher then fills its forward passes from the next batch while the last images of the
    other are still being detected, instead of draining at every batch boundary (what a GPU
    worker would otherwise idle on; on 2 CPU cores it made no measurable difference)."""
    import inspect
    params = inspect.signature(ray.data.ActorPoolStrategy.__init__).parameters
    if "enable_true_multi_threading" in params:
        return ray.data.ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=2,
                                          enable_true_multi_threading=True)
    return ray.data.ActorPoolStrategy(size=size)


def encode_dataset(inputs: Union[PathLike, Sequence[PathLike], "ray.data.Dataset"],
                   model: PathLike, *, output: Optional[PathLike] = None,
                   device: str = "cpu", precision: str = "fp32", batch_size: int = 32,
                   concurrency: int = 1, num_cpus: Optional[float] = None,
                   num_gpus: float = 0, threads: int = 0, read_num_cpus: float = 0,
                   detector: str = "hog", align: str = "largest", upsample: int = 0,
                   jitter: int = 0, mirror: bool = False, alignment: Optional[str] = None,
                   dlib_models: Optional[PathLike] = None,
                   on_error: Optional[Callable[[str], Any]] = None
                   ) -> Union["ray.data.Dataset", str]:
    """Encodes images on the Ray cluster (``ray.init()`` first, or Ray starts a local one).

    Args:
        inputs: a directory (recursively), a list of files and directories, or a Ray
            Dataset with ``bytes`` and ``path`` columns (``ray.data.read_binary_files(...,
            include_paths=True)`` makes one).
        model: the encoder's model file (on every node, at the same path).
        output: a folder to write Parquet files into; None returns the (lazy) Dataset.
        device, precision: each worker's backend ("cpu", "cuda"; "fp32", "bf16", "fp16").
        batch_size: images per worker call (the engine batches their face chips).
        concurrency: worker actors (one Pipeline each).
        num_cpus: CPUs each worker reserves (None: ``threads`` or 1); num_gpus: GPUs each
            worker reserves (1 with device "cuda" when left 0).
        threads: engine threads per worker (0: ``num_cpus`` rounded, at least 1).
        read_num_cpus: CPUs each read task reserves (0: reads never wait for a CPU the
            workers hold; reading is I/O).
        detector, align, upsample, jitter, mirror, alignment: as :meth:`Pipeline.process`;
            align "all" gives every face of an image a row.
        on_error: called with the message of a directory entry that cannot be read (default:
            printed to stderr).

    Returns the Dataset of rows (schema in the module docstring), or `output` once written.
    """
    if int(batch_size) < 1:
        raise EngineError(f"encode_dataset: batch_size must be >= 1, got {batch_size}")
    if int(concurrency) < 1:
        raise EngineError(f"encode_dataset: concurrency must be >= 1, got {concurrency}")
    if device == "cuda" and not num_gpus:
        num_gpus = 1
    if num_cpus is None:
        num_cpus = float(threads) if threads else 1.0
    if not threads:
        threads = max(1, int(round(num_cpus)))
    model = os.path.abspath(os.fspath(model))
    if not os.path.isfile(model):
        raise EngineError(f"encode_dataset: model '{model}' is not a file")

    if isinstance(inputs, ray.data.Dataset):
        ds = inputs
    else:
        files = list_images(inputs, on_error)
        if not files:
            raise EngineError(f"encode_dataset: no image files in {inputs!r}")
        ds = ray.data.read_binary_files(files, include_paths=True, num_cpus=read_num_cpus)
    pipeline_args = dict(model=model, device=device, precision=precision, threads=threads,
                         workers=threads, batch=max(1, min(int(batch_size), 256)),
                         dlib_models=None if dlib_models is None else os.fspath(dlib_models))
    options = dict(detector=detector, align=align, upsample=upsample, jitter=jitter,
                   mirror=mirror, alignment=alignment)
    out = ds.map_batches(
        _Encoder, fn_constructor_kwargs={"pipeline_args": pipeline_args, "options": options},
        batch_size=int(batch_size), batch_format="pyarrow",
        compute=_actor_pool(int(concurrency)),
        num_cpus=num_cpus, num_gpus=num_gpus or None)  # Ray Data restarts and retries actors
    if output is None:
        return out
    output = _absolute(output)
    out.write_parquet(output)
    return output


def _absolute(path: PathLike) -> str:
    """A local path made absolute (workers do not share our working folder); URIs as given."""
    p = os.fspath(path)
    return p if "://" in p else os.path.abspath(p)


def _default_name(path: str) -> str:
    return pathlib.PurePath(path).parent.name


def enroll_dataset(encoded: Union["ray.data.Dataset", PathLike], gallery: Any, *,
                   name: Optional[Callable[[str], str]] = None,
                   metadata: Optional[Callable[[str], Optional[dict]]] = None
                   ) -> Dict[str, int]:
    """Enrols the rows of :func:`encode_dataset` (its Dataset, or its Parquet folder) into
    `gallery`: a :class:`facenet_engine.Gallery` opened for writing, or a
    :class:`ShardedGallery`. `name(path)` gives a row's identity (default: the image's folder
    name, as ``enroll --from-dirs``); each identity is enrolled in one call, its rows ordered
    by (path, face), with the image paths as sources (``path#face`` when an image has several
    faces). Rows with face -1 are counted, not enrolled. Returns counts: identities,
    embeddings, images_without_face, failed."""
    if not isinstance(encoded, ray.data.Dataset):
        encoded = ray.data.read_parquet(_absolute(encoded))
    name = name or _default_name
    groups: Dict[str, List[tuple]] = {}
    faces_per_image: Dict[str, int] = {}
    spec = None
    counts = {"identities": 0, "embeddings": 0, "images_without_face": 0, "failed": 0}
    for batch in encoded.iter_batches(batch_format="pyarrow", batch_size=4096):
        paths = batch.column("path").to_pylist()
        face = batch.column("face").to_numpy()
        errors = batch.column("error").to_pylist()
        models = batch.column("model").to_pylist()
        emb = batch.column("embedding")
        for i, p in enumerate(paths):
            if face[i] < 0:
                counts["failed" if errors[i] else "images_without_face"] += 1
                continue
            if spec is None:
                spec = models[i]
            elif models[i] != spec:
                raise EngineError(f"enroll_dataset: '{p}' was encoded by '{models[i]}', the "
                                  f"rows before it by '{spec}'")
            vec = np.asarray(emb[i].values.to_numpy(zero_copy_only=False), np.float32)
            groups.setdefault(name(p), []).append((p, int(face[i]), vec))
            faces_per_image[p] = faces_per_image.get(p, 0) + 1
    for who in sorted(groups):
        rows = sorted(groups[who], key=lambda r: (r[0], r[1]))
        vectors = np.stack([r[2] for r in rows])
        sources = [p if faces_per_image[p] == 1 else f"{p}#{f}" for p, f, _ in rows]
        meta = metadata(who) if metadata else None
        if isinstance(gallery, Gallery):
            gallery.enroll(who, vectors, model=spec, sources=sources, metadata=meta)
        else:
            gallery.enroll(who, vectors, sources=sources, metadata=meta)
        counts["identities"] += 1
        counts["embeddings"] += len(rows)
    return counts
