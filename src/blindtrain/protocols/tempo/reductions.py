"""Small tensor helpers of tempo's encode / check passes: thin products, channel norms, tensor identity."""

from __future__ import annotations

import torch

from ...kernels.gather import thin_product


def thin_columns(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for a thin ``b`` (a few check vectors as columns): see :func:`~blindtrain.kernels.gather.thin_product`."""
    return thin_product(a, b.t().contiguous())


def ident(t: torch.Tensor) -> tuple:
    """What identifies a tensor's contents across the hooks of one step: same storage, layout, shape and
    in-place version (a tensor modified in place since the products were saved does not match)."""
    return t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t._version


def l1(t: torch.Tensor) -> torch.Tensor:
    """Σ over channels of |t| (N×1×H×W); a plain reduction, much faster than linalg.vector_norm on dim 1."""
    return t.abs().sum(1, keepdim=True)


def linf(t: torch.Tensor) -> torch.Tensor:
    """max over channels of |t| (N×1×H×W)."""
    return torch.maximum(t.amax(1, keepdim=True), -t.amin(1, keepdim=True))
