"""Fixed point for ``shares``: overflow-free exponents for the enclave's encodings (see :mod:`.shares`).

* :func:`encode_against_weight`: the data operand of an op against a share-held weight, whose values the
  enclave never sees: ``max‖window(X̃)‖₂ · bound(‖W̃‖_F) ≤ (p−1)/2`` (Cauchy–Schwarz), so no result wraps;
* :func:`encode_pair`: both operands data; the bits shared so that each gets the same relative precision;
  with ``fixed_total`` the exponents add up to the weight's (SGD on the shares: the product *is* the update).
"""

from __future__ import annotations

import math

import torch

from ..errors import BlindtrainError
from ..field import codec

def log2_or_zero(v: float) -> float:
    return math.log2(v) if v > 0 else 0.0


def _unit_column(fn: str, weight_shape) -> torch.Tensor:
    """A stand-in second operand whose largest column norm is 1 (for the codec's window-norm bound)."""
    if fn in ("matmul", "bmm"):
        return torch.ones(1, 1, dtype=torch.float64)
    unit = torch.zeros(1, 1, weight_shape[2], weight_shape[3], dtype=torch.float64)
    unit[0, 0, 0, 0] = 1.0
    return unit


def product_bound(fn: str, a: torch.Tensor, b: torch.Tensor, params: dict) -> float:
    """A rigorous bound on ``max|f(a, b)|`` for the both-data functions (Cauchy–Schwarz)."""
    if fn == "matmul_tn":
        return codec.norm_bound("matmul", a.transpose(-2, -1), b, {})
    if fn == "conv2d_weight":  # dW[o,c,u,v] = <b[:,o], shifted a[:,c]>: ≤ ‖b[:,o]‖·‖a[:,c]‖
        an = a.to(torch.float64).square().sum((0, 2, 3)).max().sqrt()
        bn = b.to(torch.float64).square().sum((0, 2, 3)).max().sqrt()
        return float(an * bn) * (1 + 1e-9)
    return codec.norm_bound(fn, a, b, params)


def frobenius(q: torch.Tensor) -> float:
    """An upper bound on ``‖q‖_F`` (float64 sum of squares, rounded up)."""
    return math.sqrt(float(q.to(torch.float64).square().sum())) * (1 + 1e-9)


def encode_against_weight(fn: str, x: torch.Tensor, *, p: int, weight_norm: float, weight_shape, params: dict,
                          uniforms: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """``(X̃, l_x)`` with ``max‖window(X̃)‖₂ · bound(‖W̃‖_F) ≤ (p−1)/2``: no result can wrap."""
    limit = codec.headroom(p)
    unit = _unit_column(fn, weight_shape)
    window = codec.norm_bound(fn, x, unit, params)
    if window == 0.0:
        return torch.zeros(x.shape, dtype=torch.int64), 0
    exponent = math.floor(math.log2(limit / (window * weight_norm)))
    for _ in range(128):
        q = codec.quantize(x, exponent, uniforms)
        if codec.norm_bound(fn, q, unit, params) * weight_norm <= limit:
            return q.to(torch.int64), exponent
        exponent -= 1
    raise RuntimeError("could not find an overflow-free exponent")  # pragma: no cover


def encode_pair(fn: str, a: torch.Tensor, b: torch.Tensor, params: dict, *, p: int, total: int | None,
                b_uniforms: torch.Tensor | None, fixed_total: bool) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(Ã, B̃, l_a, l_b)`` for a both-data product, the relative precision balanced between them.

    ``fixed_total``: ``l_a + l_b = total`` exactly (the SGD-on-shares weight gradient lands on ``l_w``);
    else ``total`` is the largest that keeps ``|f(Ã, B̃)| ≤ (p−1)/2``."""
    limit = codec.headroom(p)
    amax, bmax = float(a.abs().max()), float(b.abs().max())
    if amax == 0.0 or bmax == 0.0:  # a zero operand: the product is exactly zero
        la = total if fixed_total else 0
        return torch.zeros(a.shape, dtype=torch.int64), torch.zeros(b.shape, dtype=torch.int64), la, 0
    if not fixed_total:
        total = math.floor(math.log2(limit / product_bound(fn, a, b, params)))
    la = math.floor((total + log2_or_zero(bmax) - log2_or_zero(amax)) / 2)
    lb = total - la
    qa = codec.quantize(a, la)
    for _ in range(128):
        qb = codec.quantize(b, lb, b_uniforms)
        if product_bound(fn, qa, qb, params) <= limit:
            return qa.to(torch.int64), qb.to(torch.int64), la, lb
        if fixed_total:
            raise BlindtrainError("the weight update is too large for the field (training diverged): lower --lr")
        la, lb = la - 1, lb - 1
        qa = codec.quantize(a, la)
    raise RuntimeError("could not find overflow-free exponents")  # pragma: no cover
