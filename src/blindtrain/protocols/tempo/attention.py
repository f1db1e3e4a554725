"""Both-private products (attention ``QKᵀ``, ``AV``): both operands obfuscated under fresh keys, checked."""

from __future__ import annotations

import torch

from ...boundary import Request, Sent, Tag
from .bounds import CHECK_MARGIN, _rounding_bound


class Attention:
    """Batched matmuls of two private operands (a mixin of :class:`~.protocol.Tempo`)."""

    def _bmm(self, site, op, a, b):
        """``a @ b`` (…×p×q, …×q×r), both operands obfuscated under fresh keys, checked."""
        rt = self.runtime
        lead = a.shape[:-2]
        p, q = a.shape[-2:]
        r = b.shape[-1]
        a3 = a.detach().float().reshape(-1, p, q)
        b3 = b.detach().float().reshape(-1, q, r)
        L = a3.shape[0]
        with rt.ledger.timed("encode"):
            keys = self._step_keys(op != "forward" or site.module.training)
            pl, pp, pq, pr = (self._perm(L, keys), self._perm(p, keys), self._perm(q, keys), self._perm(r, keys))
            sq = self._signs(q, keys)
            ca, cr = self._pow2(p, keys), self._pow2(r, keys)
            ae = a3.index_select(0, pl).index_select(1, pp).index_select(2, pq)
            ae.mul_(ca[pp].view(1, -1, 1) * sq[pq].view(1, 1, -1))
            be = b3.index_select(0, pl).index_select(1, pq).index_select(2, pr)
            be.mul_(sq[pq].view(1, -1, 1) * cr[pr].view(1, 1, -1))
        blocks = self._blocks(p)
        requests = []
        for k, (lo, hi) in enumerate(blocks):
            part = ae if len(blocks) == 1 else ae[:, lo:hi].contiguous()
            requests.append((k, Request("bilinear", {"A": Sent(part, "obfuscated"), "B": Sent(be, "obfuscated")},
                                        Tag(rt.step, site.name, op), params={"fn": "bmm"})))
        parts = [reply.result for reply in self._call_each(requests)]
        with rt.ledger.timed("decode_verify"):
            ye = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            y = ye.index_select(0, self._inverse(pl)).index_select(1, self._inverse(pp)).index_select(
                2, self._inverse(pr))
            y.mul_((1.0 / ca).view(1, -1, 1) * (1.0 / cr).view(1, 1, -1))
            k = self.settings["check_vectors"]
            rho = self._uniform((r, k), keys)
            lhs = y @ rho
            rhs = a3 @ (b3 @ rho)
            # every rounding in |Yρ − A(Bρ)| under one Azuma bound (_rounding_bound): the worker's A B (q terms,
            # weighted by ρ: Σ_j ρ_j² q S_ij² ≤ q T1², T1 = |A|(|B||ρ|)), the check's Bρ (r terms, ≤ |B||ρ|,
            # carried through A: ≤ r T1²), A(Bρ) (q terms, ≤ T2 = |A||Bρ|) and Yρ (r terms, ≤ T3 = |Y||ρ|)
            t1 = a3.abs() @ (b3.abs() @ rho.abs())
            t2 = a3.abs() @ (b3 @ rho).abs()
            t3 = y.abs() @ rho.abs()
            operand_tol = t1 + t2  # (finite iff the enclave's operands are)
            tol = _rounding_bound((q, t1), (r, t1), (q, t2), (r, t3))
            self._verdict(site.name, op, (lhs - rhs).abs(), CHECK_MARGIN * tol + 1e-30, operands=(rhs, operand_tol),
                          kind="attention", detail="attention product fails the Freivalds check")
        return y.reshape(*lead, p, r).to(a.dtype)

    def matmul(self, site, a, b):
        return self._bmm(site, "forward", a, b)

    def matmul_grads(self, site, a, b, grad_y, needs):
        grad_a = grad_b = None
        if needs[0]:
            grad_a = self._bmm(site, "grad_input", grad_y, b.transpose(-2, -1))
        if needs[1]:
            grad_b = self._bmm(site, "grad_weight", a.transpose(-2, -1), grad_y)
        return grad_a, grad_b
