"""Tempo's check projections: the secret check vectors ρ, σ, the tracked projections ``q = Wᵀρ``,
``v = Wσ`` of the worker-held weights (and momentum), their abs bounds and drift, the float32 check
matrices and tolerances refreshed from them, and the projections of a weight gradient."""

from __future__ import annotations

import math

from ...boundary import Ref, Request, Tag
from ...kernels.weight_epoch import weight_epoch
from .bounds import U32


class Projections:
    """Tracked check projections (a mixin of :class:`~.protocol.Tempo`)."""

    def _proj_q(self, layer, w, rho):
        """``Wᵀρ`` (linear: n×k) / ``Σ_m ρ[m,j] W[m]`` (conv: k×n×kh×kw)."""
        return layer.proj_q(w, rho)

    def _proj_v(self, layer, w, sigma):
        """``Wσ`` (linear: m×k) / ``Σ_n σ[n,j] W[:, n]`` (conv: m×k×kh×kw)."""
        return layer.proj_v(w, sigma)

    def _check_vectors(self, layer):
        """ρ (m×k), σ (n×k) and their absolute values, drawn once per layer and run (restored on resume)."""
        t, k = layer.t, self.settings["check_vectors"]
        if "rho" not in t:
            keys = self._stream("check-vectors", layer.site.name)
            t["rho"], t["sigma"] = self._uniform((layer.m, k), keys), self._uniform((layer.n, k), keys)
            t["arho"], t["asigma"] = t["rho"].abs(), t["sigma"].abs()

    def _new_epoch_tracker(self, layer, w, buf):
        """The tracked projections of a new key epoch's weights (and momentum buffer).  Linear layers take them
        with W′ from one read (:meth:`_epoch_in_one_read`, returns ``(W′, buffer′ or None)``); conv layers
        by :meth:`_reset_tracker` (returns None: W′ is made when sent)."""
        if layer.epoch_in_one_read:
            return self._epoch_in_one_read(layer, w, buf)
        return self._reset_tracker(layer, w.float(), buf)

    def _epoch_in_one_read(self, layer, w, buf):
        """A linear layer's new key epoch from one read of W (and of the momentum buffer): what
        :meth:`_reset_tracker` computes, and W′ (:mod:`blindtrain.kernels.weight_epoch`, bit-identical to
        :meth:`_enc`).  Returns ``(W′, buffer′ or None)``."""
        self._check_vectors(layer)
        t, key = layer.t, layer.key
        drift = 2.0 ** -50 * max(layer.m, layer.n * layer.ksz)
        encrypted = []
        for which, x in (("w", w), ("b", buf)):
            if x is None:
                for name in ("qb", "qba", "qbe", "vb", "vba", "vbe"):
                    t.pop(name, None)
                encrypted.append(None)
                continue
            e = weight_epoch(x.float().reshape(layer.m, layer.n), key.pm, key.pn, key.c[key.pm],
                             key.s[key.pn], t["rho"], t["sigma"])
            t["q" + which], t["q" + which + "a"], t["q" + which + "e"] = e.q, e.q_abs, e.q_abs * drift
            t["v" + which], t["v" + which + "a"], t["v" + which + "e"] = e.v, e.v_abs, e.v_abs * drift
            t["N" + which], t["M" + which] = e.row_norm, e.col_norm
            encrypted.append(e.encrypted)
        self._refresh_check_mats(layer)
        return tuple(encrypted)

    def _reset_tracker(self, layer, w, buf):
        self._check_vectors(layer)
        t = layer.t
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
        layer.track_norms(w, buf)
        self._refresh_check_mats(layer)

    @staticmethod
    def _reduce(layer, d, bound):
        """Conv layers keep the abs bounds as their max over the wide channel (n for q, m for v): the
        checks' tolerances then need only channel-norm maps of the activations (one pass each)."""
        return layer.reduce(d, bound)

    def _refresh_check_mats(self, layer):
        """float32 copies of the projections and the error bounds used by the checks this step."""
        t = layer.t
        t["q32"], t["v32"] = t["qw"].float(), t["vw"].float()
        if "rho_t" not in t:  # the check vectors as rows (k×m, k×n): the decoding pass contracts results with them
            t["rho_t"], t["sigma_t"] = t["rho"].t().contiguous(), t["sigma"].t().contiguous()
        layer.refresh_tolerances()

    def _hold_grad_projections(self, layer, x, grad_y) -> str:
        """The worker keeps the weight gradient; the enclave keeps its projections for ``optimizer.step()``.
        A second weight gradient before the step (a layer called twice, two forwards, accumulation over
        micro-batches) adds to the first, as ``.grad`` does: the projections here, the gradient on the worker
        (:meth:`_accumulate_on_workers`).  Returns the handle the worker keeps this product under."""
        with self.runtime.ledger.timed("decode_verify"):
            new = self._grad_projections(layer, x.detach().float(), grad_y.float())
            if layer.pending is not None and self._grads_zeroed(layer):
                layer.pending = None  # zero_grad() without a step: the held gradient is overwritten
            if layer.pending is None:
                layer.pending = new
                return f"{layer.h}/g"
            layer.pending = self._sum_projections(layer.pending, new)
        layer.accumulated = True
        return f"{layer.h}/g+"

    @staticmethod
    def _sum_projections(a, b):
        """The projections of ``dW_a + dW_b`` (the worker adds the float32 gradients: one rounding per entry,
        ``|δ| ≤ u·|dW_a + dW_b|``, ℓ2 coefficient norm ≤ u·(qa_a + qa_b) after projection; drift in σ units
        as in ``_advance``); norm bounds by the triangle inequality."""
        out = {}
        for d in ("q", "v"):
            out[d] = a[d] + b[d]
            out[d + "a"] = a[d + "a"] + b[d + "a"]
            out[d + "e"] = (a[d + "e"] ** 2 + b[d + "e"] ** 2 + (2 * U32 * out[d + "a"]) ** 2).sqrt()
        for d in ("N", "M"):
            if d in a:
                out[d] = (a[d] + b[d]) * (1 + 2 * U32)
        return out

    def _accumulate_on_workers(self, layer, keep):
        """``g += g+`` on each worker block when this backward's gradient was kept apart (see
        :meth:`_hold_grad_projections`)."""
        if keep != f"{layer.h}/g+":
            return
        tag = Tag(self.runtime.step, layer.site.name, "update")
        self._call_each([(k, Request("axpy", {"G": Ref(keep)}, tag, return_result=False,
                                     params={"target": f"{layer.h}/g", "alpha": 1.0, "terms": [["G", 1.0]]}))
                         for k in range(len(layer.blocks))])

    def _grad_projections(self, layer, x, gy):
        """Projections of the weight gradient dW on ρ and σ (and their abs bounds), from plaintext x, dY."""
        q, qa, v, va, rows, norms = layer.grad_projections(x, gy)
        # the gradient projections' rounding drift in σ units (see LAMBDA, _advance): the worker's product
        # (rows terms), the tracker's two thin products (rows terms) and dY ρ / X σ (max(m, n) terms), and four
        # single roundings, all on partial sums ≤ the abs bound: one martingale, Σ c² ≤ (3 rows + max(m, n) + 4)·bound²
        err = U32 * math.sqrt(3 * rows + max(layer.m, layer.n) + 4)
        out = {"q": q.double(), "qa": qa.double(), "qe": qa.double() * err,
               "v": v.double(), "va": va.double(), "ve": va.double() * err}
        if norms is not None:
            out.update(norms)
        return out
