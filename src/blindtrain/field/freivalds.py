"""Freivalds' check of an offloaded bilinear op over F_p.

For ``Y = f(A, B)`` with B's output-channel dimension of size m, draw a secret
``s ∈ S^{m×k}`` with ``S = [−2^19, 2^19]`` (k repetitions, default 2) and check

    contract(Y, s) ≡ f(A, contract(B, s))   (mod p)

where ``contract`` sums over the output channels: ``Y·s`` and ``B·s`` for matmul;
for convolutions the *channel-contracted* form ``Σ_o s_o·Y[:, o] = conv(A, Σ_o s_o·W[o])``
(forward) and ``Σ_c s_c·dX[:, c] = conv2d_input(dY, Σ_c s_c·W[:, c])`` (input gradient).
The check costs ``k/m`` of the op plus ``O(|Y| + |B|)``.

Soundness: if ``Y ≠ f(A, B)`` some row of the difference D is non-zero; for each
repetition at most one value of the corresponding ``s`` coordinate (of the
``|S| = 2^20 + 1`` distinct residues) makes that row vanish, so a wrong result
passes with probability at most ``|S|^-k``: ``k·log2(2^20 + 1) ≈ 40`` bits for k = 2.
This holds over any prime field with p > |S| (the S residues are distinct), so for the
default p = 2^61 − 1 too; drawing s from all of F_p would give 61 bits per repetition, at
the cost of full-width limbs in the check's products.

All products run on the :class:`~blindtrain.field.engine.FieldEngine`; ``B·s`` is kept as the
exact signed integer (``|B·s| ≤ m·max|B|·2^19 < p/2``), so the check's right side has narrow limbs.
"""

from __future__ import annotations

import math

import torch

from .. import bilinear
from .engine import FieldEngine
from .integers import centre

S_BOUND = 2**19
#: the ops with a Freivalds form: B has output channels (:attr:`blindtrain.bilinear.BilinearOp.checkable`)
SUPPORTED = tuple(name for name, entry in bilinear.OPS.items() if entry.checkable)


def soundness_bits(repetitions: int, bound: int = S_BOUND) -> float:
    """``−log2`` of the probability that a wrong result passes one check."""
    return repetitions * math.log2(2 * bound + 1)


def channels(fn: str, b_shape) -> int:
    """Size of the output-channel dimension of ``fn``'s result (what ``s`` contracts)."""
    return bilinear.op(fn).channels(b_shape)


def draw(rng, fn: str, b_shape, repetitions: int, *, label: tuple) -> torch.Tensor:
    """Secret check vectors ``s`` (m×k, int64 in [−2^19, 2^19]) from the enclave CSPRNG."""
    m = channels(fn, b_shape)
    return torch.from_numpy(rng.integers(-S_BOUND, S_BOUND, (m, repetitions), label=label))


def contract_weight(fn: str, b: torch.Tensor, s: torch.Tensor, engine: FieldEngine) -> torch.Tensor:
    """``B·s`` (centred mod p: the exact integer when it is below p/2) in the layout ``f`` takes as its
    second operand: B's output-channel axis (m) contracted with ``s`` (m×k) to k channels."""
    axis = _checkable(fn).b_channel_axis
    moved = b.movedim(axis, -1)  # (..., m) @ (m, k)
    out = engine.bilinear("matmul", moved, s).movedim(-1, axis).contiguous()
    return centre(out, engine.p)


def contract_output(fn: str, y: torch.Tensor, s: torch.Tensor, engine: FieldEngine) -> torch.Tensor:
    """``Σ_o s_o·Y[..o..]`` mod p over the result's output-channel axis."""
    axis = _checkable(fn).out_channel_axis
    return engine.bilinear("matmul", y.movedim(axis, -1), s).movedim(-1, axis)


def expected(fn: str, a: torch.Tensor, bs: torch.Tensor, engine: FieldEngine, params: dict) -> torch.Tensor:
    """``f(A, B·s)`` mod p."""
    entry = _checkable(fn)
    return engine.bilinear(fn, a, bs, entry.with_channels(params, bs.shape[entry.b_channel_axis]))


def _checkable(fn: str) -> bilinear.BilinearOp:
    entry = bilinear.op(fn)
    if not entry.checkable:
        raise ValueError(f"no Freivalds form for {fn!r}")
    return entry


def check(fn: str, a: torch.Tensor, y: torch.Tensor, bs: torch.Tensor, s: torch.Tensor, engine: FieldEngine,
          params: dict) -> bool:
    """Whether ``y`` passes Freivalds' check as ``f(a, b) mod p`` (``bs = contract_weight(fn, b, s, engine)``).

    ``y`` must be an integer tensor of the expected shape (a floating or mis-shaped result fails)."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return False
    right = expected(fn, a, bs, engine, params)
    try:
        left = contract_output(fn, y, s, engine)
    except (RuntimeError, ValueError, IndexError):  # a result of the wrong shape
        return False
    return left.shape == right.shape and bool(torch.equal(left, right))
