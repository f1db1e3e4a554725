"""Worker-side SGD: after ``optimizer.step()`` the workers update W′ in its key, and the enclave advances the
check projections by the same recurrences."""

from __future__ import annotations

import torch

from ...boundary import Request, Tag
from .bounds import U32


class WorkerSgd:
    """The optimizer step of worker-held weights (a mixin of :class:`~.protocol.Tempo`)."""

    def _group_of(self, param):
        for group in self.optimizer.param_groups:
            if any(p is param for p in group["params"]):
                return group
        return None

    def _after_optimizer_step(self, optimizer, args, kwargs):
        """Apply SGD to the worker-held weights (in their key) and advance the check projections.

        One ``sgd_step`` message per worker carries the updates of all its layers."""
        rt = self.runtime
        updates = []  # (layer, projections of its weight gradient, SGD hyperparameters)
        for layer in self.layers.values():
            P, layer.pending = layer.pending, None
            if P is None:
                continue
            group = self._group_of(layer.param)
            if group is None:
                self._drop_grad(layer)
                continue
            self._mark_applied(layer)
            updates.append((layer, P, (float(group["lr"]), float(group.get("momentum", 0.0)),
                                       float(group.get("dampening", 0.0)), float(group.get("weight_decay", 0.0)),
                                       bool(group.get("nesterov", False)))))
        with rt.ledger.timed("decode_verify"):  # the projections follow the update; they need no answer
            cohorts: dict[tuple, list] = {}  # layers whose recurrences take the same coefficients
            for layer, P, hyper in updates:
                cohorts.setdefault((hyper, layer.has_buf), []).append((layer, P))
            for (hyper, has_buf), members in cohorts.items():
                self._advance(members, *hyper, has_buf=has_buf)
        requests = []
        for layer in self.layers.values():  # an accumulated gradient's scratch block
            if layer.accumulated:
                layer.accumulated = False
                requests.extend((k, Request("free", {}, Tag(rt.step, layer.site.name, "update"),
                                            params={"handles": [f"{layer.h}/g+"]}, return_result=False))
                                for k in range(len(layer.blocks)))
        for k in range(self.settings["workers"]):
            steps = [{"target": f"{layer.h}/w", "grad": f"{layer.h}/g", "buffer": f"{layer.h}/buf",
                      **dict(zip(("lr", "momentum", "dampening", "weight_decay", "nesterov"), hyper))}
                     for layer, _, hyper in updates if k < len(layer.blocks)]
            if steps:
                requests.append((k, Request("sgd_step", {}, Tag(rt.step, "*", "update"), params={"updates": steps},
                                            return_result=False)))
        self._call_each(requests)

    def _drop_grad(self, layer):
        self._call_each([(k, Request("free", {}, Tag(self.runtime.step, layer.site.name, "update"),
                                     params={"handles": [f"{layer.h}/g"]}, return_result=False))
                         for k in range(len(layer.blocks))])

    @staticmethod
    def _rounding_caps(t, P, d, lr, mu, damp, wd, nesterov, has_buf):
        """Linear layers: upper bounds of the norms ``‖c_{:,n}‖`` (track ``q``, over the m outputs) or
        ``‖c_{m,:}‖`` (track ``v``) of what each SGD operation rounds (``d``, ``b``, ``s``, the new ``w``), from
        the tracked norm bounds (the same triangle recurrences as :meth:`_advance`'s norm block).  A fresh
        rounding of a projection, ``Σ_m ρ_m δ_m c_m``, has ℓ2 coefficient norm ``≤ ‖c‖`` (|ρ| ≤ 1), up to √m
        below the abs projection ``Σ_m |ρ_m||c_m|``.  None for conv layers (abs bounds only)."""
        key = {"q": "M", "v": "N"}[d]
        if key not in P:
            return None
        wn = t[key + "w"]
        dn = P[key] + abs(wd) * wn
        bn = sn = dn
        if mu != 0:
            bn = abs(mu) * t[key + "b"] + abs(1 - damp) * dn if has_buf else dn
            sn = dn + abs(mu) * bn if nesterov else bn
        return {"d": dn, "b": bn, "s": sn, "w": (wn + abs(lr) * sn) * (1 + 4 * U32)}

    def _advance(self, members, lr, mu, damp, wd, nesterov, *, has_buf):
        """The SGD recurrences on the projections (exact, float64), their abs bounds and rounding drift.

        ``members``: ``(layer, P)`` pairs sharing the hyperparameters and ``has_buf``; every term is one
        batched ``torch._foreach_*`` op over all their projections.  Per projection (value x, abs bound xa,
        rounding drift xe; P gives the gradient's g, ga, ge):
        ``d = g + wd·w``, ``b = mu·b + (1−damp)·d`` (``b = d`` on the first step), ``s = d + mu·b`` (Nesterov)
        or ``b``, ``w ← w − lr·s``; the bounds take absolute coefficients.

        The drift ``xe`` is in σ units (see :data:`LAMBDA`): an upper bound of ``u·√(Σ_t α_t² c_t²)`` over every
        rounding ``t`` so far (``α_t``: its coefficient in the tracked quantity), so the drift itself is at most
        ``λ·xe`` under the model.  Errors from earlier steps ("old") propagate through the recurrence with
        absolute coefficients (triangle inequality on the coefficient vectors); this step's roundings ("fresh":
        the gradient's ``ge``, and per rounded operation a few ``u`` of its abs bound, ℓ2 ≤ ℓ1 over the
        projected coordinates) are independent of all earlier ones, so ``xe' = √(old² + fresh²)``: the drift
        grows as √steps, not as steps."""
        u, fe = U32, torch._foreach_add
        tracks = [(layer.t, P, d) for layer, P in members for d in ("q", "v")]

        def cap(abs_bound, caps, stage):  # the ℓ2 coefficient norm of a fresh rounding: min(abs, norm)
            return abs_bound if caps is None else torch.minimum(abs_bound, caps[stage].unsqueeze(1))

        def terms(source, suffix):
            return [source(t, P)[d + suffix] for t, P, d in tracks]

        G, GA, GE = (terms(lambda t, P: P, s) for s in ("", "a", "e"))
        W, WA, WE = (terms(lambda t, P: t, "w" + s) for s in ("", "a", "e"))
        caps = [self._rounding_caps(t, P, d, lr, mu, damp, wd, nesterov, has_buf) for t, P, d in tracks]
        zero = [torch.zeros_like(x) for x in WE]
        if wd != 0:  # (old, fresh) drift of d: old from w's drift, fresh from the gradient and d's 2 roundings
            D, DA = fe(G, W, alpha=wd), fe(GA, WA, alpha=abs(wd))
            DO = torch._foreach_mul(WE, abs(wd))
            DF = [torch.hypot(ge, 2 * u * cap(da, c, "d")) for ge, da, c in zip(GE, DA, caps)]
        else:
            D, DA, DO, DF = G, GA, zero, GE
        S, SA, SO, SF = D, DA, DO, DF
        if mu != 0:
            if has_buf:
                B, BA, BO = (torch._foreach_mul(terms(lambda t, P: t, "b" + s), c)
                             for s, c in (("", mu), ("a", abs(mu)), ("e", abs(mu))))
                torch._foreach_add_(B, D, alpha=1 - damp)
                torch._foreach_add_(BA, DA, alpha=abs(1 - damp))
                torch._foreach_add_(BO, DO, alpha=abs(1 - damp))
                BF = [torch.hypot(abs(1 - damp) * df, 3 * u * cap(ba, c, "b")) for df, ba, c in zip(DF, BA, caps)]
            else:  # b = d, copied: no rounding
                B, BA, BO, BF = ([x.clone() for x in X] for X in (D, DA, DO, DF))
            for i, (t, _, d) in enumerate(tracks):
                t[d + "b"], t[d + "ba"], t[d + "be"] = B[i], BA[i], torch.hypot(BO[i], BF[i])
            if nesterov:  # (d's and b's fresh roundings are correlated: triangle)
                S, SA, SO = fe(D, B, alpha=mu), fe(DA, BA, alpha=abs(mu)), fe(DO, BO, alpha=abs(mu))
                SF = [torch.hypot(df + abs(mu) * bf, 2 * u * cap(sa, c, "s")) for df, bf, sa, c in zip(DF, BF, SA, caps)]
            else:
                S, SA, SO, SF = B, BA, BO, BF
        W, WA = fe(W, S, alpha=-lr), fe(WA, SA, alpha=abs(lr))
        WO = fe(WE, SO, alpha=abs(lr))
        # w − lr·s: 2 roundings (+ slack)
        WF = [torch.hypot(abs(lr) * sf, 3 * u * cap(wa, c, "w")) for sf, wa, c in zip(SF, WA, caps)]
        WE = [torch.hypot(wo, wf) for wo, wf in zip(WO, WF)]
        for i, (t, _, d) in enumerate(tracks):
            t[d + "w"], t[d + "wa"], t[d + "we"] = W[i], WA[i], WE[i]
        linear = [(layer.t, P, d) for layer, P in members if layer.result_norms for d in ("N", "M")]
        if linear:  # upper bounds of the rows' / columns' norms, by the triangle inequality
            G, W = [P[d] for _, P, d in linear], [t[d + "w"] for t, _, d in linear]
            S = fe(G, W, alpha=abs(wd)) if wd != 0 else G
            if mu != 0:
                if has_buf:
                    B = torch._foreach_mul([t[d + "b"] for t, _, d in linear], abs(mu))
                    torch._foreach_add_(B, S, alpha=abs(1 - damp))
                else:
                    B = [x.clone() for x in S]
                for (t, _, d), b in zip(linear, B):
                    t[d + "b"] = b
                S = fe(S, B, alpha=abs(mu)) if nesterov else B
            W = fe(W, S, alpha=abs(lr))
            torch._foreach_mul_(W, 1 + 4 * u)
            for (t, _, d), w in zip(linear, W):
                t[d + "w"] = w
        for layer, _ in members:
            if mu != 0:
                layer.has_buf = True
            self._refresh_check_mats(layer)
