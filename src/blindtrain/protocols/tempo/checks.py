"""Tempo's t-integrity checks: the verdict on a residual against its tolerance, the operand sides of conv
checks, worker-held weights checked against the projections, detection and tolerance statistics (each layer
kind's operand sides are its own: :mod:`.linear`, :mod:`.conv`)."""

from __future__ import annotations

import math

import torch

from ...errors import IntegrityError, TrainingDiverged
from ...glue import all_finite
from .bounds import CHECK_MARGIN, LAMBDA

#: operand-side magnitude past which a failed check is reported as divergence (exit 1): no healthy run's
#: activations or check projections come near it, and an honest float32 product of such values can overflow
DIVERGED_MAGNITUDE = 2.0 ** 100


class Checks:
    """Freivalds checks over floats (a mixin of :class:`~.protocol.Tempo`)."""

    def _verify_held(self, layer, w, which, op):
        t = layer.t
        w = w.reshape(layer.site.weight_shape).float()
        for d, proj, vec in (("q", self._proj_q, t["rho"]), ("v", self._proj_v, t["sigma"])):
            got = proj(layer, w.double(), vec.double())
            want, bound = t[d + which], t[d + which + "a"]
            # the tracked drift (σ units: λ·e, see _advance) + this projection's own double rounding
            # (and the tracker's at its reset: both ≤ 2^-50·K·bound, K the longest sum)
            tol = LAMBDA * t[d + which + "e"] + bound * (2.0 ** -49 * max(layer.m, layer.n * layer.ksz)) + 1e-30
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
        residual or the tolerance's result term infinite): exit 3 — unless the operand side exceeds
        :data:`DIVERGED_MAGNITUDE`, where an honest float32 result can overflow: divergence (exit 1).
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
        if not ok and any(t.numel() and float(t.detach().abs().max()) > DIVERGED_MAGNITUDE for t in operands):
            # the enclave's own values are beyond any healthy run: an honest float32 result can overflow to
            # Inf here (seen at --lr 100 with fused layers), so a failed check is divergence, not tampering;
            # either way nothing is trained on the result
            raise TrainingDiverged(step=self.runtime.step,
                                   detail=f"values beyond 2^100 on the trusted side in layer {layer_name!r}, "
                                          f"op {op!r} (a float32 result overflows)")
        if not ok:
            ratio = float(torch.nan_to_num(residual / tol, nan=float("inf")).max()) if residual.numel() else 0.0
            detail = f"{detail} (residual up to {ratio:.3g}x the tolerance)"
        elif residual.numel():
            stats = self._used.setdefault(kind, [0.0, 0])
            stats[0], stats[1] = max(stats[0], used), stats[1] + 1
        self._fail_if(ok, layer_name, op, detail)

    #: per checked op: the tracker entry of the tolerance's result term (linear layers) and what failed
    _CHECKED = {"forward": ("ftol_y", "forward result"), "grad_input": ("btol_x", "input gradient")}

    def _check(self, layer, op, expected, lhs, result_norm):
        """The result side of a check: ``|lhs − rhs| ≤ CHECK_MARGIN·tol`` row by row, with ``lhs = R V`` (``Y ρ`` or
        ``dX σ``) and ``rhs``, ``tol`` from the operand side; linear layers add the tolerance's result term
        ``‖r_i‖ · γ‖V‖`` (``result_norm``: the rows' norms)."""
        result_tol, what = self._CHECKED[op]
        tol = layer.result_tolerance(expected["tol"], result_norm, result_tol)
        self._verdict(layer.site.name, op, (lhs - expected["rhs"]).abs(), CHECK_MARGIN * tol + 1e-30,
                      operands=(expected["rhs"], expected["tol"]), kind=op, detail=f"{what} fails the Freivalds check")

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
