"""Gradient leakage: consecutive visible weights give each step's weight gradient.

With ``W_t`` and ``W_{t+1}`` (step ``t``'s forward and step ``t+1``'s, or the serving forward after the
last step) and the known hyper-parameters, PyTorch's optimizers are inverted exactly (up to the
weights' fixed-point rounding, ``2^-l`` per element):

SGD (``torch.optim.SGD``: momentum ``μ``, dampening ``τ``, weight decay ``λ``, learning rate ``η``)::

    u_t  = (W_t − W_{t+1}) / η                       the applied update direction
    plain / heavy ball:  buf_t = u_t;  g'_t = buf_t − μ·buf_{t−1}   (÷(1−τ) after the first step)
    Nesterov:            u_t = g'_t + μ·buf_t, buf_t = μ·buf_{t−1} + g'_t
                         ⇒ g'_t = (u_t − μ²·buf_{t−1}) / (1 + μ)
    loss gradient        g_t = g'_t − λ·W_t

At the first step of the view (``buf_{−1}``) PyTorch sets ``buf_0 = g'_0``: exact when the view starts
at step 0; a view that starts later loses its first step.

Adam: ``W_{t+1} = W_t − η·m̂_t/(√v̂_t + ε)`` — one equation per coordinate and step for the unknown
``g_t``, but at step 0 ``m̂/√v̂ = g/|g|``: the magnitudes are never pinned down.  The attack returns
the update direction ``m̂_t/(√v̂_t + ε)`` (sign(g) at step 0) and says so; it is not the gradient.
"""

from __future__ import annotations

import numpy as np

from .recovery import Knowledge
from .visible_weights import WeightView


def recover_gradients(view: WeightView, knowledge: Knowledge) -> tuple[dict[int, dict[str, np.ndarray]], list[str]]:
    """step -> {``<layer>.weight``: recovered loss gradient}; plus notes."""
    hyper = knowledge.hyper or {}
    notes: list[str] = []
    lr = hyper.get("lr")
    if not lr:
        lr = 1.0
        if any(len(view.per_step(layer)) > 1 for layer in view.layers):
            notes.append("learning rate unknown: gradients recovered up to one positive scale")
    lr = float(lr)
    optimizer = str(hyper.get("optimizer", "sgd")).lower()
    momentum = float(hyper.get("momentum", 0.0) or 0.0)
    dampening = float(hyper.get("dampening", 0.0) or 0.0)
    nesterov = bool(hyper.get("nesterov", False))
    decay = float(hyper.get("weight_decay", 0.0) or 0.0)
    if optimizer == "adam":
        notes.append("Adam: only the update direction m̂/(√v̂+ε) is recovered per step (sign of the gradient at "
                     "step 0; magnitudes are not identifiable from the weights); reported in place of gradients")
    out: dict[int, dict[str, np.ndarray]] = {}
    for layer in view.layers:
        steps = view.per_step(layer)
        ordered = sorted(steps)
        buffer = None
        for t, t_next in zip(ordered, ordered[1:]):
            if t_next != t + 1:
                buffer = None  # a gap: the momentum chain restarts (its first step is lost)
                continue
            w_t, w_next = steps[t].weight, steps[t_next].weight
            update = (w_t - w_next) / lr
            if optimizer == "adam":
                out.setdefault(t, {})[steps[t].name] = update.astype(np.float32)
                continue
            if momentum == 0.0:
                raw = update
            elif buffer is None:
                if t != 0:  # buf_{t-1} unknown: this step only seeds the chain
                    buffer = update if not nesterov else None
                    continue
                raw = update / (1.0 + momentum) if nesterov else update
                buffer = raw
            elif nesterov:
                raw = (update - momentum * momentum * buffer) / (1.0 + momentum)
                buffer = momentum * buffer + raw
            else:
                raw = (update - momentum * buffer) / (1.0 - dampening)
                buffer = update
            out.setdefault(t, {})[steps[t].name] = (raw - decay * w_t).astype(np.float32)  # computed in float64
    if out:
        first = min(out)
        notes.append(f"gradients of {len(out)} steps ({first}..{max(out)}) from consecutive weights "
                     f"(optimizer {optimizer}, lr {lr:g}, momentum {momentum:g}{', nesterov' if nesterov else ''}, "
                     f"weight decay {decay:g}); precision: the weights' fixed-point step 2^-l per element, "
                     f"divided by the learning rate")
    return out, notes
