"""Tempo's t-integrity checks: the verdict on a residual against its tolerance, the operand sides of conv
checks, worker-held weights checked against the projections, detection and tolerance statistics."""

from __future__ import annotations

import math

import torch

from ...errors import IntegrityError, TrainingDiverged
from ...glue import all_finite
from ...kernels import thin
from .bounds import CHECK_MARGIN, _gamma
from .reductions import ident, l1, linf


class Checks:
    """Freivalds checks over floats (a mixin of :class:`~.protocol.Tempo`)."""

    def _verify_held(self, layer, w, which, op):
        t = layer.t
        w = w.reshape(layer.site.weight_shape).float()
        for d, proj, vec in (("q", self._proj_q, t["rho"]), ("v", self._proj_v, t["sigma"])):
            got = proj(layer, w.double(), vec.double())
            want, bound = t[d + which], t[d + which + "a"]
            tol = 2 * (t[d + which + "e"] + bound * (4 * _gamma(layer.m + layer.n) + 1e-12)) + 1e-30
            self._verdict(layer.site.name, op, (got - want).abs(), tol, operands=(want, tol), kind="held",
                          detail=f"worker-held {'weights' if which == 'w' else 'momentum'} do not match "
                                 f"the tracked check projections")

    def _fail_if(self, ok, layer_name, op, detail):
        self.runtime.ledger.record_check(passed=ok)
        if not ok:
            raise IntegrityError(layer=layer_name, op=op, step=self.runtime.step, detail=detail)

    def _verdict(self, layer_name, op, residual, tol, *, operands, kind, detail):
        """Judge one check: ``residual = |result side − operand side| ≤ tol`` elementwise.

        ``operands``: the check's operand side (what the enclave computed from its own plaintext and tracked
        projections, before or without the worker's result).  If any of it is NaN / Inf, the enclave's own
        values diverged (an honest worker cannot cause that: its results only reach the operand side after
        passing their own checks): :class:`TrainingDiverged` (exit 1), not an integrity violation.  A
        non-finite result with a finite operand side fails the check (NaN compares false; an Inf makes the
        residual or the tolerance's result term infinite): exit 3.
        ``kind`` names the check family for the used-fraction statistics (:meth:`tolerance_report`)."""
        for tensor in operands:
            if not all_finite(tensor):
                raise TrainingDiverged(step=self.runtime.step,
                                       detail=f"non-finite values on the trusted side in layer {layer_name!r}, "
                                              f"op {op!r} (the operands of its check)")
        # one reduction decides: the largest residual / tolerance.  A NaN anywhere makes it NaN (fails); a
        # tolerance with result-side terms (the result's norms) is finite only if the result is, so an Inf in a
        # result, which could pass against an Inf tolerance, is caught by the tolerance's own finiteness
        # (a zero tolerance with a zero residual, e.g. an all-zero row, is 0, not 0/0: tol clamped to the tiniest float)
        used = float((residual / tol.clamp_min(torch.finfo(tol.dtype).tiny)).max()) if residual.numel() else 0.0
        ok = used <= 1.0 and all_finite(tol)
        if not ok:
            ratio = float(torch.nan_to_num(residual / tol, nan=float("inf")).max()) if residual.numel() else 0.0
            detail = f"{detail} (residual up to {ratio:.3g}x the tolerance)"
        elif residual.numel():
            stats = self._used.setdefault(kind, [0.0, 0])
            stats[0], stats[1] = max(stats[0], used), stats[1] + 1
        self._fail_if(ok, layer_name, op, detail)

    def _expect_conv_forward(self, layer, x, *, nonneg):
        """The operand side of a conv layer's forward check (see :meth:`_encode_forward`); ``nonneg``: X ≥ 0."""
        t = layer.t
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
            layer.saved = {"of": ident(x), "xs": xs, "l1x": l1x, "linfx": None if nonneg else linf(x)}
        return {"rhs": rhs, "tol": tol}

    #: per checked op: the tracker entry of the tolerance's result term (linear layers) and what failed
    _CHECKED = {"forward": ("ftol_y", "forward result"), "grad_input": ("btol_x", "input gradient")}

    def _check(self, layer, op, expected, lhs, result_norm):
        """The result side of a check: ``|lhs − rhs| ≤ CHECK_MARGIN·tol`` row by row, with ``lhs = R V`` (``Y ρ`` or
        ``dX σ``) and ``rhs``, ``tol`` from the operand side; linear layers add the tolerance's result term
        ``‖r_i‖ · γ‖V‖`` (``result_norm``: the rows' norms)."""
        result_tol, what = self._CHECKED[op]
        tol = expected["tol"]
        if not layer.conv:
            tol = tol + result_norm * layer.t[result_tol]
        self._verdict(layer.site.name, op, (lhs - expected["rhs"]).abs(), CHECK_MARGIN * tol + 1e-30,
                      operands=(expected["rhs"], expected["tol"]), kind=op, detail=f"{what} fails the Freivalds check")

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

    def detection(self, ratio: float = 2.0 ** 10) -> dict:
        k = self.settings["check_vectors"]
        return {"check_vectors": k,
                "miss_probability_bound": "(tolerance/|error|)^k per checked result",
                f"miss_probability_at_error_{int(ratio)}x_tolerance": ratio ** -k,
                "soundness_bits_at_that_error": k * math.log2(ratio)}

    def tolerance_report(self) -> dict:
        """Per check family: the largest fraction of its tolerance an honest-passing check used, the checks
        passed, and the headroom ``tolerance / largest residual`` (how much larger than any honest residual
        seen an error must be to be caught for sure)."""
        out = {}
        for kind, (used, count) in sorted(self._used.items()):
            out[kind] = {"max_used_fraction": used, "checks": count,
                         "headroom": (1.0 / used) if used > 0 else None}
        worst = max((used for used, _ in self._used.values()), default=0.0)
        return {"max_used_fraction": worst, "headroom": (1.0 / worst) if worst > 0 else None, "per_check": out}
