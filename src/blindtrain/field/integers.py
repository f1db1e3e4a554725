"""Exact int64 arithmetic modulo a prime p < 2^62, never overflowing.

Every tensor here is ``torch.int64``.  The invariants that keep it exact:

* :func:`reduce` takes any int64 (|x| < 2^63) to ``[0, p)`` with ``torch.remainder``
  (exact integer division, Python's sign convention);
* :func:`mul_pow2` multiplies ``x ∈ [0, p)`` by ``2^k`` mod p without forming a
  product ≥ 2^63: for a Mersenne prime ``p = 2^q − 1`` it is a rotation of the q-bit word
  (``2^q ≡ 1``), ``((x mod 2^(q−k))·2^k) + (x >> (q−k))`` with both parts < 2^q; for any other
  p it shifts by at most ``62 − bitlen(p)`` bits at a time (``x·2^d < 2^62``) and reduces;
* :func:`combine` adds terms ``Σ t_i·2^(s_i)`` whose magnitudes are bounded (Python
  integers ``bound_i ≥ max|t_i|``): terms are gathered into groups whose exact sum
  ``Σ bound_i·2^(s_i − s_0) < 2^62`` fits int64, each group reduced once, shifted by
  ``2^(s_0)`` with :func:`mul_pow2`, and the groups added with one conditional subtraction
  each (two values < p sum to < 2p < 2^63).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT64_SAFE = 2**62  # every intermediate stays strictly below this in magnitude


def mersenne_exponent(p: int) -> int | None:
    """``q`` when ``p = 2^q − 1``, else ``None``."""
    return p.bit_length() if p > 2 and (p + 1) & p == 0 else None


def reduce(x: torch.Tensor, p: int) -> torch.Tensor:
    """``x mod p`` in ``[0, p)`` for any int64 ``x``."""
    return torch.remainder(x, p)


def centre(x: torch.Tensor, p: int) -> torch.Tensor:
    """Field elements ``x ∈ [0, p)`` -> centred representatives in ``(−p/2, p/2]`` (``|·| ≤ (p−1)/2``)."""
    return torch.where(x > p // 2, x - p, x)


def mul_pow2(x: torch.Tensor, k: int, p: int) -> torch.Tensor:
    """``x·2^k mod p`` for ``x ∈ [0, p)``, no intermediate ≥ 2^62."""
    q = mersenne_exponent(p)
    if q is not None:
        k %= q
        if k == 0:
            return x
        low = torch.bitwise_and(x, (1 << (q - k)) - 1) * (1 << k)  # < 2^q
        return low + torch.bitwise_right_shift(x, q - k)  # rotation: never equals p since x ≠ p
    step = 62 - p.bit_length()
    if step < 1:
        raise ValueError(f"modulus {p} is too large for int64 arithmetic (need p < 2^61)")
    k %= p - 1  # Fermat: 2^(p−1) ≡ 1 for prime p
    while k > 0:
        d = min(step, k)
        x = torch.remainder(x * (1 << d), p)
        k -= d
    return x


def add_mod(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """``x + y mod p`` for ``x, y ∈ [0, p)`` (the sum < 2p < 2^63)."""
    s = x + y
    return torch.where(s >= p, s - p, s)


@dataclass
class Term:
    """``tensor·2^shift`` with ``max|tensor| ≤ bound`` (any integer dtype; broadcastable to the output)."""

    shift: int
    tensor: torch.Tensor
    bound: int


def combine(terms: list[Term], shape, p: int, *, device) -> torch.Tensor:
    """``Σ tensor_i·2^(shift_i) mod p`` exactly, as int64 in ``[0, p)`` of ``shape`` (see module docstring)."""
    terms = sorted(terms, key=lambda t: t.shift)
    total = None
    index = 0
    while index < len(terms):
        base = terms[index].shift
        acc = torch.zeros(shape, dtype=torch.int64, device=device)
        group_bound = 0
        while index < len(terms):
            term = terms[index]
            scaled = term.bound << (term.shift - base)
            if group_bound and group_bound + scaled >= INT64_SAFE:
                break
            if scaled >= INT64_SAFE:
                raise ValueError("a single term exceeds the int64 range: split it into narrower limbs")
            tensor = term.tensor.to(torch.int64) if term.tensor.is_floating_point() else term.tensor
            acc.add_(tensor, alpha=1 << (term.shift - base))  # computed in int64 (acc's dtype)
            group_bound += scaled
            index += 1
        part = mul_pow2(reduce(acc, p), base, p)
        total = part if total is None else add_mod(total, part, p)
    if total is None:
        return torch.zeros(shape, dtype=torch.int64, device=device)
    return total
