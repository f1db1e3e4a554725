"""A Linear layer under tempo (``y = x Wᵀ``, W: m×n): its check projections, per-row tolerances, the
encoding of its operands with the checks' operand sides taken from the same read, and its worker products."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...boundary import Ref, Request, Sent
from ...kernels.gather import gather
from .bounds import LAMBDA, _azuma, _dot64
from .layers import TempoLayer
from .reductions import ident, thin_columns


@dataclass(eq=False)
class InputStats:
    """What the weight-gradient projections need from the forward's read of ``X`` (b×n): ``xs = X σ`` (b×k),
    the rows' norms ``xn`` (b×1), and ``xas = X |σ|`` when X ≥ 0 (else None); ``of``: which tensor
    (:func:`~.reductions.ident`)."""

    of: tuple
    xs: torch.Tensor
    xn: torch.Tensor
    xas: torch.Tensor | None


@dataclass(eq=False)
class GradStats:
    """What the weight-gradient projections need from the input gradient's read of ``dY`` (b×m):
    ``gr = dY ρ`` (b×k) and the rows' norms ``gn`` (b×1)."""

    of: tuple
    gr: torch.Tensor
    gn: torch.Tensor


class LinearLayer(TempoLayer):
    """A Linear layer's maths (the state is :class:`~.layers.TempoLayer`'s)."""

    result_norms = True
    scaled_operand = "A"
    epoch_in_one_read = True
    input_privacy = ("linear: input features permuted and signed under a key fixed for the key epoch; feature "
                     "statistics across the epoch's batches can pin the permutation")

    # ------------------------------------------------------------- projections ----
    def proj_q(self, w, rho):
        """``Wᵀρ`` (n×k)."""
        return w.t() @ rho

    def proj_v(self, w, sigma):
        """``Wσ`` (m×k)."""
        return w @ sigma

    def reduce(self, d, bound):
        """Linear layers keep the abs bounds per coordinate."""
        return bound

    def track_norms(self, w, buf):
        """Row / column norms of W (and of the momentum buffer): the linear checks' tolerances."""
        t = self.t
        wd64 = w.double()
        t["Nw"], t["Mw"] = wd64.norm(dim=1), wd64.norm(dim=0)
        if buf is not None:
            t["Nb"], t["Mb"] = buf.double().norm(dim=1), buf.double().norm(dim=0)

    def refresh_tolerances(self):
        """The checks' vectors and per-row tolerance factors (see ``Tempo._refresh_check_mats``)."""
        layer, t = self, self.t
        # the checks' vectors (k×cols, rows of one matrix), several per read of an activation (see
        # _encode_forward, _encode_grad_input)
        t["q_t"] = t["q32"].t().contiguous()
        t["q_sigma_asigma_t"] = torch.cat([t["q_t"], t["sigma_t"], t["asigma"].t()])
        t["v_rho_t"] = torch.cat([t["v32"].t(), t["rho_t"]])
        # Linear: per-row tolerances (all O(k) per row given the rows' norms):
        #   Σ_j ρ_j err_ij: all roundings of row i's products together, each on a partial sum of
        #   Σ_k |x_ik||W_jk| ≤ ‖x_i‖‖W_j‖, Σ_t c_t² ≤ n·that² per product (Azuma, see LAMBDA):
        #   λ √n u ‖x_i‖ (Σ_j ρ_j² ‖W_j‖²)^½ ; the check's own products (double accumulation in the
        #   encode / decode pass, see _dot64; with q's rounding to float32): ‖x_i‖‖q‖ + ‖y_i‖‖ρ‖ times a few u ;
        #   drift λ ‖x_i‖‖e‖ (e in σ units, see Tempo._advance).
        if "rho2t" not in t:  # ρ and σ are drawn once per layer: their squares and norms are constants
            t["rho2t"] = (t["rho"].double() ** 2).t()
            t["sigma2t"] = (t["sigma"].double() ** 2).t()
            t["ftol_y"] = (_dot64(layer.m) * t["rho"].double().norm(dim=0)).float()
            t["btol_x"] = (_dot64(layer.n) * t["sigma"].double().norm(dim=0)).float()
        rq = (t["rho2t"] @ t["Nw"] ** 2).sqrt()
        rv = (t["sigma2t"] @ t["Mw"] ** 2).sqrt()
        t["ftol_x"] = (_azuma(layer.n) * rq + _dot64(layer.n) * t["qw"].norm(dim=0)
                       + LAMBDA * t["qwe"].norm(dim=0)).float()
        t["btol_g"] = (_azuma(layer.m) * rv + _dot64(layer.m) * t["vw"].norm(dim=0)
                       + LAMBDA * t["vwe"].norm(dim=0)).float()

    def result_tolerance(self, tol, result_norm, entry):
        """The tolerance's result term ``‖r_i‖ · γ‖V‖`` added to the operand side's (``entry``: its factor)."""
        return tol + result_norm * self.t[entry]

    # ---------------------------------------------------------------- encoding ----
    def encode_forward(self, x, pb, cb, scales, ledger):
        """``X′`` and the forward check's operand side, one gather (see ``Tempo._encode_forward``)."""
        layer, key, t = self, self.key, self.t
        training = layer.site.module.training
        k = t["q_t"].shape[0]
        with ledger.timed("encode"):
            g = gather(x, pb, key.pn, cb[pb], scales, src_vecs=t["q_sigma_asigma_t"] if training else t["q_t"],
                       src_norm=True, src_min=training)
            if training:
                layer.saved = InputStats(of=ident(x), xs=g.src_dot[:, k:2 * k], xn=g.src_norm,
                                         xas=g.src_dot[:, 2 * k:] if g.src_min >= 0 else None)
            return g.out, {"rhs": g.src_dot[:, :k], "tol": g.src_norm * t["ftol_x"]}

    def encode_grad_input(self, gy, pb, cb, scales, input_shape, ledger):
        """``G₁`` and the input-gradient check's operand side, one gather (see ``Tempo._encode_grad_input``)."""
        layer, key, t = self, self.key, self.t
        with ledger.timed("encode"):
            k = t["v32"].shape[1]
            g = gather(gy, pb, key.pm, cb[pb], scales, src_vecs=t["v_rho_t"], src_norm=True)
            layer.saved_g = GradStats(of=ident(gy), gr=g.src_dot[:, k:], gn=g.src_norm)
            return g.out, (pb, cb), {"rhs": g.src_dot[:, :k], "tol": g.src_norm * t["btol_g"]}

    # ---------------------------------------------------------- worker products ----
    def forward_request(self, xe, tag):
        """The forward product ``X′ W′ᵀ`` for one worker block."""
        return Request("matmul_nt", {"A": Sent(xe, "obfuscated"), "B": Ref(f"{self.h}/w")}, tag)

    def grad_input_product(self, product, input_shape):
        """``G₁[:, lo:hi] W′[lo:hi]``."""
        return {**product, "fn": "matmul", "params": {}}

    def grad_weight_product(self, product, g, lo, hi):
        """``G₂[:, lo:hi]ᵀ X′``."""
        return {**product, "fn": "matmul_tn", "A": g, "B": Ref(self.x_handle), "params": {}}

    # ---------------------------------------------------- weight-gradient checks ----
    def grad_projections(self, x, gy):
        """``(q, qa, v, va, rows, norms)``: the weight gradient's projections and abs bounds, the rows the
        products sum over, and the norm bounds of its rows / columns (see ``Tempo._grad_projections``)."""
        layer, t = self, self.t
        # X σ, ‖x_b‖ from the forward check and dY ρ, ‖dy_b‖ from the input-gradient check when they were
        # computed from these very tensors (same storage and shape); else computed here
        fx = layer.saved if layer.saved is not None and layer.saved.of == ident(x) else None
        fg = layer.saved_g if layer.saved_g is not None and layer.saved_g.of == ident(gy) else None
        layer.saved = layer.saved_g = None
        xs, xn = (fx.xs, fx.xn) if fx else (thin_columns(x, t["sigma"]), x.norm(dim=1, keepdim=True))
        gr, gn = (fg.gr, fg.gn) if fg else (thin_columns(gy, t["rho"]), gy.norm(dim=1, keepdim=True))
        agy = gy.abs()
        k = gr.shape[1]
        # q = Xᵀ(dY ρ); its abs bound |X|ᵀ(|dY||ρ|) and the norm bounds of the gradient's rows / columns,
        # ‖Σ_b g_bj x_b‖ ≤ Σ_b |g_bj| ‖x_b‖, are products with |X| and |dY|, several per read
        x_side = torch.cat([gr, thin_columns(agy, t["arho"]), gn], 1)
        xas = fx.xas if fx else None
        if xas is not None:  # X ≥ 0 (checked in the forward): |X| = X, one product for all three
            qq = thin_columns(x.t(), x_side)
            q, qm = qq[:, :k], qq[:, k:]
        else:
            ax = x.abs()
            q, qm = thin_columns(x.t(), gr), thin_columns(ax.t(), x_side[:, k:])
            xas = thin_columns(ax, t["asigma"])
        v = thin_columns(gy.t(), xs)
        vn = thin_columns(agy.t(), torch.cat([xas, xn], 1))
        qa, va = qm[:, :k], vn[:, :k]
        rows = x.shape[0]
        norms = {"N": vn[:, k].double(), "M": qm[:, k].double()}
        return q, qa, v, va, rows, norms

