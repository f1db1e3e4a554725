"""Small modules blindtrain's models use so the glue can find every bilinear op."""

from __future__ import annotations

import torch
from torch import nn


class MatMul(nn.Module):
    """``torch.matmul(a, b)`` as a module: a product of two data operands (attention QKᵀ, AV).

    Models write attention products with it so that :func:`blindtrain.glue.install`
    can hand them to the protocol like any other bilinear op.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Arctan(nn.Module):
    """Elementwise ``atan`` (one of the activations of the OTP-training paper)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(x)
