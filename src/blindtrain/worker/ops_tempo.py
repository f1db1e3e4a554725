"""More generic worker instructions (used by ``tempo``, protocol-agnostic).

* ``matmul_nt``: ``A @ Bᵀ`` (a Linear forward against a held ``out×in`` weight).
* ``sgd_step``: torch's SGD update (weight decay, momentum, dampening, Nesterov) applied in
  place to held tensors with held gradients (several in one message), mirroring ``torch.optim.SGD``
  op for op.
* ``act_pool``: bias add, ReLU / LeakyReLU and max-pooling on a held or sent tensor.

On CUDA, TF32 is switched off for convolutions and matmuls run by this worker: results
must be float32-accurate for the trusted side's float error bounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


@instruction("act_pool")
def _act_pool(worker, args, params):
    """``pool(act(A + bias))``: ``params``: ``act`` (relu|leaky_relu), ``slope``, ``pool`` (kernel
    size or None), ``bias_dim`` (1: per column/channel).  The bias ``C`` (optional) is an
    ``A``-shaped-broadcastable tensor.  Returns the activated (pooled) tensor."""
    x = args["A"]
    if "C" in args:
        x = x + args["C"]
    if params.get("act") == "leaky_relu":
        x = F.leaky_relu(x, params.get("slope", 0.01))
    else:
        x = F.relu(x)
    if params.get("pool"):
        x = F.max_pool2d(x, params["pool"])
    return x


@instruction("bilinear_act")
def _bilinear_act(worker, args, params):
    """``pool(act(f(A, B) + C))`` for ``params["fn"]`` (a bilinear function or ``matmul_nt``); with
    ``pool``, returns ``stack([values, argmax positions as floats])``."""
    from .. import bilinear

    a, b = args["A"], args["B"]
    fn_params = {k: v for k, v in params.items() if k not in ("fn", "act", "slope", "pool")}
    y = torch.matmul(a, b.transpose(-2, -1)) if params["fn"] == "matmul_nt" else \
        bilinear.apply(params["fn"], a, b, **fn_params)
    if "C" in args:
        y = y + args["C"]
    y = F.leaky_relu(y, params["slope"]) if params.get("act") == "leaky_relu" else F.relu(y)
    if params.get("pool"):
        values, index = F.max_pool2d(y, params["pool"], return_indices=True)
        return torch.stack([values, index.to(values.dtype)])
    return y
