"""Tempo's check projections: the secret check vectors ρ, σ, the tracked projections ``q = Wᵀρ``,
``v = Wσ`` of the worker-held weights (and momentum), their abs bounds and drift, the float32 check
matrices and tolerances refreshed from them, and the projections of a weight gradient."""

from __future__ import annotations

from .bounds import U32, _gamma


class Projections:
    """Tracked check projections (a mixin of :class:`~.protocol.Tempo`)."""

    def _proj_q(self, layer, w, rho):
        """``Wᵀρ`` (linear: n×k) / ``Σ_m ρ[m,j] W[m]`` (conv: k×n×kh×kw)."""
        return layer.proj_q(w, rho)

    def _proj_v(self, layer, w, sigma):
        """``Wσ`` (linear: m×k) / ``Σ_n σ[n,j] W[:, n]`` (conv: m×k×kh×kw)."""
        return layer.proj_v(w, sigma)

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

    def _hold_grad_projections(self, layer, x, grad_y):
        """The worker keeps the weight gradient; the enclave keeps its projections for ``optimizer.step()``."""
        with self.runtime.ledger.timed("decode_verify"):
            layer.pending = self._grad_projections(layer, x.detach().float(), grad_y.float())

    def _grad_projections(self, layer, x, gy):
        """Projections of the weight gradient dW on ρ and σ (and their abs bounds), from plaintext x, dY."""
        q, qa, v, va, rows, norms = layer.grad_projections(x, gy)
        err = 3 * _gamma(rows) + _gamma(max(layer.m, layer.n)) + 4 * U32
        out = {"q": q.double(), "qa": qa.double(), "qe": qa.double() * err,
               "v": v.double(), "va": va.double(), "ve": va.double() * err}
        if norms is not None:
            out.update(norms)
        return out
