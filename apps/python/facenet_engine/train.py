"""The FaceNet triplet loss (:func:`triplet_loss`) on numpy arrays and PyTorch tensors, with
the engine's online mining (batch_all, batch_hard, semi_hard) or explicit triplets.

For autograd, use :mod:`facenet_engine.torch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _core
from ._arrays import host as _host
from ._arrays import is_torch as _is_torch

__all__ = ["TripletLossResult", "triplet_loss"]


@dataclass(frozen=True)
class TripletLossResult:
    """What :func:`triplet_loss` computed (the differentiable loss module is
    :class:`facenet_engine.torch.TripletLoss`).

    - ``loss_sum``: J = sum over counted triplets of max(D(a,p) - D(a,n) + margin, 0), with D
      the squared L2 distance.
    - ``loss_mean``: loss_sum / count (0 when count is 0).
    - ``count``: triplets the mean is over (batch_all: all valid; batch_hard: anchors with a
      positive and a negative; semi_hard: anchor-positive pairs; explicit: the triplets given).
    - ``active``: triplets with a loss > 0.
    - ``grad``: dJ/dE of the SUM (B, d), the same array type (numpy or torch) and device as
      the embeddings; float64 for float64 embeddings, float32 otherwise. None unless
      ``grad=True``. Divide by ``count`` for the gradient of ``loss_mean``.
    - ``triplets``: int32 (m, 3) rows (a, p, n), sorted (mined modes: batch_all lists only the
      active ones); None unless ``return_triplets=True``.
    - ``losses``: the loss of each row of ``triplets`` (None unless ``return_triplets=True``).
    """

    loss_sum: float
    loss_mean: float
    count: int
    active: int
    grad: Optional[Any] = None
    triplets: Optional[np.ndarray] = None
    losses: Optional[np.ndarray] = None


def triplet_loss(embeddings: Any, labels: Any = None, *, triplets: Any = None,
                 mining: str = "batch_hard", margin: float = 0.2, grad: bool = True,
                 return_triplets: bool = False, device: Optional[str] = None,
                 deterministic: bool = False) -> TripletLossResult:
    """The FaceNet triplet loss of ``embeddings`` (B, d): D is the squared L2 distance, no
    normalisation is applied.

    Pass exactly one of ``labels`` (B,) integers, mined with ``mining`` ("batch_all",
    "batch_hard", "semi_hard"), or ``triplets`` (m, 3) integer rows (anchor, positive,
    negative); ``mining`` is ignored with triplets. float64 embeddings run the engine's double
    path (CPU only), float32 its float path on ``device`` ("cpu" or "cuda"; None: where the
    embeddings are). A float32 CUDA tensor on ``device="cuda"`` is read in place and its
    gradient written into a new tensor on the same device, ordered on the caller's current
    CUDA stream (no copy, no host round trip but for the scalars); other CUDA tensors go
    through the host. ``deterministic`` fixes the GPU's reduction order (the CPU is always
    deterministic). Raises :class:`EngineError` naming the bad argument.
    """
    on_gpu = _is_torch(embeddings) and embeddings.device.type == "cuda"
    if device is None:
        device = "cuda" if on_gpu else "cpu"
    if on_gpu and device == "cuda" and embeddings.dtype == _torch_float32():
        return _on_device(embeddings, labels, triplets, mining, margin, grad, return_triplets,
                          deterministic)
    values = _core._triplet_loss(_host(embeddings), _host(labels), triplets=_host(triplets),
                                 mining=mining, margin=margin, grad=grad,
                                 return_triplets=return_triplets, device=device,
                                 deterministic=deterministic)
    loss_sum, loss_mean, count, active, g, picked, losses = values
    if g is not None and _is_torch(embeddings):
        import torch

        g = torch.from_numpy(g).to(embeddings.device)
    return TripletLossResult(loss_sum, loss_mean, count, active, g, picked, losses)


def _torch_float32():
    import torch

    return torch.float32


def _on_device(embeddings: Any, labels: Any, triplets: Any, mining: str, margin: float,
               grad: bool, return_triplets: bool, deterministic: bool) -> TripletLossResult:
    """A CUDA float32 tensor: read in place, the gradient into a tensor on its device, on the
    caller's current stream."""
    import torch

    e = embeddings.detach()
    if not e.is_contiguous():
        e = e.contiguous()
    g = torch.empty_like(e) if grad else None
    stream = torch.cuda.current_stream(e.device).cuda_stream
    values = _core._triplet_loss_cuda(e, _host(labels), triplets=_host(triplets), grad=g,
                                      mining=mining, margin=margin,
                                      return_triplets=return_triplets,
                                      deterministic=deterministic, stream=stream)
    loss_sum, loss_mean, count, active, _, picked, losses = values
    return TripletLossResult(loss_sum, loss_mean, count, active, g, picked, losses)
