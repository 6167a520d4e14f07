"""The durable gallery: enrolled identities and their face embeddings in one SQLite file (WAL),
with 1:1 verification and 1:K identification on numpy arrays.

A gallery holds embeddings of exactly one model, named by its embedding spec (the
``embedding_spec`` of :func:`facenet_engine.model_info`); wherever a ``model`` is asked for, a
model file path works too and its spec is read from the file (a path that names no file raises
EngineError). Distances are plain L2 (not squared). Every mistake (missing file, unknown name,
model mismatch, bad shape) raises :class:`facenet_engine.EngineError` with a message naming the
gallery file.

One :class:`Gallery` is one connection: threads may share it (their calls take turns, the GIL
released), or each open its own for parallel reads. Any number of readers and one writer at a
time may use a file, across threads and processes; each sees the others' committed writes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from . import _core
from ._core import EngineError

__all__ = [
    "DEFAULT_THRESHOLD",
    "Gallery",
    "Identification",
    "Identity",
    "Verification",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The fallback threshold on plain L2 distance between L2-normalised embeddings (0.7, the
#: OpenFace tutorial's), used when a call is given none. A gallery records only its model's spec,
#: not the model's own threshold: for dlib's ResNet (0.6) pass ``Pipeline.default_threshold``.
DEFAULT_THRESHOLD: float = _core.DEFAULT_THRESHOLD


@dataclasses.dataclass(frozen=True)
class Identity:
    """An enrolled person: row id, unique name, metadata (a JSON object), creation time (Unix
    seconds) and how many embeddings are enrolled."""

    name: str
    id: int
    metadata: Dict[str, Any]
    created_at: int
    embeddings: int

    @classmethod
    def _from_row(cls, row: Tuple[int, str, str, int, int]) -> "Identity":
        id_, name, metadata, created_at, embeddings = row
        return cls(name, id_, json.loads(metadata), created_at, embeddings)


@dataclasses.dataclass(frozen=True)
class Verification:
    """1:1 result: the smallest plain L2 distance from the probe to the identity's embeddings,
    the threshold used and whether the distance is within it."""

    name: str
    distance: float
    threshold: float
    match: bool


@dataclasses.dataclass(frozen=True)
class Identification:
    """1:K result for one probe: the best identity (``"unknown"`` when its distance exceeds the
    threshold), its distance, and the nearest identities as (name, distance), nearest first."""

    best: str
    distance: float
    top: List[Tuple[str, float]]


@functools.lru_cache(maxsize=16)
def _file_spec(path: str, mtime_ns: int, size: int) -> Tuple[str, int]:
    # Keyed on mtime and size too, so a rewritten model file is read again.
    return _core.model_embedding_spec(path)


def _names_a_file(model: PathLike) -> bool:
    """Whether `model` must be a model file rather than an embedding spec: a PathLike, a name
    ending in .safetensors, or one with a path separator and no '#'. (A spec is
    ``name/variant#fingerprint``: its '/' is not a separator, and it always has a '#'.)"""
    if not isinstance(model, str):
        return True
    if model.endswith(".safetensors"):
        return True
    separators = [s for s in (os.sep, os.altsep) if s]
    return "#" not in model and any(s in model for s in separators)


def _resolve_model(model: PathLike, gallery: str) -> Tuple[str, int]:
    """(embedding spec, dim) of `model`: a model file's own, or (model, 0) for a spec string.
    A model that names a file which does not exist raises EngineError, so that a mistyped path
    never becomes (and locks) a gallery's model spec."""
    text = os.fspath(model)
    if os.path.isfile(text):
        st = os.stat(text)
        return _file_spec(os.path.abspath(text), st.st_mtime_ns, st.st_size)
    if _names_a_file(model):
        raise EngineError(f"gallery '{gallery}': model file '{text}' not found (a model is a "
                          f"model file or an embedding spec 'name/variant#fingerprint')")
    return text, 0


def _spec_or_empty(model: Optional[PathLike], gallery: str) -> str:
    return "" if model is None else _resolve_model(model, gallery)[0]


def _floats(x: ArrayLike) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _threshold(threshold: Optional[float]) -> float:
    return DEFAULT_THRESHOLD if threshold is None else float(threshold)


def _reopen(path: str, mode: str) -> "Gallery":
    return Gallery.open(path, mode)


class Gallery:
    """One connection to a gallery file. Make one with :meth:`create` or :meth:`open`; use it as
    a context manager (or call :meth:`close`) to close the connection. Pickles as (path, mode):
    the unpickled copy opens its own connection, e.g. in a worker process."""

    __slots__ = ("_g",)

    def __init__(self, _handle: "_core.GalleryConnection") -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._g = _handle

    @classmethod
    def create(
        cls, path: PathLike, *, model: Optional[PathLike] = None, dim: int = 0
    ) -> "Gallery":
        """Creates a new gallery file (fails when `path` exists) and opens it for writing.

        `model` (an embedding spec or a model file) and `dim` fix the gallery's model now; a model
        file gives its own dim. Without them the first enrolment fixes the model."""
        path = os.fspath(path)
        spec, model_dim = ("", 0) if model is None else _resolve_model(model, path)
        if model_dim and dim and model_dim != dim:
            raise EngineError(
                f"cannot create gallery '{path}': model {model} makes {model_dim}-dimensional "
                f"embeddings, dim={dim} was given"
            )
        return cls(_core.GalleryConnection.create(path, spec, dim or model_dim))

    @classmethod
    def open(cls, path: PathLike, mode: str = "r") -> "Gallery":
        """Opens an existing gallery: mode ``"r"`` reads only, ``"w"`` may also write."""
        return cls(_core.GalleryConnection.open(os.fspath(path), mode))

    # ---- the connection ------------------------------------------------------------------------

    @property
    def path(self) -> pathlib.Path:
        """The gallery file, as given to create/open."""
        return pathlib.Path(self._g.path)

    @property
    def mode(self) -> str:
        """``"r"`` or ``"w"``."""
        return self._g.mode

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._g.closed

    def close(self) -> None:
        """Closes the connection (committed writes are on disk already); later calls raise."""
        self._g.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Tuple[Any, Tuple[str, str]]:
        return _reopen, (os.path.abspath(self._g.path), self._g.mode)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"mode={self.mode!r}"
        return f"Gallery({self._g.path!r}, {state})"

    # ---- writing -------------------------------------------------------------------------------

    def enroll(
        self,
        name: str,
        embeddings: ArrayLike,
        *,
        model: PathLike,
        sources: Optional[Sequence[PathLike]] = None,
        metadata: Optional[Dict[str, Any]] = None,
    ) -> Identity:
        """Enrols `embeddings` ((n, D) or (D,), converted to float32) of `model` (its embedding
        spec or model file) under `name`, in one transaction. A new name is created with
        `metadata` (a JSON-serialisable dict; ignored for an existing name); `sources` gives one
        image path per row, or None. Returns the identity with its new embedding count."""
        spec, model_dim = _resolve_model(model, self._g.path)
        x = _floats(embeddings)
        if model_dim and x.ndim in (1, 2) and x.shape[-1] != model_dim:
            raise EngineError(
                f"enroll '{name}' into gallery '{self._g.path}': the embeddings have "
                f"{x.shape[-1]} values, model {model} makes {model_dim}"
            )
        src = [] if sources is None else [os.fspath(s) for s in sources]
        meta = "" if metadata is None else json.dumps(metadata)
        return Identity._from_row(self._g.enroll(name, x, spec, src, meta))

    def remove(self, name: str) -> int:
        """Removes `name` and all its embeddings; returns how many embeddings went with it."""
        return self._g.remove(name)

    def remove_many(self, names: Iterable[str]) -> Dict[str, int]:
        """Removes every one of `names`, or none when one of them is unknown; returns the
        embeddings removed per name."""
        names = list(names)
        return dict(zip(names, self._g.remove_many(names)))

    # ---- reading -------------------------------------------------------------------------------

    def identities(self) -> List[Identity]:
        """Every enrolled identity, in enrolment (id) order."""
        return [Identity._from_row(r) for r in self._g.identities()]

    def identity(self, name: str) -> Identity:
        """The identity `name`; raises EngineError naming it when unknown."""
        return Identity._from_row(self._g.identity(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._g.contains(name)

    def __len__(self) -> int:
        return int(self._g.stats()["identities"])

    def stats(self) -> Dict[str, Any]:
        """gallery, identities, embeddings, model (None until fixed), dim, file_bytes,
        schema_version, created_at: what ``facenet gallery stats`` prints."""
        return self._g.stats()

    def embeddings(
        self, name: Optional[str] = None, *, model: Optional[PathLike] = None
    ) -> Tuple[np.ndarray, List[str]]:
        """(vectors float32 (N, D), the identity name of each row) of the whole gallery, or of
        `name` only, read from one snapshot in enrolment order. An empty gallery gives N = 0.
        A `model` given must be the gallery's."""
        return self._g.embeddings(name, _spec_or_empty(model, self._g.path))

    def verify(
        self,
        name: str,
        probe: ArrayLike,
        threshold: Optional[float] = None,
        *,
        model: Optional[PathLike] = None,
    ) -> Verification:
        """1:1: is `probe` (D,) the person `name`? The distance is the smallest plain L2 to the
        person's embeddings.

        `threshold` None means :data:`DEFAULT_THRESHOLD` (0.7), whatever the gallery's model: a
        gallery knows its model's spec, not its threshold. Pass the model's own threshold,
        :attr:`Pipeline.default_threshold <facenet_engine.Pipeline.default_threshold>` of the
        pipeline that made the embeddings, for models other than OpenFace's (dlib's ResNet:
        0.6)."""
        spec = _spec_or_empty(model, self._g.path)
        row = self._g.verify(name, _floats(probe), _threshold(threshold), spec)
        return Verification(*row)

    def identify(
        self,
        probes: ArrayLike,
        k: int = 5,
        threshold: Optional[float] = None,
        device: str = "cpu",
        *,
        model: Optional[PathLike] = None,
    ) -> List[Identification]:
        """1:K: the `k` nearest identities of each probe ((n, D) or (D,)), searched exactly
        over a snapshot of the gallery on `device` (``"cpu"`` or ``"cuda"``). The index is
        built per call; for many calls on an unchanging gallery, batch the probes.

        A best match farther than `threshold` is ``"unknown"``. `threshold` None means
        :data:`DEFAULT_THRESHOLD` (0.7), whatever the gallery's model; pass
        :attr:`Pipeline.default_threshold <facenet_engine.Pipeline.default_threshold>` (the
        model's own threshold) for models other than OpenFace's (dlib's ResNet: 0.6)."""
        spec = _spec_or_empty(model, self._g.path)
        rows = self._g.identify(_floats(probes), int(k), _threshold(threshold), device, spec)
        return [Identification(best, distance, list(top)) for best, distance, top in rows]

    def check(self) -> str:
        """SQLite's structural check (PRAGMA quick_check): ``"ok"``, or the problems found."""
        return self._g.check()
