"""The enclave's exact products mod p for ``shares``' checks: few output columns, float64 BLAS on 21-bit limbs.

Every product the enclave computes for ``shares`` is *narrow*: one side has ``k`` (= 2) columns (Freivalds'
``Y·s``, ``A·(W s)``, the projections' updates ``Xᵀ(G s)``).  The general :class:`~blindtrain.field.engine.
FieldEngine` pays fixed per-call costs (8 int8 limbs a side, calibration, padding) that dominate such
products; here an ``M×K`` by ``K×N`` product mod p is:

* each operand split into base-2^21 digits ``x = Σ_j d_j·2^(21j)``, ``|d_j| ≤ 2^21`` (as few as its largest
  value needs: a check vector ``s ∈ [−2^19, 2^19]`` is one digit, a field element three);
* all digit products in one float64 ``matmul`` (digits stacked along rows and columns), over chunks of
  ``K`` small enough that every partial sum is at most ``K·max|d_a|·max|d_b| ≤ 2^53``: float64 is exact;
* the chunks summed in int64 and ``Σ P_ij·2^(21(i+j))`` recombined mod p with :func:`blindtrain.field.
  integers.combine` (never overflowing).

Cost: ``2·M·K·N·L_a·L_b`` flops (BLAS) plus O((M + N)·K·L) elementwise digit splitting — for the checks of
``shares`` that is O(b·m·k), a few milliseconds for a 64×2048 result.  Other functions (convolutions)
go to the wrapped engine.
"""

from __future__ import annotations

import torch

from ..field.integers import Term, combine

DIGIT_BITS = 21
MASK = (1 << DIGIT_BITS) - 1
FLOAT64_EXACT = 1 << 53


def digits(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``(D, L, bound)``: int64 ``x`` as ``L`` base-2^21 digits stacked on dim 0, ``x = Σ_j D_j·2^(21j)``, every
    ``|D_j| ≤ bound ≤ 2^21`` (two's complement: the low digits are ``x & (2^21−1)``, the top one the
    arithmetic shift, so a signed ``x`` needs no reduction).  A value of at most 2^21 in magnitude (a
    check vector) is its own single digit."""
    low, high = (int(v) for v in torch.aminmax(x)) if x.numel() else (0, 0)
    magnitude = max(-low, high)
    if magnitude <= 1 << DIGIT_BITS:
        return x.unsqueeze(0), 1, max(magnitude, 1)
    out, rest, shift = [], x, 0
    while magnitude >> shift > 1 << (DIGIT_BITS - 1):  # the top digit: |rest| ≤ 2^20 + 1
        out.append(torch.bitwise_and(rest, MASK))
        rest = torch.bitwise_right_shift(rest, DIGIT_BITS)
        shift += DIGIT_BITS
    out.append(rest)
    return torch.stack(out), len(out), 1 << DIGIT_BITS


def matmul_mod(a: torch.Tensor, b: torch.Tensor, p: int) -> torch.Tensor:
    """``a @ b mod p`` (2-D int64, any representatives with ``|·| < 2^62``) in ``[0, p)``, exact."""
    m, k = a.shape
    n = b.shape[1]
    da, la, bound_a = digits(a)
    db, lb, bound_b = digits(b)
    chunk = 1 << max(0, (FLOAT64_EXACT // (bound_a * bound_b)).bit_length() - 1)  # partial sums ≤ 2^53
    left = da.to(torch.float64).reshape(la * m, k)
    right = db.to(torch.float64).permute(1, 0, 2).reshape(k, lb * n)
    if k <= chunk:
        total = torch.matmul(left, right).to(torch.int64)
    else:
        total = torch.zeros(la * m, lb * n, dtype=torch.int64)
        for start in range(0, k, chunk):
            total += torch.matmul(left[:, start:start + chunk], right[start:start + chunk]).to(torch.int64)
    total = total.reshape(la, m, lb, n)
    bound = k * bound_a * bound_b
    terms = [Term(DIGIT_BITS * (i + j), total[i, :, j], bound) for i in range(la) for j in range(lb)]
    return combine(terms, (m, n), p, device=a.device)


class NarrowEngine:
    """The enclave's engine for ``shares``: ``matmul`` / ``matmul_tn`` with :func:`matmul_mod` (any leading
    dimensions on the left operand), everything else on the wrapped :class:`FieldEngine`."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.p = engine.p

    def bilinear(self, fn: str, a: torch.Tensor, b: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        if fn == "matmul" and b.dim() == 2 and a.dim() >= 2 and a.shape[-1] == b.shape[0]:
            out = matmul_mod(a.reshape(-1, a.shape[-1]), b, self.p)
            return out.reshape(*a.shape[:-1], b.shape[1])
        if fn == "matmul_tn" and a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[0]:
            return matmul_mod(a.t(), b, self.p)
        return self.engine.bilinear(fn, a, b, params or {})
