"""The float32 rounding-error model of tempo's checks: unit roundoff, λ, and the error factors of
inner products that the tolerances are built from."""

from __future__ import annotations

import math

import torch

U32 = 2.0 ** -24  # float32 unit roundoff


#: The stated false-alarm probability of one check (one result compared with its operands): 2^-40.
FALSE_ALARM_PER_CHECK = 2.0 ** -40
#: The most numbers one check compares (rows · pixels · k check vectors; resnet18 on CIFAR at batch 512
#: compares 2·512·32·32 = 2^20 in its first layer).  A larger check's false-alarm probability is
#: ``N·2·exp(−λ²/2)``, i.e. ``2^-40 · N / 2^20``.
MAX_COMPARED = 2 ** 20

#: λ of the probabilistic rounding-error model (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019): rounding
#: errors ``δ`` are independent and mean zero, ``|δ| ≤ u``.  The error of a computed sum of products is then
#: a sum of martingale differences ``δ_t · c_t`` (``c_t``: the computed partial result the rounding ``t``
#: applies to, known before ``δ_t`` is drawn), and by Azuma–Hoeffding it exceeds ``λ · u · √(Σ_t c_t²)``
#: with probability at most ``2·exp(−λ²/2)``.  A length-K inner product ``Σ_k a_k`` (``a_k = x_k w_k``) has
#: at most K product roundings (``c = |a_k|``, ``Σ a_k² ≤ S²``, ``S = Σ_k |a_k|``) and K−1 addition roundings
#: (each on a partial sum of a subset: ``c ≤ S`` in any summation order: blocked, pairwise, split-K), or K
#: fused multiply-adds (``c ≤ S``): ``Σ_t c_t² ≤ K·S²`` in every case, so it errs by at most
#: ``λ·√K·u·S`` (Higham & Mary's γ̃_K(λ) = λ√K·u to first order; ``(1 + K·u)`` covers the partial sums'
#: own rounding).  A check's comparison adds up several such sums (the worker's product, the check's
#: float32 products): their roundings are one martingale, so ONE bound covers all of them,
#: ``λ·u·√(Σ_sums K_s·S_s²)`` (:func:`_rounding_bound`), not the sum of one bound per product.
#:
#: λ follows from the stated probability, not from observed residuals: one check compares at most
#: :data:`MAX_COMPARED` numbers, each fails with probability ``≤ 2·exp(−λ²/2)``, so a check raises a false
#: alarm with probability ``≤ MAX_COMPARED · 2·exp(−λ²/2) = FALSE_ALARM_PER_CHECK`` for
#: ``λ = √(2·ln(2·MAX_COMPARED / FALSE_ALARM_PER_CHECK))`` = 9.20.  A 20,000-step resnet18 run makes about
#: 10^6 ≈ 2^20 checks: a false alarm with probability ≤ 2^-20 under the model.  This is a model, not a
#: theorem, for round-to-nearest (its errors are deterministic functions of the data); the soak
#: (``scripts/tolerance_soak.py``) measures it.
LAMBDA = math.sqrt(2 * math.log(2 * MAX_COMPARED / FALSE_ALARM_PER_CHECK))

#: A check passes when ``|result side − operand side| ≤ CHECK_MARGIN · tolerance``.
CHECK_MARGIN = 1.0


def _gamma(k: int) -> float:
    """Rounding-error factor of a length-``k`` float32 inner product relative to ``Σ|x_k||w_k|``: the smaller
    of the worst-case γ_k = k·u/(1−k·u) and the probabilistic λ·√k·u·(1 + k·u) (see :data:`LAMBDA`)."""
    worst = k * U32 / (1 - k * U32)
    return min(worst, _azuma(k))


def _dot64(k: int) -> float:
    """Relative error factor of a check's own length-``k`` product of float32 numbers taken by the encode /
    decode pass (:func:`~blindtrain.kernels.gather.gather` on a matrix): exact products accumulated in double
    (``k·2⁻⁵³``) and rounded to float32 once (``u``), plus ``u`` for a vector rounded to float32 before."""
    return 2 * U32 + k * 2.0 ** -52


def _azuma(k: int) -> float:
    """The probabilistic factor λ·√k·u·(1 + k·u) alone (see :data:`LAMBDA`): ``Σ_t c_t² ≤ k·S²`` for the at
    most k roundings of products and k−1 of partial sums (or k FMAs) of a length-k sum; also for sums of
    *independent* inner products weighted by check vectors, where one Azuma bound covers the roundings of
    all of them together."""
    return LAMBDA * math.sqrt(k) * U32 * (1 + k * U32)


def _rounding_bound(*sums):
    """One bound on the rounding errors of several float32 sums that add up in one compared number:
    ``sums`` are ``(K, S)`` pairs (length K, ``S`` an upper bound of ``Σ|terms|`` of every rounding in it,
    a float or a tensor).  All their roundings are one martingale (see :data:`LAMBDA`), so the bound is
    ``λ·u·(1 + K_max·u)·√(Σ K·S²)``, or the worst case ``Σ γ_K·S`` where that is smaller (short sums)."""
    kmax = max(k for k, _ in sums)
    worst = sum(k * U32 / (1 - k * U32) * b for k, b in sums)
    prob = LAMBDA * U32 * (1 + kmax * U32) * sum(k * b * b for k, b in sums) ** 0.5
    if isinstance(worst, torch.Tensor) or isinstance(prob, torch.Tensor):
        return torch.minimum(torch.as_tensor(worst), torch.as_tensor(prob))
    return min(worst, prob)
