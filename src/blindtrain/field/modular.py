"""Exact bilinear ops modulo a prime p < 2^24, in float64.

float64 represents every integer below 2^53 exactly, and a sum of products of
integers is computed exactly as long as every partial sum stays below 2^53.  For
``f(A, B)`` with contraction length n that holds when ``n·max|A|·max|B| < 2^53``.
Where it would not, :func:`mod_bilinear` splits the larger operand into two limbs
``A = hi·2^h + lo`` (bilinearity: ``f(A,B) = 2^h·f(hi,B) + f(lo,B)``) and recurses,
reducing mod p after each partial result.  The same function runs on the worker
(instruction ``bilinear_mod``) and in the enclave (unmask factors, Freivalds).
"""

from __future__ import annotations

import math

import torch

from .. import bilinear

EXACT_LIMIT = 2.0**53


def contraction_length(fn: str, a_shape, b_shape, params: dict | None = None) -> int:
    """How many products each output element of ``fn(A, B)`` sums (an upper bound for convolutions)."""
    if fn in ("matmul", "bmm"):
        return int(a_shape[-1])
    if fn == "matmul_tn":
        return int(a_shape[-2])
    if fn == "conv2d":  # B = w (m, c, kh, kw)
        return int(math.prod(b_shape[1:]))
    if fn == "conv2d_input":  # A = dY (N, m, Ho, Wo), B = w (m, c, kh, kw)
        return int(b_shape[0] * b_shape[2] * b_shape[3])
    if fn == "conv2d_weight":  # A = x, B = dY (N, m, Ho, Wo)
        return int(b_shape[0] * b_shape[2] * b_shape[3])
    raise ValueError(f"unknown bilinear function {fn!r}")


def _max_abs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def mod_bilinear(fn: str, a: torch.Tensor, b: torch.Tensor, modulus: int, params: dict | None = None,
                 *, _n: int | None = None) -> torch.Tensor:
    """``fn(A, B) mod p`` exactly, as float64 integers in ``[0, p)``.

    ``a`` and ``b`` hold integers (any sign) as floating-point tensors; they are converted to float64.
    """
    params = params or {}
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    n = _n if _n is not None else contraction_length(fn, a.shape, b.shape, params)
    amax, bmax = _max_abs(a), _max_abs(b)
    if n * amax * bmax < EXACT_LIMIT:
        return torch.remainder(bilinear.apply(fn, a, b, **params), float(modulus))
    # split the larger operand into two limbs of about half its bits
    split_a = amax >= bmax
    big = a if split_a else b
    half = max((int(max(amax, bmax)).bit_length() + 1) // 2, 1)
    base = float(2**half)
    hi = torch.floor(big / base)
    lo = big - hi * base  # in [0, 2^half)
    if split_a:
        r_hi, r_lo = mod_bilinear(fn, hi, b, modulus, params, _n=n), mod_bilinear(fn, lo, b, modulus, params, _n=n)
    else:
        r_hi, r_lo = mod_bilinear(fn, a, hi, modulus, params, _n=n), mod_bilinear(fn, a, lo, modulus, params, _n=n)
    shift = float(pow(2, half, modulus))  # r_hi < 2^24, shift < 2^24: product < 2^48, exact
    return torch.remainder(r_hi * shift + r_lo, float(modulus))
