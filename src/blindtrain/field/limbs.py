"""Limb (digit) decompositions of integer tensors, for exact products on narrow arithmetic.

An integer ``v`` is written in base ``2^w`` with *balanced* digits
``d_i ∈ [−2^(w−1), 2^(w−1) − 1]``: ``v = Σ_i d_i·2^(w·i)``.  ``n`` such digits represent
exactly the integers with ``|v| ≤ capacity(n, w) = (2^(w−1) − 1)·(2^(w·n) − 1)/(2^w − 1)``
(and a few more on the negative side); the greedy extraction
``d = ((v + 2^(w−1)) mod 2^w) − 2^(w−1)``, ``v ← (v − d)/2^w`` finds them.

Byte planes (:func:`byte_planes`): a little-endian two's-complement int16/int32 tensor *is*
a base-256 expansion whose lower bytes are unsigned; flipping bit 7 of each lower byte
(one XOR) makes every byte a signed int8 ``s_i = u_i − 128``, so
``v = Σ_i 2^(8i)·(s_i + o_i)`` with offsets ``o_i = 128`` for the lower bytes and ``0`` for the
top one.  The engine adds the offsets back as a cheap correction
(``f(L, o) = o·rowsum(L)``), so a narrow operand costs one XOR and no arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT_BYTES = {torch.int8: 1, torch.int16: 2, torch.int32: 4, torch.int64: 8}


def capacity(count: int, width: int) -> int:
    """Largest ``|v|`` that ``count`` balanced digits of ``width`` bits always represent."""
    return (2 ** (width - 1) - 1) * (2 ** (width * count) - 1) // (2**width - 1)


def limbs_needed(bound: int, width: int) -> int:
    """Fewest balanced ``width``-bit digits representing every ``|v| ≤ bound``."""
    count = 1
    while capacity(count, width) < bound:
        count += 1
    return count


def dtype_bound(dtype: torch.dtype) -> int:
    """``max|v|`` an integer dtype can hold (``2^(bits−1)``, the negative end)."""
    return 2 ** (8 * INT_BYTES[dtype] - 1)


@dataclass
class Limbs:
    """``v = Σ_i 2^(width·i)·(planes[i] + offsets[i])``; ``planes`` has the limb dimension first.

    ``digit_bound`` bounds ``|planes|``; ``planes`` may be a strided view."""

    planes: torch.Tensor
    width: int
    offsets: tuple[int, ...]
    digit_bound: int

    @property
    def count(self) -> int:
        return int(self.planes.shape[0])


def balanced(v: torch.Tensor, *, width: int, count: int, dtype: torch.dtype) -> Limbs:
    """Balanced digits of the integer tensor ``v`` (``|v| ≤ capacity(count, width)``), as ``dtype``."""
    if count == 1:
        return Limbs(v.to(dtype).unsqueeze(0), width, (0,), 2 ** (width - 1))
    # With t = v + 2^(w−1) = q·2^w + r (r ∈ [0, 2^w)): the digit is r − 2^(w−1) and the rest is
    # (v − digit)/2^w = q = t >> w (an arithmetic shift floors).
    work = v.to(torch.int64)
    half, mask = 1 << (width - 1), (1 << width) - 1
    planes = torch.empty((count, *v.shape), dtype=dtype, device=v.device)
    for i in range(count):
        shifted = work + half
        if dtype == torch.int8 and width == 8:  # r − 128 is the low byte with bit 7 flipped
            torch.bitwise_xor(shifted.to(torch.int8), -128, out=planes[i])
        else:
            planes[i] = torch.bitwise_and(shifted, mask) - half
        if i + 1 < count:
            work = torch.bitwise_right_shift(shifted, width)
    return Limbs(planes, width, (0,) * count, half)


_XOR_MASKS = {torch.int16: 0x0080008000800080, torch.int32: 0x0080808000808080}


def byte_planes(v: torch.Tensor, workspace: dict | None = None) -> Limbs:
    """The bytes of a contiguous int16 / int32 tensor as signed int8 planes (one XOR; see module docstring).

    Returns planes shaped ``(nbytes, *v.shape)`` (a strided view of ``(*v.shape, nbytes)`` bytes).
    ``workspace`` (a dict) lends a reusable output buffer, so repeated calls fault in no new pages."""
    nbytes = INT_BYTES[v.dtype]
    v = v.contiguous()
    out = None
    if workspace is not None:
        key = (v.dtype, v.numel(), v.device)
        out = workspace.get(key)
        if out is None:
            out = workspace[key] = torch.empty_like(v.reshape(-1))
    wide = v.numel() * nbytes % 8 == 0
    if wide:  # XOR eight bytes at a time
        flat = v.reshape(-1).view(torch.int64)
        target = None if out is None else out.view(torch.int64)
        flipped = torch.bitwise_xor(flat, _XOR_MASKS[v.dtype], out=target) if target is not None \
            else torch.bitwise_xor(flat, _XOR_MASKS[v.dtype])
        flipped = flipped.view(v.dtype)
    else:
        lower = sum(0x80 << (8 * i) for i in range(nbytes - 1))
        flipped = torch.bitwise_xor(v.reshape(-1), lower)
    planes = flipped.view(torch.int8).view(*v.shape, nbytes).movedim(-1, 0)
    return Limbs(planes, 8, (128,) * (nbytes - 1) + (0,), 128)
