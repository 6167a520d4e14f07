"""How the Python front ends hand arrays to the engine: numpy arrays and DLPack tensors (PyTorch
included) read in place where the engine's host code can, everything else made numpy."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

# A numpy scalar: numpy 1.x compares uint64 with a Python int in float64, where 2**63 - 1 == 2**63.
_INT64_MAX = np.uint64(np.iinfo(np.int64).max)


def is_torch(x: Any) -> bool:
    """True for torch.Tensor (and subclasses such as nn.Parameter), without importing torch."""
    return any(c.__module__.split(".")[0] == "torch" and c.__name__ == "Tensor"
               for c in type(x).__mro__)


def host(x: Any, dtype: Optional[Any] = None) -> Any:
    """What the engine reads on the host: numpy arrays and CPU tensors as they are (nanobind
    converts dtype/layout only when needed), tensors detached (DLPack refuses tensors that
    require grad) and copied to the host when on a device, other sequences as numpy arrays of
    ``dtype`` (None: numpy's choice). None stays None."""
    if x is None:
        return None
    if is_torch(x):
        return x.detach().cpu()  # .cpu() of a CPU tensor is the tensor itself
    if isinstance(x, np.ndarray) or hasattr(x, "__dlpack__"):
        return x
    return np.asarray(x, dtype=dtype)


def int64_ids(ids: Any, what: str) -> Optional[np.ndarray]:
    """``ids`` as a C-contiguous int64 numpy array, refusing what a cast would corrupt: a
    non-integer dtype (float ids would be truncated) raises TypeError and a uint64 id above
    2**63 - 1 (it would wrap negative) raises EngineError, both naming ``what``. Torch tensors
    are detached and brought to the host first; None stays None."""
    from ._core import EngineError

    if ids is None:
        return None
    if is_torch(ids):
        if ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise TypeError(f"{what} must be integers, got a {ids.dtype} tensor")
        ids = ids.detach().cpu().numpy()
    given = ids
    ids = np.asarray(ids)
    if ids.size == 0 and not isinstance(given, np.ndarray):
        ids = ids.astype(np.int64)  # [] is float64 to numpy, but no id is a fine id list
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{what} must be integers, got dtype {ids.dtype}")
    if ids.dtype == np.uint64 and ids.size and ids.max() > _INT64_MAX:
        raise EngineError(f"{what}: id {ids.max()} does not fit int64 (max {_INT64_MAX})")
    return np.ascontiguousarray(ids, dtype=np.int64)
