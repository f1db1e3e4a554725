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
            updates.append((layer, P, (float(group["lr"]), float(group.get("momentum", 0.0)),
                                       float(group.get("dampening", 0.0)), float(group.get("weight_decay", 0.0)),
                                       bool(group.get("nesterov", False)))))
        with rt.ledger.timed("decode_verify"):  # the projections follow the update; they need no answer
            cohorts: dict[tuple, list] = {}  # layers whose recurrences take the same coefficients
            for layer, P, hyper in updates:
                cohorts.setdefault((hyper, layer.has_buf), []).append((layer, P))
            for (hyper, has_buf), members in cohorts.items():
                self._advance(members, *hyper, has_buf=has_buf)
        for k in range(self.settings["workers"]):
            steps = [{"target": f"{layer.h}/w", "grad": f"{layer.h}/g", "buffer": f"{layer.h}/buf",
                      **dict(zip(("lr", "momentum", "dampening", "weight_decay", "nesterov"), hyper))}
                     for layer, _, hyper in updates if k < len(layer.blocks)]
            if steps:
                self._call(Request("sgd_step", {}, Tag(rt.step, "*", "update"), params={"updates": steps},
                                   return_result=False), k)

    def _drop_grad(self, layer):
        for k in range(len(layer.blocks)):
            self._call(Request("free", {}, Tag(self.runtime.step, layer.site.name, "update"),
                               params={"handles": [f"{layer.h}/g"]}, return_result=False), k)

    def _advance(self, members, lr, mu, damp, wd, nesterov, *, has_buf):
        """The SGD recurrences on the projections (exact, float64), their abs bounds and rounding drift.

        ``members``: ``(layer, P)`` pairs sharing the hyperparameters and ``has_buf``; every term is one
        batched ``torch._foreach_*`` op over all their projections.  Per projection (value x, abs bound xa,
        rounding drift xe; P gives the gradient's g, ga, ge):
        ``d = g + wd·w``, ``b = mu·b + (1−damp)·d`` (``b = d`` on the first step), ``s = d + mu·b`` (Nesterov)
        or ``b``, ``w ← w − lr·s``; the bounds take absolute coefficients, and each rounding adds
        a few ``u`` of the bound to the drift."""
        u, fe = U32, torch._foreach_add
        tracks = [(layer.t, P, d) for layer, P in members for d in ("q", "v")]

        def terms(source, suffix):
            return [source(t, P)[d + suffix] for t, P, d in tracks]

        G, GA, GE = (terms(lambda t, P: P, s) for s in ("", "a", "e"))
        W, WA, WE = (terms(lambda t, P: t, "w" + s) for s in ("", "a", "e"))
        if wd != 0:
            D, DA, DE = fe(G, W, alpha=wd), fe(GA, WA, alpha=abs(wd)), fe(GE, WE, alpha=abs(wd))
            torch._foreach_add_(DE, DA, alpha=2 * u)
        else:
            D, DA, DE = G, GA, GE
        S, SA, SE = D, DA, DE
        if mu != 0:
            if has_buf:
                B, BA, BE = (torch._foreach_mul(terms(lambda t, P: t, "b" + s), c)
                             for s, c in (("", mu), ("a", abs(mu)), ("e", abs(mu))))
                torch._foreach_add_(B, D, alpha=1 - damp)
                torch._foreach_add_(BA, DA, alpha=abs(1 - damp))
                torch._foreach_add_(BE, DE, alpha=abs(1 - damp))
                torch._foreach_add_(BE, BA, alpha=3 * u)
            else:
                B, BA, BE = ([x.clone() for x in X] for X in (D, DA, DE))
            for i, (t, _, d) in enumerate(tracks):
                t[d + "b"], t[d + "ba"], t[d + "be"] = B[i], BA[i], BE[i]
            if nesterov:
                S, SA, SE = fe(D, B, alpha=mu), fe(DA, BA, alpha=abs(mu)), fe(DE, BE, alpha=abs(mu))
                torch._foreach_add_(SE, SA, alpha=2 * u)
            else:
                S, SA, SE = B, BA, BE
        W, WA, WE = fe(W, S, alpha=-lr), fe(WA, SA, alpha=abs(lr)), fe(WE, SE, alpha=abs(lr))
        torch._foreach_add_(WE, fe(WA, SA, alpha=abs(lr)), alpha=3 * u)
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
