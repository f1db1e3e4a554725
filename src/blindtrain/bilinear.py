"""The bilinear functions every offloaded op is one of: ``f(A, B)``, linear in each operand.

Shapes (b: batch rows, n: input features / channels, m: output features / channels):

====================  =====================================  ===============================
name                  f(A, B)                                used for
====================  =====================================  ===============================
``matmul``            ``A @ B``  (…×n, n×m) -> …×m             Linear forward ``X·Wᵀ``, grad-input ``dY·W``
``matmul_tn``         ``Aᵀ @ B`` (b×n, b×m) -> n×m            Linear weight gradient ``Xᵀ·dY``
``bmm``               ``A @ B`` batched (…×p×q, …×q×r)        attention ``Q·Kᵀ``, ``A·V``
``conv2d``            ``conv2d(A=x, B=w)``                    Conv2d forward
``conv2d_input``      ``∂/∂x`` with A = dY, B = w             Conv2d input gradient
``conv2d_weight``     ``∂/∂w`` with A = x, B = dY             Conv2d weight gradient
====================  =====================================  ===============================

The same code runs on the worker and in the enclave, on any dtype: float32 for
float protocols, float64 holding integers for the field protocols (exact while
every partial sum stays below 2^53).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight


def _conv_kwargs(params: dict) -> dict:
    return {k: params[k] for k in ("stride", "padding", "dilation", "groups") if k in params}


BILINEAR: dict[str, Callable[..., torch.Tensor]] = {
    "matmul": lambda a, b, **p: torch.matmul(a, b),
    "matmul_tn": lambda a, b, **p: a.transpose(-2, -1) @ b,
    "bmm": lambda a, b, **p: torch.matmul(a, b),
    "conv2d": lambda a, b, **p: F.conv2d(a, b, **_conv_kwargs(p)),
    "conv2d_input": lambda a, b, **p: conv2d_input(tuple(p["input_size"]), b, a, **_conv_kwargs(p)),
    "conv2d_weight": lambda a, b, **p: conv2d_weight(a, tuple(p["weight_size"]), b, **_conv_kwargs(p)),
}


def apply(fn: str, a: torch.Tensor, b: torch.Tensor, **params) -> torch.Tensor:
    """Evaluate bilinear function ``fn`` on ``(a, b)`` with its static ``params``."""
    try:
        function = BILINEAR[fn]
    except KeyError:
        raise ValueError(f"unknown bilinear function {fn!r}; known: {sorted(BILINEAR)}") from None
    return function(a, b, **params)
