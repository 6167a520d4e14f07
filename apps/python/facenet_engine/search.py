"""Exact k-NN search: :class:`FlatIndex` and :func:`knn_search` on numpy arrays and any DLPack
tensor (PyTorch included).

Distances are SQUARED L2, ascending; labels are the int64 ids given to :meth:`FlatIndex.add`.
Ids must have an integer dtype (floats raise TypeError rather than being truncated; a uint64
id above 2**63 - 1 raises EngineError rather than wrapping).

Arrays and tensors:

- float32 C-contiguous numpy arrays and CPU tensors are read in place (no copy); other dtypes
  and layouts are converted first. numpy in -> numpy out; torch in -> torch out (on the input's
  device).
- CUDA tensors with a ``device="cuda"`` index are searched on the device, ordered after the
  caller's current CUDA stream without a host synchronisation (the engine's stream waits on an
  event recorded on the caller's stream, and the caller's stream on one recorded after the
  search); queries are not checked for NaN on that path.
- Every other combination goes through host memory and synchronises: CUDA tensors with a
  ``device="cpu"`` index, and :meth:`FlatIndex.add` with CUDA tensors (the engine's add takes
  host rows).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from . import _core
from ._arrays import host as _host
from ._arrays import int64_ids as _int64_ids
from ._arrays import is_torch as _is_torch
from ._core import EngineError

__all__ = ["FlatIndex", "knn_search"]


def _restore(dim: int, storage: str, device: str, threads: int, vectors: np.ndarray,
             ids: np.ndarray) -> "FlatIndex":
    """Unpickles a :class:`FlatIndex`: the same rows re-added in the same slot order."""
    index = FlatIndex(dim, storage=storage, device=device, threads=threads)
    index.add(vectors, ids)
    return index


class FlatIndex(_core.FlatIndexBase):
    """Exact squared-L2 k-NN index (the engine's CpuFlatIndex or GpuFlatIndex).

    ``FlatIndex(dim, storage="fp32"|"bf16"|"fp16", device="cpu"|"cuda", threads=0)``:
    bf16 (CPU) stores split bf16 planes and returns results identical to fp32; fp16 is CUDA
    only. ``device="cuda"`` raises :class:`EngineError` when no GPU can be used.

    The index keeps a host copy of its rows in slot order (what pickling stores, so that a
    multiprocessing worker gets an equal index with the same tie order): host memory is the
    gallery's size again on top of the engine's own storage.
    """

    def __init__(self, dim: int, *, storage: str = "fp32", device: str = "cpu",
                 threads: int = 0) -> None:
        super().__init__(dim, storage=storage, device=device, threads=threads)

    def add(self, vectors: Any, ids: Any = None) -> None:
        """Adds the rows of ``vectors`` (n, dim) with integer ``ids`` (n,) that fit int64
        (default: len(self) onwards). Raises :class:`EngineError` on a wrong shape, NaN/inf, a
        repeated or out-of-range id, TypeError on non-integer ids."""
        super().add(_host(vectors, np.float32), _int64_ids(ids, "FlatIndex.add: ids"))

    def remove(self, ids: Any) -> int:
        """Removes integer ``ids`` (unknown ones are ignored); returns how many were removed."""
        return super().remove(_int64_ids(ids, "FlatIndex.remove: ids"))

    def search(self, queries: Any, k: int) -> Tuple[Any, Any]:
        """The ``k`` nearest ids of each query row: ``(distances, labels)``, float32 and int64,
        (nq, k), squared L2 ascending; padded with inf / -1 when k > len(self). numpy in ->
        numpy out; torch in -> torch out on the input's device."""
        if not _is_torch(queries):
            return super().search(_host(queries, np.float32), k)
        if queries.device.type == "cuda" and self.device == "cuda":
            return self._search_device(queries, k)
        distances, labels = super().search(_host(queries), k)
        import torch

        return (torch.from_numpy(distances).to(queries.device),
                torch.from_numpy(labels).to(queries.device))

    def _search_device(self, queries: Any, k: int) -> Tuple[Any, Any]:
        """CUDA tensors in and out, stream-ordered (see the module docstring)."""
        import torch

        if queries.device.index not in (None, 0):
            raise EngineError(f"FlatIndex.search: queries on {queries.device}; the index is on cuda:0")
        if not isinstance(k, int) or k < 1:
            raise EngineError(f"FlatIndex.search: k = {k} must be an int >= 1")
        q = queries.detach().to(torch.float32).contiguous()
        nq = q.shape[0] if q.dim() == 2 else 0
        distances = torch.empty((nq, k), dtype=torch.float32, device=q.device)
        labels = torch.empty((nq, k), dtype=torch.int64, device=q.device)
        if q.dim() == 2 and q.shape[1] == self.dim and (nq == 0 or len(self) == 0):
            # The device search needs work to do; empty results are the engine's padding.
            return distances.fill_(math.inf), labels.fill_(-1)
        stream = torch.cuda.current_stream(q.device).cuda_stream
        self._search_cuda(q, k, distances, labels, stream)
        return distances, labels

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        """Pickles dim, storage, device, threads and the rows with their ids in slot order."""
        vectors, ids = self._rows()
        return (_restore, (self.dim, self.storage, self.device, self.threads, vectors, ids))

    def __repr__(self) -> str:
        return (f"FlatIndex(dim={self.dim}, storage={self.storage!r}, device={self.device!r}, "
                f"size={len(self)})")


def knn_search(queries: Any, gallery: Any, k: int, *, storage: str = "fp32",
               device: Optional[str] = None) -> Tuple[Any, Any]:
    """One-shot exact k-NN: the ``k`` nearest rows of ``gallery`` (n, d) for each row of
    ``queries`` (nq, d), as ``(distances, labels)`` with labels = gallery row numbers.

    ``device`` defaults to "cuda" for a CUDA tensor gallery when the engine was built with
    CUDA, else "cpu" (CUDA tensors then go through the host). Same array rules as
    :class:`FlatIndex` (numpy in -> numpy out, torch in -> torch out)."""
    if device is None:
        on_gpu = _is_torch(gallery) and gallery.device.type == "cuda" and _core.has_cuda
        device = "cuda" if on_gpu else "cpu"
    shape = getattr(gallery, "shape", None)
    if shape is None:
        gallery = np.asarray(gallery, dtype=np.float32)
        shape = gallery.shape
    if len(shape) != 2:
        raise EngineError(f"knn_search: gallery has shape {tuple(shape)}, expected (n, d)")
    index = FlatIndex(int(shape[1]), storage=storage, device=device)
    index.add(gallery)
    return index.search(queries, k)
