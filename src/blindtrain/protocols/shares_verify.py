"""Integrity of ``shares``: Freivalds' check over F_p on every reconstructed result, exact.

Products whose second operand is a layer's weight (forward, input gradient) are checked against
*tracked projections* of the weight, kept current incrementally so the enclave never touches the
weight itself (O(activations) per step, as ``tempo`` does):

* Linear, weight ``W`` (m×n): forward ``Y = X·Wᵀ`` checked as ``Y·s_out = X·(Wᵀs_out)``; input
  gradient ``dX = dY·W`` as ``dX·s_in = dY·(W·s_in)``.  After an SGD step ``W ← W − dW`` with
  ``dW = Gᵀ·X'`` (the exact integer product the share workers applied): ``Wᵀs_out −= X'ᵀ(G·s_out)`` and
  ``W·s_in −= Gᵀ(X'·s_in)``, O(b·(n+m)·k).
* Conv2d, weight ``W`` (m×c×kh×kw): ``Σ_o s_o·Y[:,o] = conv2d(X, Σ_o s_o·W[o])`` and
  ``Σ_c s_c·dX[:,c] = conv2d_input(dY, Σ_c s_c·W[:,c])``; updates by ``conv2d_weight`` of the
  channel-contracted activations (cost k/m and k/c of the weight-gradient op).

The check vectors ``s_out``, ``s_in`` (entries in [−2^19, 2^19], k columns) are secret, drawn from the
enclave CSPRNG when a layer's weight is shared and kept until it is re-shared; workers never see them.
Soundness: a wrong result (or a result computed from a weight share that differs from the tracked
one) passes one check with probability at most ``(2^20 + 1)^-k`` (≈ 2^-40 for k = 2, see
:mod:`blindtrain.field.freivalds`); the run aborts at the first failed check, so the adversary learns
nothing about ``s`` before its first wrong result is tested.

Products of two data operands (the weight gradient when the optimizer runs in the enclave, attention
products) are checked with a fresh ``s`` per op: ``contract(Y, s) = f(A, contract(B, s))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..field import freivalds
from ..field.engine import FieldEngine

#: the weight-operand bilinear functions of a layer kind: (forward, input gradient)
WEIGHT_FNS = {"linear": ("matmul", "matmul"), "conv2d": ("conv2d", "conv2d_input")}


def weight_operand(kind: str, op: str, weight: torch.Tensor) -> torch.Tensor:
    """The second operand of ``op`` in the layout the bilinear function takes (Linear forward: ``Wᵀ``)."""
    return weight.t() if kind == "linear" and op == "forward" else weight


@dataclass
class Projections:
    """A layer's secret check vectors and the weight's tracked projections (field elements, int64)."""

    s_out: torch.Tensor  # m×k
    s_in: torch.Tensor   # n×k (Linear) / c×k (Conv2d)
    p_out: torch.Tensor  # Wᵀ·s_out (n×k) / Σ_o s_o W[o] (k×c×kh×kw)
    p_in: torch.Tensor   # W·s_in (m×k) / Σ_c s_c W[:,c] (m×k×kh×kw)

    def for_op(self, op: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.p_out, self.s_out) if op == "forward" else (self.p_in, self.s_in)


def project_weight(kind: str, weight: torch.Tensor, s_out: torch.Tensor, s_in: torch.Tensor,
                   engine: FieldEngine) -> Projections:
    """The projections of a weight (field elements) from scratch: O(weights·k), at (re-)sharing only."""
    fwd, grad = WEIGHT_FNS[kind]
    p = engine.p
    p_out = torch.remainder(freivalds.contract_weight(fwd, weight_operand(kind, "forward", weight), s_out, engine), p)
    p_in = torch.remainder(freivalds.contract_weight(grad, weight, s_in, engine), p)
    return Projections(s_out, s_in, p_out, p_in)


def gradient_projections(kind: str, x: torch.Tensor, g: torch.Tensor, proj: Projections, engine: FieldEngine,
                         conv_params: dict, weight_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dW-projection on s_out, on s_in)`` of ``dW = f_w(x, g)`` mod p, from the activations only."""
    if kind == "linear":  # dW = gᵀ·x (m×n)
        d_out = engine.bilinear("matmul_tn", x, engine.bilinear("matmul", g, proj.s_out))
        d_in = engine.bilinear("matmul_tn", g, engine.bilinear("matmul", x, proj.s_in))
        return d_out, d_in
    m, c, kh, kw = weight_shape
    k = proj.s_out.shape[1]
    gs = freivalds.contract_output("conv2d", g, proj.s_out, engine)
    xs = freivalds.contract_output("conv2d", x, proj.s_in, engine)
    d_out = engine.bilinear("conv2d_weight", x, gs, {**conv_params, "weight_size": (k, c, kh, kw)})
    d_in = engine.bilinear("conv2d_weight", xs, g, {**conv_params, "weight_size": (m, k, kh, kw)})
    return d_out, d_in


def check_weighted(fn: str, a: torch.Tensor, y: torch.Tensor, proj: torch.Tensor, s: torch.Tensor,
                   engine: FieldEngine, params: dict) -> bool:
    """``contract(Y, s) ≡ f(A, W-projection)`` (mod p)."""
    return freivalds.check(fn, a, y, proj, s, engine, params)


def check_data(fn: str, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, s: torch.Tensor, engine: FieldEngine,
               params: dict) -> bool:
    """Freivalds for a product of two data operands, contracting the result's last output dimension with
    a fresh ``s`` (``matmul_tn``: ``Y·s = Aᵀ(B·s)``; ``bmm``: ``Y·s = A(B·s)``; ``conv2d_weight``:
    ``Σ_o s_o·Y[o] = conv2d_weight(A, Σ_o s_o·B[:,o])``)."""
    p = engine.p
    k = s.shape[1]
    if fn == "conv2d_weight":
        m = y.shape[0]
        left = engine.bilinear("matmul", s.t(), y.reshape(m, -1)).reshape(k, *y.shape[1:])
        bs = freivalds.contract_output("conv2d", b, s, engine)
        right = engine.bilinear(fn, a, bs, {**params, "weight_size": (k, *tuple(params["weight_size"])[1:])})
    elif fn in ("matmul_tn", "bmm", "matmul"):
        r = b.shape[-1]
        left = engine.bilinear("matmul", y.reshape(-1, r), s).reshape(*y.shape[:-1], k)
        bs = engine.bilinear("matmul", b.reshape(-1, r), s).reshape(*b.shape[:-1], k)
        right = engine.bilinear(fn, a, bs, params)
    else:
        raise ValueError(f"no Freivalds form for {fn!r}")
    return left.shape == right.shape and bool(torch.equal(torch.remainder(left, p), torch.remainder(right, p)))


def draw_vectors(rng, size: int, k: int, *, label: tuple) -> torch.Tensor:
    """Secret check vectors (size×k) in [−2^19, 2^19] from the enclave CSPRNG."""
    return torch.from_numpy(rng.integers(-freivalds.S_BOUND, freivalds.S_BOUND, (size, k), label=label))
