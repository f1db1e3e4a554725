"""Tempo's check projections: the secret check vectors ρ, σ, the tracked projections ``q = Wᵀρ``,
``v = Wσ`` of the worker-held weights (and momentum), their abs bounds and drift, the float32 check
matrices and tolerances refreshed from them, and the projections of a weight gradient."""

from __future__ import annotations

import torch

from ...kernels import thin
from .bounds import U32, _azuma, _dot64, _gamma
from .reductions import ident, l1, linf, thin_columns


class Projections:
    """Tracked check projections (a mixin of :class:`~.protocol.Tempo`)."""

    def _proj_q(self, layer, w, rho):
        """``Wᵀρ`` (linear: n×k) / ``Σ_m ρ[m,j] W[m]`` (conv: k×n×kh×kw)."""
        if layer.conv:
            return torch.einsum("mnhw,mk->knhw", w, rho)
        return w.t() @ rho

    def _proj_v(self, layer, w, sigma):
        if layer.conv:
            return torch.einsum("mnhw,nk->mkhw", w, sigma)
        return w @ sigma

    def _reset_tracker(self, layer, w, buf):
        k = self.settings["check_vectors"]
        name = layer.site.name
        t = layer.t
        if "rho" not in t:
            keys = self._stream("check-vectors", name)  # once per layer and run (restored on resume)
            t["rho"], t["sigma"] = self._uniform((layer.m, k), keys), self._uniform((layer.n, k), keys)
            t["arho"], t["asigma"] = t["rho"].abs(), t["sigma"].abs()
        w = w.float()
        aw = w.abs()
        for d, proj in (("q", self._proj_q), ("v", self._proj_v)):
            vec = t["rho"] if d == "q" else t["sigma"]
            avec = t["arho"] if d == "q" else t["asigma"]
            t[d + "w"] = proj(layer, w.double(), vec.double())
            t[d + "wa"] = self._reduce(layer, d, proj(layer, aw, avec).double())
            # the projections are computed in float64 from the exact float32 weights
            t[d + "we"] = t[d + "wa"] * (2.0 ** -50 * max(layer.m, layer.n * layer.ksz))
            if buf is not None:
                bf = buf.float()
                t[d + "b"] = proj(layer, bf.double(), vec.double())
                t[d + "ba"] = self._reduce(layer, d, proj(layer, bf.abs(), avec).double())
                t[d + "be"] = t[d + "ba"] * (2.0 ** -50 * max(layer.m, layer.n * layer.ksz))
            else:
                for s in ("b", "ba", "be"):
                    t.pop(d + s, None)
        if not layer.conv:
            # row / column norms of W (and of the momentum buffer): the linear checks' tolerances
            wd64 = w.double()
            t["Nw"], t["Mw"] = wd64.norm(dim=1), wd64.norm(dim=0)
            if buf is not None:
                t["Nb"], t["Mb"] = buf.double().norm(dim=1), buf.double().norm(dim=0)
        self._refresh_check_mats(layer)

    @staticmethod
    def _reduce(layer, d, bound):
        """Conv layers keep the abs bounds as their max over the wide channel (n for q, m for v): the
        checks' tolerances then need only channel-norm maps of the activations (one pass each)."""
        if not layer.conv:
            return bound
        return bound.amax(dim=1, keepdim=True) if d == "q" else bound.amax(dim=0, keepdim=True)

    def _refresh_check_mats(self, layer):
        """float32 copies of the projections and the error bounds used by the checks this step."""
        t = layer.t
        t["q32"], t["v32"] = t["qw"].float(), t["vw"].float()
        if "rho_t" not in t:  # the check vectors as rows (k×m, k×n): the decoding pass contracts results with them
            t["rho_t"], t["sigma_t"] = t["rho"].t().contiguous(), t["sigma"].t().contiguous()
        if layer.conv:
            # |Yρ - X q| ≤ 2γ_K |X||W|ᵀ|ρ| (the product and the check) + γ_m |Y||ρ| (≤ γ_m |X||W|ᵀ|ρ|) + drift
            K, Kv = layer.n * layer.ksz, layer.m * layer.ksz
            t["qtol"] = (t["qwa"] * (2 * _gamma(K) + _gamma(layer.m) + 2 * U32) + t["qwe"]).float()
            t["vtol"] = (t["vwa"] * (2 * _gamma(Kv) + _gamma(layer.n) + 2 * U32) + t["vwe"]).float()
        else:
            # the checks' vectors (k×cols, rows of one matrix), several per read of an activation (see
            # _encode_forward, _encode_grad_input)
            t["q_t"] = t["q32"].t().contiguous()
            t["q_sigma_asigma_t"] = torch.cat([t["q_t"], t["sigma_t"], t["asigma"].t()])
            t["v_rho_t"] = torch.cat([t["v32"].t(), t["rho_t"]])
            # Linear: per-row tolerances (all O(k) per row given the rows' norms):
            #   Σ_j ρ_j err_ij: all roundings of row i's products together, each on a partial sum of
            #   Σ_k |x_ik||W_jk| ≤ ‖x_i‖‖W_j‖, at most 2n per product (Azuma, see LAMBDA):
            #   λ √(2n) u ‖x_i‖ (Σ_j ρ_j² ‖W_j‖²)^½ ; the check's own products (double accumulation in the
            #   encode / decode pass, see _dot64; with q's rounding to float32): ‖x_i‖‖q‖ + ‖y_i‖‖ρ‖ times a few u ;
            #   drift ‖x_i‖‖e‖.
            if "rho2t" not in t:  # ρ and σ are drawn once per layer: their squares and norms are constants
                t["rho2t"] = (t["rho"].double() ** 2).t()
                t["sigma2t"] = (t["sigma"].double() ** 2).t()
                t["ftol_y"] = (_dot64(layer.m) * t["rho"].double().norm(dim=0)).float()
                t["btol_x"] = (_dot64(layer.n) * t["sigma"].double().norm(dim=0)).float()
            rq = (t["rho2t"] @ t["Nw"] ** 2).sqrt()
            rv = (t["sigma2t"] @ t["Mw"] ** 2).sqrt()
            t["ftol_x"] = (_azuma(layer.n) * rq + _dot64(layer.n) * t["qw"].norm(dim=0)
                           + t["qwe"].norm(dim=0)).float()
            t["btol_g"] = (_azuma(layer.m) * rv + _dot64(layer.m) * t["vw"].norm(dim=0)
                           + t["vwe"].norm(dim=0)).float()

    def _hold_grad_projections(self, layer, x, grad_y):
        """The worker keeps the weight gradient; the enclave keeps its projections for ``optimizer.step()``."""
        with self.runtime.ledger.timed("decode_verify"):
            layer.pending = self._grad_projections(layer, x.detach().float(), grad_y.float())

    def _expect_conv_grad_input(self, layer, gy, input_shape, *, l1g, linfg):
        """The operand side of a conv layer's input-gradient check (see :meth:`_encode_grad_input`), given the
        channel maps ``Σ_m |dY|`` and ``max_m |dY|``."""
        t = layer.t
        cp = layer.site.conv_params
        size = (input_shape[0], t["sigma"].shape[1], *input_shape[2:])
        rhs, gr = thin.conv_input(gy, t["v32"], size, cp, extra=t["rho"].t())
        # Σ_m |dY| for the tolerance here, max_m |dY| for the weight-gradient bounds
        layer.saved_g = {"of": ident(gy), "gr": gr, "l1g": l1g, "linfg": linfg}
        return {"rhs": rhs, "tol": thin.conv_input(l1g, t["vtol"], size, cp)}

    def _grad_projections(self, layer, x, gy):
        """Projections of the weight gradient dW on ρ and σ (and their abs bounds), from plaintext x, dY."""
        t = layer.t
        if layer.conv:
            cp, kernel = layer.site.conv_params, layer.kernel
            fx = getattr(layer, "saved", None) or {}
            fg = getattr(layer, "saved_g", None) or {}
            layer.saved = layer.saved_g = None
            if fx.get("xs") is None or fx.get("of") != ident(x):
                fx = {"xs": thin.channels(x, t["sigma"]), "l1x": l1(x), "linfx": linf(x)}
            if fg.get("gr") is None or fg.get("of") != ident(gy) or fg.get("linfg") is None:
                fg = {"gr": thin.channels(gy, t["rho"]), "l1g": l1(gy), "linfg": linf(gy)}
            # bounds on max_n |ΔW|ᵀ|ρ| and max_m |ΔW||σ| from channel-norm maps (|ρ|, |σ| ≤ 1):
            # |ΔW|ᵀ|ρ| ≤ |X| ⋆ Σ_m|dY| per input channel; when X ≥ 0 (after a ReLU) that is one more channel of
            # q's product, and its max over the channels bounds tighter than (max_n |X|) ⋆ Σ_m|dY|
            if fx["linfx"] is None:
                J = fg["gr"].shape[1]
                both = thin.conv_weight_thin_out(x, torch.cat([fg["gr"], fg["l1g"]], 1), kernel, cp)
                q, qa = both[:J], both[J:].amax(dim=1, keepdim=True)
            else:
                q = thin.conv_weight_thin_out(x, fg["gr"], kernel, cp)
                qa = thin.conv_weight_thin_out(fx["linfx"], fg["l1g"], kernel, cp)
            v = thin.conv_weight_thin_in(fx["xs"], gy, kernel, cp)
            va = thin.conv_weight_thin_in(fx["l1x"], fg["linfg"], kernel, cp)
            rows = gy.shape[0] * gy.shape[2] * gy.shape[3]
        else:
            # X σ, ‖x_b‖ from the forward check and dY ρ, ‖dy_b‖ from the input-gradient check when they were
            # computed from these very tensors (same storage and shape); else computed here
            fx = layer.saved if layer.saved is not None and layer.saved.get("of") == ident(x) else None
            fg = layer.saved_g if layer.saved_g is not None and layer.saved_g.get("of") == ident(gy) else None
            layer.saved = layer.saved_g = None
            xs, xn = (fx["xs"], fx["xn"]) if fx else (thin_columns(x, t["sigma"]), x.norm(dim=1, keepdim=True))
            gr, gn = (fg["gr"], fg["gn"]) if fg else (thin_columns(gy, t["rho"]), gy.norm(dim=1, keepdim=True))
            agy = gy.abs()
            k = gr.shape[1]
            # q = Xᵀ(dY ρ); its abs bound |X|ᵀ(|dY||ρ|) and the norm bounds of the gradient's rows / columns,
            # ‖Σ_b g_bj x_b‖ ≤ Σ_b |g_bj| ‖x_b‖, are products with |X| and |dY|, several per read
            x_side = torch.cat([gr, thin_columns(agy, t["arho"]), gn], 1)
            xas = fx["xas"] if fx else None
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
        err = 3 * _gamma(rows) + _gamma(max(layer.m, layer.n)) + 4 * U32
        out = {"q": q.double(), "qa": qa.double(), "qe": qa.double() * err,
               "v": v.double(), "va": va.double(), "ve": va.double() * err}
        if not layer.conv:
            out.update(norms)
        return out
