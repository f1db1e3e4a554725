"""Exact bilinear ops modulo a prime: the contraction lengths, and :func:`mod_bilinear`, a one-call
front to the :class:`~blindtrain.field.engine.FieldEngine` (int8 limbs on ``torch._int_mm`` or
float64 limbs, whichever the engine measured faster for the shape).
"""

from __future__ import annotations

import torch

from .. import bilinear
from .engine import engine_for


def contraction_length(fn: str, a_shape, b_shape, params: dict | None = None) -> int:
    """How many products each output element of ``fn(A, B)`` sums (an upper bound for convolutions);
    :func:`blindtrain.bilinear.contraction_length`."""
    return bilinear.contraction_length(fn, a_shape, b_shape, params)


def mod_bilinear(fn: str, a: torch.Tensor, b: torch.Tensor, modulus: int, params: dict | None = None, *,
                 backend: str = "auto") -> torch.Tensor:
    """``fn(A, B) mod p`` exactly, as int64 in ``[0, p)`` (operands: integer tensors, any sign)."""
    return engine_for(modulus, backend).bilinear(fn, a, b, params or {})
