"""A Conv2d layer under tempo (W: m×n×kh×kw; channels play n and m, spatial positions stay in place): its
check projections, tolerances (abs bounds kept as their max over the wide channel), the encoding of its
operands with the checks' operand sides (thin convolutions, :mod:`blindtrain.kernels.thin`), and its worker
products."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...boundary import Ref, Request, Sent
from ...kernels import thin
from ...kernels.gather import gather
from .bounds import LAMBDA, U32, _rounding_bound
from .layers import TempoLayer
from .reductions import ident, l1, linf


@dataclass(eq=False)
class InputStats:
    """What the weight-gradient projections need from the forward's read of ``X`` (N×n×H×W): ``xs``, its k
    channels contracted with σ; the channel maps ``l1x = Σ_n |X|`` and ``linfx = max_n |X|`` (None when
    X ≥ 0); ``of``: which tensor (:func:`~.reductions.ident`; None: computed from the tensor at hand)."""

    of: tuple | None
    xs: torch.Tensor
    l1x: torch.Tensor
    linfx: torch.Tensor | None


@dataclass(eq=False)
class GradStats:
    """What the weight-gradient projections need from the input gradient's read of ``dY``: ``gr``, its k
    channels contracted with ρ; the channel maps ``l1g = Σ_m |dY|`` and ``linfg = max_m |dY|``."""

    of: tuple | None
    gr: torch.Tensor
    l1g: torch.Tensor
    linfg: torch.Tensor | None


class ConvLayer(TempoLayer):
    """A Conv2d layer's maths (the state is :class:`~.layers.TempoLayer`'s)."""

    result_norms = False
    scaled_operand = "B"
    input_privacy = ("conv: the input images are visible to the worker up to a channel permutation, per-channel "
                     "sign and per-sample power-of-two scale (spatial layout kept): effectively in the clear")

    @property
    def conv(self) -> bool:
        return True

    # ------------------------------------------------------------- projections ----
    def proj_q(self, w, rho):
        """``Σ_m ρ[m,j] W[m]`` (k×n×kh×kw)."""
        return torch.einsum("mnhw,mk->knhw", w, rho)

    def proj_v(self, w, sigma):
        """``Σ_n σ[n,j] W[:, n]`` (m×k×kh×kw)."""
        return torch.einsum("mnhw,nk->mkhw", w, sigma)

    def reduce(self, d, bound):
        """Conv layers keep the abs bounds as their max over the wide channel (n for q, m for v): the
        checks' tolerances then need only channel-norm maps of the activations (one pass each)."""
        return bound.amax(dim=1, keepdim=True) if d == "q" else bound.amax(dim=0, keepdim=True)

    def track_norms(self, w, buf):
        """Conv checks need no row norms of W."""

    def refresh_tolerances(self):
        """The tolerance maps of the forward and input-gradient checks (see ``Tempo._refresh_check_mats``)."""
        layer, t = self, self.t
        # |Yρ - X q|: the worker's product and the check's X q (float32, K terms each, both on partial sums
        # ≤ |X||W|ᵀ|ρ| after weighting by ρ: Σ_m ρ_m² K S_m² ≤ K (Σ_m |ρ_m| S_m)²) and Y ρ (m terms, on
        # |Y||ρ| ≤ |X||W|ᵀ|ρ|): one Azuma bound on all their roundings (_rounding_bound), + 2u for q's
        # rounding to float32 + drift
        K, Kv = layer.n * layer.ksz, layer.m * layer.ksz
        qf = _rounding_bound((K, 1.0), (K, 1.0), (layer.m, 1.0))
        vf = _rounding_bound((Kv, 1.0), (Kv, 1.0), (layer.n, 1.0))
        t["qtol"] = (t["qwa"] * (qf + 2 * U32) + LAMBDA * t["qwe"]).float()
        t["vtol"] = (t["vwa"] * (vf + 2 * U32) + LAMBDA * t["vwe"]).float()

    def result_tolerance(self, tol, result_norm, entry):
        """Conv tolerances have no result term (bounded through ``|X||W|``)."""
        return tol

    # ---------------------------------------------------------------- encoding ----
    def encode_forward(self, x, pb, cb, scales, ledger):
        """``X′`` (one gather) and the forward check's operand side (see ``Tempo._encode_forward``)."""
        key = self.key
        with ledger.timed("encode"):
            g = gather(x, pb, key.pn, cb[pb], scales, src_min=True)
        with ledger.timed("decode_verify"):
            return g.out, self.expect_forward(x, nonneg=g.src_min >= 0)

    def expect_forward(self, x, *, nonneg):
        """The operand side of the forward check (see ``Tempo._encode_forward``); ``nonneg``: X ≥ 0."""
        layer, t = self, self.t
        training = layer.site.module.training
        cp = layer.site.conv_params
        k = t["sigma"].shape[1]
        ones = torch.ones(1, layer.n)
        rhs, extra = thin.conv(x, t["q32"], cp, extra=torch.cat([t["sigma"].t(), ones]))
        xs, csum = extra[:, :k], extra[:, k:]
        # |X| ⋆ T ≤ (Σ_n |X_n|) ⋆ max_n T ; after a ReLU X ≥ 0 and Σ_n |X_n| comes with the GEMM
        l1x = csum if nonneg else l1(x)
        tol = thin.conv(l1x, t["qtol"], cp)
        if training:  # what the weight-gradient projections need, from this read of X (X ≥ 0: no max map)
            layer.saved = InputStats(of=ident(x), xs=xs, l1x=l1x, linfx=None if nonneg else linf(x))
        return {"rhs": rhs, "tol": tol}

    def encode_grad_input(self, gy, pb, cb, scales, input_shape, ledger):
        """``G₁`` (one gather) and the input-gradient check's operand side (see ``Tempo._encode_grad_input``)."""
        with ledger.timed("encode"):
            g = gather(gy, pb, self.key.pm, cb[pb], scales, src_abs=True)  # Σ_m |dY| and max_m |dY| maps
        with ledger.timed("decode_verify"):
            return g.out, (pb, cb), self.expect_grad_input(gy, input_shape, l1g=g.src_l1, linfg=g.src_linf)

    def expect_grad_input(self, gy, input_shape, *, l1g, linfg):
        """The operand side of the input-gradient check, given the channel maps ``Σ_m |dY|`` and
        ``max_m |dY|``."""
        layer, t = self, self.t
        cp = layer.site.conv_params
        size = (input_shape[0], t["sigma"].shape[1], *input_shape[2:])
        rhs, gr = thin.conv_input(gy, t["v32"], size, cp, extra=t["rho"].t())
        # Σ_m |dY| for the tolerance here, max_m |dY| for the weight-gradient bounds
        layer.saved_g = GradStats(of=ident(gy), gr=gr, l1g=l1g, linfg=linfg)
        return {"rhs": rhs, "tol": thin.conv_input(l1g, t["vtol"], size, cp)}

    # ---------------------------------------------------------- worker products ----
    def forward_request(self, xe, tag):
        """The forward product ``conv2d(X′, W′)`` for one worker block."""
        return Request("bilinear", {"A": Sent(xe, "obfuscated"), "B": Ref(f"{self.h}/w")}, tag,
                       params={"fn": "conv2d", **self.site.conv_params})

    def grad_input_product(self, product, input_shape):
        """``conv2d_input(G₁[:, lo:hi], W′[lo:hi])``."""
        return {**product, "fn": "conv2d_input",
                "params": {**self.site.conv_params, "input_size": tuple(input_shape)}}

    def grad_weight_product(self, product, g, lo, hi):
        """``conv2d_weight(X′, G₂[:, lo:hi])``."""
        return {**product, "fn": "conv2d_weight", "A": Ref(self.x_handle), "B": g,
                "params": {**self.site.conv_params, "weight_size": (hi - lo, self.n, *self.kernel)}}

    # ---------------------------------------------------- weight-gradient checks ----
    def grad_projections(self, x, gy):
        """``(q, qa, v, va, rows, None)``: the weight gradient's projections and abs bounds (per tap, the max
        over the wide channel) and the pixels the products sum over (see ``Tempo._grad_projections``)."""
        layer, t = self, self.t
        cp, kernel = layer.site.conv_params, layer.kernel
        fx, fg = layer.saved, layer.saved_g
        layer.saved = layer.saved_g = None
        if fx is None or fx.of != ident(x):
            fx = InputStats(of=None, xs=thin.channels(x, t["sigma"]), l1x=l1(x), linfx=linf(x))
        if fg is None or fg.of != ident(gy) or fg.linfg is None:
            fg = GradStats(of=None, gr=thin.channels(gy, t["rho"]), l1g=l1(gy), linfg=linf(gy))
        # bounds on max_n |ΔW|ᵀ|ρ| and max_m |ΔW||σ| from channel-norm maps (|ρ|, |σ| ≤ 1):
        # |ΔW|ᵀ|ρ| ≤ |X| ⋆ Σ_m|dY| per input channel; when X ≥ 0 (after a ReLU) that is one more channel of
        # q's product, and its max over the channels bounds tighter than (max_n |X|) ⋆ Σ_m|dY|
        if fx.linfx is None:
            J = fg.gr.shape[1]
            both = thin.conv_weight_thin_out(x, torch.cat([fg.gr, fg.l1g], 1), kernel, cp)
            q, qa = both[:J], both[J:].amax(dim=1, keepdim=True)
        else:
            q = thin.conv_weight_thin_out(x, fg.gr, kernel, cp)
            qa = thin.conv_weight_thin_out(fx.linfx, fg.l1g, kernel, cp)
        v = thin.conv_weight_thin_in(fx.xs, gy, kernel, cp)
        va = thin.conv_weight_thin_in(fx.l1x, fg.linfg, kernel, cp)
        rows = gy.shape[0] * gy.shape[2] * gy.shape[3]
        return q, qa, v, va, rows, None
