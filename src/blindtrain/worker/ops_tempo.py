"""More generic worker instructions (used by ``tempo``, protocol-agnostic).

* ``matmul_nt``: ``A @ Bᵀ`` (a Linear forward against a held ``out×in`` weight).
* ``sgd_step``: torch's SGD update (weight decay, momentum, dampening, Nesterov) applied in
  place to held tensors with held gradients (several in one message), mirroring ``torch.optim.SGD``
  op for op.

On CUDA, TF32 is switched off for convolutions and matmuls run by this worker: results
must be float32-accurate for the trusted side's float error bounds.
"""

from __future__ import annotations

import torch

from .ops import instruction

if torch.cuda.is_available():  # pragma: no cover - GPU only
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@instruction("matmul_nt")
def _matmul_nt(worker, args, params):
    """``A @ Bᵀ``."""
    return torch.matmul(args["A"], args["B"].transpose(-2, -1))


@instruction("sgd_step")
def _sgd_step(worker, args, params):
    """For each entry of ``params["updates"]``: ``state[target] -= lr * step`` with torch.optim.SGD
    semantics; returns nothing.

    An entry: ``target`` (held parameter), ``grad`` (held gradient, dropped after use), ``buffer``
    (held momentum buffer handle, created on first use), ``lr``, ``momentum``, ``dampening``,
    ``weight_decay``, ``nesterov``.
    """
    state = worker.state
    for update in params["updates"]:
        param = state[update["target"]]
        grad = state.pop(update["grad"])
        wd, momentum = update.get("weight_decay", 0.0), update.get("momentum", 0.0)
        if wd != 0:
            grad = grad.add(param, alpha=wd)
        if momentum != 0:
            buf = state.get(update["buffer"])
            if buf is None:
                buf = torch.clone(grad).detach()
                state[update["buffer"]] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - update.get("dampening", 0.0))
            grad = grad.add(buf, alpha=momentum) if update.get("nesterov", False) else buf
        param.add_(grad, alpha=-update["lr"])
    return None
