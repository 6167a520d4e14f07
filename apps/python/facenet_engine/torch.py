"""PyTorch front end: the engine's triplet loss as an autograd function and an ``nn.Module``,
and exact k-NN search on tensors. Importing this module imports torch.

The loss is computed by the engine (forward) together with its gradient dJ/dE; backward hands
that gradient back, scaled by ``grad_output`` (and by 1/count for the mean). The mined
selection is held fixed, the usual sub-gradient of batch-hard / semi-hard mining.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

from . import _core
from .search import knn_search
from .train import triplet_loss as _engine_triplet_loss

__all__ = ["TripletLoss", "TripletLossFunction", "knn_search", "triplet_loss"]

_REDUCTIONS = ("mean", "sum")


def _engine_device(embeddings: torch.Tensor) -> str:
    """CUDA float32 tensors run the engine's CUDA loss when it was built with CUDA; the rest
    (float64 included: the engine's double path is CPU-only) runs on the CPU."""
    cuda = embeddings.is_cuda and embeddings.dtype == torch.float32 and _core.has_cuda
    return "cuda" if cuda else "cpu"


class TripletLossFunction(torch.autograd.Function):
    """``TripletLossFunction.apply(embeddings, labels, triplets, mining, margin, reduction)``:
    the FaceNet triplet loss (a 0-d tensor) with the engine's gradient in backward. Exactly one
    of ``labels`` / ``triplets`` is a tensor, the other None."""

    @staticmethod
    def forward(ctx: Any, embeddings: torch.Tensor, labels: Optional[torch.Tensor],
                triplets: Optional[torch.Tensor], mining: str, margin: float,
                reduction: str) -> torch.Tensor:
        """Runs the engine once for the loss and its gradient, keeping the gradient of the
        reduced loss for backward."""
        if reduction not in _REDUCTIONS:
            raise _core.EngineError(f"triplet_loss: reduction '{reduction}': expected mean or sum")
        r = _engine_triplet_loss(embeddings, labels, triplets=triplets, mining=mining,
                                 margin=margin, grad=True, device=_engine_device(embeddings))
        mean = reduction == "mean"
        # d(loss_mean)/dE = dJ/dE / count; with count == 0 the engine's gradient is zero.
        scale = 1.0 / r.count if mean and r.count > 0 else 1.0
        ctx.save_for_backward(r.grad.to(embeddings.dtype) * scale)
        value = r.loss_mean if mean else r.loss_sum
        return torch.tensor(value, dtype=embeddings.dtype, device=embeddings.device)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        """The saved engine gradient times ``grad_output``; labels, triplets and the options
        get no gradient."""
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None, None, None


def triplet_loss(embeddings: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 mining: str = "batch_hard", margin: float = 0.2, reduction: str = "mean", *,
                 triplets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The FaceNet triplet loss of ``embeddings`` (B, d) as a differentiable 0-d tensor:
    ``labels`` (B,) mined with ``mining`` (batch_all | batch_hard | semi_hard), or explicit
    ``triplets`` (m, 3); ``reduction`` "mean" (over the engine's count) or "sum"."""
    return TripletLossFunction.apply(embeddings, labels, triplets, mining, margin, reduction)


class TripletLoss(nn.Module):
    """``nn.Module`` form of :func:`triplet_loss`: ``TripletLoss(mining, margin, reduction)``,
    called as ``loss(embeddings, labels)``."""

    def __init__(self, mining: str = "batch_hard", margin: float = 0.2,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.mining = mining
        self.margin = margin
        self.reduction = reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``embeddings`` (B, d) mined with ``labels`` (B,)."""
        return triplet_loss(embeddings, labels, self.mining, self.margin, self.reduction)

    def extra_repr(self) -> str:
        return f"mining={self.mining!r}, margin={self.margin}, reduction={self.reduction!r}"
