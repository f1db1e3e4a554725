"""The float32 rounding-error model of tempo's checks: unit roundoff, λ, and the error factors of
inner products that the tolerances are built from."""

from __future__ import annotations

import math

U32 = 2.0 ** -24  # float32 unit roundoff


#: λ of the probabilistic rounding-error model (Higham & Mary, SIAM J. Sci. Comput. 2019): rounding errors
#: ``δ`` are independent and mean zero, ``|δ| ≤ u``.  A computed sum of products then errs by a sum of terms
#: ``δ_t · c_t`` (``c_t``: the partial result the rounding ``t`` applies to), and by Azuma–Hoeffding it
#: exceeds ``λ · u · √(Σ_t c_t²)`` with probability at most ``2·exp(−λ²/2)`` — 3.9e-22 for λ = 10.  A length-K
#: inner product has at most 2K roundings, each on a partial sum ``≤ Σ|x_k||w_k|`` in any summation order
#: (blocked, pairwise, split-K, FMA), so it errs by at most ``λ·√(2K)·u·Σ|x_k||w_k|``.  Every check compares
#: k·rows numbers per result (k·pixels for a conv); a run of 10^12 comparisons (20,000 resnet steps) meets
#: a false alarm with probability below 6·10^12·exp(−50) ≈ 10^-9 (three such sums per check: the worker's
#: product and the check's two sides).  This is a model, not a theorem, for round-to-nearest.
LAMBDA = 10.0

#: A check passes when ``|result side − operand side| ≤ CHECK_MARGIN · tolerance``.
CHECK_MARGIN = 1.0


def _gamma(k: int) -> float:
    """Rounding-error factor of a length-``k`` float32 inner product: the smaller of the worst-case
    γ_k = k·u/(1−k·u) and the probabilistic λ·√(2k)·u (see :data:`LAMBDA`)."""
    worst = k * U32 / (1 - k * U32)
    return min(worst, LAMBDA * math.sqrt(2 * k) * U32)


def _dot64(k: int) -> float:
    """Relative error factor of a check's own length-``k`` product of float32 numbers taken by the encode /
    decode pass (:func:`~blindtrain.kernels.gather.gather` on a matrix): exact products accumulated in double
    (``k·2⁻⁵³``) and rounded to float32 once (``u``), plus ``u`` for a vector rounded to float32 before."""
    return 2 * U32 + k * 2.0 ** -52


def _azuma(k: int) -> float:
    """The probabilistic factor λ·√(2k)·u alone (see :data:`LAMBDA`): for sums of *independent* inner products
    weighted by check vectors, where one Azuma bound covers the roundings of all of them together."""
    return LAMBDA * math.sqrt(2 * k) * U32 * (1 + k * U32)
